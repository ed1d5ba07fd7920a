// A small Markdown renderer for model answers: fenced code blocks (highlighted), inline code,
// bold, italic, headings, lists, quotes, links. Every piece of text is HTML-escaped before any
// tag is added, links keep only http(s) and relative targets, and images become links: an
// answer can never load anything, run a script or style the page.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

export function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

const KEYWORDS = new Set(("as async await break case catch class const continue def del elif else except " +
  "export extends false finally fn for from func function if impl import in interface is lambda let " +
  "match mut new nil none not null or pass pub return self static struct switch this throw true try " +
  "type typeof var void while with yield None True False").split(" "));

// One pass over the source with a single regex: comments, strings, numbers, words.
const TOKENS = /(\/\/[^\n]*|#[^\n]*|\/\*[\s\S]*?\*\/)|("(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|`(?:\\.|[^`\\])*`)|(\b\d[\d_]*(?:\.\d+)?(?:e[+-]?\d+)?\b)|([A-Za-z_$][\w$]*)/g;

export function highlight(code) {
  let out = "";
  let last = 0;
  for (const m of code.matchAll(TOKENS)) {
    out += escapeHtml(code.slice(last, m.index));
    const [text, comment, string, number, word] = m;
    const kind = comment ? "c" : string ? "s" : number ? "n" : word && KEYWORDS.has(word) ? "k" : null;
    out += kind ? `<span class="tok-${kind}">${escapeHtml(text)}</span>` : escapeHtml(text);
    last = m.index + text.length;
  }
  return out + escapeHtml(code.slice(last));
}

function safeUrl(url) {
  const target = url.trim();
  return /^(https?:\/\/|\/(?!\/)|#)/i.test(target) ? target : null;
}

// Inline markup on already-escaped text; code spans are cut out first so nothing inside them changes.
function inline(text) {
  const codes = [];
  let html = escapeHtml(text).replace(/`([^`\n]+)`/g, (_, code) => {
    codes.push(`<code>${code}</code>`);
    return `\u0000${codes.length - 1}\u0000`;
  });
  html = html.replace(/!?\[([^\]\n]*)\]\(([^)\s]+)\)/g, (whole, label, url) => {
    const target = safeUrl(url.replace(/&amp;/g, "&"));
    return target ? `<a href="${escapeHtml(target)}" target="_blank" rel="noopener noreferrer">${label || escapeHtml(target)}</a>` : whole;
  });
  html = html
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>")
    .replace(/(^|[^*\w])\*(?=\S)([^*\n]*?\S)\*(?!\*)/g, "$1<em>$2</em>")
    .replace(/(^|[^_\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, "$1<em>$2</em>");
  return html.replace(/\u0000(\d+)\u0000/g, (_, i) => codes[Number(i)]);
}

export function renderMarkdown(source) {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let paragraph = [];
  let list = null; // { tag, items }

  const flushParagraph = () => {
    if (paragraph.length) out.push(`<p>${paragraph.map(inline).join("<br>")}</p>`);
    paragraph = [];
  };
  const flushList = () => {
    if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${inline(i)}</li>`).join("")}</${list.tag}>`);
    list = null;
  };

  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)/);
    if (fence) {
      flushParagraph();
      flushList();
      const body = [];
      // An unclosed fence (a stream still arriving) runs to the end.
      while (++i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i]);
      const lang = fence[2] ? ` data-lang="${escapeHtml(fence[2])}"` : "";
      out.push(`<pre${lang}><code>${highlight(body.join("\n"))}</code></pre>`);
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    if (heading) {
      flushParagraph();
      flushList();
      const level = Math.min(heading[1].length + 2, 6); // inside a chat bubble: h3 and smaller
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
    } else if (item) {
      flushParagraph();
      const tag = /\d/.test(item[1]) ? "ol" : "ul";
      if (list && list.tag !== tag) flushList();
      list ??= { tag, items: [] };
      list.items.push(item[2]);
    } else if (/^\s*>/.test(line)) {
      flushParagraph();
      flushList();
      out.push(`<blockquote>${inline(line.replace(/^\s*>\s?/, ""))}</blockquote>`);
    } else if (!line.trim()) {
      flushParagraph();
      flushList();
    } else if (list && /^\s+\S/.test(line)) {
      list.items[list.items.length - 1] += " " + line.trim();
    } else {
      flushList();
      paragraph.push(line);
    }
  }
  flushParagraph();
  flushList();
  return out.join("\n");
}

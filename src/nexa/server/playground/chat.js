// Chat: POST /v1/chat/completions, streamed, rendered as Markdown while it arrives. The
// conversation stays until cleared; Stop aborts the fetch, and the server stops decoding when
// the connection closes.
import { api, events, showError } from "./api.js";
import { escapeHtml, renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let messages = []; // the conversation as sent to the server
let controller = null; // the stream in flight
let attachment = null; // a data: URL of the image to send with the next message
let known = []; // the server's models, for what the chosen one can do

function bubble(role, html = "") {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.innerHTML = `<div class="who">${role}</div><div class="body">${html}</div>`;
  $("chat-log").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function userHtml(content) {
  if (typeof content === "string") return escapeHtml(content).replace(/\n/g, "<br>");
  const text = content.find((p) => p.type === "text")?.text ?? "";
  return escapeHtml(text).replace(/\n/g, "<br>") + ' <span class="muted">[image attached]</span>';
}

function toolCallsHtml(calls) {
  return calls.filter(Boolean).map((c) =>
    `<div class="tool-call"><span class="muted">tool call</span> <code>${escapeHtml(c.function.name)}` +
    `(${escapeHtml(c.function.arguments)})</code></div>`).join("");
}

function optionalJson(id, what) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${what} is not valid JSON: ${error.message}`);
  }
}

function request() {
  const body = {
    model: $("chat-model").value || undefined,
    messages: [...($("chat-system").value.trim() ? [{ role: "system", content: $("chat-system").value }] : []),
      ...messages],
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("chat-temperature").value),
    max_tokens: Number($("chat-max-tokens").value) || undefined,
  };
  if ($("chat-seed").value !== "") body.seed = Number($("chat-seed").value);
  const schema = optionalJson("chat-schema", "The JSON schema");
  if (schema !== undefined) body.response_format = { type: "json_schema", json_schema: { name: "playground", schema } };
  const tools = optionalJson("chat-tools", "The tool definitions");
  if (tools !== undefined) {
    body.tools = tools;
    body.tool_choice = $("chat-tool-choice").value;
  }
  return body;
}

function busy(on) {
  $("chat-send").disabled = on;
  $("chat-stop").disabled = !on;
  $("chat-form").classList.toggle("busy", on);
}

function stats(started, first, tokens, end, usage) {
  const parts = [];
  if (first) parts.push(`first token ${((first - started) / 1000).toFixed(2)} s`);
  const generated = usage?.completion_tokens ?? tokens;
  const seconds = (end - (first || started)) / 1000;
  if (first && seconds > 0) parts.push(`${(generated / seconds).toFixed(1)} tokens/s`);
  parts.push(`${generated} tokens`);
  $("chat-stats").textContent = parts.join(" · ");
}

async function send(text) {
  showError(null);
  let body;
  const content = attachment ? [{ type: "text", text }, { type: "image_url", image_url: { url: attachment } }] : text;
  messages.push({ role: "user", content });
  try {
    body = request();
  } catch (error) {
    messages.pop();
    showError(error);
    return;
  }
  bubble("user", userHtml(content));
  attachment = null;
  $("chat-attach").value = "";
  $("chat-attached").textContent = "";
  const reply = bubble("assistant", '<span class="muted">…</span>');
  const out = reply.querySelector(".body");
  controller = new AbortController();
  busy(true);
  const started = performance.now();
  let first = 0;
  let tokens = 0;
  let usage = null;
  let textSoFar = "";
  const calls = [];
  let failure = "";
  const draw = () => { out.innerHTML = renderMarkdown(textSoFar) + toolCallsHtml(calls); };
  try {
    const response = await api("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta;
      if (!delta) continue;
      if (delta.content || delta.tool_calls) {
        first ||= performance.now();
        tokens += 1;
      }
      textSoFar += delta.content ?? "";
      for (const call of delta.tool_calls ?? []) {
        const known = (calls[call.index ?? 0] ??= { id: call.id, type: "function", function: { name: "", arguments: "" } });
        known.function.name += call.function?.name ?? "";
        known.function.arguments += call.function?.arguments ?? "";
      }
      draw();
      stats(started, first, tokens, performance.now(), null);
    }
    reply.classList.add("done");
  } catch (error) {
    if (error.name === "AbortError") {
      reply.classList.add("stopped");
      reply.querySelector(".who").textContent = "assistant (stopped)";
    } else {
      reply.classList.add("failed");
      failure = error.message;
      showError(error);
    }
  } finally {
    controller = null;
    busy(false);
    draw();
    if (failure) out.insertAdjacentHTML("beforeend", `<p class="failure">${escapeHtml(failure)}</p>`);
    else if (!textSoFar && !calls.length && !reply.classList.contains("done")) out.innerHTML = '<span class="muted">(no answer)</span>';
    stats(started, first, tokens, performance.now(), usage);
    const kept = { role: "assistant", content: textSoFar };
    if (calls.length) kept.tool_calls = calls.filter(Boolean);
    if (textSoFar || calls.length) messages.push(kept);
    else messages.pop(); // nothing came back: the question can be asked again
  }
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export function init() {
  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || controller) return;
    $("chat-input").value = "";
    send(text);
  });
  $("chat-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => controller?.abort());
  $("chat-clear").addEventListener("click", () => {
    controller?.abort();
    messages = [];
    $("chat-log").replaceChildren();
    $("chat-stats").textContent = "";
  });
  $("chat-attach").addEventListener("change", async () => {
    const file = $("chat-attach").files[0];
    attachment = file ? await readImage(file) : null;
    $("chat-attached").textContent = file ? file.name : "";
  });
  $("chat-model").addEventListener("change", showAttach);
}

// Image attachments only where the chosen model sees images.
function showAttach() {
  const model = known.find((m) => m.id === $("chat-model").value);
  const sees = Boolean(model?.tasks.includes("vision"));
  $("chat-attach-label").hidden = !sees;
  if (!sees) {
    attachment = null;
    $("chat-attach").value = "";
    $("chat-attached").textContent = "";
  }
}

export function models(app) {
  known = app.models;
  app.select($("chat-model"), "chat", "NLP");
  showAttach();
}

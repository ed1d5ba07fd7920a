// Every request the page makes goes through api(): same origin only, the API key (asked once,
// when the server first answers 401) as a Bearer token, and errors as the envelope's message.

let key = sessionStorage.getItem("nexa-key");
let asking = null; // one dialog for all the requests that met the same 401

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function askKey(wrong) {
  if (!asking) {
    asking = new Promise((resolve) => {
      const dialog = document.getElementById("key-dialog");
      const input = document.getElementById("key-input");
      const note = document.getElementById("key-error");
      note.hidden = !wrong;
      note.textContent = wrong ? "That key was refused: " + wrong : "";
      input.value = "";
      dialog.addEventListener("close", () => {
        key = input.value.trim();
        sessionStorage.setItem("nexa-key", key);
        asking = null;
        resolve();
      }, { once: true });
      dialog.showModal();
    });
  }
  return asking;
}

// The server's message from OpenAI's envelope {"error": {"message"}}, Anthropic's, or a plain body.
export async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    const message = body.error?.message ?? body.detail ?? body.message;
    if (message) return typeof message === "string" ? message : JSON.stringify(message);
  } catch {
    // not JSON: the text itself, if any
  }
  return text.trim() || `${response.status} ${response.statusText}`;
}

export async function api(path, options = {}) {
  for (let tries = 0; ; tries++) {
    const headers = new Headers(options.headers || {});
    if (key) headers.set("Authorization", "Bearer " + key);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 && tries < 3) {
      const sent = key;
      const message = await errorMessage(response);
      if (key === sent) await askKey(sent ? message : null); // another request may have asked already
      continue;
    }
    if (!response.ok) throw new ApiError(await errorMessage(response), response.status);
    return response;
  }
}

export async function json(path, body, options = {}) {
  const init = body === undefined ? options
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), ...options };
  return (await api(path, init)).json();
}

// Server-sent events of a streamed response: each `data:` payload, parsed, until [DONE].
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

export function showError(error) {
  const box = document.getElementById("error");
  if (!error) {
    box.hidden = true;
    return;
  }
  if (error.name === "AbortError") return;
  box.textContent = error.message || String(error);
  box.hidden = false;
}

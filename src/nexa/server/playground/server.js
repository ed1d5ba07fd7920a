// Models & server: GET /v1/models with load/unload buttons (POST /v1/models/{id}/load|unload),
// and, when the server runs with --allow-pull, a download form (POST /v1/download_model, followed
// by GET /v1/download_progress) and delete buttons for downloaded models; the server's version and
// settings (GET /v1/server) and each loaded engine's own, and /metrics polled every 2 s into a
// small chart while the tab is open.
import { api, events, json, showError } from "./api.js";

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const POINTS = 60;
const BASIC = new Set(["id", "object", "created", "owned_by", "tasks", "model_type", "path", "size", "state",
  "origin", "default", "pid"]);
let history = []; // { running, waiting, rate }
let timer = null;
let version = null;
let settings = {};
// The settings shown at a glance; the rest are under "all settings".
const SHOWN = ["n_ctx", "parallel", "n_threads", "max_queue", "keep_alive", "max_models", "max_memory", "workers"];

function size(bytes) {
  if (!bytes) return "";
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

function details(model) {
  const facts = Object.entries(model).filter(([k]) => !BASIC.has(k))
    .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
  return [model.origin, size(model.size), model.pid ? `pid ${model.pid}` : "", ...facts].filter(Boolean).join(" · ");
}

function row(app, model) {
  const tr = document.createElement("tr");
  tr.dataset.model = model.id;
  const cells = [model.id + (model.default ? " (default)" : ""), model.model_type ?? "", model.tasks.join(", "),
    model.state ?? "", details(model)];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  tr.children[3].className = `state ${model.state}`;
  tr.children[4].className = "details";
  const action = model.state === "not_loaded" ? "load" : model.state === "loaded" ? "unload" : null;
  const td = document.createElement("td");
  const id = encodeURIComponent(model.id);
  if (action === "load") td.append(button(app, "Load", "Loading…", "small", () => json(`/v1/models/${id}/load`, {})));
  if (action === "unload") {
    td.append(button(app, "Unload", "Unloading…", "small secondary", () => json(`/v1/models/${id}/unload`, {})));
  }
  if (settings.allow_pull && model.origin === "store" && model.state === "not_loaded") {
    td.append(button(app, "Delete", "Deleting…", "small secondary", () => api(`/v1/models/${id}`, { method: "DELETE" })));
  }
  tr.append(td);
  return tr;
}

function button(app, label, busy, className, act) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = label;
  b.addEventListener("click", async () => {
    b.disabled = true;
    b.textContent = busy;
    showError(null);
    try {
      await act();
    } catch (error) {
      showError(error);
    }
    await app.refresh();
  });
  return b;
}

// The download runs in one request; its progress comes from a second one, once the server knows it.
async function download(app, event) {
  event.preventDefault();
  const name = $("download-name").value.trim();
  const source = $("download-source").value;
  const bar = $("download-progress");
  const state = $("download-state");
  $("download-go").disabled = true;
  bar.value = 0;
  bar.hidden = false;
  state.textContent = `downloading ${name}…`;
  showError(null);
  const body = { model_path: name, is_huggingface: source === "hf", is_modelscope: source === "ms" };
  const done = json("/v1/download_model", body);
  let finished = false;
  done.catch(() => {}).then(() => { finished = true; }); // the error itself is shown below
  (async () => {
    while (!finished) {
      try {
        const response = await api(`/v1/download_progress?model_path=${encodeURIComponent(name)}`);
        for await (const step of events(response)) if ("progress" in step) bar.value = step.progress;
        return;
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 300)); // not started yet
      }
    }
  })();
  try {
    const got = await done;
    bar.value = 100;
    state.textContent = `${got.model_path} downloaded (${got.model_type})`;
  } catch (error) {
    state.textContent = "";
    showError(error);
  }
  bar.hidden = true;
  $("download-go").disabled = false;
  await app.refresh();
}

function facts(app) {
  const loaded = app.models.filter((m) => m.state === "loaded");
  const entries = [
    ["version", version ?? "…"],
    ["default model", app.models.find((m) => m.default)?.id ?? "none"],
    ["loaded", `${loaded.length} of ${app.models.length} servable`],
    ...SHOWN.filter((k) => k in settings).map((k) => [k, String(settings[k] ?? "none")]),
  ];
  $("server-info").replaceChildren(...entries.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    return [dt, dd];
  }));
  $("server-settings").textContent = JSON.stringify(settings, null, 2);
}

// The Prometheus text of /metrics: the unlabelled figure (the default model) plus the labelled ones.
export function parseMetrics(text) {
  const sums = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^nexa_(\w+)(?:\{[^}]*\})?\s+(\S+)$/);
    if (m) sums[m[1]] = (sums[m[1]] ?? 0) + Number(m[2]);
  }
  return sums;
}

function draw() {
  const canvas = $("metrics-chart");
  const g = canvas.getContext("2d");
  const { width, height } = canvas;
  g.clearRect(0, 0, width, height);
  g.strokeStyle = "#ddd";
  g.beginPath();
  for (let y = 0; y <= 4; y++) {
    g.moveTo(0, (height - 1) * y / 4 + 0.5);
    g.lineTo(width, (height - 1) * y / 4 + 0.5);
  }
  g.stroke();
  const series = [["running", "#d9480f"], ["waiting", "#7048e8"], ["rate", "#1971c2"]];
  for (const [name, color] of series) {
    const top = Math.max(1, ...history.map((p) => p[name]));
    g.strokeStyle = color;
    g.lineWidth = 2;
    g.beginPath();
    history.forEach((p, i) => {
      const x = (width * i) / (POINTS - 1);
      const y = height - 2 - ((height - 4) * p[name]) / top;
      i ? g.lineTo(x, y) : g.moveTo(x, y);
    });
    g.stroke();
  }
}

async function poll() {
  try {
    const m = parseMetrics(await (await api("/metrics")).text());
    const point = { running: m.requests_running ?? 0, waiting: m.requests_waiting ?? 0,
      rate: m.generation_tokens_per_second ?? 0 };
    history = [...history, point].slice(-POINTS);
    $("metrics-now").textContent = `${point.running} running · ${point.waiting} waiting · ` +
      `${point.rate.toFixed(1)} tokens/s · ${m.models_loaded ?? 0} models loaded · ` +
      `${((m.resident_memory_bytes ?? 0) / 2 ** 20).toFixed(0)} MiB resident · up ${(m.uptime_seconds ?? 0).toFixed(0)} s`;
    draw();
  } catch (error) {
    $("metrics-now").textContent = `metrics unavailable: ${error.message}`;
  }
}

export function init(app) {
  $("models-refresh").addEventListener("click", () => app.refresh());
  $("download-form").addEventListener("submit", (event) => download(app, event));
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) stop();
    else if (!$("server").hidden) start();
  });
}

function start() {
  if (!timer) {
    poll();
    timer = setInterval(() => ($("server").hidden ? stop() : poll()), POLL_MS);
  }
}

function stop() {
  clearInterval(timer);
  timer = null;
}

export async function shown(app) {
  start();
  if (version === null) {
    try {
      ({ version, settings } = await json("/v1/server"));
    } catch {
      version = "unknown";
    }
    $("download-form").hidden = !settings.allow_pull;
    facts(app);
    models(app); // the delete buttons need the settings
  }
}

export function models(app) {
  $("models-table").tBodies[0].replaceChildren(...app.models.map((m) => row(app, m)));
  facts(app);
}

// Speech: an uploaded or recorded clip to POST /v1/audio/transcriptions or /translations as
// verbose_json; the text, the segments with their times, and SRT/VTT files made from them.
import { api, showError } from "./api.js";
import { escapeHtml } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let clip = null; // { blob, name }
let recorder = null;
let links = [];

function stamp(seconds, separator) {
  const ms = Math.round(seconds * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const h = Math.floor(ms / 3600000);
  const m = Math.floor(ms / 60000) % 60;
  const s = Math.floor(ms / 1000) % 60;
  return `${pad(h)}:${pad(m)}:${pad(s)}${separator}${pad(ms % 1000, 3)}`;
}

export function srt(segments) {
  return segments.map((s, i) => `${i + 1}\n${stamp(s.start, ",")} --> ${stamp(s.end, ",")}\n${s.text.trim()}\n`).join("\n");
}

export function vtt(segments) {
  return "WEBVTT\n\n" + segments.map((s) => `${stamp(s.start, ".")} --> ${stamp(s.end, ".")}\n${s.text.trim()}\n`).join("\n");
}

function offer(id, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  links.push(url);
  $(id).href = url;
}

function choose(blob, name) {
  clip = { blob, name };
  $("speech-source").textContent = name;
  const player = $("speech-player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
}

async function record() {
  if (recorder) {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    showError(new Error(`The microphone is not available: ${error.message}`));
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    const type = recorder.mimeType || "audio/webm";
    recorder = null;
    $("speech-record").textContent = "Record";
    choose(new Blob(chunks, { type }), `recording.${type.includes("ogg") ? "ogg" : "webm"}`);
  };
  recorder.start();
  $("speech-record").textContent = "Stop recording";
  $("speech-source").textContent = "recording…";
}

function show(answer) {
  const segments = answer.segments ?? [];
  $("speech-text").textContent = answer.text;
  $("speech-segments").tBodies[0].innerHTML = segments.map((s) =>
    `<tr><td>${stamp(s.start, ".")}</td><td>${stamp(s.end, ".")}</td><td>${escapeHtml(s.text.trim())}</td></tr>`).join("");
  links.forEach((url) => URL.revokeObjectURL(url));
  links = [];
  offer("speech-srt", srt(segments), "application/x-subrip");
  offer("speech-vtt", vtt(segments), "text/vtt");
  $("speech-result").hidden = false;
}

async function run() {
  showError(null);
  if (!clip) {
    showError(new Error("Choose an audio file or record a clip first."));
    return;
  }
  const form = new FormData();
  form.append("file", clip.blob, clip.name);
  if ($("speech-model").value) form.append("model", $("speech-model").value);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "segment");
  const task = $("speech-task").value;
  if (task === "transcriptions" && $("speech-language").value.trim()) form.append("language", $("speech-language").value.trim());
  $("speech-go").disabled = true;
  $("speech-progress").hidden = false;
  $("speech-state").textContent = task === "translations" ? "translating…" : "transcribing…";
  const started = performance.now();
  try {
    show(await (await api(`/v1/audio/${task}`, { method: "POST", body: form })).json());
    $("speech-state").textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  } catch (error) {
    $("speech-state").textContent = "failed";
    showError(error);
  } finally {
    $("speech-go").disabled = false;
    $("speech-progress").hidden = true;
  }
}

export function init() {
  $("speech-file").addEventListener("change", () => {
    const file = $("speech-file").files[0];
    if (file) choose(file, file.name);
  });
  $("speech-record").addEventListener("click", record);
  $("speech-record").hidden = !(navigator.mediaDevices && window.MediaRecorder);
  $("speech-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  $("speech-model").addEventListener("change", () => tasks());
}

let known = [];

function tasks() {
  // Translation only where the chosen model can (an English-only Whisper cannot).
  const model = known.find((m) => m.id === $("speech-model").value);
  const translate = $("speech-task").querySelector("option[value=translations]");
  translate.disabled = !model?.tasks.includes("translate");
  if (translate.disabled) $("speech-task").value = "transcriptions";
}

export function models(app) {
  known = app.models;
  app.select($("speech-model"), "speech", "AUDIO");
  tasks();
}

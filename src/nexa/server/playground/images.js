// Images: txt2img through POST /v1/images/generations, img2img (an uploaded start image and a
// strength) through POST /v1/images/edits. The PNGs come back inline (b64_json) and are shown
// and offered for download from blob: URLs of this page, so nothing is fetched twice.
import { api, showError } from "./api.js";

const $ = (id) => document.getElementById(id);

function pngBlob(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function settings() {
  const [width, height] = $("image-size").value.split("x").map(Number);
  const fields = {
    prompt: $("image-prompt").value,
    negative_prompt: $("image-negative").value,
    width,
    height,
    sample_steps: Number($("image-steps").value),
    cfg_scale: Number($("image-cfg").value),
    seed: $("image-seed").value === "" ? -1 : Number($("image-seed").value),
    response_format: "b64_json",
  };
  const model = $("image-model").value;
  if (model) fields.model = model;
  return fields;
}

function request(fields) {
  const start = $("image-init").files[0];
  if (!start) {
    return api("/v1/images/generations", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(fields),
    });
  }
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.append(name, String(value));
  form.append("strength", $("image-strength").value);
  form.append("image", start, start.name);
  return api("/v1/images/edits", { method: "POST", body: form });
}

function addToGallery(item, answer, fields, seconds, img2img) {
  const url = URL.createObjectURL(pngBlob(item.b64_json));
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = url;
  img.alt = fields.prompt;
  const caption = document.createElement("figcaption");
  const what = `${img2img ? "img2img" : "txt2img"} · ${answer.size} · seed ${answer.seed} · ${seconds.toFixed(1)} s`;
  const link = document.createElement("a");
  link.href = url;
  link.download = `nexa-${answer.seed}.png`;
  link.textContent = "Download";
  caption.append(what + " ", link);
  figure.append(img, caption);
  $("gallery").prepend(figure);
}

async function generate() {
  showError(null);
  const fields = settings();
  const img2img = Boolean($("image-init").files[0]);
  $("image-go").disabled = true;
  $("image-progress").hidden = false;
  const started = performance.now();
  // stable-diffusion.cpp reports no progress over HTTP: the bar is indeterminate, the clock is real.
  const tick = setInterval(() => {
    $("image-state").textContent = `sampling… ${((performance.now() - started) / 1000).toFixed(0)} s`;
  }, 250);
  try {
    const answer = await (await request(fields)).json();
    const seconds = (performance.now() - started) / 1000;
    for (const item of answer.data) addToGallery(item, answer, fields, seconds, img2img);
    $("image-state").textContent = `done in ${seconds.toFixed(1)} s`;
  } catch (error) {
    $("image-state").textContent = "failed";
    showError(error);
  } finally {
    clearInterval(tick);
    $("image-go").disabled = false;
    $("image-progress").hidden = true;
  }
}

export function init() {
  $("image-form").addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
}

export function models(app) {
  app.select($("image-model"), "images", "COMPUTER_VISION");
}

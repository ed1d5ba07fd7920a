// Embeddings: several texts to POST /v1/embeddings, and their cosine similarities as a heat map.
import { json, showError } from "./api.js";

const $ = (id) => document.getElementById(id);

export function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

// -1 blue, 0 white, 1 red; the text turns white where the cell is dark.
function paint(cell, value) {
  const v = Math.max(-1, Math.min(1, value));
  const fade = Math.round(255 * (1 - Math.abs(v)));
  cell.style.backgroundColor = v >= 0 ? `rgb(220, ${fade}, ${fade})` : `rgb(${fade}, ${fade}, 220)`;
  cell.style.color = Math.abs(v) > 0.6 ? "#fff" : "#111";
}

function label(text, i) {
  const short = text.length > 28 ? text.slice(0, 27) + "…" : text;
  const th = document.createElement("th");
  th.textContent = `${i + 1}. ${short}`;
  th.title = text;
  return th;
}

function draw(texts, vectors) {
  const table = $("embed-matrix");
  const head = document.createElement("tr");
  head.append(document.createElement("th"), ...texts.map((_, i) => {
    const th = document.createElement("th");
    th.textContent = String(i + 1);
    th.title = texts[i];
    return th;
  }));
  const rows = texts.map((text, i) => {
    const tr = document.createElement("tr");
    tr.append(label(text, i));
    for (let j = 0; j < texts.length; j++) {
      const td = document.createElement("td");
      const value = cosine(vectors[i], vectors[j]);
      td.textContent = value.toFixed(2);
      td.dataset.value = String(value);
      td.title = `${texts[i]}\n${texts[j]}\ncosine ${value.toFixed(4)}`;
      paint(td, value);
      tr.append(td);
    }
    return tr;
  });
  table.replaceChildren(head, ...rows);
}

async function compare() {
  showError(null);
  const texts = $("embed-texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (texts.length < 2) {
    showError(new Error("Enter at least two texts, one a line."));
    return;
  }
  $("embed-go").disabled = true;
  $("embed-state").textContent = "embedding…";
  try {
    const body = { input: texts, encoding_format: "float" };
    if ($("embed-model").value) body.model = $("embed-model").value;
    const answer = await json("/v1/embeddings", body);
    const vectors = [...answer.data].sort((a, b) => a.index - b.index).map((d) => d.embedding);
    draw(texts, vectors);
    $("embed-state").textContent = `${vectors[0].length} dimensions, ${answer.usage?.prompt_tokens ?? "?"} tokens`;
  } catch (error) {
    $("embed-state").textContent = "failed";
    showError(error);
  } finally {
    $("embed-go").disabled = false;
  }
}

export function init() {
  $("embed-form").addEventListener("submit", (event) => {
    event.preventDefault();
    compare();
  });
}

export function models(app) {
  app.select($("embed-model"), "embeddings", "TEXT_EMBEDDING");
}

// The playground's frame: tabs, the model list they share, and which tabs the loaded models serve.
import { json, showError } from "./api.js";
import * as chat from "./chat.js";
import * as embeddings from "./embeddings.js";
import * as images from "./images.js";
import * as server from "./server.js";
import * as speech from "./speech.js";

// What a tab needs from a loaded model (the `tasks` of GET /v1/models).
const NEEDS = {
  chat: ["chat"],
  images: ["txt2img", "img2img"],
  speech: ["transcribe", "translate"],
  embeddings: ["embedding"],
};
const TABS = { chat, images, speech, embeddings, server };

const app = { models: [], refresh, select: selectModels };

function serves(model, tab) {
  return model.state === "loaded" && NEEDS[tab].some((task) => model.tasks.includes(task));
}

// Fill a <select> with the loaded models that serve `tab`, keeping the choice; the ones whose
// type is made for the tab first (an embedding model before a chat model that also embeds).
function selectModels(select, tab, preferType) {
  const before = select.value;
  const fit = app.models.filter((m) => serves(m, tab));
  fit.sort((a, b) => (b.model_type === preferType) - (a.model_type === preferType) || b.default - a.default);
  select.replaceChildren(...fit.map((m) => new Option(m.id, m.id)));
  if (fit.some((m) => m.id === before)) select.value = before;
}

function show(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== name;
  location.hash = name;
  showError(null);
  TABS[name].shown?.(app);
}

function current() {
  return document.querySelector("#tabs button[aria-selected=true]")?.dataset.tab;
}

async function refresh() {
  try {
    app.models = (await json("/v1/models")).data;
  } catch (error) {
    document.getElementById("status").textContent = "server unreachable";
    showError(error);
    return;
  }
  const loaded = app.models.filter((m) => m.state === "loaded");
  document.getElementById("status").textContent =
    `${loaded.length} model${loaded.length === 1 ? "" : "s"} loaded, ${app.models.length} servable`;
  for (const button of document.querySelectorAll("#tabs button")) {
    const tab = button.dataset.tab;
    const usable = !NEEDS[tab] || app.models.some((m) => serves(m, tab));
    button.disabled = !usable;
    button.title = usable ? "" : `No loaded model can serve ${tab}: load one under "Models & server".`;
  }
  for (const module of Object.values(TABS)) module.models?.(app);
  const now = current();
  if (!now || document.querySelector(`#tabs button[data-tab=${now}]`).disabled) {
    const wanted = location.hash.slice(1);
    const open = [...document.querySelectorAll("#tabs button:not([disabled])")].map((b) => b.dataset.tab);
    show(open.includes(wanted) ? wanted : open[0]);
  }
}

document.getElementById("tabs").addEventListener("click", (event) => {
  const tab = event.target.closest("button")?.dataset.tab;
  if (tab && !event.target.disabled) show(tab);
});
document.getElementById("error").addEventListener("click", () => showError(null));
for (const module of Object.values(TABS)) module.init(app);
refresh();

// The page's wiring: polling the server, the model picker, the keys dialog and the
// server-down banner.
import { ApiError, ServerDown, call, keys, on } from "./api.js";
import { Chat } from "./chat.js";
import { $, h } from "./dom.js";
import { renderBars, Memory } from "./memory.js";
import { describe, Models } from "./models.js";

const POLL_MS = 3000;
const DOWN_RETRY_MS = 30000;
const ASKED = "mmserve.askedFor";

const chat = new Chat(() => refresh());
const models = new Models(() => refresh());
const memory = new Memory(() => refresh());
let admin = null; // null: not tried with these keys; true/false: the admin routes answered / 401
let down = null; // when the server stopped answering (Date), or null
let downTimer = null;
let running = null;
let again = false;
let known = []; // the models as last read

function showAdminNote(text) {
  const note = $("#admin-note");
  note.replaceChildren();
  if (!text) return;
  note.append(text, " ", h("button", { type: "button", class: "secondary", text: "Enter keys", onclick: () => openKeys("") }));
}

/** Point the attach controls at the chosen model's capabilities. */
function followPicker() {
  const chosen = known.find((m) => m.name === $("#model").value);
  const media = chat.media;
  if (chosen && (media.model !== chosen.name || media.caps.join() !== chosen.capabilities.join())) {
    media.setModel(chosen.name, chosen.capabilities);
  }
}

function fillPicker(list) {
  const select = $("#model");
  const previous = select.value || sessionStorage.getItem("mmserve.model") || "";
  const names = list.map((m) => m.name).join("|");
  if (select.dataset.names !== names) {
    select.replaceChildren(...list.map((m) => h("option", { value: m.name, text: m.name })));
    select.dataset.names = names;
  }
  for (const m of list) {
    const option = select.querySelector(`option[value="${CSS.escape(m.name)}"]`);
    const why = m.family === "embedding" ? "embeddings only" : m.availability === "missing" ? "missing" : "";
    option.disabled = Boolean(why);
    option.textContent = `${m.name}${why ? ` (${why})` : m.state === "loaded" ? " · loaded" : ""}`;
  }
  const usable = list.filter((m) => m.family !== "embedding" && m.availability !== "missing");
  const keep = usable.find((m) => m.name === previous) || usable.find((m) => m.state === "loaded") || usable[0];
  if (keep && select.value !== keep.name) select.value = keep.name;
  followPicker();
}

async function readAdmin() {
  try {
    const status = await call("/admin/model_status");
    admin = true;
    return status;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) admin = false;
    else throw err;
    return null;
  }
}

async function refreshOnce() {
  let items;
  try {
    items = (await call("/v1/models")).data;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) showAdminNote("The server asks for an API key.");
    else if (!(err instanceof ServerDown)) showAdminNote(`Model list failed: ${err.message}`);
    return;
  }
  const status = admin === false ? null : await readAdmin();
  const list = items.map((item) => describe(item, status && status.models[item.id]));
  known = list;
  document.body.classList.toggle("no-admin", !admin);
  showAdminNote(admin ? "" : "Load, Unload, Pull and the memory view need the admin key.");
  models.render(list, Boolean(admin), status && status.timestamp);
  fillPicker(list);
  if (admin) {
    const [mem, temp] = await Promise.all([call("/admin/memory_status"), call("/admin/temp_status")]);
    renderBars(mem, list);
    memory.showTemp(temp);
  }
}

/** Re-read the server's state: one run at a time; a call during a run asks for one more. */
function refresh() {
  if (running) {
    again = true;
    return running;
  }
  running = refreshOnce()
    .catch((err) => {
      if (!(err instanceof ServerDown)) console.error(err);
    })
    .finally(() => {
      running = null;
      if (again) {
        again = false;
        refresh();
      }
    });
  return running;
}

function openKeys(reason) {
  const dialog = $("#keys-dialog");
  if (dialog.open) return;
  $("#keys-reason").textContent = reason;
  $("#key-api").value = keys.api;
  $("#key-admin").value = keys.admin;
  dialog.showModal();
}

$("#keys-open").addEventListener("click", () => openKeys(""));
$("#keys-dialog").addEventListener("close", () => {
  const choice = $("#keys-dialog").returnValue;
  if (choice === "save") keys.save($("#key-api").value.trim(), $("#key-admin").value.trim());
  if (choice === "forget") keys.forget();
  if (choice === "save" || choice === "forget") {
    admin = null;
    refresh();
  }
});
$("#model").addEventListener("change", () => {
  sessionStorage.setItem("mmserve.model", $("#model").value);
  followPicker();
});

// Ask for the API key once per key tried: on the first 401 of a non-admin call.
on("unauthorized", (path) => {
  if (path.startsWith("/admin/")) return;
  const tried = keys.api || "(none)";
  if (sessionStorage.getItem(ASKED) === tried) return;
  sessionStorage.setItem(ASKED, tried);
  openKeys(keys.api ? "The server refused this API key." : "This server needs an API key.");
});

on("down", () => {
  const first = down === null;
  down = down || new Date();
  const since = down.toLocaleTimeString();
  const tried = new Date().toLocaleTimeString();
  $("#banner-text").textContent = first
    ? `The server at ${location.host} is not answering (since ${since}). Retrying every ${DOWN_RETRY_MS / 1000} s.`
    : `The server at ${location.host} is still not answering (since ${since}; last try ${tried}).`;
  $("#banner").hidden = false;
  clearTimeout(downTimer);
  downTimer = setTimeout(refresh, DOWN_RETRY_MS);
});
on("up", () => {
  if (down === null) return;
  down = null;
  admin = null; // the server may be back with other keys
  clearTimeout(downTimer);
  $("#banner").hidden = true;
  refresh();
});
$("#banner-retry").addEventListener("click", () => refresh());

setInterval(() => {
  if (down === null && !document.hidden) refresh();
}, POLL_MS);
refresh();

// Attachments: file picker and drag and drop, checked against the model's capabilities,
// sent as OpenAI content parts (image_url, input_audio, video_url with data: URLs).
import { $, h } from "./dom.js";

const KINDS = ["image", "audio", "video"];
const NOUN = { image: "images", audio: "audio", video: "video" };
// input_audio.format values the server takes (mmserve/media.py AUDIO_FORMATS).
const AUDIO_FORMATS = ["wav", "mp3", "flac", "m4a", "ogg", "aac", "webm", "mkv"];

function audioFormat(file) {
  const ext = (file.name.split(".").pop() || "").toLowerCase();
  if (AUDIO_FORMATS.includes(ext)) return ext;
  const sub = (file.type.split("/")[1] || "").replace(/^x-/, "");
  if (sub === "mpeg") return "mp3";
  return AUDIO_FORMATS.includes(sub) ? sub : null;
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export class Attachments {
  constructor() {
    this.items = [];
    this.caps = ["text"];
    this.model = "";
    this.list = $("#attachments");
    this.note = $("#media-note");
    for (const kind of KINDS) {
      const input = $(`#file-${kind}`);
      $(`[data-attach="${kind}"]`).addEventListener("click", () => input.click());
      input.addEventListener("change", () => {
        this.add([...input.files]);
        input.value = "";
      });
    }
    const zone = $("#composer");
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      this.add([...e.dataTransfer.files]);
    });
  }

  /** Enable the attach controls the model takes; say why the others are off. */
  setModel(name, capabilities) {
    this.model = name;
    this.caps = capabilities || ["text"];
    const off = KINDS.filter((k) => !this.caps.includes(k));
    for (const kind of KINDS) {
      const button = $(`[data-attach="${kind}"]`);
      button.disabled = off.includes(kind) || !name;
      button.title = button.disabled ? `${name || "No model"} does not take ${NOUN[kind]}` : "";
    }
    const dropped = this.items.filter((a) => off.includes(a.kind));
    this.items = this.items.filter((a) => !off.includes(a.kind));
    this.render();
    let text = "";
    if (!name) text = "Pick a model to attach media.";
    else if (off.length === KINDS.length) text = `${name} takes text only: media are off.`;
    else if (off.length) text = `${name} does not take ${off.map((k) => NOUN[k]).join(" or ")}.`;
    if (dropped.length) text += ` Removed: ${dropped.map((a) => a.name).join(", ")}.`;
    this.note.textContent = text;
  }

  async add(files) {
    const refused = [];
    for (const file of files) {
      const kind = file.type.split("/")[0];
      if (!KINDS.includes(kind)) {
        refused.push(`${file.name} is not an image, audio or video file`);
      } else if (!this.caps.includes(kind)) {
        refused.push(`${this.model} does not take ${NOUN[kind]} (${file.name})`);
      } else {
        const dataUrl = await readDataUrl(file);
        this.items.push({
          kind,
          name: file.name,
          dataUrl,
          url: URL.createObjectURL(file),
          format: kind === "audio" ? audioFormat(file) : null,
        });
      }
    }
    this.note.textContent = refused.join("; ");
    this.render();
  }

  render() {
    this.list.replaceChildren(
      ...this.items.map((a, i) =>
        h(
          "li",
          {},
          a.kind === "image" ? h("img", { src: a.url, alt: "" }) : h("span", { text: a.kind }),
          h("span", { class: "name", text: a.name, title: a.name }),
          h("button", {
            type: "button",
            class: "secondary",
            "aria-label": `Remove ${a.name}`,
            text: "×",
            onclick: () => {
              this.items.splice(i, 1);
              this.render();
            },
          }),
        ),
      ),
    );
  }

  /** Take the current attachments (the composer empties). */
  take() {
    const items = this.items;
    this.items = [];
    this.render();
    return items;
  }

  clear() {
    this.take();
  }
}

/** The OpenAI content part of one attachment. */
export function toPart(a) {
  if (a.kind === "image") return { type: "image_url", image_url: { url: a.dataUrl } };
  if (a.kind === "video") return { type: "video_url", video_url: { url: a.dataUrl } };
  const audio = { data: a.dataUrl.slice(a.dataUrl.indexOf(",") + 1) };
  if (a.format) audio.format = a.format;
  return { type: "input_audio", input_audio: audio };
}

/** How an attachment shows in the conversation: thumbnail, player. */
export function preview(a) {
  if (a.kind === "image") return h("img", { src: a.url, alt: `Attached image ${a.name}` });
  if (a.kind === "audio") return h("audio", { src: a.url, controls: true, "aria-label": a.name });
  return h("video", { src: a.url, controls: true, "aria-label": a.name });
}

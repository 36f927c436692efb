// The model table: availability, state (stage and progress while loading), quantization,
// memory, keep-alive left, the last error; Load, Unload and Pull through the admin routes.
import { ApiError, call, ndjson } from "./api.js";
import { $, fmtBytes, fmtSeconds, h } from "./dom.js";

const AVAILABILITY = { on_disk: "on disk", downloadable: "downloadable", missing: "missing" };

/** One model's view from a /v1/models item and its /admin/model_status entry (if any). */
export function describe(item, st) {
  const s = st || {};
  const state = s.state || item.state || (item.loaded ? "loaded" : "unloaded");
  let availability = s.availability || item.availability || null;
  if (!availability && typeof s.on_disk_complete === "boolean") {
    availability = s.on_disk_complete ? "on_disk" : "not on disk";
  }
  return {
    name: item.id,
    family: item.family,
    capabilities: item.capabilities || s.capabilities || ["text"],
    state,
    availability,
    stage: s.stage || null,
    progress: typeof s.progress === "number" ? s.progress : null,
    quantBits: "quant_bits" in s ? s.quant_bits : item.quant_bits,
    bytes: s.bytes || 0,
    device: s.device || null,
    expiresAt: s.expires_at || null,
    keepAlive: s.keep_alive,
    refs: s.ref_count || 0,
    lastError: s.last_error || null,
    description: s.description || "",
  };
}

export class Models {
  constructor(refresh) {
    this.refresh = refresh; // re-reads the server state (main.js)
    this.list = $("#model-list");
    this.cards = new Map();
    this.errors = new Map(); // model -> the server's message from the last failed action
    this.pulls = new Map(); // model -> live pull text
    this.busy = new Set();
  }

  /** Draw the table: `models` from describe(), `serverTime` the status timestamp (s). */
  render(models, admin, serverTime) {
    const skew = serverTime ? Date.now() / 1000 - serverTime : 0;
    for (const m of models) {
      let card = this.cards.get(m.name);
      if (!card) {
        card = this.card(m.name);
        this.cards.set(m.name, card);
        this.list.append(card.li);
      }
      this.update(card, m, admin, skew);
    }
  }

  card(name) {
    const button = (action, label) =>
      h("button", {
        type: "button",
        class: action === "unload" ? "secondary" : action === "pull" ? "secondary" : "",
        "data-action": action,
        "data-model": name,
        "aria-label": `${label} ${name}`,
        text: label,
        onclick: () => this.act(action, name),
      });
    const parts = {
      state: h("span", { class: "badge" }),
      avail: h("span", { class: "badge avail" }),
      facts: h("p", { class: "facts" }),
      progress: h("progress", { max: "1", hidden: true, "aria-label": `${name} progress` }),
      pull: h("p", { class: "facts pull", "aria-live": "polite" }),
      error: h("p", { class: "err", role: "alert" }),
      load: button("load", "Load"),
      unload: button("unload", "Unload"),
      pullButton: button("pull", "Pull"),
    };
    const li = h(
      "li",
      { class: "model", "data-model": name },
      h(
        "div",
        { class: "head" },
        h("div", { class: "title" }, h("span", { class: "name", text: name }), parts.state, parts.avail),
        h("div", { class: "actions admin-only" }, parts.load, parts.unload, parts.pullButton),
      ),
      parts.facts,
      parts.progress,
      parts.pull,
      parts.error,
    );
    return { li, ...parts };
  }

  update(card, m, admin, skew) {
    const stage = m.state === "loading" && m.stage ? ` (${m.stage.replaceAll("_", " ")})` : "";
    card.state.textContent = m.state + stage;
    card.state.className = `badge state ${m.state}`;
    card.li.dataset.state = m.state;
    card.avail.hidden = !m.availability;
    card.avail.textContent = AVAILABILITY[m.availability] || m.availability || "";
    card.avail.className = `badge avail ${m.availability === "missing" ? "missing" : ""}`;

    const facts = [m.family];
    if (m.quantBits !== undefined) facts.push(m.quantBits ? `${m.quantBits}-bit` : "full precision");
    if (m.state === "loaded") {
      facts.push(`${fmtBytes(m.bytes)}${m.device ? ` on ${m.device}` : ""}`);
      if (m.refs) facts.push(`in use by ${m.refs}`);
      else if (m.expiresAt) facts.push(`unloads in ${fmtSeconds(m.expiresAt + skew - Date.now() / 1000)}`);
      else if (m.keepAlive !== undefined && m.keepAlive < 0) facts.push("kept loaded");
    }
    card.facts.textContent = facts.join(" · ");
    card.progress.hidden = !(m.state === "loading" && m.progress !== null);
    if (m.progress !== null) card.progress.value = m.progress;

    card.pull.textContent = this.pulls.get(m.name) || "";
    const error = this.errors.get(m.name) || (m.lastError ? `Last load failed: ${m.lastError}` : "");
    card.error.textContent = error;
    card.error.hidden = !error;

    const busy = this.busy.has(m.name);
    card.load.disabled = !admin || busy || m.state !== "unloaded" || m.availability === "missing";
    card.unload.disabled = !admin || busy || m.state !== "loaded";
    card.pullButton.hidden = m.availability === "on_disk";
    card.pullButton.disabled = !admin || busy;
  }

  async act(action, name) {
    this.busy.add(name);
    this.errors.delete(name);
    const fast = setInterval(this.refresh, 700); // show loading and its stage while it runs
    this.refresh();
    try {
      if (action === "pull") await this.pull(name);
      else await call(`/admin/${action}/${encodeURIComponent(name)}`, { method: "POST", body: {} });
    } catch (err) {
      this.errors.set(name, err instanceof ApiError ? err.message : "the server did not answer");
    } finally {
      clearInterval(fast);
      this.busy.delete(name);
      await this.refresh();
    }
  }

  paintPull(name, line) {
    const card = this.cards.get(name);
    if (!card) return;
    card.pull.textContent = this.pulls.get(name) || "";
    const known = line && line.status === "downloading" && line.total;
    card.progress.hidden = !known;
    if (known) card.progress.value = Math.min(1, (line.completed || 0) / line.total);
  }

  async pull(name) {
    this.pulls.set(name, "pull: starting…");
    try {
      const res = await call(`/admin/pull/${encodeURIComponent(name)}`, { method: "POST", body: {}, raw: true });
      for await (const line of ndjson(res)) {
        if (line.status === "error") throw new ApiError(500, line.error || "pull failed");
        if (line.status === "downloading") {
          const total = line.total ? ` / ${fmtBytes(line.total)}` : "";
          this.pulls.set(name, `pull: ${line.file || ""} ${fmtBytes(line.completed || 0)}${total}`);
        } else if (line.status === "success") {
          this.pulls.set(name, "pull: complete");
        } else {
          this.pulls.set(name, `pull: ${line.status}`);
        }
        this.paintPull(name, line);
      }
    } catch (err) {
      this.pulls.delete(name);
      throw err;
    }
  }
}

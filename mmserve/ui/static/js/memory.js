// Memory: GPU and RAM bars split by model, temp files with Clean, and Emergency cleanup
// with a confirmation that reports what was freed.
import { call } from "./api.js";
import { $, GB, fmtBytes, h, say } from "./dom.js";

// Colours with contrast against the bar background; models cycle through the first ones.
const PALETTE = ["#1f4e99", "#b34700", "#2a7a3b", "#7b3294", "#a4161a", "#006d77", "#5c4d00"];
const OTHER = "#8a96a3";
const FREE = "#eef1f4";

function bar(title, totalGb, segments, footnote) {
  const total = Math.max(totalGb, 1e-9);
  const shown = segments.filter((s) => s.gb > 0);
  const summary = shown.map((s) => `${s.label} ${s.gb.toFixed(2)} GB`).join(", ");
  return h(
    "div",
    { class: "bar-block", "data-bar": title },
    h("h3", { text: `${title}: ${totalGb.toFixed(1)} GB` }),
    h(
      "div",
      { class: "bar", role: "img", "aria-label": `${title}: ${summary}` },
      shown.map((s) =>
        h("span", {
          "data-segment": s.label,
          style: `width:${((100 * s.gb) / total).toFixed(2)}%;background:${s.colour}`,
          title: `${s.label}: ${s.gb.toFixed(2)} GB`,
        }),
      ),
    ),
    h(
      "ul",
      { class: "legend" },
      shown.map((s) =>
        h("li", {}, h("i", { style: `background:${s.colour}`, "aria-hidden": "true" }), `${s.label} ${s.gb < 0.1 ? fmtBytes(s.gb * GB) : `${s.gb.toFixed(2)} GB`}`),
      ),
    ),
    footnote ? h("p", { class: "note", text: footnote }) : null,
  );
}

/** The bars from /admin/memory_status and the models' bytes and devices. */
export function renderBars(mem, models) {
  const loaded = models.filter((m) => m.state === "loaded" && m.bytes > 0);
  const colour = (i) => PALETTE[i % PALETTE.length];
  const blocks = [];
  if (mem.gpu_available) {
    const onGpu = loaded.filter((m) => (m.device || "").startsWith("cuda"));
    const segs = onGpu.map((m, i) => ({ label: m.name, gb: m.bytes / GB, colour: colour(i) }));
    const modelsGb = segs.reduce((a, s) => a + s.gb, 0);
    const reserved = mem.gpu_reserved_gb || 0;
    segs.push({ label: "other of this server", gb: Math.max(0, reserved - modelsGb), colour: OTHER });
    const used = mem.gpu_total_gb - mem.gpu_free_gb;
    segs.push({ label: "other processes", gb: Math.max(0, used - Math.max(reserved, modelsGb)), colour: "#5a6570" });
    segs.push({ label: "free", gb: mem.gpu_free_gb, colour: FREE });
    blocks.push(bar(`GPU ${mem.gpu_name || ""}`.trim(), mem.gpu_total_gb, segs));
  }
  const ram = mem.system_ram;
  const onCpu = loaded.filter((m) => !(m.device || "").startsWith("cuda"));
  const segs = onCpu.map((m, i) => ({ label: m.name, gb: m.bytes / GB, colour: colour(i + 3) }));
  const modelsGb = segs.reduce((a, s) => a + s.gb, 0);
  segs.push({ label: "rest of this server", gb: Math.max(0, ram.process_rss_gb - modelsGb), colour: OTHER });
  const used = ram.total_gb - ram.available_gb;
  segs.push({ label: "other processes", gb: Math.max(0, used - Math.max(ram.process_rss_gb, modelsGb)), colour: "#5a6570" });
  segs.push({ label: "free", gb: ram.available_gb, colour: FREE });
  const budget = mem.device === "cpu" ? `Models may use up to ${mem.ram_budget_gb.toFixed(1)} GB of RAM.` : "";
  const warn = mem.memory_warning ? " Memory is nearly full." : "";
  blocks.push(bar("RAM", ram.total_gb, segs, budget + warn));
  $("#bars").replaceChildren(...blocks);
}

export class Memory {
  constructor(refresh) {
    this.refresh = refresh;
    this.status = $("#memory-status");
    $("#temp-clean").addEventListener("click", () => this.cleanTemp());
    const dialog = $("#cleanup-dialog");
    $("#emergency").addEventListener("click", () => dialog.showModal());
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "confirm") this.emergency();
      dialog.returnValue = "";
    });
  }

  showTemp(temp) {
    $("#temp-text").textContent = `Temp files: ${temp.file_count} (${fmtBytes(temp.total_bytes)})`;
  }

  async cleanTemp() {
    try {
      const out = await call("/admin/cleanup_temp", { method: "POST", body: {} });
      this.showTemp(out.status);
      say(this.status, `Removed ${out.removed_files} temp files (${fmtBytes(out.removed_bytes)}).`);
    } catch (err) {
      say(this.status, err.message, true);
    }
  }

  async emergency() {
    say(this.status, "Cleaning up…");
    try {
      const out = await call("/admin/emergency_cleanup", { method: "POST", body: {} });
      const models = out.unloaded.length
        ? `Unloaded ${out.unloaded.map((u) => `${u.model} (${fmtBytes(u.freed_bytes)})`).join(", ")}`
        : "No idle model to unload";
      const parts = [
        `${models}; ${out.freed_model_gb.toFixed(2)} GB of model memory freed`,
        `${out.temp.removed_files} temp files removed (${fmtBytes(out.temp.removed_bytes)})`,
        `RAM available ${out.ram_available_gb_before.toFixed(2)} → ${out.ram_available_gb_after.toFixed(2)} GB`,
      ];
      if (out.gpu_free_gb_before || out.gpu_free_gb_after) {
        parts.push(`GPU free ${out.gpu_free_gb_before.toFixed(2)} → ${out.gpu_free_gb_after.toFixed(2)} GB`);
      }
      say(this.status, `${parts.join(". ")}.`);
    } catch (err) {
      say(this.status, err.message, true);
    }
    this.refresh();
  }
}

// The chat's Advanced fold: a JSON Schema (or "any JSON object") sent as `response_format`,
// OpenAI function tools with `tool_choice`; invalid JSON is shown next to its box, not sent.
import { $, h } from "./dom.js";

const CHOICES = ["auto", "required", "none"];

/** The JSON in a textarea: undefined when empty, or throws a SyntaxError with the reason. */
function parseBox(box) {
  const text = box.value.trim();
  return text ? JSON.parse(text) : undefined;
}

function flag(box, note, message) {
  box.setAttribute("aria-invalid", message ? "true" : "false");
  note.textContent = message || "";
  note.hidden = !message;
}

export class Advanced {
  constructor() {
    this.schema = $("#json-schema");
    this.schemaNote = $("#json-schema-error");
    this.jsonObject = $("#json-object");
    this.tools = $("#tools");
    this.toolsNote = $("#tools-error");
    this.choice = $("#tool-choice");
    this.schema.addEventListener("input", () => this.checkSchema());
    this.tools.addEventListener("input", () => this.checkTools());
  }

  /** The schema box's JSON Schema, or null; an error shown inline when it is not JSON. */
  checkSchema() {
    try {
      const schema = parseBox(this.schema);
      if (schema !== undefined && (typeof schema !== "object" || Array.isArray(schema) || !schema)) {
        throw new Error("a JSON Schema is a JSON object, e.g. {\"type\": \"object\", ...}");
      }
      flag(this.schema, this.schemaNote, "");
      return { ok: true, schema: schema ?? null };
    } catch (err) {
      flag(this.schema, this.schemaNote, `Not sent: ${err.message}`);
      return { ok: false };
    }
  }

  /** The tools box's array of tools, or null; refreshes the tool_choice list with their names. */
  checkTools() {
    let tools;
    try {
      tools = parseBox(this.tools);
      if (tools !== undefined && !Array.isArray(tools)) {
        throw new Error("tools are a JSON array: [{\"type\": \"function\", \"function\": {...}}]");
      }
      flag(this.tools, this.toolsNote, "");
    } catch (err) {
      flag(this.tools, this.toolsNote, `Not sent: ${err.message}`);
      return { ok: false };
    }
    const names = (tools || [])
      .map((t) => t && t.function && t.function.name)
      .filter((name) => typeof name === "string" && name);
    const kept = this.choice.value;
    this.choice.replaceChildren(
      ...CHOICES.map((c) => h("option", { value: c, text: c })),
      ...[...new Set(names)].map((name) => h("option", { value: `function:${name}`, text: `call ${name}` })),
    );
    this.choice.value = [...this.choice.options].some((o) => o.value === kept) ? kept : "auto";
    return { ok: true, tools: tools && tools.length ? tools : null };
  }

  /**
   * The request fields of the fold: {response_format?, tools?, tool_choice?}, or null when a
   * box holds invalid JSON (its error is shown next to it and the first such box has focus).
   */
  fields() {
    const schema = this.checkSchema();
    const tools = this.checkTools();
    if (!schema.ok || !tools.ok) {
      $("#advanced").open = true;
      (schema.ok ? this.tools : this.schema).focus();
      return null;
    }
    const out = {};
    if (schema.schema) {
      out.response_format = {
        type: "json_schema",
        json_schema: { name: "answer", schema: schema.schema, strict: true },
      };
    } else if (this.jsonObject.checked) {
      out.response_format = { type: "json_object" };
    }
    if (tools.tools) {
      out.tools = tools.tools;
      const choice = this.choice.value;
      out.tool_choice = choice.startsWith("function:")
        ? { type: "function", function: { name: choice.slice("function:".length) } }
        : choice;
    }
    return out;
  }

  /** Whether answers are asked to be JSON (shown pretty-printed once complete). */
  get wantsJson() {
    return Boolean(this.schema.value.trim() || this.jsonObject.checked);
  }
}

/** Streamed `delta.tool_calls` pieces assembled by `index` and shown as name + arguments. */
export class ToolCalls {
  constructor(root) {
    this.root = root; // an element of the answer, hidden until a call arrives
    this.calls = [];
    this.views = [];
  }

  add(pieces) {
    for (const piece of pieces) {
      const i = piece.index ?? this.calls.length;
      if (!this.calls[i]) {
        this.calls[i] = { id: piece.id, type: "function", function: { name: "", arguments: "" } };
        const name = h("div", { class: "tool-name" });
        const args = h("pre", { class: "tool-args" });
        this.views[i] = { name, args };
        this.root.append(h("div", { class: "tool-call", "data-index": i }, name, args));
        this.root.hidden = false;
      }
      const call = this.calls[i];
      const fn = piece.function || {};
      if (piece.id) call.id = piece.id;
      if (fn.name) call.function.name += fn.name;
      if (fn.arguments) call.function.arguments += fn.arguments;
      this.views[i].name.textContent = `Tool call: ${call.function.name}`;
      this.views[i].args.textContent = pretty(call.function.arguments);
    }
  }

  /** The calls as the history keeps them (OpenAI's assistant `tool_calls`). */
  get list() {
    return this.calls.filter(Boolean);
  }

  get text() {
    return this.list.map((c) => `${c.function.name}(${c.function.arguments})`).join("\n");
  }
}

/** JSON text pretty-printed when it parses (complete), else as it is (still streaming). */
export function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

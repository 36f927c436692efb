// The conversation: streamed answers from /v1/chat/completions, Stop, reasoning folded apart,
// clear and copy; errors show the server's own message (429 with its retry time); the
// Advanced fold's response_format and tools, with streamed tool calls shown as they assemble.
import { Advanced, ToolCalls, pretty } from "./advanced.js";
import { ApiError, ServerDown, call, sseEvents } from "./api.js";
import { $, fmtSeconds, h, say } from "./dom.js";
import { Attachments, preview, toPart } from "./media.js";

const PART_KIND = { image_url: "image", input_audio: "audio", video_url: "video" };

export class Chat {
  /** `refresh` re-reads the server state (main.js): after each answer the model's state moved. */
  constructor(refresh) {
    this.refresh = refresh;
    this.history = []; // {role, content} as sent to the server
    this.controller = null;
    this.retryTimer = null;
    this.view = $("#conversation");
    this.status = $("#chat-status");
    this.prompt = $("#prompt");
    this.media = new Attachments();
    this.advanced = new Advanced();
    $("#composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send();
    });
    this.prompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    $("#stop").addEventListener("click", () => this.stop());
    $("#clear").addEventListener("click", () => this.clear());
    $("#copy").addEventListener("click", () => this.copy());
  }

  get busy() {
    return this.controller !== null;
  }

  setBusy(busy, controller = null) {
    this.controller = busy ? controller : null;
    $("#send").disabled = busy;
    $("#stop").disabled = !busy;
  }

  append(el) {
    $(".empty", this.view)?.remove();
    this.view.append(el);
    this.view.scrollTop = this.view.scrollHeight;
    return el;
  }

  /** The request of the next answer; `extra` is the Advanced fold's fields. */
  requestBody(model, extra = {}) {
    const messages = [];
    const system = $("#system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    // Earlier media this model does not take stay out of the request (their turns' text stays).
    const caps = this.media.caps;
    let left = 0;
    for (const message of this.history) {
      if (typeof message.content === "string") {
        messages.push(message);
        continue;
      }
      const parts = message.content.filter((p) => p.type === "text" || caps.includes(PART_KIND[p.type]));
      left += message.content.length - parts.length;
      messages.push({ ...message, content: parts.length ? parts : "[attachment not sent]" });
    }
    const body = { model, messages, stream: true, stream_options: { include_usage: true }, ...extra };
    const temperature = parseFloat($("#temperature").value);
    const maxTokens = parseInt($("#max-tokens").value, 10);
    if (Number.isFinite(temperature)) body.temperature = temperature;
    if (Number.isFinite(maxTokens)) body.max_tokens = maxTokens;
    return [body, left];
  }

  async send() {
    const model = $("#model").value;
    const text = this.prompt.value.trim();
    if (this.busy) return;
    if (!model) return say(this.status, "Pick a model first.", true);
    if (!text && !this.media.items.length) return say(this.status, "Write a message first.", true);
    const extra = this.advanced.fields();
    if (!extra) return say(this.status, "Not sent: fix the JSON under Advanced first.", true);
    const attached = this.media.take();
    const content = attached.length
      ? [...(text ? [{ type: "text", text }] : []), ...attached.map(toPart)]
      : text;
    this.history.push({ role: "user", content });
    this.prompt.value = "";
    this.append(
      h(
        "article",
        { class: "msg user", "aria-label": "You" },
        h("div", { class: "who", text: "You" }),
        h("div", { class: "text", text }),
        attached.length ? h("div", { class: "media" }, attached.map(preview)) : null,
      ),
    );
    const [body, dropped] = this.requestBody(model, extra);
    await this.stream(model, body, dropped);
  }

  /** Stream one answer; `dropped` earlier attachments were left out for this model. */
  async stream(model, body, dropped) {
    const json = this.advanced.wantsJson;
    const answer = h("div", { class: json ? "text json" : "text" });
    const callsView = h("div", { class: "tool-calls", role: "group", "aria-label": "Tool calls", hidden: true });
    const calls = new ToolCalls(callsView);
    const reasoning = h("div", { class: "rtext" });
    const fold = h("details", { class: "reasoning", hidden: true }, h("summary", { text: "Reasoning" }), reasoning);
    const meta = h("div", { class: "meta", text: "waiting for the model…" });
    const msg = this.append(
      h(
        "article",
        { class: "msg assistant", "data-state": "streaming", "aria-label": `${model} answer` },
        h("div", { class: "who", text: model }),
        fold,
        answer,
        callsView,
        meta,
      ),
    );
    const controller = new AbortController();
    this.setBusy(true, controller);
    clearInterval(this.retryTimer);
    const note = dropped ? ` (${dropped} earlier attachment(s) not sent: ${model} does not take them)` : "";
    say(this.status, `${model} is answering…${note}`);
    const t0 = performance.now();
    let usage = null;
    let finish = null;
    let state = "done";
    try {
      const res = await call("/v1/chat/completions", { method: "POST", body, signal: controller.signal, raw: true });
      for await (const event of sseEvents(res)) {
        if (event === "[DONE]") break;
        if (event.error) throw new ApiError(500, event.error.message, { code: event.error.code });
        if (event.usage) usage = event.usage;
        const choice = event.choices && event.choices[0];
        if (!choice) continue;
        const delta = choice.delta || {};
        if (delta.reasoning_content) {
          fold.hidden = false;
          reasoning.textContent += delta.reasoning_content;
        }
        if (delta.content) {
          answer.textContent += delta.content;
          meta.textContent = "generating…";
          this.view.scrollTop = this.view.scrollHeight;
        }
        if (delta.tool_calls) {
          calls.add(delta.tool_calls);
          meta.textContent = "calling a tool…";
          this.view.scrollTop = this.view.scrollHeight;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    } catch (err) {
      state = err.name === "AbortError" ? "stopped" : "error";
      if (state === "error") this.showError(msg, err);
    } finally {
      this.setBusy(false);
      this.refresh();
    }
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    msg.dataset.state = state;
    const said = answer.textContent;
    if (state === "error") this.history.pop(); // the unanswered question is not sent again
    else if (calls.list.length) this.history.push({ role: "assistant", content: said || null, tool_calls: calls.list });
    else this.history.push({ role: "assistant", content: said });
    if (json && state === "done") answer.textContent = pretty(said); // a complete JSON answer
    const parts = [];
    if (state === "stopped") parts.push("stopped");
    if (usage) parts.push(`${usage.completion_tokens} tokens`);
    parts.push(`${seconds} s`);
    if (finish) parts.push(finish === "length" ? "hit max tokens" : `finish: ${finish}`);
    if (state !== "error") meta.textContent = parts.join(" · ");
    if (state === "stopped") say(this.status, "Stopped: the server stops generating.");
    else if (state === "done") say(this.status, note.replace(/^ \((.*)\)$/, "$1."));
  }

  showError(msg, err) {
    msg.classList.add("error");
    const meta = $(".meta", msg);
    let text = err.message;
    if (err instanceof ServerDown) text = "The server did not answer.";
    if (err instanceof ApiError && err.status === 401) text = `${err.message}: enter the API key under Keys.`;
    else if (err instanceof ApiError && err.param && !text.includes(err.param)) text += ` (${err.param})`;
    meta.textContent = "";
    meta.append(h("span", { class: "err", text }));
    if (err instanceof ApiError && err.retryAfter !== null) {
      let left = Math.ceil(err.retryAfter);
      const retry = h("span", { class: "err retry", text: "" });
      meta.append(" ", retry);
      const tick = () => {
        retry.textContent = left > 0 ? `Retry in ${fmtSeconds(left)}.` : "You can retry now.";
        left -= 1;
        if (left < 0) clearInterval(this.retryTimer);
      };
      tick();
      this.retryTimer = setInterval(tick, 1000);
    }
    say(this.status, text, true);
  }

  stop() {
    if (this.controller) this.controller.abort();
  }

  clear() {
    this.stop();
    this.history = [];
    this.media.clear();
    this.view.replaceChildren(h("p", { class: "empty", text: "Conversation cleared." }));
    say(this.status, "Conversation cleared.");
  }

  transcript() {
    return [...this.view.querySelectorAll(".msg")]
      .map((m) => {
        const calls = [...m.querySelectorAll(".tool-call")].map((c) => `${$(".tool-name", c).textContent}\n${$(".tool-args", c).textContent}`);
        return [`${$(".who", m).textContent}: ${$(".text", m).textContent}`, ...calls].join("\n");
      })
      .join("\n\n");
  }

  async copy() {
    const text = this.transcript();
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // Not a secure context (plain http to another host): the old way.
      const area = h("textarea", { class: "sr-only", "aria-hidden": "true" });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand("copy");
      area.remove();
    }
    say(this.status, text ? "Conversation copied." : "Nothing to copy yet.");
  }
}

"""Tool calling and structured output around the model: tools in the prompt (the chat
template's own `tools=` support, or one generic system message), the model's tool-call format,
the output constraint of a request, and tool calls parsed out of the output.

Formats (xgrammar's structural-tag keys): `qwen_3`, the Hermes/Qwen form
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, used by templates that have it
and by the generic system message; `llama`, Llama 3's bare JSON
`{"name": ..., "parameters": {...}}`, for templates that use `<|python_tag|>`/ipython.
"""

from __future__ import annotations

import json
import re
import uuid

from .grammar import OutputSpec

GENERIC_TOOLS_PROMPT = (
    "You can call these tools (JSON Schema of each one's arguments):\n{tools}\n\n"
    "To call a tool, answer with:\n"
    '<tool_call>\n{{"name": "<tool name>", "arguments": {{<its arguments>}}}}\n</tool_call>'
)
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def active(req) -> bool:
    """Whether the request offers tools the model may call."""
    return bool(req.tools) and req.tool_choice != "none"


def template_of(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return template if isinstance(template, str) else ""


def tool_format(tokenizer) -> str:
    """The model's tool-call format, from its chat template."""
    template = template_of(tokenizer)
    return "llama" if "<|python_tag|>" in template or "ipython" in template else "qwen_3"


def takes_tools(tokenizer) -> bool:
    """Whether the chat template renders a `tools` list itself."""
    return "tools" in template_of(tokenizer)


def _arguments(call: dict) -> dict:
    try:
        value = json.loads(call["function"]["arguments"] or "{}")
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {"value": value}


def call_text(call: dict, fmt: str = "qwen_3") -> str:
    """One earlier call as the model writes it."""
    name, args = call["function"]["name"], _arguments(call)
    if fmt == "llama":
        return json.dumps({"name": name, "parameters": args}, ensure_ascii=False)
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def chat_dicts(req, tokenizer, text_of=None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) for `apply_chat_template`. `text_of(message)` gives a message's
    content (default: its text). Templates without tool support get the tools as a system
    message, earlier calls as text and tool answers as `<tool_response>` user turns."""
    text_of = text_of or (lambda m: m.text())
    native = takes_tools(tokenizer)
    fmt = tool_format(tokenizer)
    out: list[dict] = []
    for m in req.messages:
        content = text_of(m)
        if m.role == "assistant" and m.tool_calls:
            if native:
                calls = [{"type": "function", "function": {"name": c["function"]["name"],
                          "arguments": _arguments(c)}, "id": c["id"]} for c in m.tool_calls]  # fmt: skip
                out.append({"role": "assistant", "content": content or "", "tool_calls": calls})
                continue
            joined = "\n".join(call_text(c, fmt) for c in m.tool_calls)
            content = f"{content}\n{joined}" if isinstance(content, str) and content else joined
            out.append({"role": "assistant", "content": content})
        elif m.role == "tool":
            if native:
                out.append({"role": "tool", "content": content, "tool_call_id": m.tool_call_id})
            else:
                text = content if isinstance(content, str) else m.text()
                out.append(
                    {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"}
                )
        else:
            out.append({"role": m.role, "content": content})
    if "reasoning_content" in template_of(tokenizer):  # one entry per message so far
        for entry, m in zip(out, req.messages, strict=True):
            if m.role == "assistant" and m.reasoning:
                entry["reasoning_content"] = m.reasoning  # earlier reasoning, where it is read
    if not active(req):
        return out, None
    if native:
        return out, req.tools
    listing = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in req.tools)
    system = GENERIC_TOOLS_PROMPT.format(tools=listing)
    if out and out[0]["role"] == "system" and isinstance(out[0]["content"], str):
        out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{system}"}
    else:
        out.insert(0, {"role": "system", "content": system})
    return out, None


def _with_parameters(tool: dict) -> dict:
    """A tool whose `parameters` are given (none: an object without properties)."""
    function = {"parameters": {"type": "object", "properties": {}}, **tool["function"]}
    return {"type": "function", "function": function}


def output_spec(req, tokenizer) -> OutputSpec | None:
    """What the request's output must be, or None for free text."""
    if active(req):
        choice = req.tool_choice
        tools = [_with_parameters(t) for t in req.tools]
        return OutputSpec(
            kind="tools",
            tools=json.dumps(tools),
            tool_choice=choice if isinstance(choice, str) else json.dumps(choice),
            parallel=req.parallel_tool_calls,
            tool_format=tool_format(tokenizer),
            param="tools",
        )
    fmt = req.response_format
    if not fmt:
        return None
    if fmt["type"] == "json_object":
        return OutputSpec(kind="json", param=req.format_param)
    if fmt.get("schema") is None:
        return OutputSpec(kind="json", param=req.format_param)
    param = req.format_param + (".json_schema.schema" if req.endpoint == "openai" else "")
    # Key order is kept: the grammar writes properties in the schema's order.
    return OutputSpec(kind="json_schema", schema=json.dumps(fmt["schema"]), param=param)


def _call(name: str, args, names: set[str]) -> dict | None:
    if not isinstance(name, str) or name not in names:
        return None
    if not isinstance(args, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }


def _json_objects(text: str):
    """The JSON values written one after the other in `text` (separated by space, ; or ,)."""
    decoder = json.JSONDecoder()
    at, out = 0, []
    while at < len(text):
        while at < len(text) and text[at] in " \t\r\n;,":
            at += 1
        if at >= len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
        except ValueError:
            return out, text[at:]
        out.append(value)
    return out, ""


def parse_calls(text: str, tools: list[dict], fmt: str) -> tuple[str, list[dict]]:
    """(content, tool calls) of a whole output; content is the text around the calls.
    Text that only looks like a call (unknown tool, bad JSON) stays content."""
    names = {t["function"]["name"] for t in tools}
    calls: list[dict] = []
    if fmt == "llama":
        body = text.strip().removeprefix("<|python_tag|>")
        if body.startswith("{"):
            values, rest = _json_objects(body)
            for v in values:
                if isinstance(v, dict):
                    call = _call(v.get("name"), v.get("parameters", v.get("arguments")), names)
                    if call:
                        calls.append(call)
            if calls and len(calls) == len(values) and not rest.strip():
                return "", calls
            calls = []
    content, last = [], 0
    for match in _HERMES.finditer(text):
        values, _ = _json_objects(match.group(1))
        found = [c for v in values if isinstance(v, dict)
                 for c in [_call(v.get("name"), v.get("arguments", v.get("parameters")), names)]
                 if c]  # fmt: skip
        if not found:
            continue
        content.append(text[last : match.start()])
        last = match.end()
        calls.extend(found)
    content.append(text[last:])
    return "".join(content).strip() if calls else text, calls


class ToolStream:
    """Pure: feed text deltas, get the content that is safe to stream now. Text from a possible
    call on (`<tool_call>` anywhere; a bare JSON object or `<|python_tag|>` at the start, Llama
    3's form) is held back; the caller takes the calls and the content held back from the whole
    output's `parse_calls` at the end (`rest`), so streamed calls equal non-streamed ones."""

    OPENER = "<tool_call>"
    STARTS = ("{", "<|python_tag|>")

    def __init__(self):
        self.text = ""
        self.sent = 0
        self.held = False

    def feed(self, delta: str) -> str:
        self.text += delta
        if self.held:
            return ""
        head = self.text.lstrip()
        if self.sent == 0:
            if head.startswith(self.STARTS):
                self.held = True
                return ""
            if not head or any(s.startswith(head) for s in self.STARTS):
                return ""  # only whitespace or part of an opener so far
        at = self.text.find(self.OPENER, self.sent)
        if at >= 0:
            self.held = True
            out, self.sent = self.text[self.sent : at], at
            return out
        keep = 0
        for n in range(min(len(self.text) - self.sent, len(self.OPENER) - 1), 0, -1):
            if self.OPENER.startswith(self.text[-n:]):
                keep = n
                break
        end = len(self.text) - keep
        out, self.sent = self.text[self.sent : end], end
        return out

    def rest(self, content: str | None, calls: list | None) -> str:
        """Content of the whole output (`parse_calls`) not streamed yet."""
        if not calls:
            return self.text[self.sent :]
        done, content = self.text[: self.sent].strip(), content or ""
        if not done:
            return content
        return content[len(done) :] if content.startswith(done) else ""

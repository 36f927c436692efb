"""Request bodies: the one reader every route uses, and the rule that no field is dropped unseen.

Contract (README, "Request bodies"):
- A JSON route reads its body as JSON whatever the Content-Type says (curl's `-d` sends
  `application/x-www-form-urlencoded`): a body that is present but is not a JSON object is a
  400 `invalid_body` naming the Content-Type it came with. An empty body is `{}`.
- A route that takes no body still checks one that is sent: it must be empty or `{}`.
- Every top-level field sent must be read by the route's schema. Unread fields are a 400
  `unknown_parameter` naming them on native and admin routes; under /v1, where OpenAI clients
  send extras (`user`, `metadata`, `store`, ...), they are ignored but never silently: they
  are named in the `X-Ignored-Fields` response header and logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator

from flask import current_app, g, request

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger("mmserve.body")
IGNORED_HEADER = "X-Ignored-Fields"


class Fields(dict):
    """A request's top-level fields that records which ones the schema read (get, [], in).

    Schemas read every field they know whether or not it is set, so what is never read is a
    field the route does not know.
    """

    def __init__(self, data=()):
        super().__init__(data)
        self.read: set = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def unread(self) -> list[str]:
        """Fields sent but never read, in the order they were sent."""
        return [k for k in self if k not in self.read]


def reads_body(view):
    """Mark a view that reads its body itself (through `json_fields` or `form_fields`)."""
    view.reads_body = True
    return view


def _lenient() -> bool:
    """Unknown fields are tolerated (and reported) only on the OpenAI-compatible routes."""
    from .http import is_openai_path  # here: http imports this module

    return is_openai_path(request.path)


def _raw() -> bytes:
    """The body bytes. A body over the limit is a 413, also a chunked one: werkzeug stops
    reading a chunked body at the limit without raising, so one that fills it is over it."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if limit is not None and len(data) >= limit:
        raise PayloadTooLarge("request body is too large")
    return data


def json_object() -> Fields:
    """The body as a JSON object (empty body: {}); 400 invalid_body naming the Content-Type
    when it is not JSON or not an object, 413 when it is too large."""
    data = _raw()
    if not data.strip():
        return Fields()
    param = None if _lenient() else "body"
    sent_as = request.headers.get("Content-Type") or "no Content-Type"
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(
            f"request body must be a JSON object; it is not valid JSON (sent as {sent_as})",
            param=param,
            code="invalid_body",
        ) from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        raise BadRequest(
            f"request body must be a JSON object, not {kind.get(type(value), 'a number')}",
            param=param,
            code="invalid_body",
        )
    return Fields(value)


def settle(*bodies: Fields) -> None:
    """After the schema ran: refuse (native, admin) or report (/v1) the fields it never read."""
    unread = [k for body in bodies for k in body.unread()]
    if not unread:
        return
    names = ", ".join(f"'{k}'" for k in unread)
    if _lenient():
        g.ignored_fields = unread
        log.warning("%s %s: ignored fields %s", request.method, request.path, names)
        return
    known = sorted({k for body in bodies for k in body.read})
    hint = f"this route reads: {', '.join(known)}" if known else "this route takes no fields"
    noun = "field" if len(unread) == 1 else "fields"
    raise BadRequest(f"unknown {noun} {names} ({hint})", param=unread[0], code="unknown_parameter")


@contextlib.contextmanager
def json_fields() -> Iterator[Fields]:
    """`with json_fields() as body: parse(body)`: the JSON object, settled when the block ends
    without an error (a block that raises has its own error to report)."""
    body = json_object()
    yield body
    settle(body)


@contextlib.contextmanager
def form_fields() -> Iterator[tuple[Fields, Fields]]:
    """(form, files) of a form body (multipart/form-data, which can carry files, or urlencoded),
    settled like `json_fields`; any other Content-Type is a 415 naming it."""
    if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        sent_as = request.headers.get("Content-Type") or "no Content-Type"
        raise UnsupportedMediaType(
            f"this route takes multipart/form-data (sent as {sent_as})", param=None
        )
    form, files = Fields(request.form.to_dict()), Fields(request.files.to_dict())
    yield form, files
    settle(form, files)


def check_unread_body() -> None:
    """before_request: a route that does not read a body still refuses one it would drop."""
    view = current_app.view_functions.get(request.endpoint) if request.endpoint else None
    if view is None or getattr(view, "reads_body", False):
        return
    settle(json_object())


def add_ignored_header(response) -> None:
    """after_request: name the fields a lenient route ignored."""
    ignored = g.get("ignored_fields")
    if ignored:
        response.headers[IGNORED_HEADER] = ", ".join(ignored)

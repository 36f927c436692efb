"""Request plumbing shared by every route: ids, access log line, keys, bodies, errors in two
envelopes."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from flask import Flask, g, jsonify, request

from . import body
from .errors import ServerError, Unauthorized, Unavailable, to_server_error
from .ui import is_public

access_log = logging.getLogger("mmserve.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


ANTHROPIC_PATHS = ("/v1/messages",)


def render_error(err: ServerError):
    """The error in the envelope of the route family: Anthropic's on /v1/messages, OpenAI's
    elsewhere under /v1, native elsewhere."""
    if request.path in ANTHROPIC_PATHS:
        body = err.anthropic_body()
    else:
        body = err.openai_body() if is_openai_path(request.path) else err.native_body()
    response = jsonify(body)
    response.status_code = err.status
    for key, value in err.headers.items():
        response.headers[key] = value
    return response


def _presented_key() -> str:
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("X-API-Key", "")


def _check_keys(settings) -> None:
    """API key on every route but /health and the page; the admin key (if set) on /admin/*."""
    path = request.path
    if path in ("/health", "/openapi.json") or path == "/docs" or path.startswith("/docs/"):
        return  # liveness and the API description need no key (the docs page cannot send one)
    if is_public(path):
        return  # the web page and its files (each call it makes carries the key)
    if path.startswith("/admin/") and settings.admin_key:
        wanted = settings.admin_key
    elif settings.api_key:
        wanted = settings.api_key
    else:
        return
    given = _presented_key()
    if not hmac.compare_digest(given.encode(), wanted.encode()):
        raise Unauthorized("missing or invalid API key")


def install(app: Flask, runtime) -> None:
    """Register the hooks and the single error handler on the app."""
    settings = runtime.settings

    @app.before_request
    def _start():
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        g.t0 = time.monotonic()
        g.model = None
        g.tokens = None
        if request.method == "POST":  # a request that may be on its way to a model
            runtime.service.post_started()
            g.counted = True
        if runtime.draining and request.path != "/health":
            raise Unavailable("server is shutting down", code="shutting_down")
        _check_keys(settings)
        body.check_unread_body()

    @app.teardown_request
    def _uncount(exc):
        if g.pop("counted", False):
            runtime.service.post_ended()

    @app.after_request
    def _finish(response):
        response.headers["X-Request-ID"] = getattr(g, "request_id", "-")
        body.add_ignored_header(response)
        state = g._get_current_object()
        method, path = request.method, request.path
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"

        def log_line():
            duration = time.monotonic() - getattr(state, "t0", time.monotonic())
            model = getattr(state, "model", None)
            tokens = getattr(state, "tokens", None)
            access_log.info(
                "%s %s model=%s status=%s duration_ms=%.1f tokens=%s",
                method, path, model or "-", response.status_code, duration * 1000,
                "-" if tokens is None else tokens,
                extra={"route": path, "method": method, "model": model,
                       "status": response.status_code, "duration_ms": round(duration * 1000, 1),
                       "tokens": tokens, "request_id": getattr(state, "request_id", "-")},
            )  # fmt: skip
            if runtime.metrics is not None:
                runtime.metrics.observe_request(rule, model, response.status_code, duration)

        if response.is_streamed:
            response.call_on_close(log_line)  # one line when the stream ends, with its tokens
        else:
            log_line()
        return response

    @app.errorhandler(Exception)
    def _error(exc):
        return render_error(to_server_error(exc))

"""The one error hierarchy of the server, and its single mapping to HTTP."""

from __future__ import annotations

import logging

log = logging.getLogger("mmserve.errors")


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


class ServerError(Exception):
    """Base of every error a route may answer with.

    `message` is safe to show a client: it never holds a repr, a path or a
    traceback. `param` names the request field at fault, when there is one.
    """

    status = 500
    type = "server_error"
    code = "internal_error"  # every class has one; an instance may narrow it

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        details: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.details = details
        self.headers = dict(headers or {})

    def native_body(self) -> dict:
        """The native envelope, always these five keys: {"error": message, "type", "code",
        "param": field or null, "details": more about the cause (e.g. the limit) or null}."""
        return {
            "error": self.message,
            "type": self.type,
            "code": self.code,
            "param": self.param,
            "details": self.details,
        }

    def openai_body(self) -> dict:
        """The OpenAI envelope: {"error": {message, type, param, code}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict:
        """Anthropic's envelope: {"type": "error", "error": {"type", "message"}}."""
        default = "api_error" if self.status >= 500 else "invalid_request_error"
        kind = _ANTHROPIC_TYPES.get(self.status, default)
        return {"type": "error", "error": {"type": kind, "message": self.message}}


class BadRequest(ServerError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class Unauthorized(ServerError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(ServerError):
    status = 404
    type = "not_found_error"
    code = "not_found"


class ModelNotFound(NotFound):
    """404 for a name not in the table; the message lists the names there are."""

    code = "model_not_found"
    MAX_LISTED = 50

    def __init__(self, name: str, available=(), param: str = "model"):
        names = sorted(available)
        listed = ", ".join(names[: self.MAX_LISTED]) or "none"
        if len(names) > self.MAX_LISTED:
            listed += f" and {len(names) - self.MAX_LISTED} more (GET /v1/models lists them all)"
        super().__init__(
            f"model '{name}' is not in the model table; the models are: {listed}", param=param
        )
        self.available = names


class MethodNotAllowed(ServerError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(ServerError):
    status = 409
    type = "conflict_error"
    code = "conflict"


class PayloadTooLarge(ServerError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(ServerError):
    """415: the body's content type is not the one the route reads (e.g. not multipart)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class TooManyRequests(ServerError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ModelNotDownloaded(NotFound):
    """404: the model is in the table but not on disk, and the server cannot fetch it (offline,
    or its package is not installed). Permanent until someone runs the command in the message,
    so it must not invite retries (as Ollama's "model not found, try pulling it")."""

    code = "model_not_downloaded"


class Unavailable(ServerError):
    """503 + Retry-After: transient only (overload, out of memory, a load or download that may
    work on a retry, shutting down). Permanent failures are 4xx or 500."""

    status = 503
    type = "service_unavailable"
    code = "unavailable"
    retry_after = "2"  # seconds; clients such as openai-python honour it

    def __init__(self, message: str, **kwargs):
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", self.retry_after)


class DownloadFailed(Unavailable):
    """The Hub could not be reached or a file failed on the way: a retry may work."""

    code = "download_failed"
    retry_after = "10"


class ModelLoadFailed(ServerError):
    """500: the files are on disk but do not load (the server's own fault; a retry fails too)."""

    status = 500
    type = "server_error"
    code = "model_load_failed"


class OutOfMemory(Unavailable):
    code = "out_of_memory"


class InternalError(ServerError):
    status = 500
    type = "server_error"
    code = "internal_error"


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def to_server_error(exc: BaseException) -> ServerError:
    """Map any exception to a ServerError. The single place that decides statuses."""
    if isinstance(exc, ServerError):
        return exc
    from werkzeug.exceptions import HTTPException

    from .media import MediaError

    if isinstance(exc, MediaError):
        err = BadRequest(str(exc), param=exc.field, code="invalid_media")
        if getattr(exc, "limit", None):
            err.code = "limit_exceeded"
            err.details = f"limit {exc.limit}"
        return err
    if isinstance(exc, HTTPException):
        cls = {
            400: BadRequest,
            404: NotFound,
            405: MethodNotAllowed,
            413: PayloadTooLarge,
            415: UnsupportedMediaType,
        }.get(exc.code or 500, InternalError)
        messages = {
            400: "the request could not be understood",
            404: "no such route",
            405: "method not allowed on this route",
            413: "request body is too large",
            415: "unsupported content type",
        }
        err = cls(messages.get(exc.code or 500, "internal server error"))
        allow = dict(exc.get_headers()).get("Allow")
        if allow:
            err.headers["Allow"] = allow
        return err
    if is_oom(exc):
        return OutOfMemory("out of memory while serving the request; try again shortly")
    log.error("unhandled error", exc_info=exc)
    return InternalError("internal server error")

"""The cluster's HTTP ingress: routes each request by model to an engine replica, streams back.

Routing rules:
- A request naming a model goes to `engine.options(multiplexed_model_id=model)`:
  Ray Serve's router picks a replica holding it, or for a cold model the replica
  with the fewest models.
- Cold models are single-flight here: for a model this ingress has not placed, one
  request loads it (`Engine.prepare`, routed by Ray) while the others wait; then, until
  the router has surely heard of the placement, the model's requests go to that
  replica by its own id. So N concurrent first requests load once.
- A replica that dies fails its requests in flight with 503 and Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import InternalError, ServerError, Unavailable
from ..http import is_openai_path
from .admin import AdminMixin
from .routing import REPLICA_PREFIX, model_of, replica_model_id, response_headers

log = logging.getLogger("mmserve.cluster")
_FAULTS = (RayActorError, DeploymentUnavailableError, BackPressureError)
# A replica reports the models it holds to the Serve controller (every 0.1 s), which tells
# the routers: routing knows a new placement after ~0.1-1 s. For this long after placing a
# model, its requests go straight to that replica (by the replica's own multiplexed id).
_PIN_S = 5.0


class ReplicaFailed(Unavailable):
    code = "replica_failed"


def error_response(err: ServerError, path: str) -> JSONResponse:
    """`err` in the envelope of the route family (OpenAI under /v1, native elsewhere)."""
    body = err.openai_body() if is_openai_path(path) else err.native_body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def replica_failed(path: str, exc: BaseException) -> JSONResponse:
    log.warning("request %s failed on its replica: %s", path, type(exc).__name__)
    return error_response(
        ReplicaFailed(
            "the replica serving this request stopped; retry it",
            details="replica_failed",
            headers={"Retry-After": "1"},
        ),
        path,
    )


class Ingress(AdminMixin):
    """Ray Serve deployment answering HTTP; `engine` is the handle of the Engine deployment."""

    def __init__(self, engine):
        self.engine = engine
        # model -> (replica, monotonic time) of placements this ingress made; forgotten when
        # the replica reports the model gone or the replica fails
        self._placed: dict[str, tuple[str, float]] = {}
        self._cold: dict[str, asyncio.Lock] = {}

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        req = {
            "method": request.method,
            "path": path,
            "query": request.url.query,
            "headers": [
                (k, v) for k, v in request.headers.items() if k.lower() != "content-length"
            ],
            "body": await request.body(),
            "client": request.client.host if request.client else None,
        }
        if path == "/health":
            return await self.health()
        if path == "/metrics":
            return await self.metrics(req)
        if path.startswith("/admin/"):
            return await self.admin(req, request.query_params.get("replica"))
        ctype = request.headers.get("content-type", "")
        return await self.forward(req, model_of(req["method"], path, req["body"], ctype))

    # --- forwarding -----------------------------------------------------------
    async def forward(self, req: dict, model: str | None, target: str | None = None) -> Response:
        """Send `req` to a replica (by `model`, or `target` = a replica's multiplexed id)."""
        if model and target is None and model not in self._placed:
            lock = self._cold.setdefault(model, asyncio.Lock())
            async with lock:
                if model not in self._placed and not await self._place(model):
                    # Not loaded (unknown name, failed load): this request answers why.
                    return await self._send(req, model)
        placed = self._placed.get(model) if model and target is None else None
        if placed and time.monotonic() - placed[1] < _PIN_S:
            target = replica_model_id(placed[0])  # routing may not know the placement yet
        return await self._send(req, target or model)

    async def _place(self, model: str) -> bool:
        """Load `model` on the replica Ray's router picks (one holding it, else one with the
        fewest models); True once loaded there. The waiting followers go after this."""
        try:
            seen = await self.engine.options(multiplexed_model_id=model).prepare.remote()
            if model not in seen["loaded"]:
                return False
            self._placed[model] = (seen["replica"], time.monotonic())
            return True
        except _FAULTS:
            return False
        finally:
            self._tidy_cold(model)

    def _tidy_cold(self, model: str) -> None:
        """Drop single-flight locks no longer needed (placed models; names that loaded
        nothing, e.g. unknown ones, once there are many), so the dict stays small.
        A waiter keeps its own reference to a dropped lock."""
        if model in self._placed:
            self._cold.pop(model, None)
        if len(self._cold) > 256:
            for name, lock in list(self._cold.items()):
                if not lock.locked():
                    del self._cold[name]

    async def open(self, req: dict, mux_id: str | None):
        """Start `req` on a replica: (head, body generator). Raises the Ray fault, if any.

        A request for one replica (`replica:<id>`) that the router sent elsewhere (it
        had not heard of that replica yet) is refused there unprocessed, and sent
        again here for up to 2 s.
        """
        handle = self.engine.options(stream=True, multiplexed_model_id=mux_id or "")
        target = (
            mux_id[len(REPLICA_PREFIX) :] if mux_id and mux_id.startswith(REPLICA_PREFIX) else None
        )
        for _ in range(20):
            gen = handle.handle.remote(req)
            head = await gen.__anext__()
            self._learn(head)
            if target is None or head["replica"] == target:
                break
            gen.cancel()
            await asyncio.sleep(0.1)
        return head, gen

    async def _send(self, req: dict, mux_id: str | None) -> Response:
        try:
            head, gen = await self.open(req, mux_id)
        except _FAULTS as exc:
            self._forget_replica(None)
            return replica_failed(req["path"], exc)
        except RayTaskError:
            log.exception("request %s failed in its replica", req["path"])
            return error_response(InternalError("internal error"), req["path"])
        return StreamingResponse(
            self._body(gen, req["path"], head["replica"]),
            status_code=head["status"],
            headers=response_headers(head),
        )

    async def _body(self, gen, path: str, replica: str):
        """The replica's body chunks; a failure after the headers ends it with an error line
        in the stream's own format (an SSE `data:` event under /v1, an NDJSON line natively)."""
        try:
            async for chunk in gen:
                yield chunk
        except (*_FAULTS, RayTaskError) as exc:
            if isinstance(exc, RayTaskError):
                err: ServerError = InternalError("internal error")
            else:
                self._forget_replica(replica)
                err = ReplicaFailed("the replica serving this response stopped; retry it")
            log.warning("response %s cut on replica %s: %s", path, replica, type(exc).__name__)
            if is_openai_path(path):
                yield f"data: {json.dumps(err.openai_body())}\n\n".encode()
            else:
                yield (json.dumps({**err.native_body(), "done": True}) + "\n").encode()

    def _learn(self, head: dict) -> None:
        """Forget models that this replica reports it no longer holds (evicted there)."""
        replica, loaded = head["replica"], set(head["loaded"])
        for model, (where, _t) in list(self._placed.items()):
            if where == replica and model not in loaded:
                del self._placed[model]

    def _forget_replica(self, replica: str | None) -> None:
        """After a replica failure: its models are cold again (all, if we do not know which)."""
        for model, (where, _t) in list(self._placed.items()):
            if replica is None or where == replica:
                del self._placed[model]

"""One engine replica: the single server's Flask app (manager + service), multiplexed by model.

Routing rules:
- A request's model is its multiplexed model id. `hold` (Ray Serve's multiplexed
  loader) loads it through our manager, so Ray's router sends the model's next
  requests here and sends a cold model to the replica with the fewest models.
- Our manager, not Ray's LRU, decides evictions (by memory). Its unload hook drops
  the model from the multiplexed set and pushes the set again, so routing learns
  it; its load hook (admin loads, preloads) adds it.
- Each replica also holds `replica:<id>`, so the ingress can reach one replica.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading

from ray import serve

from .routing import REPLICA_PREFIX, replica_model_id

log = logging.getLogger("mmserve.cluster")
_END = object()
_MUX_ATTR = "__serve_multiplex_wrapper"  # where @serve.multiplexed keeps its model cache
_DROP_HEADERS = {"content-length", "transfer-encoding", "connection"}


class RoutingHooks:
    """The manager's hooks, forwarded unchanged, plus load/unload callbacks for routing."""

    def __init__(self, inner, on_load, on_unload):
        self._inner, self._on_load, self._on_unload = inner, on_load, on_unload

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def on_load(self, name: str, seconds: float) -> None:
        if self._inner is not None:
            self._inner.on_load(name, seconds)
        self._on_load(name)

    def on_unload(self, name: str, reason: str) -> None:
        if self._inner is not None:
            self._inner.on_unload(name, reason)
        self._on_unload(name)


class Engine:
    """A Ray Serve replica running one mmserve app; `handle` answers one forwarded HTTP request."""

    async def __init__(self, config: dict):
        """`config` holds Settings fields, as `create_app(config)` takes them."""
        from app import create_app

        self.app = await asyncio.to_thread(create_app, config)
        self.runtime = self.app.extensions["mmserve"]
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.self_id = replica_model_id(self.replica)
        self.pid = os.getpid()
        self._loop = asyncio.get_running_loop()
        manager = self.runtime.manager
        manager.hooks = RoutingHooks(manager.hooks, self._loaded, self._unloaded)
        await self.hold(self.self_id)
        for name in manager.loaded_models():  # preloaded before the hooks were in place
            self._loaded(name)
        log.info("engine replica %s ready (pid %d)", self.replica, self.pid)

    # --- multiplexing ---------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=-1)  # our manager evicts, by memory
    async def hold(self, model_id: str) -> str:
        """Load `model_id` through our manager (no-op for this replica's own id)."""
        if model_id != self.self_id:
            await asyncio.to_thread(self.runtime.manager.load, model_id)
        return model_id

    def _mux(self):
        return getattr(self, _MUX_ATTR, None)

    def _loaded(self, name: str) -> None:
        """Manager hook (any thread): `name` is loaded here; tell the router."""
        self._loop.call_soon_threadsafe(self._set_routed, name, True)

    def _unloaded(self, name: str) -> None:
        """Manager hook (any thread): `name` left this replica; tell the router."""
        self._loop.call_soon_threadsafe(self._set_routed, name, False)

    def _set_routed(self, name: str, present: bool) -> None:
        mux = self._mux()
        if mux is None:
            return
        changed = (name not in mux.models) if present else (name in mux.models)
        if not changed:
            return
        if present:
            mux.models[name] = name
        else:
            mux.models.pop(name, None)
        mux._push_multiplexed_replica_info = True  # pushed to the controller within 0.1 s

    # --- requests -------------------------------------------------------------
    def where(self) -> dict:
        """This replica's id, pid and loaded models (for the ingress's fan-out and cold start)."""
        return {
            "replica": self.replica,
            "pid": self.pid,
            "loaded": self.runtime.manager.loaded_models(),
        }

    async def prepare(self) -> dict:
        """Load the request's model here (the ingress's cold start); then `where()`.

        A failed load is left to the request that follows, which answers it in its
        route's envelope (so a failing load is tried twice)."""
        model = serve.get_multiplexed_model_id()
        if model in self.runtime.table:
            try:
                await self.hold(model)
            except Exception:  # noqa: BLE001 - reported by the request itself
                log.warning("preparing %s failed on replica %s", model, self.replica)
        return self.where()

    async def handle(self, req: dict):
        """Answer one HTTP request through the Flask app; stream it back.

        `req` has method, path, query (str), headers (list of pairs), body (bytes)
        and client (address). Yields first a dict {status, headers, replica, pid,
        loaded}, then the body as bytes chunks. Errors become responses in the
        route's envelope (errors.py); only an unexpected failure is raised (the
        ingress answers it with 500).
        """
        model = serve.get_multiplexed_model_id()
        error = None
        if model.startswith(REPLICA_PREFIX) and model != self.self_id:
            from ..errors import Unavailable

            error = Unavailable(
                f"replica '{model[len(REPLICA_PREFIX):]}' is not reachable now",
                code="replica_unavailable",
                headers={"Retry-After": "1"},
            )
        elif model == self.self_id or model in self.runtime.table:
            try:
                await self.hold(model)
            except Exception as exc:  # noqa: BLE001 - rendered in the route's envelope below
                error = exc
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        threading.Thread(
            target=self._pump, args=(req, error, queue, stop), name="engine-request", daemon=True
        ).start()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # the client went away: the pump closes the response at its next chunk

    def _pump(self, req: dict, error, queue: asyncio.Queue, stop: threading.Event) -> None:
        """Run one request on this thread and feed `queue`: the head dict, body chunks, _END.

        One thread from open to close: a streamed Flask response re-enters its request
        context on every chunk, and context variables do not cross threads. Closing the
        response ends a stream's generation and releases its model.
        """
        put = functools.partial(self._loop.call_soon_threadsafe, queue.put_nowait)
        response = None
        try:
            response = self._respond(req, error)
            headers = response.headers.items()
            put(
                {
                    "status": response.status_code,
                    "headers": [(k, v) for k, v in headers if k.lower() not in _DROP_HEADERS],
                    **self.where(),
                }
            )
            for chunk in response.response:
                if stop.is_set():
                    break
                put(chunk if isinstance(chunk, bytes) else chunk.encode())
        except Exception as exc:  # noqa: BLE001 - handed to the ingress, which answers 500
            log.exception("request %s failed in the engine", req.get("path"))
            put(RuntimeError(f"engine failure: {type(exc).__name__}"))
        finally:
            if response is not None:
                response.close()
            put(_END)

    def _respond(self, req: dict, error: BaseException | None):
        """The Flask response to `req` (not buffered: a stream stays a generator)."""
        if error is not None:
            from ..errors import to_server_error
            from ..http import render_error

            with self.app.test_request_context(req["path"], method=req["method"]):
                return render_error(to_server_error(error))
        client = self.app.test_client()
        return client.open(
            req["path"],
            method=req["method"],
            query_string=req["query"],
            headers=req["headers"],
            data=req["body"],
            environ_base={"REMOTE_ADDR": req.get("client") or "127.0.0.1"},
            buffered=False,
        )

    def __del__(self):
        close = getattr(getattr(self, "app", None), "extensions", {}).get("mmserve_close")
        if close is not None:
            close(5)

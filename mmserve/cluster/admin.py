"""Cluster-wide routes of the ingress: /health, /metrics and /admin/* over every engine replica."""

from __future__ import annotations

import asyncio
import json

import ray
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from ray import serve
from ray.exceptions import RayTaskError
from starlette.responses import JSONResponse, Response

from ..errors import NotFound
from .routing import (
    REPLICA_HEADER,
    merge_memory_status,
    merge_model_status,
    model_of,
    render_metrics,
    replica_model_id,
    response_headers,
)

_MERGED = {"/admin/model_status": merge_model_status, "/admin/memory_status": merge_memory_status}
_EVERYWHERE = ("/admin/emergency_cleanup", "/admin/cleanup_temp")


def _get(path: str) -> dict:
    return {"method": "GET", "path": path, "query": "", "headers": [], "body": b"", "client": None}


def _answered(results: dict) -> dict[str, str]:
    """The replica header of an aggregated answer: every replica that answered, comma-separated."""
    return {REPLICA_HEADER: ",".join(sorted(r for r, res in results.items() if res[2]))}


class AdminMixin:
    """Fan-out helpers of the Ingress; needs `self.engine`, `forward` and `error_response`."""

    def replicas(self) -> list[str]:
        """Ids of the live Engine replicas (Ray Serve names each replica actor)."""
        ctx = serve.get_replica_context()
        prefix = f"SERVE_REPLICA::{ctx.app_name}#Engine#"
        names = ray.util.list_named_actors(all_namespaces=True)
        return sorted(a["name"][len(prefix) :] for a in names if a["name"].startswith(prefix))

    async def collect(self, req: dict, replica: str) -> tuple[int, bytes, dict]:
        """Send `req` to one replica and read the whole answer: (status, body, head)."""
        from .ingress import _FAULTS

        try:
            head, gen = await self.open(req, replica_model_id(replica))
            body = b"".join([chunk async for chunk in gen])
        except (*_FAULTS, RayTaskError) as exc:
            return 503, json.dumps({"error": f"replica stopped: {type(exc).__name__}"}).encode(), {}
        return head["status"], body, head

    async def fan_out(self, req: dict, replicas: list[str]) -> dict[str, tuple[int, bytes, dict]]:
        results = await asyncio.gather(*(self.collect(req, r) for r in replicas))
        return dict(zip(replicas, results, strict=True))

    @staticmethod
    def _section(status: int, body: bytes, head: dict) -> dict:
        try:
            data = json.loads(body)
        except ValueError:
            data = {"error": body.decode(errors="replace")[:200]}
        data = data if isinstance(data, dict) else {"value": data}
        if status != 200:
            data["status"] = status
        if head:
            data["pid"] = head["pid"]
        return data

    async def admin(self, req: dict, replica: str | None) -> Response:
        """`/admin/*` of the cluster; `replica` (query parameter) sends it to one replica."""
        from .ingress import error_response

        path, replicas = req["path"], self.replicas()
        if replica is not None:
            if replica not in replicas:
                err = NotFound(f"replica '{replica}' is not running", param="replica")
                return error_response(err, path)
            return await self.forward(req, None, target=replica_model_id(replica))
        if req["method"] == "GET" or path in _EVERYWHERE:
            results = await self.fan_out(req, replicas)
            sections = {r: self._section(*res) for r, res in results.items()}
            merge = _MERGED.get(path)
            body = merge(sections) if merge else {"replicas": sections}
            return JSONResponse(body, headers=_answered(results))
        model = model_of(req["method"], path, req["body"], "")
        if path.startswith("/admin/unload/") and model:
            holders = [r for r, w in (await self.where_all(replicas)).items() if model in w]
            if len(holders) > 1:
                results = await self.fan_out(req, holders)
                sections = {r: self._section(*res) for r, res in results.items()}
                status = max(res[0] for res in results.values())
                return JSONResponse(
                    {"replicas": sections}, status_code=status, headers=_answered(results)
                )
            if holders:
                return await self.forward(req, None, target=replica_model_id(holders[0]))
            return await self.forward(req, None)
        return await self.forward(req, model)

    async def where_all(self, replicas: list[str]) -> dict[str, list[str]]:
        """Models loaded on each replica (replicas that do not answer are left out)."""
        from .ingress import _FAULTS

        async def one(replica):
            handle = self.engine.options(multiplexed_model_id=replica_model_id(replica))
            for _ in range(20):  # the router may not have heard of a new replica yet
                try:
                    seen = await handle.where.remote()
                except _FAULTS:
                    return None
                if seen["replica"] == replica:
                    return seen
                await asyncio.sleep(0.1)
            return None

        seen = await asyncio.gather(*(one(r) for r in replicas))
        return {s["replica"]: s["loaded"] for s in seen if s}

    async def health(self) -> Response:
        """200 while at least one replica serves; each replica's own /health inside."""
        replicas = self.replicas()
        results = await self.fan_out(_get("/health"), replicas)
        sections = {r: self._section(*res) for r, res in results.items()}
        ok = any(res[0] == 200 for res in results.values())
        body = {"status": "ok" if ok else "unavailable", "replicas": sections}
        return JSONResponse(body, status_code=200 if ok else 503, headers=_answered(results))

    async def metrics(self, req: dict) -> Response:
        """Every replica's metrics with a `replica` label, and the replica count.

        The client's headers go to each replica, which checks the API key as one server
        does; a refusal (401) is the answer."""
        replicas = self.replicas()
        results = await self.fan_out(req, replicas)
        for status, body, head in results.values():
            if status in (401, 403):
                return Response(body, status_code=status, headers=response_headers(head))
        texts = {r: res[1].decode() for r, res in results.items() if res[0] == 200}
        text = render_metrics(texts, len(replicas))
        return Response(text, media_type=CONTENT_TYPE_LATEST, headers=_answered(results))

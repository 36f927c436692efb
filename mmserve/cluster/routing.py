"""Pure helpers of the cluster ingress: which model a request names, and merging replica reports."""

from __future__ import annotations

import json
import re
import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

REPLICA_HEADER = "X-MMServe-Replica"  # on every response: the replica(s) that answered
REPLICA_PREFIX = "replica:"  # multiplexed id that every engine replica registers for itself
_PATH_MODEL = re.compile(r"^/(?:generate|admin/(?:load|unload|pull))/(?P<model>[^/]+)$")
_BODY_MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_FORM_MODEL_PATHS = ("/v1/audio/transcriptions",)


def replica_model_id(replica: str) -> str:
    """The multiplexed model id that routes a request to one replica (admin calls)."""
    return REPLICA_PREFIX + replica


def response_headers(head: dict) -> dict[str, str]:
    """Headers for the client from an engine's answer `head`: the app's own, less
    X-Request-ID (Serve's proxy sets it, with the same id), plus X-MMServe-Replica."""
    headers = {k: v for k, v in head["headers"] if k.lower() != "x-request-id"}
    headers[REPLICA_HEADER] = head["replica"]
    return headers


def model_of(method: str, path: str, body: bytes, content_type: str) -> str | None:
    """The table model a request is for, or None (then any replica may answer it).

    Native and admin routes name it in the path (`/generate/<model>`); the OpenAI
    routes in the JSON body's `model` (OpenAI's field name) or, for transcriptions,
    in the multipart form field `model`. A body that does not parse gives None: the
    replica that gets the request answers with the route's own 400.
    """
    match = _PATH_MODEL.match(path)
    if match:
        return match.group("model")
    if method != "POST":
        return None
    if path in _BODY_MODEL_PATHS:
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return None
        model = data.get("model") if isinstance(data, dict) else None
        return model if isinstance(model, str) and model else None
    if path in _FORM_MODEL_PATHS and content_type.startswith("multipart/form-data"):
        from werkzeug.test import EnvironBuilder

        builder = EnvironBuilder(
            path=path, method="POST", data=body, headers={"Content-Type": content_type}
        )
        model = builder.get_request().form.get("model")
        return model or None
    return None


def merge_model_status(sections: dict[str, dict]) -> dict:
    """`/admin/model_status` of the cluster: each replica's own report, and totals.

    `sections` maps replica id -> that replica's single-server report. Totals count
    replicas, add queue depth, loads and evictions, and list for every model the
    replicas that hold it loaded (`loaded_on`).
    """
    loaded_on: dict[str, list[str]] = {}
    for replica, report in sorted(sections.items()):
        for name, status in (report.get("models") or {}).items():
            holders = loaded_on.setdefault(name, [])
            if status.get("state") == "loaded":
                holders.append(replica)
    return {
        "timestamp": time.time(),
        "replicas": sections,
        "totals": {
            "replicas": len(sections),
            "queue_depth": sum(int(r.get("queue_depth") or 0) for r in sections.values()),
            "loads": sum(int(r.get("loads") or 0) for r in sections.values()),
            "evictions": sum(int(r.get("evictions") or 0) for r in sections.values()),
            "loaded_on": loaded_on,
        },
    }


def merge_memory_status(sections: dict[str, dict]) -> dict:
    """`/admin/memory_status` of the cluster: each replica's report, and summed model memory.

    GPU and system figures stay per replica: replicas on one node share its RAM, so
    adding them would count it twice.
    """
    return {
        "timestamp": time.time(),
        "replicas": sections,
        "totals": {
            "replicas": len(sections),
            "models_loaded_gb": round(
                sum(float(r.get("models_loaded_gb") or 0.0) for r in sections.values()), 3
            ),
            "memory_warning": any(bool(r.get("memory_warning")) for r in sections.values()),
        },
    }


def merge_metrics(texts: dict[str, str]) -> list:
    """Prometheus families of every replica, each sample labelled `replica`.

    `texts` maps replica id -> that replica's exposition text; families with the
    same name are merged so HELP and TYPE appear once (a valid exposition).
    """
    families: dict[str, object] = {}
    for replica, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = family
                samples, family.samples = family.samples, []
            else:
                samples = family.samples
            merged.samples.extend(
                Sample(s.name, {**s.labels, "replica": replica}, s.value, s.timestamp, s.exemplar)
                for s in samples
            )
    return list(families.values())


class _Families:
    """A collector yielding families that are already built."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return self.families


def render_metrics(texts: dict[str, str], replicas: int) -> bytes:
    """The cluster's `/metrics` (Prometheus text format): `merge_metrics(texts)` plus the
    gauge `mmserve_cluster_replicas` (engine replicas running)."""
    families = merge_metrics(texts)
    families.append(
        GaugeMetricFamily("mmserve_cluster_replicas", "Engine replicas running", value=replicas)
    )
    registry = CollectorRegistry()
    registry.register(_Families(families))
    return generate_latest(registry)

"""Admin routes: memory and model status, pull, fit plans, load/unload, cleanup."""

from __future__ import annotations

import json
import time

from flask import Blueprint, Response, g, jsonify, request

from ..body import json_fields, reads_body
from ..errors import BadRequest
from ..manager import collect
from ..memory import GB
from ..runtime import get_runtime
from ..schemas.fields import get_bool, get_keep_alive

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.get("/memory_status")
def memory_status():
    """GPU and system memory, and whether a multimodal request is safe now."""
    rt = get_runtime()
    return jsonify(
        rt.manager.probe.status(rt.manager.loaded_bytes(), rt.settings.memory_warning_fraction)
    )


@bp.get("/model_status")
def model_status():
    """Every table entry with its files on disk and its live state."""
    rt = get_runtime()
    models = {}
    for name, spec in rt.table.items():
        models[name] = {
            "type": spec.family,
            "description": spec.description,
            "repo_id": spec.repo_id,
            "path": f"models/{spec.local_dir}",
            **rt.availability(name),
            "capabilities": list(spec.capabilities),
            **rt.manager.status_of(name),
        }
    return jsonify(
        {
            "timestamp": time.time(),
            "device": rt.manager.device,
            "queue_depth": rt.manager.queue_depth(),
            "loads": rt.manager.loads,
            "evictions": rt.manager.evictions,
            "models": models,
        }
    )


@bp.post("/load/<model>")
@reads_body
def load(model: str):
    """Load a model now; optional JSON {"keep_alive": "10m"}. The answer is the model's status,
    with the keep-alive now in force and when it expires."""
    rt = get_runtime()
    g.model = model
    rt.manager.spec(model)  # 404 before the body is read
    with json_fields() as body:
        keep_alive = get_keep_alive(body)
    status = rt.manager.load(model, keep_alive)
    return jsonify({"model": model, **status})


@bp.post("/pull/<model>")
def pull(model: str):
    """Fetch a model's files (Hub, resumable; or materialise an embedded one), streaming
    Ollama-style NDJSON progress lines; a second pull of the same model joins the first.
    Closing the connection leaves the fetch running (and the disk consistent)."""
    rt = get_runtime()
    g.model = model
    job = rt.fetcher.pull(rt.manager.spec(model))

    def lines():
        for line in job.follow():
            yield json.dumps(line) + "\n"

    return Response(lines(), mimetype="application/x-ndjson")


@bp.get("/plan/<model>")
def plan(model: str):
    """What loading a model would take now, changing nothing: ?quantization=none|8|4 (default:
    the entry's own choices) and ?context=N tokens of KV cache."""
    rt = get_runtime()
    g.model = model
    rt.manager.spec(model)
    bits = ...
    raw = request.args.get("quantization")
    if raw is not None:
        if raw not in ("none", "8", "4"):
            raise BadRequest("quantization must be none, 8 or 4", param="quantization")
        bits = None if raw == "none" else int(raw)
    raw = request.args.get("context", "0")
    if not raw.isdigit() or int(raw) > 10_000_000:
        raise BadRequest("context must be a whole number of tokens", param="context")
    plans = rt.manager.plan(model, bits, int(raw))
    chosen = next((p for p in plans if p.fits), plans[-1])
    return jsonify(
        {
            **chosen.to_dict(),
            "device": rt.manager.device,
            "choices": [p.to_dict() for p in plans],
        }
    )


@bp.post("/unload/<model>")
def unload(model: str):
    """Unload a model now (409 while a request uses it)."""
    rt = get_runtime()
    g.model = model
    return jsonify(rt.manager.unload(model))


@bp.post("/emergency_cleanup")
def emergency_cleanup():
    """Unload idle models, clear allocator caches and temp files; report what was freed."""
    rt = get_runtime()
    before = rt.manager.probe.status(rt.manager.loaded_bytes(), rt.settings.memory_warning_fraction)
    unloaded = rt.manager.unload_idle(reason="emergency_cleanup")
    collect()
    temp = rt.tmp.cleanup_all()
    after = rt.manager.probe.status(rt.manager.loaded_bytes(), rt.settings.memory_warning_fraction)
    freed = sum(u["freed_bytes"] for u in unloaded)
    return jsonify(
        {
            "unloaded": unloaded,
            "freed_model_gb": round(freed / GB, 3),
            "temp": temp,
            "gpu_free_gb_before": before["gpu_free_gb"],
            "gpu_free_gb_after": after["gpu_free_gb"],
            "ram_available_gb_before": before["system_ram"]["available_gb"],
            "ram_available_gb_after": after["system_ram"]["available_gb"],
        }
    )


@bp.get("/temp_status")
def temp_status():
    """Count and bytes of the files under tmp/."""
    return jsonify(get_runtime().tmp.status())


@bp.post("/cleanup_temp")
@reads_body
def cleanup_temp():
    """Remove temp files: all idle ones, or with {"expired_only": true} only those past the TTL."""
    rt = get_runtime()
    with json_fields() as body:
        expired_only = get_bool(body, "expired_only")
    removed = rt.tmp.sweep() if expired_only else rt.tmp.cleanup_all()
    return jsonify({**removed, "status": rt.tmp.status()})

"""Native routes: POST /generate/<model> (JSON or NDJSON stream), POST /embed/<model> and
GET /health."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, g, jsonify, request, stream_with_context

from ..errors import to_server_error
from ..runtime import get_runtime
from ..schemas.fields import read_json
from ..schemas.native import EmbedRequest, GenerateRequest, parse_embed, parse_generate
from ..waiting import first_ready, start_with_status
from .docs import documented

bp = Blueprint("native", __name__)
log = logging.getLogger("mmserve.native")


def json_body():
    """The parsed JSON body: 400 if it is not JSON, 413 if it is too large."""
    return read_json(request, param="body")


def result_fields(result) -> dict:
    extra = {"tool_calls": result.tool_calls} if result.tool_calls else {}
    return {
        **extra,
        "model": result.model,
        "model_type": result.model_type,
        "generation_method": result.generation_method,
        "memory_optimized": result.memory_optimized,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
        "duration_seconds": round(result.seconds, 4),
    }


@bp.post("/generate/<model>")
@documented(GenerateRequest, tags=["native"])
def generate(model: str):
    """Generate text (or stream it as NDJSON) with any table model."""
    rt = get_runtime()
    g.model = model
    rt.manager.spec(model)  # 404 before the body is even parsed
    body = json_body()
    with rt.tmp.scope() as tmp_dir:
        req, stream = parse_generate(model, body, rt.settings, tmp_dir)
    if not stream:
        result = rt.service.generate(req)
        g.tokens = result.completion_tokens
        out = {"response": result.text, **result_fields(result)}
        if result.audio_wav_base64:
            out["audio"] = result.audio_wav_base64
        return jsonify(out)
    # Waiting for a turn or a load: after stream_status_seconds the response starts with
    # {"status": "loading", ...} lines (every few seconds) so that clients do not time out.
    waiting = start_with_status(
        lambda: rt.service.stream(req), rt.manager, model, rt.settings.stream_status_seconds
    )
    events, status = first_ready(waiting)

    def ndjson():
        nonlocal events
        try:
            if events is None:
                yield json.dumps(status) + "\n"
                for item in waiting:
                    if isinstance(item, tuple):
                        events = item[1]
                        break
                    yield json.dumps(item) + "\n"
            for item in events:
                if isinstance(item, str):
                    yield json.dumps({"response": item, "done": False}) + "\n"
                else:
                    g.tokens = item.completion_tokens
                    final = {"response": "", "done": True, **result_fields(item)}
                    if item.audio_wav_base64:
                        final["audio"] = item.audio_wav_base64
                    yield json.dumps(final) + "\n"
        except Exception as exc:  # noqa: BLE001 - reported in-band: headers are already sent
            err = to_server_error(exc)
            yield json.dumps({**err.native_body(), "done": True}) + "\n"
        finally:
            if events is not None:
                events.close()
            waiting.close()

    return Response(stream_with_context(ndjson()), mimetype="application/x-ndjson")


@bp.post("/embed/<model>")
@documented(EmbedRequest, tags=["native"])
def embed(model: str):
    """Unit vectors of texts from an embedding-family model; `truncate` cuts over-long inputs."""
    rt = get_runtime()
    g.model = model
    rt.manager.spec(model)  # 404 before the body is even parsed
    call = parse_embed(json_body())
    out = rt.service.embed(model, call.texts, call.keep_alive, call.truncate, call.fields)
    body = {
        "model": model,
        "embeddings": out.vectors,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    }
    if call.truncate:
        body["truncated"] = out.truncated
    return jsonify(body)


@bp.get("/health")
def health():
    """Liveness: 200 while serving, 503 while draining for shutdown."""
    rt = get_runtime()
    status = "draining" if rt.draining else "ok"
    body = {
        "status": status,
        "models_loaded": rt.manager.loaded_models(),
        "device": rt.manager.device,
    }
    return jsonify(body), (503 if rt.draining else 200)

"""Prometheus metrics through the Flask test client."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import tiny_entry


def samples(client) -> dict:
    text = client.get("/metrics").get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"
            out[key] = s.value
    return out


def test_metrics_follow_requests_loads_and_unloads(make_app):
    client = make_app([tiny_entry("tiny_text")]).test_client()
    before = samples(client)
    assert before["mmserve_model_loaded{model=tiny_text}"] == 0
    r = client.post("/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 3})
    tokens = r.get_json()["usage"]["completion_tokens"]
    streamed = client.post(
        "/generate/tiny_text", json={"prompt": "x", "max_new_tokens": 3, "stream": True}
    )
    streamed.get_data()
    streamed.close()
    client.post("/generate/nope", json={"prompt": "x"})
    m = samples(client)
    assert m["mmserve_requests_total{model=tiny_text,route=/generate/<model>,status=200}"] == 2
    assert m["mmserve_requests_total{model=-,route=/generate/<model>,status=404}"] == 1
    assert m["mmserve_request_duration_seconds_count{model=tiny_text,route=/generate/<model>}"] == 2
    assert m["mmserve_generated_tokens_total{model=tiny_text}"] >= tokens
    assert m["mmserve_time_to_first_token_seconds_count{model=tiny_text}"] == 2  # both requests
    assert m["mmserve_model_loads_total{model=tiny_text}"] == 1
    assert m["mmserve_model_load_seconds_count{model=tiny_text}"] == 1
    assert m["mmserve_model_loaded{model=tiny_text}"] == 1
    assert m["mmserve_model_bytes{model=tiny_text,quant_bits=none}"] > 0
    assert m["mmserve_queue_depth{}"] == 0
    assert "mmserve_gpu_free_bytes{}" in m
    client.post("/admin/unload/tiny_text")
    m = samples(client)
    assert m["mmserve_model_unloads_total{model=tiny_text,reason=admin}"] == 1
    assert m["mmserve_model_loaded{model=tiny_text}"] == 0


def test_metrics_text_format(make_app):
    client = make_app([tiny_entry("tiny_text")]).test_client()
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    assert re.search(r"^# TYPE mmserve_requests_total counter$", r.get_data(as_text=True), re.M)

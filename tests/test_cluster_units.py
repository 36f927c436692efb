"""Units of the Ray Serve cluster without Ray: routing by model, merged reports, the deploy files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mmserve.cluster.routing import (
    merge_memory_status,
    merge_model_status,
    model_of,
    render_metrics,
    replica_model_id,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "ray" / "config.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "model"),
    [
        ("POST", "/generate/tiny_text", b"", "application/json", "tiny_text"),
        ("POST", "/admin/load/smollm2", b"", "", "smollm2"),
        ("POST", "/admin/unload/smollm2", b"", "", "smollm2"),
        ("POST", "/v1/chat/completions", b'{"model": "qwen", "messages": []}', "", "qwen"),
        ("POST", "/v1/completions", b'{"model": "qwen"}', "", "qwen"),
        ("POST", "/v1/embeddings", b'{"model": "minilm", "input": "x"}', "", "minilm"),
        ("POST", "/v1/chat/completions", b"{not json", "", None),
        ("POST", "/v1/chat/completions", b'{"model": 3}', "", None),
        ("POST", "/v1/chat/completions", b'["model"]', "", None),
        ("GET", "/v1/models", b"", "", None),
        ("GET", "/v1/models/qwen", b"", "", None),
        ("GET", "/admin/model_status", b"", "", None),
    ],
)
def test_model_of_names_the_model_of_each_route(method, path, body, ctype, model):
    assert model_of(method, path, body, ctype) == model


def test_model_of_reads_the_form_field_of_a_transcription():
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{boundary}--\r\n"
    ).encode()
    ctype = f"multipart/form-data; boundary={boundary}"
    assert model_of("POST", "/v1/audio/transcriptions", body, ctype) == "whisper"
    assert replica_model_id("abc") == "replica:abc"


def test_model_status_totals_list_where_each_model_is_loaded():
    sections = {
        "r2": {"queue_depth": 1, "loads": 3, "evictions": 1, "models": {
            "a": {"state": "loaded"}, "b": {"state": "unloaded"}}},
        "r1": {"queue_depth": 2, "loads": 1, "evictions": 0, "models": {
            "a": {"state": "loaded"}, "b": {"state": "loaded"}}},
    }  # fmt: skip
    merged = merge_model_status(sections)
    assert merged["replicas"] is sections
    assert merged["totals"] == {
        "replicas": 2,
        "queue_depth": 3,
        "loads": 4,
        "evictions": 1,
        "loaded_on": {"a": ["r1", "r2"], "b": ["r1"]},
    }


def test_memory_status_totals_add_model_memory_only():
    sections = {
        "r1": {"models_loaded_gb": 1.25, "memory_warning": False, "system_ram": {"total_gb": 64}},
        "r2": {"models_loaded_gb": 0.5, "memory_warning": True, "system_ram": {"total_gb": 64}},
    }
    totals = merge_memory_status(sections)["totals"]
    assert totals == {"replicas": 2, "models_loaded_gb": 1.75, "memory_warning": True}


def test_metrics_of_replicas_merge_into_one_family_each_with_a_replica_label():
    text = (
        "# HELP mmserve_requests_total HTTP requests\n# TYPE mmserve_requests_total counter\n"
        'mmserve_requests_total{model="a",status="200"} %d\n'
        "# HELP mmserve_queue_depth Waiting\n# TYPE mmserve_queue_depth gauge\n"
        "mmserve_queue_depth %d\n"
    )
    out = render_metrics({"r1": text % (3, 1), "r2": text % (5, 0)}, 2).decode()
    assert out.count("# TYPE mmserve_requests_total counter") == 1
    samples = {
        (s.name, s.labels.get("replica")): s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
    }
    assert samples[("mmserve_requests_total", "r1")] == 3
    assert samples[("mmserve_requests_total", "r2")] == 5
    assert samples[("mmserve_queue_depth", "r1")] == 1
    assert samples[("mmserve_cluster_replicas", None)] == 2


def test_main_cluster_flag_without_ray_says_what_to_install(monkeypatch, capsys):
    import main

    monkeypatch.setattr(os, "environ", dict(os.environ))  # main() exports MMSERVE_* settings
    monkeypatch.setitem(sys.modules, "mmserve.cluster.app", None)  # import fails like no Ray
    assert main.main(["--cluster", "--replicas", "2"]) == 2
    assert "requirements-cluster.txt" in capsys.readouterr().out


def _serve_configs():
    service = list(yaml.safe_load_all(RAYSERVICE.read_text()))
    (ray_service,) = [d for d in service if d["kind"] == "RayService"]
    return yaml.safe_load(CONFIG.read_text()), ray_service


def test_serve_configs_validate_against_ray_serve_schema():
    schema = pytest.importorskip("ray.serve.schema", reason="Ray Serve is not installed")
    local, ray_service = _serve_configs()
    for config in (local, yaml.safe_load(ray_service["spec"]["serveConfigV2"])):
        parsed = schema.ServeDeploySchema.model_validate(config)
        (app,) = parsed.applications
        assert app.import_path == "mmserve.cluster.app:build"
        engine = next(d for d in app.deployments if d.name == "Engine")
        assert engine.autoscaling_config["target_ongoing_requests"] > 0


def test_rayservice_requests_a_gpu_per_engine_and_mounts_models_with_probes():
    _, ray_service = _serve_configs()
    spec = ray_service["spec"]
    pin = (ROOT / "requirements-cluster.txt").read_text().split("ray[serve]==")[1].split()[0]
    assert spec["rayClusterConfig"]["rayVersion"] == pin
    (app,) = yaml.safe_load(spec["serveConfigV2"])["applications"]
    engine = next(d for d in app["deployments"] if d["name"] == "Engine")
    gpus = engine["ray_actor_options"]["num_gpus"]
    assert gpus == 1
    models_dir = app["args"]["settings"]["models_dir"]
    cluster = spec["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
        group["template"]["spec"] for group in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        (container,) = pod["containers"]
        assert {"livenessProbe", "readinessProbe"} <= set(container)
        assert {"name": "models", "mountPath": models_dir} in container["volumeMounts"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "mmserve-models"
    for group in cluster["workerGroupSpecs"]:
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)

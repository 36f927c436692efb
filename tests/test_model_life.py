"""A model's life through the real server (issue 15): availability, pull with progress from a
local Hub, load stages, queue positions, the fit planner, quantization: auto, first run."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time

import pytest
import requests

from mmserve.memory import estimate_model_bytes
from tests.conftest import ROOT, start_server, tiny_entry

pytestmark = pytest.mark.server

SLOW_LOAD = """
import os, time
import transformers.modeling_utils as mu
_orig = mu.PreTrainedModel.from_pretrained.__func__
def _slow(cls, *args, **kwargs):
    time.sleep(float(os.environ["TEST_SLOW_LOAD_SECONDS"]))
    return _orig(cls, *args, **kwargs)
mu.PreTrainedModel.from_pretrained = classmethod(_slow)
"""


def gb(n: float) -> str:
    return repr(n / 1024**3)


def status(server, name=None) -> dict:
    body = requests.get(server.url + "/admin/model_status", timeout=10).json()
    return body["models"][name] if name else body


def poll(fn, timeout=60.0, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not reached")


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory, tiny_models_dir):
    """Offline; a slow from_pretrained (test hook); a budget that holds tiny_text at 8-bit
    (plus a little) but not at full precision."""
    tmp = tmp_path_factory.mktemp("life_offline")
    hook = tmp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_LOAD)
    e8 = estimate_model_bytes(tiny_models_dir / "tiny_text", "float32", 8)
    entries = [
        tiny_entry("tiny_text", name="auto_text", quantization="auto"),
        tiny_entry("tiny_embed", name="auto_small", quantization="auto"),
        tiny_entry("tiny_qwen", name="queue_text", quantization=4),
        {"name": "far", "repo_id": "org/far", "family": "text"},
    ]
    cfg = tmp / "models.json"
    cfg.write_text(json.dumps({"models": entries}))
    env = {
        "PYTHONPATH": str(hook),
        "TEST_SLOW_LOAD_SECONDS": "3",
        "MMSERVE_RAM_BUDGET_GB": gb(e8 + 100_000),
        "MMSERVE_MATERIALISE_AT_START": "0",
        "MMSERVE_BATCH_MAX_SIZE": "1",
        "MMSERVE_STREAM_STATUS_SECONDS": "0.3",
        "MMSERVE_DEFAULT_KEEP_ALIVE": "-1",
    }
    args = ["--models-dir", str(tiny_models_dir), "--models-config", str(cfg)]
    server = start_server(tmp, args, env)
    yield server
    server.stop()


def test_availability_on_disk_embedded_and_missing_offline(offline_server):
    models = requests.get(offline_server.url + "/v1/models", timeout=10).json()["data"]
    by = {m["id"]: m for m in models}
    assert by["auto_text"]["availability"] == "on_disk" and by["auto_text"]["disk_bytes"] > 0
    assert by["auto_text"]["state"] == "unloaded" and by["auto_text"]["estimated_bytes"] > 0
    # embedded: its package is installed, so it can answer offline although not yet built
    assert by["smollm2"]["availability"] == "on_disk" and by["minilm"]["availability"] == "on_disk"
    assert by["smollm2"]["estimated_bytes"] > 400_000_000  # 134.5M params as float32
    assert by["far"]["availability"] == "missing" and by["deepseek"]["availability"] == "missing"
    available = requests.get(offline_server.url + "/v1/models?available=true", timeout=10).json()
    ids = {m["id"] for m in available["data"]}
    assert "far" not in ids and "deepseek" not in ids and {"auto_text", "smollm2"} <= ids
    st = status(offline_server, "far")
    assert st["availability"] == "missing" and st["state"] == "unloaded"
    r = requests.post(offline_server.url + "/admin/pull/far", timeout=10)
    assert r.status_code == 409 and "MMSERVE_OFFLINE" in r.json()["error"]


def test_stage_is_loading_weights_during_a_slow_load(offline_server):
    requests.post(offline_server.url + "/admin/emergency_cleanup", timeout=30)
    t = threading.Thread(
        target=requests.post, args=(offline_server.url + "/admin/load/auto_small",),
        kwargs={"timeout": 60},
    )  # fmt: skip
    t.start()
    seen = poll(lambda: (s := status(offline_server, "auto_small"))["stage"] and s)
    assert seen["state"] == "loading" and seen["stage"] == "loading_weights"
    assert seen["seconds"] >= 0
    t.join()
    after = status(offline_server, "auto_small")
    assert after["state"] == "loaded" and after["stage"] is None


def test_queue_positions_1_to_n_and_stream_status_lines(offline_server):
    url = offline_server.url
    requests.post(url + "/admin/unload/queue_text", timeout=30)
    body = {"prompt": "hi", "max_new_tokens": 2}
    results = {}

    def call(i, stream=False):
        r = requests.post(url + "/generate/queue_text", json={**body, "stream": stream},
                          timeout=120, stream=stream)  # fmt: skip
        results[i] = [json.loads(x) for x in r.iter_lines() if x] if stream else r.status_code

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    poll(lambda: status(offline_server, "queue_text")["state"] == "loading")
    for i in (1, 2, 3):  # n = 3 waiting, in this order; the last one streams
        threads.append(threading.Thread(target=call, args=(i, i == 3)))
        threads[-1].start()
        poll(lambda i=i: len(status(offline_server, "queue_text")["queue"]) == i)
    queue = status(offline_server, "queue_text")["queue"]
    assert [q["position"] for q in queue] == [1, 2, 3]
    assert queue[0]["age_seconds"] >= queue[1]["age_seconds"] >= queue[2]["age_seconds"]
    for t in threads:
        t.join(120)
    assert results[0] == results[1] == results[2] == 200
    lines = results[3]
    waiting = [ln for ln in lines if ln.get("status") == "loading"]
    assert waiting and waiting[0]["queue_position"] == 3, lines
    assert lines[-1]["done"] is True and "error" not in lines[-1]


def test_planner_matches_the_load_and_auto_picks_what_fits(offline_server):
    url = offline_server.url
    requests.post(url + "/admin/emergency_cleanup", timeout=30)
    # full precision fits the small model under this budget: auto keeps it
    assert requests.post(url + "/admin/load/auto_small", timeout=60).status_code == 200
    small = status(offline_server, "auto_small")
    assert small["quant_bits"] is None and "auto" in small["quant_reason"]
    plan = requests.get(url + "/admin/plan/auto_text", timeout=30).json()
    assert [c["quant_bits"] for c in plan["choices"]] == [None, 8, 4]
    assert plan["choices"][0]["fits"] is False and plan["choices"][0]["still_short_bytes"] > 0
    assert plan["fits"] is True and plan["quant_bits"] == 8
    assert [v["model"] for v in plan["evict"]] == ["auto_small"]
    again = requests.get(url + "/admin/plan/auto_text?quantization=4&context=64", timeout=30)
    assert again.json()["quant_bits"] == 4 and again.json()["kv_cache_bytes"] > 0
    assert status(offline_server, "auto_small")["state"] == "loaded"  # the plan changed nothing
    r = requests.post(url + "/admin/load/auto_text", timeout=60)
    assert r.status_code == 200
    assert r.json()["quant_bits"] == plan["quant_bits"]
    assert status(offline_server, "auto_small")["state"] == "unloaded"  # the planned victim
    metrics = requests.get(url + "/metrics", timeout=10).text
    assert 'mmserve_model_bytes{model="auto_text",quant_bits="8"}' in metrics
    bad = requests.get(url + "/admin/plan/auto_text?quantization=3", timeout=10)
    assert bad.status_code == 400 and bad.json()["param"] == "quantization"


@pytest.fixture(scope="module")
def hub_repo(tmp_path_factory, tiny_models_dir):
    """tiny_text as a Hub repo, its weights padded past huggingface_hub's 10 MB write chunk
    so that a cut after half the file leaves a partial file to resume from."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    repo = tmp_path_factory.mktemp("hub") / "hubby"
    shutil.copytree(tiny_models_dir / "tiny_text", repo)
    tensors = load_file(repo / "model.safetensors")
    tensors["padding"] = torch.zeros(6_000_000)
    save_file(tensors, repo / "model.safetensors", metadata={"format": "pt"})
    return repo


def test_pull_from_a_local_hub_with_progress_resume_and_auto_4bit(tmp_path, hub_repo):
    from tests.factories.local_hub import LocalHub

    hub = LocalHub({"tests/hubby": hub_repo}, cut_once=("model.safetensors",))
    e4 = estimate_model_bytes(hub_repo, "float32", 4)
    e8 = estimate_model_bytes(hub_repo, "float32", 8)
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        "models:\n  - {name: hubby, repo_id: tests/hubby, family: text, quantization: auto}\n"
    )
    models = tmp_path / "models"
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
           "MMSERVE_RAM_BUDGET_GB": gb((e4 + e8) / 2), "MMSERVE_MATERIALISE_AT_START": "0"}  # fmt: skip
    server = start_server(tmp_path, ["--models-dir", str(models), "--models-config", str(cfg)], env)
    try:
        assert status(server, "hubby")["availability"] == "downloadable"
        # the first client hangs up after two lines: the fetch goes on, and a second pull
        # joins it (the same job: its lines start from the beginning)
        with requests.post(server.url + "/admin/pull/hubby", stream=True, timeout=120) as r:
            assert r.status_code == 200
            first = [json.loads(x) for x in itertools.islice(r.iter_lines(), 2)]
        assert first[0] == {"status": "pulling", "model": "hubby"}
        j = requests.post(server.url + "/admin/pull/hubby", stream=True, timeout=120)
        lines = joined = [json.loads(x) for x in j.iter_lines() if x]
        assert lines[:2] == first
        assert lines[-1] == {"status": "success"} and joined[-1] == {"status": "success"}
        weights = [ln for ln in lines if ln.get("file") == "model.safetensors"]
        completed = [ln["completed"] for ln in weights]
        assert completed == sorted(completed) and len(set(completed)) > 1
        assert (
            completed[-1] == weights[-1]["total"] == (hub_repo / "model.safetensors").stat().st_size
        )
        # the first GET was cut after half the file; the rest came with a Range request
        ranges = [rng for name, rng in hub.ranges if name == "model.safetensors"]
        assert (
            len(ranges) == 2 and ranges[0] is None and ranges[1] and ranges[1].startswith("bytes=")
        )
        assert int(ranges[1].split("=")[1].rstrip("-")) > 0
        assert (models / "hubby" / "model.safetensors").read_bytes() == (
            hub_repo / "model.safetensors"
        ).read_bytes()
        verify = subprocess.run(
            [sys.executable, str(ROOT / "utils" / "download_model.py"), "--models-dir",
             str(models), "--models-config", str(cfg), "--verify", "hubby"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 0 and "complete" in verify.stdout, verify.stdout
        assert status(server, "hubby")["availability"] == "on_disk"
        # this budget holds 4-bit but not 8-bit: auto picks 4
        r = requests.post(server.url + "/generate/hubby", json={"prompt": "hi"}, timeout=120)
        assert r.status_code == 200, r.text
        assert status(server, "hubby")["quant_bits"] == 4
    finally:
        server.stop()
        hub.close()


@pytest.mark.slow
def test_first_run_materialises_once_in_the_background(tmp_path):
    """An empty models folder: smollm2 is built from its GGUF at start; a request arriving
    meanwhile streams status lines and is answered by that same work (converted once)."""
    env = {"MMSERVE_STREAM_STATUS_SECONDS": "1", "MMSERVE_PRELOAD": "",
           "MMSERVE_MATERIALISE_AT_START": "1"}  # fmt: skip
    server = start_server(tmp_path, ["--models-dir", str(tmp_path / "models")], env)
    try:
        assert "listening on http://127.0.0.1" in server.log()
        assert "smollm2 (on_disk)" in server.log()
        poll(lambda: status(server, "smollm2")["stage"] == "materialising", timeout=30)
        body = {"prompt": "Say hi.", "max_new_tokens": 4, "stream": True}
        r = requests.post(server.url + "/generate/smollm2", json=body, stream=True, timeout=600)
        lines = [json.loads(x) for x in r.iter_lines() if x]
        waiting = [ln for ln in lines if ln.get("status") == "loading"]
        assert waiting and waiting[0]["stage"] == "materialising", lines[:3]
        assert lines[-1]["done"] is True and "error" not in lines[-1], lines[-1]
        whole = server.log_path.read_text(errors="replace")
        assert whole.count("materialising smollm2\n") == 1  # converted once, not again
    finally:
        server.stop()


def test_openai_client_does_not_retry_a_model_that_is_not_downloaded(offline_server):
    """Issue 11 item 9: 404 model_not_downloaded, so openai-python gives up after one hit."""
    import openai

    client = openai.OpenAI(base_url=offline_server.url + "/v1", api_key="x", max_retries=2)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="far", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_downloaded"
    assert "--download far" in info.value.message and "--models-config" in info.value.message
    metrics = requests.get(offline_server.url + "/metrics", timeout=10).text
    hits = [ln for ln in metrics.splitlines() if ln.startswith("mmserve_requests_total")
            and 'model="far"' in ln and "chat/completions" in ln]  # fmt: skip
    assert len(hits) == 1 and hits[0].endswith(" 1.0"), hits

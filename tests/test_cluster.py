"""A real local Ray Serve cluster (main.py --cluster, 2 CPU replicas) on the tiny models."""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import LiveServer, free_port, tiny_entry

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (requirements-cluster.txt)")
from mmserve.cluster.ingress import _PIN_S as PIN_S  # noqa: E402 - needs Ray

pytestmark = pytest.mark.cluster

MODELS = ("tiny_text", "tiny_qwen", "tiny_embed")
PROMPT = {"prompt": "Say hello", "max_new_tokens": 6}
REPLICA = "X-MMServe-Replica"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_models_dir):
    """`python main.py --cluster --replicas 2` on the tiny models (half a CPU per replica)."""
    tmp = tmp_path_factory.mktemp("cluster")
    config = tmp / "models.json"
    config.write_text(json.dumps([tiny_entry(name) for name in MODELS]))
    args = ["--cluster", "--replicas", "2", "--replica-cpus", "0.5"]
    args += ["--models-dir", str(tiny_models_dir), "--models-config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
    env.update(
        HF_HUB_OFFLINE="1",
        MMSERVE_DEFAULT_KEEP_ALIVE="-1",
        MMSERVE_MATERIALISE_AT_START="0",  # never build smollm2/minilm into the tiny folder
        MMSERVE_LOG_TO_FILE="0",
        MMSERVE_TMP_DIR=str(tmp / "tmp"),
    )
    server = LiveServer(args, env, free_port(), tmp / "server.out")
    try:
        server.wait_ready(timeout=180)  # Ray, the Serve controller, two replicas: ~25 s here
        wait_for(lambda: len(health(server)["replicas"]) == 2, 120, server)
        yield server
    finally:
        server.stop()


def health(server) -> dict:
    response = requests.get(server.url + "/health", timeout=10)
    return response.json() if response.status_code == 200 else {"replicas": {}}


def wait_for(check, timeout: float, server) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out; server log:\n{server.log()}")


def model_status(server) -> dict:
    return requests.get(server.url + "/admin/model_status", timeout=30).json()


@pytest.fixture(scope="module")
def expected(make_app_module):
    """Greedy answers of the single server on the same tiny models."""
    client = make_app_module.test_client()
    return {m: client.post(f"/generate/{m}", json=PROMPT).get_json() for m in MODELS[:2]}


@pytest.fixture(scope="module")
def make_app_module(tiny_models_dir, tmp_path_factory):
    from app import create_app

    tmp = tmp_path_factory.mktemp("single")
    app = create_app(
        {
            "models_dir": tiny_models_dir,
            "models": [tiny_entry(m) for m in MODELS],
            "replace_models": True,
            "offline": True,
            "log_to_file": False,
            "tmp_dir": tmp / "tmp",
            "log_dir": tmp / "logs",
        }
    )
    yield app
    app.extensions["mmserve_close"](timeout=5)


def test_alternating_models_each_stay_on_one_replica(cluster, expected):
    served: dict[str, set[str]] = {m: set() for m in MODELS[:2]}
    for i in range(20):
        model = MODELS[i % 2]
        r = requests.post(f"{cluster.url}/generate/{model}", json=PROMPT, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["response"] == expected[model]["response"]
        served[model].add(r.headers[REPLICA])
    assert all(len(replicas) == 1 for replicas in served.values()), served


def test_streams_pass_through_with_the_replica_header(cluster, expected):
    url = f"{cluster.url}/generate/tiny_text"
    with requests.post(url, json={**PROMPT, "stream": True}, stream=True, timeout=60) as r:
        assert r.status_code == 200 and REPLICA in r.headers
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) > 2 and lines[-1]["done"] is True
    assert "".join(x["response"] for x in lines) == expected["tiny_text"]["response"]
    body = {"model": "tiny_qwen", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with requests.post(f"{cluster.url}/v1/chat/completions", json=body, stream=True) as r:
        assert r.status_code == 200 and REPLICA in r.headers
        events = [line for line in r.iter_lines() if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]" and len(events) > 2
    r = requests.get(f"{cluster.url}/v1/models", timeout=30)
    assert r.status_code == 200 and REPLICA in r.headers
    assert {m["id"] for m in r.json()["data"]} >= set(MODELS)
    r = requests.post(f"{cluster.url}/generate/no_such_model", json=PROMPT, timeout=30)
    assert r.status_code == 404 and REPLICA in r.headers


def test_concurrent_first_requests_load_a_cold_model_once(cluster):
    before = model_status(cluster)["totals"]
    assert before["loaded_on"]["tiny_embed"] == []
    body = {"model": "tiny_embed", "input": "a cold start"}

    def embed(_):
        return requests.post(f"{cluster.url}/v1/embeddings", json=body, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(embed, range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert len({r.headers[REPLICA] for r in answers}) == 1
    assert len({json.dumps(r.json()["data"]) for r in answers}) == 1
    after = model_status(cluster)["totals"]
    assert after["loads"] == before["loads"] + 1
    assert after["loaded_on"]["tiny_embed"] == [answers[0].headers[REPLICA]]


def test_admin_aggregates_and_targets_replicas(cluster):
    status = model_status(cluster)
    replicas = sorted(status["replicas"])
    assert len(replicas) == 2 and status["totals"]["replicas"] == 2
    assert sorted(requests.get(cluster.url + "/health").headers[REPLICA].split(",")) == replicas
    assert all("models" in section and "pid" in section for section in status["replicas"].values())
    memory = requests.get(cluster.url + "/admin/memory_status", timeout=30).json()
    assert sorted(memory["replicas"]) == replicas and "models_loaded_gb" in memory["totals"]
    metrics = requests.get(cluster.url + "/metrics", timeout=30).text
    for replica in replicas:
        assert f'replica="{replica}"' in metrics
    assert "mmserve_cluster_replicas 2.0" in metrics

    # Load tiny_text on the other replica too, then unload it where it was first: routing
    # learns the eviction, so every later request goes to the replica that still holds it.
    (first,) = status["totals"]["loaded_on"]["tiny_text"]
    other = next(r for r in replicas if r != first)
    r = requests.post(f"{cluster.url}/admin/load/tiny_text?replica={other}", timeout=60)
    assert r.status_code == 200 and r.headers[REPLICA] == other, r.text
    r = requests.post(f"{cluster.url}/admin/unload/tiny_text?replica={first}", timeout=60)
    assert r.status_code == 200 and r.headers[REPLICA] == first, r.text
    assert model_status(cluster)["totals"]["loaded_on"]["tiny_text"] == [other]
    time.sleep(1.0)  # the replica pushes its model ids every 0.1 s; the router hears within ~0.5 s
    loads = model_status(cluster)["totals"]["loads"]
    r = requests.post(f"{cluster.url}/generate/tiny_text", json=PROMPT, timeout=60)
    assert r.status_code == 200 and r.headers[REPLICA] == other
    time.sleep(PIN_S + 0.5)  # past the ingress's pin of a fresh placement: Ray's routing alone
    for _ in range(6):
        r = requests.post(f"{cluster.url}/generate/tiny_text", json=PROMPT, timeout=60)
        assert r.status_code == 200 and r.headers[REPLICA] == other
    assert model_status(cluster)["totals"]["loads"] == loads

    r = requests.post(f"{cluster.url}/admin/load/tiny_text?replica=nope", timeout=30)
    assert r.status_code == 404 and r.json()["param"] == "replica"
    r = requests.post(f"{cluster.url}/admin/emergency_cleanup", timeout=60)
    assert r.status_code == 200 and sorted(r.json()["replicas"]) == replicas
    assert model_status(cluster)["totals"]["loaded_on"]["tiny_text"] == []


def test_killed_replica_fails_in_flight_with_503_then_recovers(cluster, expected):
    r = requests.post(f"{cluster.url}/generate/tiny_text", json=PROMPT, timeout=60)
    victim = r.headers[REPLICA]
    pid = health(cluster)["replicas"][victim]["pid"]
    slow = {"prompt": "Say hello", "max_new_tokens": 2000}  # prompt + this within tiny_text's 2048

    def call(_):
        return requests.post(f"{cluster.url}/generate/tiny_text", json=slow, timeout=120)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(call, i) for i in range(3)]
        time.sleep(1.0)  # in flight on the replica (2000 tiny tokens take 2-5 s here)
        assert not any(f.done() for f in futures), "requests finished before the kill"
        os.kill(pid, signal.SIGKILL)
        answers = [f.result() for f in futures]
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.headers["Retry-After"] == "1" and r.json()["code"] == "replica_failed"

    deadline, ok = time.monotonic() + 60, None
    while ok is None and time.monotonic() < deadline:
        r = requests.post(f"{cluster.url}/generate/tiny_text", json=PROMPT, timeout=60)
        if r.status_code == 200:
            ok = r
        else:
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            time.sleep(float(r.headers["Retry-After"]))
    assert ok is not None and ok.json()["response"] == expected["tiny_text"]["response"]
    assert ok.headers[REPLICA] != victim  # the model loaded again, on a live replica
    wait_for(lambda: len(set(health(cluster)["replicas"]) - {victim}) == 2, 90, cluster)

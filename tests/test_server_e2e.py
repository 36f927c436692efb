"""The real server: main.py -> gunicorn on 127.0.0.1, the embedded SmolLM2, driven with requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests


def test_smollm2_knows_the_capital_of_france(live_server):
    r = requests.post(
        live_server.url + "/generate/smollm2",
        json={"prompt": "What is the capital of France?", "max_new_tokens": 24},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "Paris" in body["response"]
    assert body["model_type"] == "text"
    assert r.headers["X-Request-ID"]


def test_stream_over_a_real_socket(live_server):
    with requests.post(
        live_server.url + "/generate/smollm2",
        json={"prompt": "Name three colours.", "max_new_tokens": 16, "stream": True},
        stream=True,
        timeout=120,
    ) as r:
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) > 2, "the answer did not arrive in pieces"
    assert lines[-1]["done"] is True and lines[-1]["usage"]["completion_tokens"] <= 16
    assert "".join(x["response"] for x in lines).strip()


def test_concurrent_clients_all_get_answers(live_server):
    def one(i):
        return requests.post(
            live_server.url + "/generate/smollm2",
            json={"prompt": f"Say the number {i}.", "max_new_tokens": 6},
            timeout=120,
        )

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(one, range(4)))
    assert [r.status_code for r in responses] == [200] * 4
    status = requests.get(live_server.url + "/admin/model_status", timeout=10).json()
    assert status["models"]["smollm2"]["state"] == "loaded"
    assert status["models"]["smollm2"]["ref_count"] == 0
    assert status["loads"] == 1


def test_admin_and_errors_on_the_real_server(live_server):
    assert (
        requests.get(live_server.url + "/admin/memory_status", timeout=10).json()["gpu_available"]
        is False
    )
    r = requests.post(live_server.url + "/generate/deepseek", json={"prompt": "hi"}, timeout=30)
    assert r.status_code == 404 and r.json()["code"] == "model_not_downloaded"
    assert "Retry-After" not in r.headers  # permanent: nothing to retry (issue 11 item 9)
    assert r.json()["error"].endswith(" --download deepseek")
    r = requests.post(live_server.url + "/generate/smollm2", data="nope", timeout=30)
    assert r.status_code == 400

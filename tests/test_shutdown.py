"""The real server (main.py -> gunicorn) stops fast on SIGINT and SIGQUIT: generations end at
their next step, open streams get a last `server shutting down` error, models are unloaded
and the process exits within 3 s. (SIGTERM's graceful drain: test_server_lifecycle.py.)"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests
import yaml

from tests.conftest import start_server, tiny_entry

LONG = {"prompt": "Tell me a very long story.", "max_new_tokens": 2000}


@pytest.fixture
def server(tmp_path, tiny_models_dir):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"models": [tiny_entry("tiny_text")]}))
    args = ["--models-dir", str(tiny_models_dir), "--models-config", str(cfg)]
    server = start_server(tmp_path, args, session=True)
    assert requests.post(server.url + "/admin/load/tiny_text", timeout=60).status_code == 200
    yield server
    server.stop()


def read_stream(url: str, body: dict, out: dict, key: str, started: threading.Event) -> None:
    """Collect a stream's lines (NDJSON or SSE `data:` payloads) until the server ends it."""
    lines = []
    try:
        with requests.post(url, json=body, stream=True, timeout=60) as r:
            for raw in r.iter_lines():
                if raw:
                    lines.append(raw.decode())
                    if len(lines) == 3:
                        started.set()
    except requests.RequestException as exc:
        lines.append(f"EXCEPTION {type(exc).__name__}")
    out[key] = lines


def last_payload(lines: list[str]) -> dict:
    data = [ln.removeprefix("data: ") for ln in lines if ln != "data: [DONE]"]
    return json.loads(data[-1])


def eos_id(models_dir) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_dir / "tiny_text").eos_token_id


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_cancel_generations_tell_streams_and_exit_fast(
    server, signum, tiny_models_dir
):
    out: dict = {}
    # Alone, the tiny model ends this chat with EOS after ~150 tokens (well under a second
    # on a fast moment); banning EOS keeps the stream going until the signal.
    ban = {str(eos_id(tiny_models_dir)): -100}
    streams = {
        "native": (server.url + "/generate/tiny_text", dict(LONG, stream=True)),
        "openai": (
            server.url + "/v1/chat/completions",
            {"model": "tiny_text", "messages": [{"role": "user", "content": "Hi"}],
             "max_tokens": 2000, "stream": True, "logit_bias": ban},
        ),  # fmt: skip
    }
    events = {k: threading.Event() for k in streams}
    threads = [
        threading.Thread(target=read_stream, args=(url, body, out, key, events[key]))
        for key, (url, body) in streams.items()
    ]

    def plain():
        r = requests.post(server.url + "/generate/tiny_text", json=LONG, timeout=60)
        out["plain"] = (r.status_code, r.json())

    threads.append(threading.Thread(target=plain))
    for t in threads:
        t.start()
    for e in events.values():
        assert e.wait(30), server.log()
    time.sleep(0.2)  # the non-streamed one is generating too
    t0 = time.monotonic()
    if signum == signal.SIGINT:
        os.killpg(server.proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole group
    else:
        os.kill(server.proc.pid, signal.SIGQUIT)  # the master only
    server.proc.wait(10)
    took = time.monotonic() - t0
    for t in threads:
        t.join(10)
    log = server.log()
    assert took < 3.0, (took, log)
    native = last_payload(out["native"])
    assert native["done"] is True and native["error"] == "server shutting down", out["native"]
    assert len(out["native"]) < 1000  # stopped long before its 2000 tokens
    openai = last_payload(out["openai"])
    assert openai["error"]["message"] == "server shutting down", out["openai"]
    assert out["plain"][0] == 503 and out["plain"][1]["error"] == "server shutting down"
    assert "unloaded tiny_text (shutdown)" in log
    assert "Perhaps out of memory" not in log

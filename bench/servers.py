"""Server processes for the benchmark: mmserve (main.py) and `transformers serve`, on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
PEER_VENV = WORK / "venv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A server process on 127.0.0.1 with its output in a log file; stopped by `stop()`."""

    def __init__(self, name: str, cmd: list[str], env: dict, port: int, ready_path: str):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log_path = WORK / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as r:
                    if r.status < 500:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not start in {timeout:.0f}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def start_mmserve(
    models_dir: Path, models_config: Path, ram_budget_gb: float, extra_env: dict | None = None
) -> Process:
    """main.py (gunicorn, one worker, 16 threads) on a free loopback port."""
    port = free_port()
    env = base_env()
    env.update(
        MMSERVE_LOG_DIR=str(WORK / "logs"),
        MMSERVE_TMP_DIR=str(WORK / "tmp"),
        MMSERVE_RAM_BUDGET_GB=str(ram_budget_gb),
        MMSERVE_LOG_LEVEL="WARNING",
        MMSERVE_DEVICE="cpu",  # the CPU comparison, also on a machine with a GPU
    )
    env.update(extra_env or {})
    cmd = [sys.executable, str(ROOT / "main.py"), "--port", str(port), "--threads", "16",
           "--models-dir", str(models_dir), "--models-config", str(models_config)]  # fmt: skip
    server = Process("mmserve", cmd, env, port, "/health")
    server.wait_ready()
    return server


def ensure_peer_venv(log) -> Path:
    """A separate venv for `transformers serve`, sharing this venv's packages through a .pth.

    Only the serving extras missing here (fastapi, uvicorn, starlette, ...) are installed
    into bench/.work/venv, from PyPI; the server's own venv and requirements are untouched.
    """
    import transformers

    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".serving-ready"
    if marker.is_file():
        return python
    log("creating the transformers-serve venv in bench/.work/venv (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "mmserve_main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    spec = f"transformers[serving]=={transformers.__version__}"
    subprocess.run([str(python), "-m", "pip", "install", "-q", spec], check=True)
    marker.write_text(spec + "\n")
    return python


def start_peer(python: Path, model_dir: Path, continuous_batching: bool = False) -> Process:
    """`transformers serve DIR` on the CPU in float32 (the same dtype mmserve uses)."""
    port = free_port()
    env = base_env()
    env["HF_HUB_CACHE"] = str(WORK / "hf-cache")
    Path(env["HF_HUB_CACHE"]).mkdir(parents=True, exist_ok=True)
    argv = ["transformers", "serve", str(model_dir), "--device", "cpu", "--dtype", "float32",
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    if continuous_batching:
        argv.append("--continuous-batching")
    code = (
        "import sys; from transformers.cli.transformers import main; "
        f"sys.argv = {json.dumps(argv)}; main()"
    )
    name = "transformers-serve-cb" if continuous_batching else "transformers-serve"
    server = Process(name, [str(python), "-c", code], env, port, "/health")
    server.wait_ready()
    return server

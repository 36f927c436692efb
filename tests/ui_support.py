"""Helpers of the browser tests: headless Debian Chromium through Selenium, the page's server."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.conftest import ROOT, LiveServer, start_server, tiny_entry

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
AXE = ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (CHROMIUM and CHROMEDRIVER):
        return "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (requirements-dev.txt)"
    return None


def start_chromium(profile: Path, width: int = 1280, height: int = 900):
    """A headless Chromium with a fresh profile, driven by chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")  # Selenium Manager: no usage reports
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(60)
    return driver


def build_models_dir(root: Path, tiny_models_dir: Path, real_models_dir: Path) -> Path:
    """One models/ folder: links to the tiny models and SmolLM2 (tiny_think is tiny_text again),
    plus a model that cannot load (tiny_text's weights under a config whose sizes differ)."""
    models = root / "models"
    models.mkdir()
    for source in (tiny_models_dir, real_models_dir):
        for child in source.iterdir():
            (models / child.name).symlink_to(child, target_is_directory=True)
    (models / "tiny_think").symlink_to(tiny_models_dir / "tiny_text", target_is_directory=True)
    broken = models / "tiny_broken"
    shutil.copytree(tiny_models_dir / "tiny_text", broken)
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] = config["hidden_size"] * 2
    (broken / "config.json").write_text(json.dumps(config))
    return models


def models_config(root: Path) -> Path:
    """The table entries added to the built-in table (which holds smollm2)."""
    entries = [
        tiny_entry("tiny_text"),
        tiny_entry("tiny_vl"),
        tiny_entry("tiny_audio"),
        tiny_entry("tiny_text", name="tiny_think", repo_id="tests/tiny_think",
                   local_dir="tiny_think", reasoning=True),
        tiny_entry("tiny_text", name="tiny_absent", repo_id="tests/tiny_absent",
                   local_dir="tiny_absent"),  # not on disk, and the server is offline
        tiny_entry("tiny_text", name="tiny_broken", repo_id="tests/tiny_broken",
                   local_dir="tiny_broken"),
    ]  # fmt: skip
    path = root / "ui_models.json"
    path.write_text(json.dumps({"models": entries}))
    return path


class PageServer:
    """The real server the page talks to; `restart` brings it back on the same port."""

    def __init__(self, root: Path, models: Path, config: Path):
        self.root = root
        self.args = ["--models-dir", str(models), "--models-config", str(config)]
        self.server = start_server(root, self.args)
        self.starts = 1

    @property
    def url(self) -> str:
        return self.server.url

    def status(self, model: str) -> dict:
        r = requests.get(self.url + "/admin/model_status", timeout=10)
        return r.json()["models"][model]

    def log(self) -> str:
        return self.server.log()

    def stop(self) -> None:
        self.server.stop()

    def restart(self, env_extra: dict) -> None:
        """Start again on the same port with extra environment (keys, limits)."""
        self.starts += 1
        old = self.server
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMSERVE_")}
        env.update(
            {
                "HF_HUB_OFFLINE": "1",
                "MMSERVE_LOG_DIR": str(self.root / "logs"),
                "MMSERVE_TMP_DIR": str(self.root / "tmp"),
                "MMSERVE_THREADS": "8",
                **env_extra,
            }
        )
        log = self.root / f"server{self.starts}.out"
        self.server = LiveServer(self.args, env, old.port, log)
        self.server.wait_ready()


def wait_for(predicate, timeout: float = 30.0, every: float = 0.05, what: str = "condition"):
    """Poll until `predicate()` is truthy; its value, or AssertionError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scratch_profile() -> Path:
    return Path(tempfile.mkdtemp(prefix="mmserve-chromium-"))


@contextlib.contextmanager
def busy_model(page_server, model: str):
    """One request generating on `model` and one waiting for it: the next one gets a 429."""
    api, admin = {"Authorization": "Bearer k-api"}, {"Authorization": "Bearer k-admin"}
    url = page_server.url
    requests.post(
        f"{url}/admin/load/{model}", json={}, headers=admin, timeout=120
    ).raise_for_status()
    # Sampled hot (seeded), SmolLM2 does not reach its end of text within 1000 tokens: greedy,
    # it stops counting after ~120 tokens, which a loaded machine could reach before the 429.
    body = {"prompt": "Count from 1 to 500, one number per line.", "max_new_tokens": 1000,
            "temperature": 2.0, "seed": 1, "stream": True}  # fmt: skip
    holder = requests.post(f"{url}/generate/{model}", json=body, headers=api, stream=True,
                           timeout=120)  # fmt: skip
    lines = holder.iter_lines()
    next(lines)  # it is generating now
    pool = ThreadPoolExecutor(2)
    # Keep reading it: a stream left unread (or its line iterator collected) can look like a
    # client that went away, and the server then cancels it (seen: "closed early after 3 steps").
    reader = pool.submit(lambda: sum(1 for _ in lines))
    waiter = pool.submit(
        requests.post, f"{url}/generate/{model}", json={"prompt": "hi", "max_new_tokens": 2},
        headers=api, timeout=120,
    )  # fmt: skip
    wait_for(lambda: requests.get(url + "/admin/model_status", headers=admin, timeout=10)
             .json()["models"][model]["waiting"] == 1, what="a waiting request")  # fmt: skip
    try:
        yield
    finally:
        holder.close()
        reader.exception(timeout=30)  # ends when the stream is closed (or raised on closing)
        assert waiter.result(timeout=120).status_code == 200
        pool.shutdown()

"""Bringing table entries onto disk: one fetch per model at a time, shared by loads and
POST /admin/pull, with per-file byte progress from huggingface_hub's own download loop."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from utils.download_model import DownloadError, check_model, ensure_model

from .errors import Conflict, DownloadFailed, ModelNotDownloaded
from .models_config import ModelSpec
from .stages import StageBoard

log = logging.getLogger("mmserve.pull")


def progress_bar_class(on_bytes):
    """A tqdm stand-in for huggingface_hub's `tqdm_class`: it draws nothing and reports
    `on_bytes(completed, total)` after every chunk (total may be None). huggingface_hub
    builds it with tqdm's keyword arguments (desc, total, initial, unit, ...)."""

    class ProgressBar:
        def __init__(self, *args, total=None, initial=0, **kwargs):
            self.total = total
            self.n = initial or 0
            on_bytes(self.n, self.total)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            self.n += n or 0
            on_bytes(self.n, self.total)

        def refresh(self, *args, **kwargs):
            pass

        def close(self):
            pass

        def set_description(self, *args, **kwargs):
            pass

        set_description_str = set_postfix_str = set_description

    return ProgressBar


class PullJob:
    """One running fetch of one model, followed by any number of readers.

    Lines are Ollama's pull lines: {"status": "pulling"|"materialising"|"downloading",
    "file", "completed", "total"} and finally {"status": "success"} or
    {"status": "error", "error"}. `completed` only grows within a file.
    """

    def __init__(self, model: str):
        self.model = model
        self.lines: list[dict] = []
        self.done = False
        self._cond = threading.Condition()
        self._last: dict[str, tuple[int, float]] = {}  # file -> (completed sent, when)

    def emit(self, line: dict) -> None:
        with self._cond:
            self.lines.append(line)
            if line["status"] in ("success", "error"):
                self.done = True
            self._cond.notify_all()

    def file_progress(self, file: str, completed: int, total: int | None) -> None:
        """A downloading line, at most every 0.2 s per file, always at the file's end."""
        sent, when = self._last.get(file, (-1, 0.0))
        now = time.monotonic()
        final = total is not None and completed >= total
        if completed <= sent or (not final and now - when < 0.2):
            return
        self._last[file] = (completed, now)
        self.emit({"status": "downloading", "file": file, "completed": completed, "total": total})

    def follow(self, poll: float = 15.0):
        """Every line from the first, then new ones as they come, until the job ends.
        While nothing happens for `poll` seconds the last line is repeated (a keep-alive)."""
        i = 0
        while True:
            with self._cond:
                if i >= len(self.lines) and not self.done:
                    self._cond.wait(poll)
                new, done = self.lines[i:], self.done
            i += len(new)
            if not new and not done and i:
                new = [self.lines[i - 1]]
            yield from new
            if done and i >= len(self.lines):
                return


class Fetcher:
    """Makes sure entries are on disk. One fetch per model at a time: a load waiting for a
    pull (or a second pull) waits on the same work, then finds the files complete."""

    def __init__(self, settings, stages: StageBoard):
        self.settings = settings
        self.stages = stages
        self._locks: dict[str, threading.Lock] = {}
        self._jobs: dict[str, PullJob] = {}
        self._guard = threading.Lock()

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def ensure(self, spec: ModelSpec, job: PullJob | None = None) -> Path:
        """The entry's folder, complete; fetched or materialised first when needed.

        Raises ModelNotDownloaded (404) when it cannot be had (offline, package missing)
        and DownloadFailed (503, Retry-After) when a retry may work.
        """
        models_dir = Path(self.settings.models_dir)
        with self._lock_for(spec.name):
            if check_model(spec, models_dir)["complete"]:
                return spec.path(models_dir)
            hub = spec.source.get("type", "hub") == "hub"
            stage = "downloading" if hub else "materialising"
            if job is not None:
                job.emit({"status": stage, "model": spec.name})

            def bars(file: str):
                def on_bytes(done: int, total: int | None) -> None:
                    if total:
                        self.stages.set_progress(spec.name, done / total)
                    if job is not None:
                        job.file_progress(file, done, total)

                return progress_bar_class(on_bytes)

            log.info("%s %s", stage, spec.name)
            with self.stages.stage(spec.name, stage):
                try:
                    return ensure_model(
                        spec, models_dir, offline=self.settings.offline, tqdm_for=bars
                    )
                except DownloadError as exc:
                    log.error("model %s unavailable: %s", spec.name, exc)
                    if exc.permanent:
                        raise ModelNotDownloaded(
                            f"model '{spec.name}' is not downloaded and the server cannot fetch "
                            f"it now; fetch it with: {spec.download_command(models_dir)}",
                            details="offline" if self.settings.offline else "not installed",
                        ) from None
                    raise DownloadFailed(
                        f"model '{spec.name}' could not be fetched ({exc}); try again, or "
                        f"fetch it with: {spec.download_command(models_dir)}",
                    ) from None

    def pull(self, spec: ModelSpec) -> PullJob:
        """Start fetching `spec` in the background, or join the fetch already running.

        Raises Conflict (409, code `offline`) for a Hub entry while the server is offline.
        """
        if self.settings.offline and spec.source.get("type", "hub") == "hub":
            raise Conflict(
                f"model '{spec.name}' cannot be pulled: the server is offline (setting "
                "MMSERVE_OFFLINE, or HF_HUB_OFFLINE=1); fetch it with: "
                f"{spec.download_command(self.settings.models_dir)}",
                param="offline",
                code="offline",
            )
        with self._guard:
            job = self._jobs.get(spec.name)
            if job is not None and not job.done:
                return job
            job = self._jobs[spec.name] = PullJob(spec.name)
        job.emit({"status": "pulling", "model": spec.name})

        def run() -> None:
            try:
                self.ensure(spec, job)
                job.emit({"status": "success"})
            except Exception as exc:  # noqa: BLE001 - reported in-band to every reader
                message = getattr(exc, "message", None) or f"pull failed: {type(exc).__name__}"
                log.error("pull of %s failed: %s", spec.name, message)
                job.emit({"status": "error", "error": message})

        threading.Thread(target=run, name=f"pull-{spec.name}", daemon=True).start()
        return job

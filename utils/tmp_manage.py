"""Temporary files under tmp/: one folder per request, removed when it ends, plus a TTL sweep.
Several servers may share one tmp/: each request folder is named after its process, and a
folder of another live process is never removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from pathlib import Path


class TempManager:
    """Owns tmp/. Each request gets its own folder; `scope()` removes it on exit, even on error.

    Invariant: a folder listed in `_active` belongs to a running request and is
    never removed by `sweep` or `cleanup_all`; nor is `req-<pid>-*` of another live process
    (a second server on the machine sharing this tmp/).
    """

    def __init__(self, root: Path, ttl_seconds: float = 3600.0):
        self.root = Path(root)
        self.ttl = float(ttl_seconds)
        self._active: set[Path] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def scope(self):
        """A fresh per-request folder, deleted with everything in it when the block ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"req-{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir()
        with self._lock:
            self._active.add(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            with self._lock:
                self._active.discard(path)

    def _entries(self):
        if not self.root.exists():
            return []
        return [
            p for p in self.root.iterdir() if p.name not in (".gitignore", ".gitkeep", "README.md")
        ]

    @staticmethod
    def _owned_elsewhere(entry: Path) -> bool:
        """A request folder of another process that is still running."""
        kind, _, rest = entry.name.partition("-")
        pid = rest.partition("-")[0]
        if kind != "req" or not pid.isdigit() or int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # it exists, under another user
        return True

    @staticmethod
    def _size(path: Path) -> tuple[int, int]:
        if path.is_file():
            return 1, path.stat().st_size
        files = [p for p in path.rglob("*") if p.is_file()]
        return len(files), sum(p.stat().st_size for p in files)

    def _remove(self, older_than: float | None) -> dict:
        removed_files = removed_bytes = 0
        now = time.time()
        with self._lock:
            active = set(self._active)
        for entry in self._entries():
            if entry in active or self._owned_elsewhere(entry):
                continue
            try:
                if older_than is not None and now - entry.stat().st_mtime < older_than:
                    continue
                count, size = self._size(entry)
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except FileNotFoundError:
                continue
            removed_files += count
            removed_bytes += size
        return {"removed_files": removed_files, "removed_bytes": removed_bytes}

    def sweep(self) -> dict:
        """Remove leftovers older than the TTL (crashed requests, stray files)."""
        return self._remove(self.ttl)

    def cleanup_all(self) -> dict:
        """Remove everything not owned by a running request."""
        return self._remove(None)

    def status(self) -> dict:
        """Count and bytes of what tmp/ holds now."""
        count = size = 0
        oldest = None
        now = time.time()
        for entry in self._entries():
            try:
                c, s = self._size(entry)
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            count, size = count + c, size + s
            oldest = age if oldest is None else max(oldest, age)
        with self._lock:
            active = len(self._active)
        return {
            "path": "tmp/",
            "file_count": count,
            "total_bytes": size,
            "active_requests": active,
            "ttl_seconds": self.ttl,
            "oldest_age_seconds": round(oldest, 1) if oldest is not None else None,
        }

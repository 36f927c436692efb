"""ModelManager: owns every model's life (load, share, keep alive, evict, unload).

Locking rules:
- `_lock` guards all slot bookkeeping (state, refs, waiting, timers). It is
  never held while loading, generating or unloading weights.
- `slot.load_lock` serialises loads of one model: N concurrent first requests
  cause one load.
- `_admission` serialises the estimate -> evict -> load sequence across
  models, so two loads never count the same free memory.
- A slot with refs > 0 is never evicted or unloaded; its idle timer is armed
  only when refs drops to zero.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .errors import (
    Conflict,
    ModelLoadFailed,
    ModelNotDownloaded,
    ModelNotFound,
    OutOfMemory,
    TooManyRequests,
    Unavailable,
    is_oom,
)
from .eviction import Candidate, choose_victims
from .families import get_handler
from .loader import LoadedModel, load_model, plan_for
from .memory import GB, MemoryProbe, estimate_model_bytes
from .models_config import ModelSpec

log = logging.getLogger("mmserve.manager")


@dataclass
class Slot:
    """Live state of one table entry."""

    spec: ModelSpec
    state: str = "unloaded"  # unloaded | loading | loaded | unloading
    loaded: LoadedModel | None = None
    refs: int = 0
    waiting: int = 0
    active: int = 0
    last_used: float = 0.0
    expires_at: float | None = None
    keep_alive: float | None = None  # set by the latest request admitted; armed at refs == 0
    timer: threading.Timer | None = None
    timer_gen: int = 0
    load_seconds: float | None = None
    last_error: str | None = None
    load_lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Condition | None = None


class Lease:
    """A reference to a loaded model, held for one request. Release exactly once."""

    def __init__(self, manager: ModelManager, slot: Slot):
        self.manager = manager
        self.slot = slot
        self._released = False

    @property
    def model(self) -> LoadedModel:
        return self.slot.loaded

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.manager._release(self.slot)


class ModelManager:
    """Lazy loading, ref counts, keep-alive timers, LRU eviction and unloading."""

    def __init__(self, table: dict[str, ModelSpec], settings, ensure_on_disk, hooks=None):
        self.table = table
        self.settings = settings
        self._ensure_on_disk = ensure_on_disk  # (spec) -> Path; raises ModelNotDownloaded
        self.hooks = hooks  # optional metrics hooks: on_load(name, seconds), on_evict(name)
        device = plan_for(next(iter(table.values())), settings.device).device if table else "cpu"
        self.device = device
        total = psutil.virtual_memory().total
        self.probe = MemoryProbe(device, settings.ram_budget_bytes(total))
        self._lock = threading.RLock()
        self._admission = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a reference drops
        self._slots = {name: Slot(spec) for name, spec in table.items()}
        for slot in self._slots.values():
            slot.gate = threading.Condition(self._lock)
        self.loads = 0
        self.evictions = 0
        self.closed = False

    # --- public API -------------------------------------------------------
    def spec(self, name: str) -> ModelSpec:
        if name not in self.table:
            raise ModelNotFound(name, self.table)
        return self.table[name]

    @contextlib.contextmanager
    def lease(self, name: str, keep_alive: float | None = None):
        """Context manager around acquire/release."""
        lease = self.acquire(name, keep_alive)
        try:
            yield lease
        finally:
            lease.release()

    def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Wait for a turn on the model (bounded), load it if needed, and take a reference."""
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFound(name, self.table)
        s = self.settings
        with self._lock:
            if self.closed:
                raise Unavailable("server is shutting down", code="shutting_down")
            if slot.waiting >= s.max_queue:
                raise TooManyRequests(
                    f"model '{name}' has {slot.waiting} requests waiting; try again later",
                    headers={"Retry-After": "2"},
                )
            slot.refs += 1  # a queued request already protects the model from eviction
            self._cancel_timer(slot)
            slot.waiting += 1
            deadline = time.monotonic() + s.queue_timeout
            try:
                while slot.active >= self._concurrency(slot):
                    left = deadline - time.monotonic()
                    if left <= 0 or self.closed:
                        raise Unavailable(
                            f"timed out waiting for model '{name}'", code="queue_timeout"
                        )
                    slot.gate.wait(left)
                slot.active += 1
                # The latest request admitted sets the keep-alive armed when the last reference
                # drops (as Ollama's sessionDuration): what /admin/load reports is what applies.
                slot.keep_alive = self._keep_alive_for(slot, keep_alive)
            except BaseException:
                slot.refs -= 1
                self._after_release(slot)
                raise
            finally:
                slot.waiting -= 1
        lease = Lease(self, slot)
        try:
            self._ensure_loaded(slot)
        except BaseException:
            lease.release()
            raise
        return lease

    def load(self, name: str, keep_alive: float | None = None) -> dict:
        """Load a model now (admin or preload) and leave it idle with its keep-alive armed."""
        with self.lease(name, keep_alive):
            pass
        return self.status_of(name)

    def unload(self, name: str) -> dict:
        """Unload one model now; 409 if a request is using it."""
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFound(name, self.table)
        with self._lock:
            if slot.refs > 0:
                raise Conflict(f"model '{name}' is in use by {slot.refs} request(s)")
            if slot.state != "loaded":
                return {"model": name, "unloaded": False, "freed_bytes": 0}
            freed = self._unload_locked(slot, reason="admin")
        return {"model": name, "unloaded": True, "freed_bytes": freed}

    def unload_idle(self, reason: str = "cleanup") -> list[dict]:
        """Unload every loaded model that no request is using."""
        out = []
        with self._lock:
            for slot in self._slots.values():
                if slot.state == "loaded" and slot.refs == 0:
                    freed = self._unload_locked(slot, reason=reason)
                    out.append({"model": slot.spec.name, "freed_bytes": freed})
        return out

    def free_memory(self, exclude: str | None = None) -> list[dict]:
        """Evict idle models (but `exclude`) and clear allocator caches; used on out-of-memory."""
        out = []
        with self._lock:
            for slot in self._slots.values():
                if slot.spec.name != exclude and slot.state == "loaded" and slot.refs == 0:
                    out.append(
                        {"model": slot.spec.name, "freed_bytes": self._unload_locked(slot, "oom")}
                    )
        collect()
        return out

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(s.loaded.bytes for s in self._slots.values() if s.loaded is not None)

    def holders(self, name: str) -> int:
        """Requests holding a turn on the model now (read without the lock: a hint)."""
        slot = self._slots.get(name)
        return slot.active if slot is not None else 0

    def status_of(self, name: str) -> dict:
        slot = self._slots[name]
        with self._lock:
            lm = slot.loaded
            return {
                "state": slot.state,
                "device": lm.plan.device if lm else None,
                "dtype": lm.plan.dtype_name if lm else None,
                "bytes": lm.bytes if lm else 0,
                "ref_count": slot.refs,
                "active": slot.active,
                "waiting": slot.waiting,
                "last_used": slot.last_used or None,
                "expires_at": slot.expires_at,
                "keep_alive": (
                    slot.keep_alive
                    if slot.state == "loaded" and slot.keep_alive is not None
                    else self._keep_alive_for(slot, None)
                ),
                "load_seconds": slot.load_seconds,
                "last_error": slot.last_error,
            }

    def queue_depth(self) -> int:
        with self._lock:
            return sum(s.waiting for s in self._slots.values())

    def loaded_models(self) -> list[str]:
        with self._lock:
            return [n for n, s in self._slots.items() if s.state == "loaded"]

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            slot = self._slots.get(name)
            return bool(slot and slot.state == "loaded")

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new work, wait for requests in flight (up to timeout), unload everything."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self.closed = True
            for slot in self._slots.values():
                slot.gate.notify_all()
            while any(s.refs for s in self._slots.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("shutdown timeout with requests still running")
                    break
                self._changed.wait(left)
            for slot in self._slots.values():
                self._cancel_timer(slot)
                if slot.state == "loaded" and slot.refs == 0:
                    self._unload_locked(slot, reason="shutdown")

    # --- internals --------------------------------------------------------
    def _keep_alive_for(self, slot: Slot, override: float | None) -> float:
        if override is not None:
            return override
        if slot.spec.keep_alive is not None:
            return slot.spec.keep_alive
        return self.settings.default_keep_alive

    def _concurrency(self, slot: Slot) -> int:
        """Generations at once on one model: a family that batches admits a whole batch."""
        s = self.settings
        if s.batch_max_size > 1 and getattr(get_handler(slot.spec.family), "batchable", False):
            return max(s.max_concurrency, s.batch_max_size)
        return s.max_concurrency

    def _release(self, slot: Slot) -> None:
        with self._lock:
            slot.active -= 1
            slot.refs -= 1
            slot.last_used = time.time()
            slot.gate.notify()
            self._changed.notify_all()
            self._after_release(slot)

    def _after_release(self, slot: Slot) -> None:
        """Called under _lock when a reference is dropped: arm the idle timer at zero."""
        if slot.refs > 0 or slot.state != "loaded":
            return
        ka = slot.keep_alive if slot.keep_alive is not None else self._keep_alive_for(slot, None)
        if ka == 0:
            self._unload_locked(slot, reason="keep_alive=0")
        elif ka > 0:
            slot.timer_gen += 1
            gen = slot.timer_gen
            slot.expires_at = time.time() + ka
            slot.timer = threading.Timer(ka, self._expire, args=(slot, gen))
            slot.timer.daemon = True
            slot.timer.start()
        else:
            slot.expires_at = None

    def _cancel_timer(self, slot: Slot) -> None:
        slot.timer_gen += 1
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.expires_at = None

    def _expire(self, slot: Slot, gen: int) -> None:
        with self._lock:
            if slot.timer_gen == gen and slot.refs == 0 and slot.state == "loaded":
                self._unload_locked(slot, reason="idle")

    def _unload_locked(self, slot: Slot, reason: str) -> int:
        """Drop every reference to the model. Caller holds _lock and checked refs == 0."""
        self._cancel_timer(slot)
        lm, slot.loaded = slot.loaded, None
        slot.state = "unloaded"
        freed = lm.bytes if lm else 0
        alive = None
        if lm is not None:
            if getattr(lm, "batcher", None) is not None:
                lm.batcher.close()  # idle: refs == 0, so its worker holds no request
            alive = weakref.ref(lm.model)
            lm.model = lm.processor = lm.tokenizer = None
        del lm
        # Reference counting frees the weights at once in the usual case; a full collection
        # (frozen objects included) runs only when a reference cycle still holds the model.
        if alive is not None and alive() is not None:
            gc.unfreeze()
            collect()
            gc.freeze()
        else:
            collect(full=False)
        self.evictions += reason not in ("admin", "shutdown")
        log.info("unloaded %s (%s), %.2f GB", slot.spec.name, reason, freed / GB)
        if self.hooks:
            self.hooks.on_unload(slot.spec.name, reason)
        return freed

    def _ensure_loaded(self, slot: Slot) -> None:
        if slot.state == "loaded":
            return
        with slot.load_lock:
            if slot.state == "loaded":
                return
            spec = slot.spec
            path = self._ensure_on_disk(spec)
            with self._admission:
                with self._lock:
                    slot.state = "loading"
                try:
                    lm = self._load_with_room(slot, Path(path))
                except BaseException as exc:
                    with self._lock:
                        slot.state = "unloaded"
                        slot.last_error = type(exc).__name__
                    raise
                with self._lock:
                    slot.loaded = lm
                    slot.state = "loaded"
                    slot.last_error = None
                    self.loads += 1

    def _make_room(self, slot: Slot, need: int) -> None:
        with self._lock:
            candidates = [
                Candidate(s.spec.name, s.loaded.bytes, s.last_used, s.refs > 0)
                for s in self._slots.values()
                if s is not slot and s.state == "loaded" and s.loaded is not None
            ]
            loaded = sum(c.bytes for c in candidates)
            free = self.probe.free_bytes(loaded)
            plan = choose_victims(need, free, candidates)
            if not plan.fits:
                raise OutOfMemory(
                    f"model '{slot.spec.name}' needs about {need / GB:.2f} GB but only "
                    f"{free / GB:.2f} GB can be freed now",
                )
            for name in plan.victims:
                log.info("evicting %s to make room for %s", name, slot.spec.name)
                self._unload_locked(self._slots[name], reason="evicted")

    def _load_with_room(self, slot: Slot, path: Path) -> LoadedModel:
        spec = slot.spec
        plan = plan_for(spec, self.settings.device, self.settings)
        need = estimate_model_bytes(path, plan.dtype_name, spec.quantization)
        self._make_room(slot, need)
        handler = get_handler(spec.family)
        t0 = time.monotonic()
        for attempt in (1, 2):
            try:
                lm = load_model(spec, path, plan, handler)
                break
            except Exception as exc:  # noqa: BLE001 - classified right below
                if is_oom(exc) and attempt == 1:
                    log.warning("out of memory loading %s; freeing memory and retrying", spec.name)
                    self.free_memory(exclude=spec.name)
                    continue
                log.error("loading %s failed", spec.name, exc_info=exc)
                if is_oom(exc):
                    raise OutOfMemory(f"not enough memory to load model '{spec.name}'") from exc
                raise ModelLoadFailed(
                    f"model '{spec.name}' failed to load; see the server log",
                    details=type(exc).__name__,
                ) from exc
        # What a load creates lives until the unload: collect its garbage now, then freeze
        # the rest so later automatic collections (and the next load) do not rescan it.
        gc.collect()
        gc.freeze()
        slot.load_seconds = time.monotonic() - t0
        log.info(
            "loaded %s on %s (%s) in %.2fs, %.2f GB (estimated %.2f GB)",
            spec.name, plan.device, plan.dtype_name, slot.load_seconds, lm.bytes / GB, need / GB,
        )  # fmt: skip
        if self.hooks:
            self.hooks.on_load(spec.name, slot.load_seconds)
        return lm


def collect(full: bool = True) -> None:
    """Collect garbage (all generations, or only the youngest) and return cached CUDA blocks."""
    gc.collect(2 if full else 0)
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


__all__ = ["ModelManager", "Lease", "ModelNotDownloaded", "collect"]

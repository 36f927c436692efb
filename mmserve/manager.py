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
- Waiting requests are served first come, first served: a waiter takes a turn only when
  it heads `slot.queue` (its queue position is its index + 1).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from .eviction import Candidate
from .families import get_handler
from .loader import LoadedModel, load_model, plan_for
from .memory import GB, MemoryProbe, estimate_model_bytes
from .models_config import ModelSpec
from .planner import (
    FitPlan,
    bits_name,
    kv_cache_bytes,
    plan_fit,
    quantization_reason,
    quantization_setting,
)
from .stages import StageBoard
from .waiting import Waiter, current_ticket

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
    queue: list = field(default_factory=list)  # Waiters in arrival order
    quant_bits: int | None = None  # bits the loaded model runs at (None: full precision)
    quant_reason: str | None = None
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

    def __init__(
        self,
        table: dict[str, ModelSpec],
        settings,
        ensure_on_disk,
        hooks=None,
        stages: StageBoard | None = None,
    ):
        self.table = table
        self.settings = settings
        self._ensure_on_disk = ensure_on_disk  # (spec) -> Path; raises ModelNotDownloaded
        self.hooks = hooks  # optional metrics hooks: on_load(name, seconds), on_evict(name)
        self.stages = stages or StageBoard()  # what each model is doing (shared with fetches)
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
            waiter = Waiter(name)
            ticket = current_ticket.get()
            if ticket is not None:
                ticket.waiter = waiter
            slot.queue.append(waiter)
            slot.waiting += 1
            deadline = time.monotonic() + s.queue_timeout
            try:
                while slot.active >= self._concurrency(slot) or slot.queue[0] is not waiter:
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
                slot.queue.remove(waiter)
                waiter.admitted = True
                slot.gate.notify_all()  # the next waiter may now head the queue
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
            return sum(model_bytes(s.loaded) for s in self._slots.values() if s.loaded is not None)

    def holders(self, name: str) -> int:
        """Requests holding a turn on the model now (read without the lock: a hint)."""
        slot = self._slots.get(name)
        return slot.active if slot is not None else 0

    def queue_position(self, waiter: Waiter) -> int | None:
        """1-based place of a waiting request in its model's queue; None once admitted."""
        slot = self._slots.get(waiter.model)
        with self._lock:
            if slot is None or waiter.admitted or waiter not in slot.queue:
                return None
            return slot.queue.index(waiter) + 1

    def status_of(self, name: str) -> dict:
        slot = self._slots[name]
        now = time.monotonic()
        with self._lock:
            lm = slot.loaded
            spec = slot.spec
            return {
                "state": "unloaded" if slot.state == "unloading" else slot.state,
                **self.stages.get(name),
                "quant_bits": slot.quant_bits if lm else spec.quantization,
                "quant_reason": slot.quant_reason if lm else None,
                "quantization": quantization_setting(spec.quantization_choices),
                "queue": [
                    {"position": i + 1, "age_seconds": round(now - w.since, 3)}
                    for i, w in enumerate(slot.queue)
                ],
                "device": lm.plan.device if lm else None,
                "dtype": lm.plan.dtype_name if lm else None,
                "bytes": model_bytes(lm) if lm else 0,
                "kv_cache_bytes": kv_bytes(lm) if lm else 0,
                "packed_weights_bytes": packed_bytes(lm) if lm else 0,
                "kv_cache_budget_bytes": getattr(lm.engine, "kv_budget", None) if lm else None,
                "prefix_cache": prefix_status(lm),
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

    def concurrency(self, name: str) -> int:
        """Generations the model takes at once (leases held together never wait on each
        other up to this many)."""
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFound(name)
        return self._concurrency(slot)

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
            slot.gate.notify_all()  # FIFO: only the head of the queue proceeds
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
        freed = model_bytes(lm) if lm else 0
        alive = None
        if lm is not None:
            if lm.engine is not None:
                lm.engine.close()  # idle: refs == 0, so it holds no request
                lm.engine = None
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
            with self._lock:
                slot.state = "loading"  # from here on: fetching, admission, weights, warm-up
            try:
                path = Path(self._ensure_on_disk(slot.spec))
                with self._admission:
                    lm = self._load_with_room(slot, path)
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

    # --- planning: the same code answers GET /admin/plan and decides each load -----------
    def plan(self, name: str, bits=..., context: int = 0) -> list[FitPlan]:
        """The fit plan of each quantization choice (the entry's own choices by default, or
        `bits` alone), as a load would decide now. Changes nothing. Raises ModelNotFound, and
        ModelNotDownloaded when the files are not on disk to size the model from."""
        slot = self._slots.get(name)
        if slot is None:
            raise ModelNotFound(name)
        path = Path(self._ensure_on_disk(slot.spec, fetch=False))
        choices = slot.spec.quantization_choices if bits is ... else (bits,)
        with self._lock:
            return [self._plan_locked(slot, path, b, context) for b in choices]

    def _plan_locked(self, slot: Slot, path: Path, bits: int | None, context: int) -> FitPlan:
        """One choice's plan; caller holds _lock (the loaded set must not change under it)."""
        dtype = plan_for(slot.spec, self.settings.device, self.settings).dtype_name
        weights = estimate_model_bytes(path, dtype, bits)
        kv = kv_cache_bytes(path / "config.json", context, dtype)
        candidates = [
            Candidate(s.spec.name, model_bytes(s.loaded), s.last_used, s.refs > 0)
            for s in self._slots.values()
            if s is not slot and s.state == "loaded" and s.loaded is not None
        ]
        free = self.probe.free_bytes(sum(c.bytes for c in candidates))
        return plan_fit(slot.spec.name, bits, weights, kv, free, candidates, context)

    def _choose_and_make_room(self, slot: Slot, path: Path) -> FitPlan:
        """The first quantization choice that fits after evicting idle models; evict them.
        Raises OutOfMemory (503) with every choice's plan in its details when none fits."""
        spec = slot.spec
        with self._lock:
            plans = []
            for bits in spec.quantization_choices:
                plan = self._plan_locked(slot, path, bits, 0)
                plans.append(plan)
                if plan.fits:
                    break
            else:
                need = min(p.total_bytes for p in plans)
                raise OutOfMemory(
                    f"model '{spec.name}' needs about {need / GB:.2f} GB but only "
                    f"{plans[-1].free_bytes / GB:.2f} GB can be freed now",
                    details={"plans": [p.to_dict() for p in plans]},
                )
            for victim in plan.evict:
                log.info("evicting %s to make room for %s", victim["model"], spec.name)
                self._unload_locked(self._slots[victim["model"]], reason="evicted")
        slot.quant_reason = quantization_reason(spec.quantization_choices, plan)
        log.info("%s: %s", spec.name, slot.quant_reason)
        return plan

    def _load_with_room(self, slot: Slot, path: Path) -> LoadedModel:
        fit = self._choose_and_make_room(slot, path)
        # The loaded model carries the chosen bits as its entry's quantization, so the loader,
        # the CPU fallback rule and the results all see what was applied.
        spec = dataclasses.replace(slot.spec, quantization=fit.quant_bits)
        plan = plan_for(spec, self.settings.device, self.settings)
        handler = get_handler(spec.family)
        name = spec.name
        weights_stage = "quantizing" if fit.quant_bits else "loading_weights"

        @contextlib.contextmanager
        def stages(kind: str):
            with self.stages.stage(name, weights_stage if kind == "weights" else "warming_up"):
                yield

        t0 = time.monotonic()
        for attempt in (1, 2):
            try:
                lm = load_model(spec, path, plan, handler, stages=stages)
                break
            except Exception as exc:  # noqa: BLE001 - classified right below
                if is_oom(exc) and attempt == 1:
                    log.warning("out of memory loading %s; freeing memory and retrying", name)
                    self.free_memory(exclude=name)
                    continue
                log.error("loading %s failed", name, exc_info=exc)
                if is_oom(exc):
                    raise OutOfMemory(f"not enough memory to load model '{name}'") from exc
                raise ModelLoadFailed(
                    f"model '{name}' failed to load; see the server log",
                    details=type(exc).__name__,
                ) from exc
        try:
            lm.engine = handler.make_engine(lm, self.settings)  # closed by _unload_locked
        except Exception as exc:
            log.error("starting the engine of %s failed", spec.name, exc_info=exc)
            raise ModelLoadFailed(
                f"model '{spec.name}' failed to load; see the server log",
                details=type(exc).__name__,
            ) from exc
        # What a load creates lives until the unload: collect its garbage now, then freeze
        # the rest so later automatic collections (and the next load) do not rescan it.
        gc.collect()
        gc.freeze()
        slot.load_seconds = time.monotonic() - t0
        slot.quant_bits = fit.quant_bits
        log.info(
            "loaded %s on %s (%s, %s) in %.2fs, %.2f GB (estimated %.2f GB)",
            name, plan.device, plan.dtype_name, bits_name(fit.quant_bits), slot.load_seconds,
            lm.bytes / GB, fit.total_bytes / GB,
        )  # fmt: skip
        if self.hooks:
            self.hooks.on_load(name, slot.load_seconds)
        return lm


def prefix_status(lm) -> dict | None:
    """The engine's prefix cache: bytes held (inside `kv_cache_bytes`), prompts stored, hits
    and prompt tokens not recomputed; None without a continuous-batching engine."""
    prefix = getattr(lm.engine, "prefix", None) if lm is not None else None
    if prefix is None:
        return None
    return {
        "bytes": prefix.bytes,
        "max_bytes": prefix.max_bytes,
        "prompts": len(prefix.entries),
        "hits": prefix.hits,
        "tokens_reused": prefix.tokens_reused,
    }


def kv_bytes(lm: LoadedModel) -> int:
    """KV cache bytes the model's engine holds or has reserved for its admitted rows."""
    engine = lm.engine
    if engine is None:
        return 0
    return max(engine.cache_bytes(), engine.reserved_bytes())


def packed_bytes(lm: LoadedModel) -> int:
    """Bytes of the packed weight copies its engine made (`mmserve.cpu_linear`)."""
    packer = getattr(lm.engine, "packer", None)
    return packer.bytes if packer is not None else 0


def model_bytes(lm: LoadedModel) -> int:
    """The model's size as eviction and /admin/model_status see it: weights + packed
    weight copies + KV cache."""
    return lm.bytes + packed_bytes(lm) + kv_bytes(lm)


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

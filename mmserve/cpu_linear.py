"""The linear layers of a float32 text model on the CPU, with MKL's packed GEMM for decode
batches of 4-16 rows.

Why: a decode step multiplies a few rows by every weight of the model, read from memory
once per step. For 1-3 rows MKL's sgemm (what `F.linear` calls) streams the weights at
memory speed; from 4 rows it repacks each weight on every call, and an 8-row step of
SmolLM2-135M costs about 1.7x a 1-row step on 2 cores. With the weights packed once
(`cblas_sgemm_pack`, `torch.ops.mkl._mkl_reorder_linear_weight`, the op inductor's CPU
fusions use) and multiplied with `torch.ops.mkl._mkl_linear`, the 8-row step costs about
0.8x. Whole decode steps, plain and packed alternated in one process: `python -m
bench.kernel`, the "Kernel" section of bench/RESULTS.md.

Cost: a second copy of every packed weight (as many bytes as the weights). So the copies
are made lazily, a layer at a time, the first time a batch of `MIN_ROWS`-`MAX_ROWS` rows
reaches it (a model that never decodes 4 rows together never pays), they count in the
model's size that eviction and /admin/model_status see (`Packer.bytes`), and `Packer.
release` frees them when the engine closes. Outside 4-16 rows (one request alone,
prefill chunks) `F.linear` runs on the original weight, so a request decoding alone
computes exactly what `model.generate` computes; packed and plain sums differ in order by
about 1e-6 relative, the size of MKL's own differences between batch sizes.

Threads: every packing and the one-off check that the ops work run on the thread that
first multiplies a batch (the engine's). A torch op that goes parallel on another,
long-lived thread (a request thread that loaded the model) gives that thread an OpenMP
pool of its own; with more pooled threads than cores, GNU OpenMP stops spinning between
parallel regions and sleeps instead, which made every 1-row decode step of the engine
about 1.5x slower on 2 cores (measured: ~5,000 context switches per second).
"""

from __future__ import annotations

import logging
import threading
import types

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("mmserve.cpu_linear")
MIN_ROWS, MAX_ROWS = 4, 16  # rows (tokens) per call that take the packed weight
_PACK_FOR = MAX_ROWS  # the batch size MKL tunes the packed layout for (fastest over 4-16)


def _ops_present() -> bool:
    """Whether this torch build has MKL and its packed linear ops (x86 only: aarch64 builds
    lack them). Runs no op."""
    mkl = getattr(torch.ops, "mkl", None)
    return torch.backends.mkl.is_available() and hasattr(mkl, "_mkl_linear")


def packed_linear_available() -> bool:
    """Whether this torch build has MKL's packed linear ops and they agree with `F.linear`."""
    if not _ops_present():
        return False
    mkl = torch.ops.mkl
    try:
        gen = torch.Generator().manual_seed(0)
        w, b = torch.randn(64, 32, generator=gen), torch.randn(64, generator=gen)
        x = torch.randn(MIN_ROWS, 32, generator=gen)
        with torch.inference_mode():
            packed = mkl._mkl_reorder_linear_weight(w, _PACK_FOR)
            got = mkl._mkl_linear(x, packed, w, b, MIN_ROWS)
        return bool(torch.allclose(got, F.linear(x, w, b), rtol=1e-4, atol=1e-5))
    except (RuntimeError, TypeError, AttributeError):  # another signature in this build
        return False


def _eligible(module: nn.Module) -> bool:
    w = getattr(module, "weight", None)
    return (
        type(module) is nn.Linear  # not bitsandbytes' or other subclasses
        and w is not None
        and w.device.type == "cpu"
        and w.dtype == torch.float32
        and w.dim() == 2
    )


class Packer:
    """The packed copies of one model's linear weights, made on first use.

    `bytes`: the copies' size now (each as large as its weight). Thread-safe; the copies
    are read-only once made."""

    def __init__(self) -> None:
        self.bytes = 0
        self._packed: dict[nn.Linear, tuple[torch.Tensor, int, int]] = {}  # copy, ptr, bytes
        self._lock = threading.Lock()
        self.closed = False
        self.usable: bool | None = None  # checked on the first batch, on its thread

    def weight_for(self, module: nn.Linear) -> torch.Tensor | None:
        """`module`'s packed weight, packing it now if needed; None once released or when the
        weight was replaced since (its storage moved)."""
        found = self._packed.get(module)
        w = module.weight
        if found is not None and found[1] == w.data_ptr():
            return found[0]
        with self._lock:
            if self.usable is None:
                self.usable = packed_linear_available()
                if not self.usable:
                    log.warning("MKL's packed linear ops do not work here: batches use F.linear")
            if self.closed or not self.usable or not _eligible(module):
                return None
            old = self._packed.pop(module, None)
            if old is not None:
                self.bytes -= old[2]
            with torch.inference_mode():
                packed = torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), _PACK_FOR)
            self._packed[module] = (packed, w.data_ptr(), w.nbytes)
            self.bytes += w.nbytes
            return packed

    def release(self) -> None:
        """Free every copy; later calls run `F.linear`."""
        with self._lock:
            self.closed = True
            self._packed.clear()
            self.bytes = 0


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`nn.Linear.forward`; inputs of MIN_ROWS-MAX_ROWS float32 rows on the CPU take the
    packed weight."""
    rows = x.numel() // x.shape[-1] if x.dim() and x.shape[-1] else 0
    if MIN_ROWS <= rows <= MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu":
        packed = self._mmserve_packer.weight_for(self)
        if packed is not None:
            return torch.ops.mkl._mkl_linear(x, packed, self.weight, self.bias, rows)
    return F.linear(x, self.weight, self.bias)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the float32 CPU `nn.Linear` weights packing would copy (one copy per layer,
    a weight tied to an embedding included)."""
    return sum(m.weight.nbytes for m in model.modules() if _eligible(m))


def use_packed_linears(model: nn.Module, max_bytes: int) -> Packer | None:
    """Route `model`'s float32 CPU `nn.Linear` layers through packed weights for 4-16 rows
    (see the module doc), or None when there are none (other dtypes or devices), this torch
    build lacks the ops, or their copies would exceed `max_bytes`. Runs no torch op (see
    "Threads" above). Only each layer's `forward` is replaced: weights, tying, `state_dict`
    and device moves are untouched (inputs on another device take `F.linear`)."""
    need = weight_bytes(model)
    if need == 0 or not _ops_present():
        return None
    if need > max_bytes:
        log.info(
            "packed weights skipped: their copies need %.2f GB, more than %.2f GB",
            need / 1024**3,
            max_bytes / 1024**3,
        )
        return None
    packer = Packer()
    for module in model.modules():
        if _eligible(module):
            module._mmserve_packer = packer
            module.forward = types.MethodType(_forward, module)
    return packer

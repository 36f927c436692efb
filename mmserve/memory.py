"""Memory probes (CUDA and system RAM) and model size estimates from safetensors headers."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import psutil

GB = 1024**3
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
TARGET_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def safetensors_tensors(path: Path) -> dict[str, dict]:
    """Tensor metadata (dtype, shape, data_offsets) from one safetensors header."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header


def estimate_model_bytes(model_dir: Path, target_dtype: str, quantization: int | None) -> int:
    """Bytes the model will take once loaded, from its safetensors headers.

    Quantized 2-D weights (linear layers) count bits/8 bytes per element plus
    the block scales; everything else counts the target dtype. 10% slack covers
    buffers and allocator overhead. Falls back to file sizes when there are no
    safetensors files.
    """
    per_elem = TARGET_BYTES.get(target_dtype, 4)
    files = sorted(Path(model_dir).glob("*.safetensors"))
    total = 0.0
    if not files:
        for f in Path(model_dir).glob("*"):
            if f.suffix in (".bin", ".pt", ".pth", ".gguf"):
                total += f.stat().st_size
        return int(total * 1.1)
    for f in files:
        for name, meta in safetensors_tensors(f).items():
            numel = 1
            for dim in meta["shape"]:
                numel *= dim
            linear = len(meta["shape"]) == 2 and name.endswith(".weight") and "embed" not in name
            if quantization and linear and "lm_head" not in name:
                total += numel * quantization / 8 * 1.07
            else:
                total += numel * per_elem
    return int(total * 1.1)


def gpu_snapshot() -> dict:
    """CUDA memory in GB (zeros when there is no GPU)."""
    import torch

    if not torch.cuda.is_available():
        return {"gpu_available": False, "gpu_total_gb": 0.0, "gpu_allocated_gb": 0.0,
                "gpu_reserved_gb": 0.0, "gpu_free_gb": 0.0}  # fmt: skip
    free, total = torch.cuda.mem_get_info()
    return {
        "gpu_available": True,
        "gpu_name": torch.cuda.get_device_name(0),
        "gpu_total_gb": round(total / GB, 3),
        "gpu_allocated_gb": round(torch.cuda.memory_allocated() / GB, 3),
        "gpu_reserved_gb": round(torch.cuda.memory_reserved() / GB, 3),
        "gpu_free_gb": round(free / GB, 3),
    }


class MemoryProbe:
    """Free memory for models on the device in use: CUDA free memory, or a RAM budget."""

    def __init__(self, device: str, ram_budget_bytes: int):
        self.device = device
        self.ram_budget = ram_budget_bytes

    def free_bytes(self, loaded_bytes: int) -> int:
        """Bytes available for a new model, given what loaded models already hold."""
        if self.device == "cuda":
            import torch

            free, _ = torch.cuda.mem_get_info()
            return int(free)
        available = psutil.virtual_memory().available
        return int(max(0, min(available, self.ram_budget - loaded_bytes)))

    def total_bytes(self) -> int:
        if self.device == "cuda":
            import torch

            return int(torch.cuda.mem_get_info()[1])
        return self.ram_budget

    def status(self, loaded_bytes: int, warning_fraction: float) -> dict:
        """The memory report of /admin/memory_status."""
        vm = psutil.virtual_memory()
        snap = gpu_snapshot()
        if snap["gpu_available"]:
            used_frac = 1 - snap["gpu_free_gb"] / max(snap["gpu_total_gb"], 1e-9)
            free_for_mm = snap["gpu_free_gb"]
        else:
            used_frac = loaded_bytes / max(self.ram_budget, 1)
            free_for_mm = self.free_bytes(loaded_bytes) / GB
        return {
            "timestamp": time.time(),
            **snap,
            "device": self.device,
            "memory_warning": used_frac >= warning_fraction,
            "multimodal_safe": free_for_mm >= 2.0 and used_frac < warning_fraction,
            "models_loaded_gb": round(loaded_bytes / GB, 3),
            "ram_budget_gb": round(self.ram_budget / GB, 3),
            "system_ram": {
                "total_gb": round(vm.total / GB, 3),
                "available_gb": round(vm.available / GB, 3),
                "used_percent": vm.percent,
                "process_rss_gb": round(psutil.Process().memory_info().rss / GB, 3),
            },
        }

"""Whether each table entry can answer (on disk, downloadable, missing) and what it would cost."""

from __future__ import annotations

import fnmatch
import functools
import importlib.util
from pathlib import Path

from utils.download_model import check_model

from .memory import TARGET_BYTES, estimate_model_bytes
from .models_config import ModelSpec

ON_DISK, DOWNLOADABLE, MISSING = "on_disk", "downloadable", "missing"


def package_dir(spec: ModelSpec) -> Path | None:
    """The folder of an embedded entry's installed package (None if absent or not embedded)."""
    if spec.source.get("type", "hub") == "hub":
        return None
    found = importlib.util.find_spec(spec.source["package"])
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def _gguf_file(spec: ModelSpec, pkg: Path) -> Path | None:
    pattern = spec.source.get("pattern", "*.gguf")
    files = sorted(p for p in pkg.rglob("*") if fnmatch.fnmatch(p.name, pattern))
    return files[0] if files else None


@functools.lru_cache(maxsize=256)
def _estimate(path: str, mtime: float, dtype: str, bits: int | None, gguf: bool) -> int:
    """Cached by (path, mtime): reading headers is cheap but /v1/models asks for every entry."""
    if gguf:  # dequantized at load (transformers' GGUF loader): every element in `dtype`
        from gguf import GGUFReader

        numel = sum(int(t.n_elements) for t in GGUFReader(path).tensors)
        return int(numel * TARGET_BYTES.get(dtype, 4) * 1.1)
    return estimate_model_bytes(Path(path), dtype, bits)


def estimated_bytes(
    spec: ModelSpec, models_dir: Path, dtype: str, bits: int | None, complete: bool
) -> int | None:
    """Memory the entry takes once loaded at `bits` (None: full precision), from the files on
    disk or in its package; None when nothing is on disk to read it from."""
    if complete:
        path = spec.path(models_dir)
        return _estimate(str(path), path.stat().st_mtime, dtype, bits, False)
    pkg = package_dir(spec)
    if pkg is None:
        return None
    if spec.source["type"] == "pypi_gguf":
        gguf = _gguf_file(spec, pkg)
        if gguf is None:
            return None
        return _estimate(str(gguf), gguf.stat().st_mtime, dtype, bits, True)
    src = pkg / spec.source.get("subdir", "")
    return _estimate(str(src), src.stat().st_mtime, dtype, bits, False)


def describe(spec: ModelSpec, models_dir: Path, offline: bool, dtype: str = "float32") -> dict:
    """{"availability", "disk_bytes", "estimated_bytes", "on_disk_complete", "path_exists"}.

    `on_disk`: complete in models_dir, or embedded with its package installed (materialised
    from it on first use, offline); `downloadable`: a Hub entry the server may fetch;
    `missing`: neither (offline, or an embedded entry whose package is not installed).
    """
    report = check_model(spec, models_dir)
    complete = report["complete"]
    disk = report["bytes"]
    pkg = None if complete else package_dir(spec)
    if complete:
        availability = ON_DISK
    elif spec.source.get("type", "hub") != "hub":
        availability = ON_DISK if pkg is not None else MISSING
        if pkg is not None and not disk:
            disk = sum(p.stat().st_size for p in _source_files(spec, pkg))
    else:
        availability = MISSING if offline else DOWNLOADABLE
    return {
        "availability": availability,
        "path_exists": report["path_exists"],
        "on_disk_complete": complete,
        "disk_bytes": disk,
        "estimated_bytes": estimated_bytes(spec, models_dir, dtype, spec.quantization, complete),
    }


def _source_files(spec: ModelSpec, pkg: Path) -> list[Path]:
    if spec.source["type"] == "pypi_gguf":
        gguf = _gguf_file(spec, pkg)
        return [gguf] if gguf else []
    return [p for p in (pkg / spec.source.get("subdir", "")).rglob("*") if p.is_file()]

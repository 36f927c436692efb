"""Command line: run the server (gunicorn, one worker) or the Flask dev server, or fetch models."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Multi-model inference server.")
    p.add_argument(
        "--host",
        default=os.environ.get("MMSERVE_HOST", "127.0.0.1"),
        help="address to bind (default 127.0.0.1; use 0.0.0.0 only on purpose)",
    )
    p.add_argument("--port", type=int, default=os.environ.get("MMSERVE_PORT", "5000"))
    p.add_argument(
        "--threads",
        type=int,
        default=os.environ.get("MMSERVE_THREADS", "8"),
        help="request threads of the single gunicorn worker",
    )
    p.add_argument("--debug", action="store_true", help="run the Flask development server")
    p.add_argument("--models-dir", help="folder holding the model folders (default ./models)")
    p.add_argument("--models-config", help="YAML or JSON file adding or overriding table entries")
    p.add_argument("--preload", nargs="+", metavar="NAME", help="models to load at start-up")
    p.add_argument(
        "--download",
        nargs="*",
        metavar="NAME",
        help="fetch these models (default: the embedded ones) and exit",
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="serve on a local Ray Serve cluster (needs requirements-cluster.txt)",
    )
    p.add_argument("--replicas", type=int, default=2, help="engine replicas with --cluster")
    p.add_argument(
        "--replica-cpus",
        type=float,
        help="CPUs per engine replica with --cluster on a machine without a GPU (default 1)",
    )
    return p.parse_args(argv)  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    env = os.environ
    if args.models_dir:
        env["MMSERVE_MODELS_DIR"] = str(Path(args.models_dir).resolve())
    if args.models_config:
        env["MMSERVE_MODELS_CONFIG"] = str(Path(args.models_config).resolve())
    if args.preload:
        env["MMSERVE_PRELOAD"] = " ".join(args.preload)
    env["MMSERVE_HOST"], env["MMSERVE_PORT"] = args.host, str(args.port)
    env["MMSERVE_THREADS"] = str(args.threads)
    if args.download is not None or args.debug:
        from mmserve.preflight import check_or_exit

        check_or_exit()  # one line and exit 2 on bad settings or table, as in gunicorn.conf.py
    if args.download is not None:
        from utils.download_model import main as download_main

        extra = ["--models-dir", env["MMSERVE_MODELS_DIR"]] if args.models_dir else []
        return download_main(list(args.download) + extra)
    if args.cluster:
        return run_cluster(args)
    if args.debug:
        from app import create_app

        create_app().run(host=args.host, port=args.port, threaded=True, use_reloader=False)
        return 0
    # One worker, so each model exists once in memory; threads give concurrency. gunicorn.conf.py
    # checks the settings and the table before gunicorn starts (one line and exit 2 if bad).
    os.chdir(ROOT)
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "gunicorn.conf.py"),
        "app:create_app()",
    ]
    os.execv(sys.executable, cmd)
    return 0  # pragma: no cover - execv does not return


def run_cluster(args) -> int:
    """`--cluster`: a local Ray cluster with `--replicas` engines; Ray is imported only here."""
    try:
        from mmserve.cluster.app import run_local
    except ImportError as exc:
        print(f"--cluster needs Ray Serve: pip install -r requirements-cluster.txt ({exc})")
        return 2
    if args.replicas < 1:
        print("--replicas must be at least 1")
        return 2
    cluster_args = {"replicas": args.replicas, "num_cpus": args.replica_cpus}
    return run_local(cluster_args, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

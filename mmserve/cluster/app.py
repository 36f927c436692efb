"""The Ray Serve application: an Ingress deployment in front of N Engine replicas; local start."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from ray import serve

from .engine import Engine
from .ingress import Ingress

ROOT = Path(__file__).resolve().parent.parent.parent
APP_NAME = "mmserve"


def build(args: dict | None = None):
    """Application builder (`import_path: mmserve.cluster.app:build` in a Serve config).

    `args` (all optional): `settings` (Settings fields for every replica, as
    `create_app(config)` takes them), `replicas` (engine replicas; a config file's
    `num_replicas` or `autoscaling_config` override it), `num_cpus` / `num_gpus`
    (per engine replica; default one GPU if torch sees one, else one CPU),
    `max_ongoing_requests` (per engine replica, default 16).
    """
    args = dict(args or {})
    resources = {}
    if args.get("num_gpus") is not None:
        resources["num_gpus"] = float(args["num_gpus"])
    if args.get("num_cpus") is not None:
        resources["num_cpus"] = float(args["num_cpus"])
    if not resources:
        import torch

        resources = {"num_gpus": 1} if torch.cuda.is_available() else {"num_cpus": 1}
    engine = serve.deployment(
        Engine,
        name="Engine",
        num_replicas=int(args.get("replicas", 1)),
        ray_actor_options=resources,
        max_ongoing_requests=int(args.get("max_ongoing_requests", 16)),
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    # The ingress only awaits the engines (asyncio): like Serve's own proxy, it reserves no CPU.
    ingress = serve.deployment(
        Ingress, name="Ingress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
    )
    return ingress.bind(engine.bind(dict(args.get("settings") or {})))


def run_local(args: dict, host: str, port: int, object_store_mb: int = 200) -> int:
    """Start a one-machine Ray cluster, deploy `build(args)` on host:port, serve until stopped.

    MMSERVE_* variables reach every replica. Returns 0 after SIGINT or SIGTERM, once
    Serve and Ray are shut down.
    """
    import ray

    env = {k: v for k, v in os.environ.items() if k.startswith(("MMSERVE_", "HF_"))}
    if "MMSERVE_RAM_BUDGET_GB" not in env:  # replicas on one machine share its RAM
        import psutil

        share = psutil.virtual_memory().total * 0.8 / 1024**3 / max(int(args.get("replicas", 1)), 1)
        args = {**args, "settings": {"ram_budget_gb": round(share, 2), **args.get("settings", {})}}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    ray.init(
        include_dashboard=False,
        object_store_memory=object_store_mb * 1024 * 1024,
        runtime_env={"env_vars": env},
        log_to_driver=True,
    )
    signal.signal(signal.SIGTERM, stop)  # after ray.init, which installs its own handler
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(args), name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0

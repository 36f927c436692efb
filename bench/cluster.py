"""Cluster benchmark: throughput of N engine replicas over one, on Ray Serve, under the same load.

    python -m bench.cluster --replicas 2 [--quick]

Starts `main.py --cluster --replicas 1`, then `--replicas N`, on loopback, each serving the
same two table entries of SmolLM2 (smollm2 and smollm2_copy, one folder); closed-loop clients
alternate between the two models. On a machine without GPUs each replica gets cores/N CPUs
(so one replica has all of them); with GPUs, one GPU per replica. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

from bench import load, servers
from bench.run_bench import log, prepare_models

MODELS = ("smollm2", "smollm2_copy")
PROMPTS = ["Write a haiku about the sea.", "Name three colours.", "What is a prime number?"]


def start_cluster(replicas: int, cpus: float | None, bench_models, config) -> servers.Process:
    """main.py --cluster on a free port; ready once every replica answers /health."""
    port = servers.free_port()
    env = servers.base_env()
    env.update(
        MMSERVE_LOG_DIR=str(servers.WORK / "logs"),
        MMSERVE_TMP_DIR=str(servers.WORK / "tmp"),
        MMSERVE_LOG_TO_FILE="0",
        MMSERVE_DEFAULT_KEEP_ALIVE="-1",
    )
    cmd = [sys.executable, "main.py", "--cluster", "--replicas", str(replicas), "--port", str(port)]
    cmd += ["--models-dir", str(bench_models), "--models-config", str(config)]
    if cpus is not None:
        cmd += ["--replica-cpus", str(cpus)]
    proc = servers.Process(f"cluster{replicas}", cmd, env, port, "/health")
    proc.wait_ready(300)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with urllib.request.urlopen(proc.url + "/health", timeout=30) as r:
            if len(json.load(r)["replicas"]) == replicas:
                return proc
        time.sleep(1)
    proc.stop()
    raise RuntimeError(f"{replicas} replicas did not come up; see {proc.log_path}")


def mixed_throughput(port: int, clients: int, per_client: int, max_tokens: int) -> dict:
    """Closed loop: client i sends `per_client` requests to MODELS[i % 2], back to back."""

    def work(i: int, ready) -> int:
        client = load.Client(load.Api(port, "native", MODELS[i % len(MODELS)]))
        try:
            ready()
            got = 0
            for k in range(per_client):
                reply = client.complete(PROMPTS[(i + k) % len(PROMPTS)], max_tokens)
                got += reply["usage"]["completion_tokens"]
            return got
        finally:
            client.close()

    tokens, wall = load.closed_loop(clients, work)
    return {"requests": clients * per_client, "tokens": tokens, "seconds": round(wall, 2),
            "tok_s": round(tokens / wall, 2)}  # fmt: skip


def measure(replicas: int, cpus, bench_models, config, args) -> dict:
    log(f"starting {replicas} replica(s)" + (f", {cpus} CPUs each" if cpus else ""))
    proc = start_cluster(replicas, cpus, bench_models, config)
    try:
        warm = load.Client(load.Api(proc.port, "native", MODELS[0]))
        for model in MODELS:  # load both models (and warm up) before timing
            warm.api = load.Api(proc.port, "native", model)
            warm.complete(PROMPTS[0], 4)
        warm.close()
        result = mixed_throughput(proc.port, args.clients, args.per_client, args.max_tokens)
        with urllib.request.urlopen(proc.url + "/admin/model_status", timeout=60) as r:
            result["loaded_on"] = json.load(r)["totals"]["loaded_on"]
        log(f"{replicas} replica(s): {result['tok_s']} tok/s")
        return result
    finally:
        proc.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=2, help="N, compared with one replica")
    p.add_argument("--clients", type=int, default=4, help="closed-loop clients")
    p.add_argument("--per-client", type=int, default=6, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="2 clients x 3 requests of 16 tokens")
    p.add_argument("--models-dir", default=str(servers.ROOT / "models"), help="where smollm2 is")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.per_client, args.max_tokens = 2, 3, 16

    import torch

    servers.WORK.mkdir(parents=True, exist_ok=True)
    _, bench_models, config = prepare_models(Path(args.models_dir))
    gpus = torch.cuda.device_count()
    cores = os.cpu_count() or 1
    runs = {}
    for n in (1, args.replicas):
        cpus = None if gpus >= n else cores / n
        runs[n] = measure(n, cpus, bench_models, config, args)
    out = {
        "replicas": args.replicas,
        "gpus": gpus,
        "cores": cores,
        "load": {"clients": args.clients, "per_client": args.per_client,
                 "max_tokens": args.max_tokens, "models": list(MODELS)},  # fmt: skip
        "one": runs[1],
        "n": runs[args.replicas],
        "ratio": round(runs[args.replicas]["tok_s"] / runs[1]["tok_s"], 3),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark mmserve on the embedded SmolLM2: `python bench/run_bench.py [--quick]`.

One run measures, on this machine: (a) server overhead over in-process generate, (b)
throughput at 1/4/8 clients, (c) the same load against `transformers serve`, (d) streaming
time to first token over prefill plus one decode step, (e) cold load and model swap over
raw from_pretrained, (f) static cache + torch.compile over eager, (g) with `--peer-cb`,
continuous batching against `transformers serve --continuous-batching` (closed loop at 8
and 16 clients, capacity, open-loop Poisson arrivals of mixed lengths at 70 % of mmserve's
capacity, memory), and a GPU section when CUDA is available. It prints the ratios and writes
bench/RESULTS.md. Servers run as real processes on free loopback ports.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import inproc, interleave, load, quiet, report, servers  # noqa: E402

PROMPT = "Write a story about a robot who learns to paint."
PROMPTS = [
    PROMPT,
    "Write a story about a dragon who is afraid of the dark.",
    "Describe a day in the life of a lighthouse keeper.",
    "Tell me a story about a cat who travels to the moon.",
    "Write a story about a boy who finds a magic key.",
    "Describe a busy market in a small town in the morning.",
    "Tell me a story about two friends who build a boat.",
    "Write a story about a tree that can talk.",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare_models(models_dir: Path) -> tuple[Path, Path, Path]:
    """SmolLM2 materialised in models_dir; a bench table with a second entry for swaps."""
    from mmserve.models_config import MODELS_CONFIG, build_table
    from utils.download_model import ensure_model

    spec = build_table()["smollm2"]
    path = ensure_model(spec, models_dir, offline=True).resolve()
    bench_models = servers.WORK / "models"
    bench_models.mkdir(parents=True, exist_ok=True)
    for name in (spec.local_dir, spec.local_dir + "-copy"):  # two entries, one folder
        link = bench_models / name
        if not link.exists():
            os.symlink(path, link)
    entry = next(e for e in MODELS_CONFIG if e["name"] == "smollm2")
    copy = dict(entry, name="smollm2_copy", local_dir=spec.local_dir + "-copy")
    config = servers.WORK / "models.json"
    config.write_text(json.dumps({"models": [copy]}, indent=2))
    return path, bench_models, config


def admin(port: int, path: str) -> float:
    """Seconds one admin POST takes; raises unless it answers 200."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", path, b"{}", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"{path} answered {resp.status}: {body[:300]!r}")
    return time.perf_counter() - t0


def pick_api(port: int) -> load.Api:
    """The OpenAI route when the server has it, else the native route (said in the report)."""
    api = load.Api(port, "openai", "smollm2")
    try:
        load.Client(api).complete("hi", 1)
        return api
    except RuntimeError as exc:
        log(f"/v1/chat/completions not usable ({str(exc)[:80]}); measuring /generate/smollm2")
        return load.Api(port, "native", "smollm2")


def interleaved(rounds: int, per_round: int, runs: dict) -> dict:
    """Run each measurement `per_round` times per round, in turn, so drift hits all alike."""
    out: dict = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            out[name] += fn(per_round)
    return out


def measure(r: dict, n: dict, args, model_dir: Path, bench_models: Path, config: Path) -> None:
    """Every measurement, with mmserve, transformers serve and the in-process model all up
    (idle ones cost nothing) and the latency comparisons interleaved in rounds."""
    log("in-process baseline model")
    base = inproc.Baseline(model_dir)
    count = base.count_tokens
    started: list[servers.Process] = []
    try:
        log("starting mmserve (main.py)")
        ours = servers.start_mmserve(bench_models, config, ram_budget_gb=0.9)
        started.append(ours)
        api = pick_api(ours.port)
        r["api"] = api.kind
        peer_api = None
        if not args.no_peer:
            python = servers.ensure_peer_venv(log)
            log("starting transformers serve")
            peer = servers.start_peer(python, model_dir)
            started.append(peer)
            peer_api = load.Api(peer.port, "openai", str(model_dir))
        rounds = n["rounds"]
        lat = {
            "inproc_lat": lambda k: base.generate_seconds(PROMPT, 16, k, warmup=0)[0],
            "server_lat": lambda k: load.latencies(api, PROMPT, 16, k, warmup=0),
        }
        if peer_api:
            lat["peer_lat"] = lambda k: load.latencies(peer_api, PROMPT, 16, k, warmup=0)
        for fn in lat.values():  # warm-up: loads the models, fills caches
            fn(2)
        log(f"(a, c) latency of 16 tokens: {rounds} rounds of {n['lat']} per server")
        r.update(interleaved(rounds, n["lat"], lat))
        r["inproc_tokens"] = base.generate_seconds(PROMPT, 16, 1, warmup=0)[1]
        log(f"(d) time to first token: {rounds} rounds of {n['ttft']}")
        ttft = {
            "inproc_ttft": lambda k: base.prefill_plus_step_seconds(PROMPT, k, warmup=0),
            "server_ttft": lambda k: load.ttfts(api, PROMPT, 16, k, warmup=0),
        }
        r.update(interleaved(rounds, n["ttft"], ttft))
        for label, target in (("server", api), ("peer", peer_api)):
            if target is None:
                continue
            r[f"{label}_tput"] = {}
            for clients in (1, 4, 8) if label == "server" else (1, 8):
                log(f"(b, c) {label} throughput, {clients} client(s)")
                per = n["tput_single"] if clients == 1 else n[f"tput_{label}_each"]
                r[f"{label}_tput"][clients] = load.throughput(
                    target, PROMPTS, clients, per, 32, count
                )
        log(f"(e) cold load and swap: {n['loads']} rounds")

        def cold(k):
            out = []
            for _ in range(k):
                admin(ours.port, "/admin/unload/smollm2")
                out.append(admin(ours.port, "/admin/load/smollm2"))
            return out

        def swap(k):  # smollm2 is loaded: loading the copy evicts it (the budget fits one)
            out = [admin(ours.port, "/admin/load/smollm2_copy") for _ in range(k)]
            admin(ours.port, "/admin/load/smollm2")
            return out

        loads = {"raw_load": lambda k: inproc.load_seconds(model_dir, k), "server_load": cold,
                 "server_swap": swap}  # fmt: skip
        r.update(interleaved(n["loads"], 1, loads))
        r["evictions"] = report.evictions(ours.url)
        if not args.no_compile:
            measure_compiled(r, n, api, bench_models, config, count, started)
    finally:
        for server in reversed(started):
            server.stop()
        base.close()


def measure_compiled(r, n, api, bench_models, config, count, started) -> None:
    """(f) the same server with a static cache + torch.compile (MMSERVE_TEXT_COMPILE=all,
    mode default: no CUDA graphs on the CPU) against the eager one, interleaved."""
    log("(f) starting mmserve with MMSERVE_TEXT_COMPILE=all")
    env = {"MMSERVE_TEXT_COMPILE": "all", "MMSERVE_TEXT_COMPILE_MODE": "default"}
    comp = servers.start_mmserve(bench_models, config, ram_budget_gb=0.9, extra_env=env)
    started.append(comp)
    log("(f) loading smollm2 compiled (the warm-up compiles batch 1 and 2)")
    r["compile_load"] = admin(comp.port, "/admin/load/smollm2")
    capi = load.Api(comp.port, api.kind, "smollm2")

    def tput(target, clients):
        per = n["tput_single"] if clients == 1 else n["tput_server_each"]
        return lambda k: [load.throughput(target, PROMPTS, clients, per, 32, count)["tok_s"]
                          for _ in range(k)]  # fmt: skip

    log(f"(f) eager vs compiled throughput at 1 and 8 clients: {n['rounds']} rounds")
    r["compile_tput"] = interleaved(n["rounds"], 1, {
        "eager_1": tput(api, 1), "compiled_1": tput(capi, 1),
        "eager_8": tput(api, 8), "compiled_8": tput(capi, 8),
    })  # fmt: skip


def measure_cb(r: dict, n: dict, args, model_dir: Path, bench_models: Path, config: Path) -> None:
    """(g) continuous batching: mmserve and `transformers serve --continuous-batching` both up
    (an idle one costs nothing), measured in alternation (bench/interleave.py) under the same
    closed loops and the same Poisson arrivals, so drift on the machine hits both alike."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    started = []
    try:
        log("(g) starting mmserve for the continuous-batching measures")
        ours = servers.start_mmserve(bench_models, config, ram_budget_gb=8.0)
        started.append(ours)
        api = pick_api(ours.port)
        r.setdefault("api", api.kind)
        load.latencies(api, PROMPT, 8, 1, warmup=1)  # loads the model
        targets = {"ours": interleave.Target(api, ours.proc.pid)}
        if not args.no_peer:
            log("(g) starting transformers serve --continuous-batching")
            python = servers.ensure_peer_venv(log)
            peer = servers.start_peer(python, model_dir, continuous_batching=True)
            started.append(peer)
            peer_api = load.Api(peer.port, "openai", str(model_dir))
            load.latencies(peer_api, PROMPT, 8, 1, warmup=1)
            targets["peer"] = interleave.Target(peer_api, peer.proc.pid)
        log(f"(g) {' and '.join(targets)}: closed loops 1/8/16 clients in {n['cb_rounds']} "
            "rounds, capacity probes in turn, open loops back to back with the same arrivals")  # fmt: skip
        r["cb"] = interleave.measure_servers(targets, PROMPTS, n, count, log=log)
    finally:
        for server in reversed(started):
            server.stop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer requests (about 2 minutes)")
    p.add_argument("--models-dir", default=str(ROOT / "models"), help="where smollm2 lives")
    p.add_argument("--no-peer", action="store_true", help="skip transformers serve (c)")
    p.add_argument("--peer-cb", action="store_true",
                   help="(g) continuous batching: closed loop 8/16, open loop, capacity, memory "
                        "against transformers serve --continuous-batching")  # fmt: skip
    p.add_argument("--cb-only", action="store_true", help="only (g) (implies --peer-cb)")
    p.add_argument("--no-compile", action="store_true",
                   help="skip (f), the static cache + torch.compile server")  # fmt: skip
    p.add_argument("--gpu-dry-run", action="store_true", help="run the GPU code path on the CPU")
    p.add_argument("--wait-quiet", type=float, default=180.0, metavar="SECONDS",
                   help="wait up to this long for other work on the machine to stop")  # fmt: skip
    p.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args(argv)
    n = report.COUNTS["quick" if args.quick else "full"]
    servers.WORK.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    r: dict = {"mode": "quick" if args.quick else "full", "counts": n}

    model_dir, bench_models, config = prepare_models(Path(args.models_dir))
    log(f"model folder: {model_dir}")
    r["busy_before"] = quiet.wait_quiet(args.wait_quiet, log)
    r["loadavg_before"] = os.getloadavg()
    with quiet.ForeignLoad() as foreign:
        if not args.cb_only:
            measure(r, n, args, model_dir, bench_models, config)
        if args.peer_cb or args.cb_only:
            measure_cb(r, n, args, model_dir, bench_models, config)
    r["foreign"] = foreign.summary()
    r["loadavg_after"] = os.getloadavg()

    import torch

    if torch.cuda.is_available() or args.gpu_dry_run:
        from bench import gpu

        log("GPU section" + (" (dry run on the CPU)" if args.gpu_dry_run else ""))
        r["gpu"] = gpu.run(servers.WORK, args.quick, dry_run=args.gpu_dry_run, log=log)
    r["seconds"] = time.monotonic() - started
    out = Path(args.out)
    text = report.render(r)
    if out.exists():  # sections other runs wrote (bench.structured, bench.cluster) stay
        text = report.keep_other_sections(out.read_text(), text)
    print(report.table(r))
    out.write_text(text)
    log(f"wrote {args.out} ({r['seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

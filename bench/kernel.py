"""Decode-step time of SmolLM2 with plain linear layers (`F.linear`, MKL's sgemm) and with
packed weights (`mmserve.cpu_linear`), measured in alternation in one process.

    python -m bench.kernel [--rounds 25]

For each batch size a KV cache of a 50-token prompt is built once; then each round runs one
decode step each way in turn (the new column is cropped after each step, so every step sees
the same cache). Prints one JSON line and writes the "Kernel" section of bench/RESULTS.md:
median step time each way and their ratio, and what a batch costs over one row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import report, servers
from bench.run_bench import log, prepare_models

ROWS = (1, 2, 3, 4, 8, 16)


def measure(model_dir: Path, rounds: int, width: int = 50) -> dict:
    from transformers import AutoModelForCausalLM

    from mmserve import cpu_linear
    from mmserve.kvcache import new_cache

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    packer = cpu_linear.use_packed_linears(model, 1 << 62)
    if packer is None:
        raise RuntimeError("MKL's packed linear ops are not usable in this torch build")
    ways = {
        "plain": (cpu_linear.MAX_ROWS + 1, 0),
        "packed": (cpu_linear.MIN_ROWS, cpu_linear.MAX_ROWS),
    }
    gen = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        for rows in ROWS:
            cache = new_cache(model.config, width + 8)
            ids = torch.randint(100, 10000, (rows, width), generator=gen)
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            step = dict(
                input_ids=torch.randint(100, 10000, (rows, 1), generator=gen),
                attention_mask=torch.ones(rows, width + 1, dtype=torch.long),
                position_ids=torch.full((rows, 1), width),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            times: dict[str, list[float]] = {k: [] for k in ways}
            for r in range(rounds + 2):
                for name, (lo, hi) in ways.items():
                    cpu_linear.MIN_ROWS, cpu_linear.MAX_ROWS = lo, hi  # plain: no rows qualify
                    t0 = time.perf_counter()
                    model(**step)
                    if r >= 2:  # two warm-up rounds (the first packs the weights)
                        times[name].append(time.perf_counter() - t0)
                    for layer in cache.layers:
                        layer.keys, layer.values = layer.keys[:, :, :-1], layer.values[:, :, :-1]
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            out[rows] = {"plain_ms": round(med["plain"], 1), "packed_ms": round(med["packed"], 1),
                         "ratio": round(med["packed"] / med["plain"], 3)}  # fmt: skip
            log(f"{rows} row(s): {out[rows]}")
        cpu_linear.MIN_ROWS, cpu_linear.MAX_ROWS = ways["packed"]
    for r in out.values():
        r["plain_over_1"] = round(r["plain_ms"] / out[1]["plain_ms"], 2)
        r["packed_over_1"] = round(r["packed_ms"] / out[1]["plain_ms"], 2)
    return out


def cpu_linear_rows() -> str:
    from mmserve import cpu_linear

    return f"{cpu_linear.MIN_ROWS}-{cpu_linear.MAX_ROWS}"


def write_section(path: Path, out: dict, rounds: int) -> None:
    """Replace (or add) the "Kernel" section of RESULTS.md."""
    lines = ["## Kernel", "",
             "| rows | decode step, plain weights (ms) | packed weights (ms) | packed / plain "
             "| plain / 1 row | packed / 1 row |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for rows, r in out.items():
        lines.append(f"| {rows} | {r['plain_ms']} | {r['packed_ms']} | {r['ratio']} "
                     f"| {r['plain_over_1']} | {r['packed_over_1']} |")  # fmt: skip
    lines += ["", f"- SmolLM2-135M float32 on the CPU, cache of 50 tokens, median of {rounds} "
              "steps each way, alternated step by step; `python -m bench.kernel`. 'Plain': "
              "`F.linear` (MKL's sgemm) for every layer; 'packed': MKL-packed weight copies for "
              f"inputs of {cpu_linear_rows()} rows, as the server runs by default "
              "(`MMSERVE_CPU_PACKED_WEIGHTS`; 1-3 rows run plain either way). "
              "'/ 1 row': the step's cost over a plain 1-row step.", ""]  # fmt: skip
    report.replace_section(path, lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=25, help="steps per head and batch size")
    p.add_argument("--models-dir", default=str(servers.ROOT / "models"), help="where smollm2 is")
    p.add_argument("--out", default=str(servers.ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args(argv)
    servers.WORK.mkdir(parents=True, exist_ok=True)
    model_dir, _, _ = prepare_models(Path(args.models_dir))
    out = measure(model_dir, args.rounds)
    print(json.dumps(out))
    write_section(Path(args.out), out, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

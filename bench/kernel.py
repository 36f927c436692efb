"""Decode-step time of SmolLM2 with the lm_head on MKL (`F.linear`) and on oneDNN
(`mmserve.cpu_head`), measured in alternation in one process.

    python -m bench.kernel [--rounds 25]

For each batch size a KV cache of a 50-token prompt is built once; then each round runs one
decode step with each head in turn (the new column is cropped after each step, so every
step sees the same cache). Prints one JSON line and writes the "Kernel" section of
bench/RESULTS.md: median step time per head and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from bench import report, servers
from bench.run_bench import log, prepare_models

ROWS = (1, 2, 3, 4, 8, 16)


def _mkl(self, x):
    return F.linear(x, self.weight, self.bias)


def measure(model_dir: Path, rounds: int, width: int = 50) -> dict:
    from transformers import AutoModelForCausalLM, DynamicCache

    from mmserve.cpu_head import use_onednn_head

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    head = model.get_output_embeddings()
    if not use_onednn_head(model):
        raise RuntimeError("oneDNN's linear is not usable in this torch build")
    heads = {"mkl": types.MethodType(_mkl, head), "onednn": head.forward}
    gen = torch.Generator().manual_seed(0)
    out = {}
    with torch.inference_mode():
        for rows in ROWS:
            cache = DynamicCache(config=model.config)
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
            times: dict[str, list[float]] = {k: [] for k in heads}
            for r in range(rounds + 2):
                for name, fwd in heads.items():
                    head.forward = fwd
                    t0 = time.perf_counter()
                    model(**step)
                    if r >= 2:  # two warm-up rounds
                        times[name].append(time.perf_counter() - t0)
                    cache.crop(-1)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            out[rows] = {"mkl_ms": round(med["mkl"], 1), "onednn_ms": round(med["onednn"], 1),
                         "ratio": round(med["onednn"] / med["mkl"], 3)}  # fmt: skip
            log(f"{rows} row(s): {out[rows]}")
    return out


def write_section(path: Path, out: dict, rounds: int) -> None:
    """Replace (or add) the "Kernel" section of RESULTS.md."""
    lines = ["## Kernel", "",
             "| rows | decode step, lm_head on MKL (ms) | lm_head on oneDNN (ms) | ratio |",
             "|---|---|---|---|"]  # fmt: skip
    for rows, r in out.items():
        lines.append(f"| {rows} | {r['mkl_ms']} | {r['onednn_ms']} | {r['ratio']} |")
    lines += ["", f"- SmolLM2-135M float32 on the CPU, cache of 50 tokens, median of {rounds} "
              "steps per head, the heads alternated step by step; `python -m bench.kernel`. "
              "The server uses oneDNN from 4 rows up (`MMSERVE_CPU_ONEDNN_HEAD`).", ""]  # fmt: skip
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

"""Ratios against their targets, the console table and bench/RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
import urllib.request

import psutil

from bench.load import pct
from bench.openloop import rate_source

# Requests per measurement: bounded so that a full run stays well under 10 minutes.
COUNTS = {
    "full": dict(rounds=5, lat=3, ttft=2, tput_single=4, tput_server_each=3, tput_peer_each=2,
                 loads=12, open_seconds=120, probe_seconds=40, probe_steps=5, cb_rounds=2,
                 cb_single=8, cb_each=6),
    "quick": dict(rounds=2, lat=2, ttft=2, tput_single=2, tput_server_each=1, tput_peer_each=1,
                  loads=2, open_seconds=10, probe_seconds=6, probe_steps=2, cb_rounds=2,
                  cb_single=2, cb_each=1),
}  # fmt: skip
NO_GPU = "no GPU was available in this run; the GPU section was not measured."


def evictions(url: str) -> int:
    with urllib.request.urlopen(url + "/admin/model_status", timeout=10) as r:
        return int(json.load(r).get("evictions", 0))


def machine() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "ram_gb": psutil.virtual_memory().total / 1024**3, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.cuda.is_available()}  # fmt: skip


def rows(r: dict) -> list[tuple[str, str, float | None, str, bool | None]]:
    """(id, measure, ratio, target, met) for every target."""
    med = statistics.median
    out = cb_rows(r)
    if "server_lat" not in r:  # --cb-only
        return out
    a50 = pct(r["server_lat"], 50) / pct(r["inproc_lat"], 50)
    a95 = pct(r["server_lat"], 95) / pct(r["inproc_lat"], 95)
    out.append(("a", "server p50 latency / in-process generate p50", a50, "<= 1.05", a50 <= 1.05))
    out.append(("a", "server p95 latency / in-process generate p95", a95, "<= 1.05", a95 <= 1.05))
    t = r["server_tput"]
    b4, b8 = t[4]["tok_s"] / t[1]["tok_s"], t[8]["tok_s"] / t[1]["tok_s"]
    out.append(("b", "tokens/s at 4 clients / 1 client", b4, "(info)", None))
    out.append(("b", "tokens/s at 8 clients / 1 client", b8, ">= 3", b8 >= 3))
    for label, name in (("peer", "transformers serve"),):
        if f"{label}_tput" not in r:
            continue
        c8 = t[8]["tok_s"] / r[f"{label}_tput"][8]["tok_s"]
        c1 = pct(r["server_lat"], 50) / pct(r[f"{label}_lat"], 50)
        out.append(("c", f"tokens/s at 8 clients / {name}", c8, ">= 2", c8 >= 2))
        out.append(("c", f"single-request p50 / {name} p50", c1, "<= 1.0", c1 <= 1.0))
    d = pct(r["server_ttft"], 50) / pct(r["inproc_ttft"], 50)
    out.append(("d", "stream first token p50 / (prefill + 1 step) p50", d, "<= 1.2", d <= 1.2))
    e = med(r["server_load"]) / med(r["raw_load"])
    swap = med(r["server_swap"]) / med(r["raw_load"])
    out.append(("e", "cold load / raw from_pretrained (median)", e, "<= 1.1", e <= 1.1))
    out.append(
        ("e", "swap (evict + load other) / raw from_pretrained", swap, "<= 1.1", swap <= 1.1)
    )
    if "compile_tput" in r:
        c = r["compile_tput"]
        for k in (1, 8):
            f = med(c[f"compiled_{k}"]) / med(c[f"eager_{k}"])
            out.append(("f", f"static cache + torch.compile / eager, tokens/s at {k} "
                        f"client{'s' if k > 1 else ''} (CPU)", f, "(info)", None))  # fmt: skip
    return out


def cb_rows(r: dict) -> list:
    """(g) continuous batching, when measured: ours against its targets and the peer."""
    cb = r.get("cb") or {}
    ours, peer = cb.get("ours"), cb.get("peer")
    if not ours:
        return []
    c, o = ours["closed"], ours["open"]
    out = []
    for k in (8, 16):
        x = c[k]["tok_s"] / c[1]["tok_s"]
        out.append(("g", f"closed loop {k} clients / our single client, tokens/s", x, ">= 4.5",
                    x >= 4.5))  # fmt: skip
        if peer:
            x = c[k]["tok_s"] / peer["closed"][k]["tok_s"]
            out.append(("g", f"closed loop {k} clients / transformers serve --cb", x, ">= 1.1",
                        x >= 1.1))  # fmt: skip
    x = o["tok_s"] / o["offered_tok_s"]
    out.append(("g", "open loop: delivered / offered tokens/s", x, ">= 0.9", x >= 0.9))
    if peer:
        x = o["tok_s"] / peer["open"]["tok_s"]
        out.append(("g", "open loop: tokens/s / transformers serve --cb", x, ">= 1.0", x >= 1.0))
    if o["short_p50"] is not None:
        x = o["short_p50"] / statistics.median(ours["short_alone"])
        out.append(("g", "open loop: 8-token p50 latency / alone", x, "<= 1.5", x <= 1.5))
    if peer:
        x = ours["capacity"] / peer["capacity"] if peer["capacity"] else float("inf")
        out.append(("g", "capacity (req/s kept up with) / transformers serve --cb", x, ">= 1.2",
                    x >= 1.2))  # fmt: skip
    return out


def cb_numbers(r: dict) -> list[str]:
    out = []
    for label, name in (("ours", "mmserve"), ("peer", "transformers serve --continuous-batching")):
        x = (r.get("cb") or {}).get(label)
        if not x:
            continue
        closed = ", ".join(f"{k} client(s) {v['tok_s']:.1f}" for k, v in x["closed"].items())
        o = x["open"]
        ttft50 = f"{o['ttft_p50'] * 1000:.0f}" if o["ttft_p50"] is not None else "-"
        ttft99 = f"{o['ttft_p99'] * 1000:.0f}" if o["ttft_p99"] is not None else "-"
        short = f"{o['short_p50'] * 1000:.0f} ms" if o["short_p50"] is not None else "-"
        out += [
            f"- (g) {name}, closed loop tok/s (32 tokens): {closed}",
            f"- (g) {name}, capacity: {x['capacity']:.2f} req/s kept up with (probes of "
            f"{r['counts']['probe_seconds']} s from {x['probe_start']:.2f} req/s: "
            + ", ".join(f"{p['rate']:.2f} {'ok' if p['kept_up'] else 'behind'}"
                        for p in x["probes"]) + ")",
            f"- (g) {name}, open loop at {x['plan_rate']:.2f} req/s ({rate_source(x)}) for "
            f"{o['seconds']:.0f} s ({o['requests']} requests: {o['rate']:.2f} req/s drawn, "
            f"max_tokens from {{8, 32, 128, 256}}): offered "
            f"{o['offered_tok_s']:.1f} tok/s, delivered {o['tok_s']:.1f} tok/s (last answer "
            f"{o['wall']:.1f} s after the start); 8-token p50 {short} (alone "
            f"{statistics.median(x['short_alone']) * 1000:.0f} ms); time to first token p50 "
            f"{ttft50} ms, p99 {ttft99} ms; peak RSS {o['peak_rss_gb']:.2f} GB",
        ]  # fmt: skip
    return out


def table(r: dict) -> str:
    lines = ["| | measure | ratio | target | met |", "|---|---|---|---|---|"]
    for key, measure, ratio, target, met in rows(r):
        flag = "—" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {key} | {measure} | {ratio:.3f} | {target} | {flag} |")
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    return f"p50 {pct(values, 50) * 1000:.0f} ms, p95 {pct(values, 95) * 1000:.0f} ms (n={len(values)})"


def raw_numbers(r: dict) -> list[str]:
    med = statistics.median
    if "server_lat" not in r:  # --cb-only
        return cb_numbers(r)
    out = [
        f"- in-process generate, 16 tokens ({r['inproc_tokens']} made): {_ms(r['inproc_lat'])}",
        f"- mmserve {r['api']} route, 16 tokens: {_ms(r['server_lat'])}",
        f"- in-process prefill + one decode step: {_ms(r['inproc_ttft'])}",
        f"- mmserve streamed first token: {_ms(r['server_ttft'])}",
        f"- raw from_pretrained (tokenizer + model): median {med(r['raw_load']):.3f} s "
        f"(n={len(r['raw_load'])}; {_runs(r['raw_load'])})",
        f"- mmserve cold load (POST /admin/load): median {med(r['server_load']):.3f} s "
        f"({_runs(r['server_load'])})",
        f"- mmserve swap (load the other entry, evicting the first): median "
        f"{med(r['server_swap']):.3f} s ({_runs(r['server_swap'])})",
    ]
    for label, name in (("server", "mmserve"), ("peer", "transformers serve"),
                        ("peer_cb", "transformers serve --continuous-batching")):  # fmt: skip
        if f"{label}_tput" in r:
            for c, x in r[f"{label}_tput"].items():
                out.append(f"- {name}, {c} client(s): {x['tok_s']:.1f} tok/s ({x['tokens']} "
                           f"tokens, {x['requests']} requests, {x['seconds']:.1f} s)")  # fmt: skip
        if f"{label}_lat" in r and label != "server":
            out.append(f"- {name} single request, 16 tokens: {_ms(r[f'{label}_lat'])}")
    if "compile_tput" in r:
        c = r["compile_tput"]
        out.append(f"- mmserve with MMSERVE_TEXT_COMPILE=all: load with compile warm-up "
                   f"{r['compile_load']:.1f} s")  # fmt: skip
        for key in ("eager_1", "compiled_1", "eager_8", "compiled_8"):
            runs = ", ".join(f"{x:.1f}" for x in c[key])
            out.append(f"- (f) {key.replace('_', ', ')} client(s): median "
                       f"{med(c[key]):.1f} tok/s (runs: {runs})")  # fmt: skip
    return out + cb_numbers(r)


def gpu_section(r: dict) -> list[str]:
    g = r.get("gpu")
    if not g:
        return [NO_GPU]
    out = [f"Device: {g['device']}; measured copy bandwidth {g['copy_bandwidth_gb_s']:.0f} GB/s.", "",
           "| variant | weights GB | load s | decode tok/s | HBM bound tok/s | of bound | x at 8 "
           "| x at 32 | CUDA GB before load | after unload |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in g["variants"]:
        out.append(f"| {v['name']} | {v['weights_gb']:.2f} | {v['load_s']:.1f} | "
                   f"{v['decode_tok_s']:.1f} | "
                   f"{v['hbm_bound_tok_s']:.1f} | {v['fraction_of_bound']:.0%} | {v['gain_8']:.1f} | "
                   f"{v['gain_32']:.1f} | {v['cuda_baseline_gb']:.3f} | "
                   f"{v['cuda_after_unload_gb']:.3f} |")  # fmt: skip
    by = {v["name"]: v for v in g["variants"]}
    if "gpu_bf16_compiled" in by:
        x = by["gpu_bf16_compiled"]["decode_tok_s"] / by["gpu_bf16"]["decode_tok_s"]
        out += [
            "",
            f"Static cache + torch.compile over eager, bf16 single-stream decode: {x:.2f}x "
            f"(load with compile warm-up {by['gpu_bf16_compiled']['load_s']:.0f} s).",
        ]
    return out


def _avg(values) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def _runs(values: list[float]) -> str:
    """The fastest and slowest of a series of seconds."""
    return f"min {min(values):.3f}, max {max(values):.3f}"


def notes(r: dict) -> list[str]:
    from mmserve.settings import Settings

    s = Settings()
    med = statistics.median
    if "server_lat" not in r:
        return [cb_note(r)]
    out = [
        "- (a) one request at a time on a keep-alive connection; the in-process baseline is "
        "chat template + tokenize + greedy `model.generate` + decode of the same float32 "
        "model in the benchmark's process. (d) the baseline is the prompt's forward pass "
        "plus one decode step with its KV cache; the server number runs from sending a "
        "streamed request to its first non-empty text piece.",
        "- (b, c) closed loop: each client sends its requests back to back (32 tokens, greedy, "
        "8 different prompts); tokens counted from `usage`.",
        f"- mmserve ran with its defaults: continuous batching of up to batch_max_size "
        f"{s.batch_max_size} rows (a request joins the running batch at the next step, a "
        f"finished one leaves at once), prompts prefilled {s.prefill_chunk_tokens} tokens "
        "per step, KV cache budget a quarter of the free memory at load, prefix caching "
        "(an eighth of that budget; the peer's block sharing is on by default too) and, "
        "for decode batches of 4-16 rows, MKL-packed copies of the linear weights. The "
        "benchmark's prompts repeat (8 prompts, each client cycling through them, ~24 of "
        "their ~42 tokens the chat template's shared head), so after the first request of each prompt both servers reuse cached KV; "
        "the in-process generate of (a) does not.",
        "- transformers serve: `transformers serve DIR --device cpu --dtype float32` from "
        "bench/.work/venv, which holds only the `transformers[serving]` extras and shares "
        "torch/transformers with .venv through a .pth file. By default it runs generate() "
        "for one request at a time (`--peer-cb` also measures `--continuous-batching`).",
        f"- (e) a swap loads the other table entry (same weights, second folder link) under "
        f"a 0.9 GB RAM budget, so the loaded one is evicted first; evictions counted over "
        f"the run: {r['evictions']}. Eviction cost here (swap − cold load, medians): "
        f"{med(r['server_swap']) - med(r['server_load']):.2f} s.",
    ]
    out.append(
        "- (e) the server's load also checks the files on disk (safetensors headers), "
        "estimates the model's size and makes room before `from_pretrained`, then collects "
        "and freezes the load's objects so that evictions stay cheap (an unload frees the "
        "weights by reference counting and runs no full collection)."
    )
    if "cb" in r:
        out.append(cb_note(r))
    if "compile_tput" in r:
        out.append(
            "- (f) a second mmserve with `MMSERVE_TEXT_COMPILE=all`, mode `default` (inductor, "
            f"no CUDA graphs on the CPU), static cache of at least {s.text_cache_len} tokens; "
            "its load includes the compile warm-up. Both servers get the same closed-loop load "
            "as (b), alternating round by round. The setting is meant for GPUs (CUDA graphs "
            "remove the per-step launch overhead); on the CPU each decode step still attends "
            "over the whole static cache, where the eager cache holds only the tokens so far."
        )
    return out


def cb_note(r: dict) -> str:
    return (
        "- (g) both servers up at once (an idle one costs nothing) and measured in turn, so "
        "that drift on the machine hits both alike: closed loops of 1, 8 and 16 clients (32 "
        f"tokens, greedy; {r['counts']['cb_single']} requests for the single client, "
        f"{r['counts']['cb_each']} per client for 8 and 16) in up to "
        f"{r['counts']['cb_rounds']} rounds that split each client's requests, mmserve first "
        "in odd rounds and the peer first in even ones, tokens and seconds summed over the "
        "rounds; then the capacity probes, one probe of each server in turn (the order flipped each turn); then the open loops, mmserve's then the peer's "
        "right after, each with the 8-token answer alone timed right before and right after "
        "it (the median of those samples is its 'alone'). Every open "
        "loop streams each request on its own connection, with max_tokens drawn from "
        "{8, 32, 128, 256}; delivered tokens/s = tokens / (time to the last answer - the time a "
        "256-token answer takes alone at the server's single-client speed, at most a quarter of "
        "the window); a server keeps up when it delivers >= 90 % of what was offered. "
        "Capacity (the highest Poisson arrival rate kept up with): probes start at 70 % of the "
        "rate mmserve's 16-client closed loop would sustain at the mix's mean length (the same "
        "start for both servers), step up by 20 % while the server keeps up or down by 20 % "
        "until it does, then, if a probe is left, one more at the geometric mean of the last "
        "rate kept up with and the first one behind; at most "
        f"{r['counts']['probe_steps']} probes per server, all from one seed (a higher rate "
        "sends the same requests sooner, plus more). The open loop sends Poisson "
        "arrivals at 70 % of mmserve's measured capacity (if no probe kept up, of the lowest "
        "rate probed / 1.2, said in its line), the same seeded arrivals to both servers; the "
        "number of requests drawn varies around rate x window, so the rate drawn is shown too. "
        "Peak RSS of the server's process tree during its own open loop (the other idle)."
    )


def render(r: dict) -> str:
    m = machine()
    api = "/v1/chat/completions" if r["api"] == "openai" else "/generate/smollm2 (native)"
    head = [
        "# Benchmark results", "",
        f"Generated by `python bench/run_bench.py{' --quick' if r['mode'] == 'quick' else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')} in {r['seconds']:.0f} s.", "",
        f"Machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), "
        f"{m['ram_gb']:.1f} GB RAM, Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, CUDA {'yes' if m['cuda'] else 'no'}.", "",
        f"Model: `smollm2` (SmolLM2-135M-Instruct, float32 on the CPU), greedy, the chat "
        f"template, prompt lengths ~40 tokens. Server route measured: {api}. Latency, "
        f"first-token and load comparisons run interleaved in rounds against servers on "
        f"loopback.", "",
        f"Other work on the machine (it slows every number; a 2-thread forward pass loses "
        f"several times its speed to one busy neighbour): {r['busy_before']:.2f} cores busy "
        f"at the start; during the run processes other than the benchmark's used "
        f"{r['foreign']['mean']:.2f} cores on average (max {r['foreign']['max']:.2f}, above "
        f"a quarter core {r['foreign']['busy_share']:.0%} of the time); load average before "
        f"{_avg(r['loadavg_before'])}, after {_avg(r['loadavg_after'])}.", "",
        "## Targets", "", table(r), "", "## Measurements", "", *raw_numbers(r), "",
        "## Notes", "", *notes(r), "",
        "## GPU", "", *gpu_section(r), "",
    ]  # fmt: skip
    return "\n".join(head) + "\n"


def replace_section(path, lines: list[str]) -> None:
    """Write `lines` (a "## " heading first) into the file at `path` in place of the section
    with that heading, or at its end when it has none (the sections other runs own)."""
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines)
    heading = re.escape(lines[0])
    if re.search(rf"^{heading}$", text, flags=re.M):
        text = re.sub(rf"^{heading}\n.*?(?=\n## |\Z)", lambda _: section, text, flags=re.S | re.M)
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def keep_other_sections(old: str, new: str) -> str:
    """`new` followed by every "## " section of `old` whose heading `new` lacks (the sections
    `bench.structured` and `bench.cluster` write into the same file)."""
    headings = set(re.findall(r"^## .*$", new, flags=re.M))
    kept = [
        part.rstrip("\n")
        for part in re.split(r"^(?=## )", old, flags=re.M)
        if part.startswith("## ") and part.splitlines()[0] not in headings
    ]
    return "\n\n".join([new.rstrip("\n"), *kept]) + "\n"

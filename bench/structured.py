"""Structured-output benchmark: constrained over unconstrained tokens/s on the embedded SmolLM2.

    python -m bench.structured [--quick]

Starts mmserve (main.py, gunicorn) on loopback and runs the same closed loop twice per client
count (1 and 8 clients), alternating: plain chat completions, then the same requests with a
`response_format` JSON Schema (xgrammar's mask on every step). Each request asks for exactly
`--max-tokens` tokens' worth (a schema whose string has no end before then: `min_length`), so
both runs generate the same number of tokens. Prints one JSON line and writes the
"Structured output" section of bench/RESULTS.md (target: ratio >= 0.9).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from pathlib import Path

from bench import load, report, servers
from bench.run_bench import log, prepare_models

PROMPTS = ["Describe a ship.", "Describe a city.", "Describe a cat.", "Describe a storm."]
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "text": {"type": "string", "minLength": 2000}},
    "required": ["title", "text"],
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "doc", "schema": SCHEMA}}


def closed_loop(port: int, clients: int, per_client: int, max_tokens: int, constrained: bool):
    """`clients` threads each send `per_client` chat requests back to back: tokens/s."""

    def work(i: int, ready) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            ready()
            got = 0
            for k in range(per_client):
                body = {
                    "model": "smollm2",
                    "messages": [{"role": "user", "content": PROMPTS[(i + k) % len(PROMPTS)]}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                if constrained:
                    body["response_format"] = FORMAT
                conn.request("POST", "/v1/chat/completions", json.dumps(body),
                             {"Content-Type": "application/json"})  # fmt: skip
                reply = json.loads(conn.getresponse().read())
                got += reply["usage"]["completion_tokens"]
            return got
        finally:
            conn.close()

    tokens, wall = load.closed_loop(clients, work)
    return {"tokens": tokens, "seconds": round(wall, 2), "tok_s": round(tokens / wall, 2)}


def write_section(path: Path, out: dict) -> None:
    """Replace (or add) the "Structured output" section of RESULTS.md."""
    lines = ["## Structured output", "",
             "| clients | unconstrained tok/s | constrained tok/s | ratio (target >= 0.9) |",
             "|---|---|---|---|"]  # fmt: skip
    for clients, row in out["clients"].items():
        lines.append(f"| {clients} | {row['free']['tok_s']} | {row['constrained']['tok_s']} | "
                     f"{row['ratio']} |")  # fmt: skip
    lines += ["", f"- {out['load']}; `python -m bench.structured"
              f"{' --quick' if out['quick'] else ''}`; xgrammar mask per step, JSON Schema with "
              "a string that runs to max_tokens, greedy, runs alternated.", ""]  # fmt: skip
    report.replace_section(path, lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-client", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="alternated runs of each kind")
    p.add_argument("--quick", action="store_true", help="1 request per client, 16 tokens, 1 round")
    p.add_argument("--models-dir", default=str(servers.ROOT / "models"), help="where smollm2 is")
    p.add_argument("--out", default=str(servers.ROOT / "bench" / "RESULTS.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.per_client, args.max_tokens, args.rounds = 1, 16, 1
    servers.WORK.mkdir(parents=True, exist_ok=True)
    _, bench_models, config = prepare_models(Path(args.models_dir))
    server = servers.start_mmserve(bench_models, config, 4.0)
    try:
        closed_loop(server.port, 1, 1, 8, True)  # load the model, compile the grammar
        out = {"quick": args.quick, "clients": {},
               "load": f"{args.per_client} request(s) per client of {args.max_tokens} tokens, "
                       f"{args.rounds} round(s)"}  # fmt: skip
        for clients in (1, 8):
            runs = {"free": [], "constrained": []}
            for _ in range(args.rounds):
                for kind in runs:
                    log(f"{clients} client(s), {kind}")
                    runs[kind].append(closed_loop(server.port, clients, args.per_client,
                                                  args.max_tokens, kind == "constrained"))  # fmt: skip
            best = {k: max(v, key=lambda r: r["tok_s"]) for k, v in runs.items()}
            ratio = round(best["constrained"]["tok_s"] / best["free"]["tok_s"], 3)
            out["clients"][clients] = {**best, "ratio": ratio}
    finally:
        server.stop()
    print(json.dumps(out))
    write_section(Path(args.out), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

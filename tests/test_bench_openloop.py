"""The benchmark's (g) rate policy: capacity probes first, the open loop at 70 % of capacity."""

from __future__ import annotations

import pytest

from bench import openloop, report

N = dict(tput_single=1, tput_server_each=1, lat=1, open_seconds=100, probe_seconds=10,
         probe_steps=5)  # fmt: skip
MEAN = sum(openloop.LENGTHS) / len(openloop.LENGTHS)


@pytest.fixture
def server(monkeypatch):
    """A fake server that keeps up with arrival rates up to `server.capacity` req/s; the
    closed loops report `closed16` tok/s at 16 clients. Records every open loop's rate."""

    class Fake:
        capacity = 1.0
        closed16 = 100.0
        calls: list = []

    def throughput(api, prompts, clients, per, max_tokens, count):
        return {"tok_s": Fake.closed16 if clients == 16 else 20.0}

    def arrivals(rate, seconds, prompts, seed=0):
        return {"rate": rate, "seconds": seconds, "seed": seed}

    def open_loop(api, plan, seconds, drain, count, pid=None):
        Fake.calls.append((plan["rate"], plan["seed"], seconds))
        kept = plan["rate"] <= Fake.capacity
        return {"kept_up": kept, "tok_s": 1.0, "rate": plan["rate"], "seconds": seconds}

    monkeypatch.setattr(openloop.load, "throughput", throughput)
    monkeypatch.setattr(openloop.load, "latencies", lambda *a, **k: [0.4])
    monkeypatch.setattr(openloop, "arrivals", arrivals)
    monkeypatch.setattr(openloop, "open_loop", open_loop)
    return Fake


def test_probes_down_then_bisect_then_open_loop_at_70_percent_of_capacity(server):
    server.capacity = 0.7
    server.closed16 = 150.0  # start 0.99 behind, 0.83 behind, 0.69 ok; bisection 0.75 behind
    start = 0.7 * 150.0 / MEAN
    out = openloop.measure_server(None, ["p"], None, N, len)
    rates = [c[0] for c in server.calls]
    assert rates[:3] == pytest.approx([start, start / 1.2, start / 1.44])
    assert rates[3] == pytest.approx((start / 1.2 * start / 1.44) ** 0.5)  # the bisection
    assert out["capacity"] == pytest.approx(start / 1.44)  # the bisection rate fell behind
    assert len(out["probes"]) == 4 and [c[1:] for c in server.calls[:4]] == [(100, 10)] * 4
    assert out["rate_from"] == {"rate": out["capacity"], "measured": True}
    assert out["plan_rate"] == pytest.approx(0.7 * out["capacity"])
    assert server.calls[-1] == (out["plan_rate"], 1, 100)  # the open loop comes last
    assert out["open"]["rate"] == out["plan_rate"]


def test_a_bisection_probe_that_keeps_up_is_the_capacity(server):
    server.capacity = 0.76
    server.closed16 = 150.0  # as above, but the bisection at 0.75 keeps up
    out = openloop.measure_server(None, ["p"], None, N, len)
    assert [p["kept_up"] for p in out["probes"]] == [False, False, True, True]
    assert out["capacity"] == pytest.approx(out["probes"][3]["rate"])
    assert out["plan_rate"] == pytest.approx(0.7 * out["probes"][3]["rate"])


def test_bisection_counts_within_the_probe_budget(server):
    server.capacity = 10.0  # keeps up with every probe: five steps up, no bisection
    out = openloop.measure_server(None, ["p"], None, N, len)
    assert len(out["probes"]) == 5 and all(p["kept_up"] for p in out["probes"])
    assert out["capacity"] == pytest.approx(out["probe_start"] * 1.2**4)


def test_no_probe_kept_up_falls_back_to_lowest_rate_over_1_2(server):
    server.capacity = 0.01
    out = openloop.measure_server(None, ["p"], None, N, len)
    lowest = min(p["rate"] for p in out["probes"])
    assert out["capacity"] == 0 and len(out["probes"]) == 5
    assert out["rate_from"] == {"rate": pytest.approx(lowest / 1.2), "measured": False}
    assert out["plan_rate"] == pytest.approx(0.7 * lowest / 1.2)
    assert "no capacity probe kept up" in openloop.rate_source(out)


def test_peer_gets_the_given_rate_and_probe_start(server):
    server.capacity = 0.5
    out = openloop.measure_server(None, ["p"], 0.42, N, len, probe_start=0.6)
    assert server.calls[0][0] == 0.6  # probes start at mmserve's start, not the peer's own
    assert server.calls[-1][:2] == (0.42, 1)  # mmserve's rate and seeded arrivals
    assert out["rate_from"] is None and out["plan_rate"] == 0.42


def test_report_line_names_the_capacity_the_rate_came_from(server):
    ours = openloop.measure_server(None, ["p"], None, N, len)
    ours["open"] = dict(
        requests=50,
        rate=0.5,
        seconds=100,
        wall=110.0,
        offered_tok_s=50.0,
        tok_s=49.0,
        short_p50=0.5,
        ttft_p50=0.1,
        ttft_p99=0.9,
        peak_rss_gb=2.0,
    )
    lines = report.cb_numbers({"cb": {"ours": ours}, "counts": N})  # fmt: skip
    open_line = next(line for line in lines if "open loop" in line)
    assert f"70 % of the measured capacity, {ours['capacity']:.2f} req/s" in open_line
    assert "capacity:" in lines[1] and "open loop" in lines[2]  # probes are listed first
    assert "at most 5 probes per server" in report.cb_note({"counts": N})


def test_probe_arrivals_grow_with_the_rate():
    """One seed: a higher rate sends the same requests sooner, plus more, never fewer."""
    slow = openloop.arrivals(0.5, 40, ["a", "b", "c"], seed=100)
    fast = openloop.arrivals(0.6, 40, ["a", "b", "c"], seed=100)
    assert len(fast) >= len(slow) > 0
    for s, f in zip(slow, fast[: len(slow)], strict=True):
        assert (f.prompt, f.max_tokens) == (s.prompt, s.max_tokens)
        assert f.at == pytest.approx(s.at * 0.5 / 0.6)


def test_a_window_without_arrivals_does_not_keep_up():
    got = openloop.open_loop(None, [], 1.0, 0.0, len)
    assert got["requests"] == 0 and got["kept_up"] is False


def test_a_new_report_keeps_the_sections_other_runs_wrote():
    old = "# R\n\n## Targets\nold\n\n## Structured output\nS\n\n## Cluster (Ray Serve)\nC\n"
    new = "# R\n\n## Targets\nnew\n\n## GPU\nnone\n"
    got = report.keep_other_sections(old, new)
    assert got.startswith(new.rstrip("\n")) and "old" not in got
    assert got.index("## Structured output\nS") < got.index("## Cluster (Ray Serve)\nC")
    assert report.keep_other_sections(got, new) == got  # idempotent

"""The benchmark's (g): rate policy (capacity probes first, the open loop at 70 % of capacity)
and the orchestration that measures both servers in alternation."""

from __future__ import annotations

import pytest

from bench import interleave, openloop, report

N = dict(cb_single=1, cb_each=1, lat=1, open_seconds=100, probe_seconds=10,
         probe_steps=5, cb_rounds=3)  # fmt: skip
MEAN = sum(openloop.LENGTHS) / len(openloop.LENGTHS)


@pytest.fixture
def server(monkeypatch):
    """Fake servers, named by their `api` ("ours", "peer"): each keeps up with arrival rates
    up to `capacity[api]` req/s; the closed loops report `closed16` tok/s at 16 clients (the
    peer half that). `calls` records every call in order: ("closed", api, clients, per) and
    ("open", api, rate, seed, seconds)."""

    class Fake:
        capacity = {"ours": 1.0, "peer": 1.0}
        closed16 = 100.0
        calls: list = []

    def throughput(api, prompts, clients, per, max_tokens, count):
        Fake.calls.append(("closed", api, clients, per))
        tok_s = Fake.closed16 if clients == 16 else 20.0
        tok_s /= 2 if api == "peer" else 1
        seconds = 1.0 + len(Fake.calls)  # differs per round: sums must divide, not average
        return {"clients": clients, "requests": clients * per, "tokens": tok_s * seconds,
                "seconds": seconds, "tok_s": tok_s}  # fmt: skip

    def arrivals(rate, seconds, prompts, seed=0):
        return {"rate": rate, "seconds": seconds, "seed": seed}

    def open_loop(api, plan, seconds, drain, count, pid=None):
        Fake.calls.append(("open", api, plan["rate"], plan["seed"], seconds))
        kept = plan["rate"] <= Fake.capacity[api]
        return {"kept_up": kept, "tok_s": 1.0, "rate": plan["rate"], "seconds": seconds}

    monkeypatch.setattr(interleave.load, "throughput", throughput)

    def latencies(api, prompt, max_tokens, n, warmup=2):
        Fake.calls.append(("alone", api, max_tokens))
        return [0.4 + 0.1 * len([c for c in Fake.calls if c[0] == "alone"])]

    monkeypatch.setattr(interleave.load, "latencies", latencies)
    monkeypatch.setattr(openloop, "arrivals", arrivals)
    monkeypatch.setattr(openloop, "open_loop", open_loop)
    return Fake


def ours_alone(n=N) -> dict:
    return interleave.measure_servers({"ours": interleave.Target("ours")}, ["p"], n, len)["ours"]


def both(n=N) -> dict:
    targets = {"ours": interleave.Target("ours", 1), "peer": interleave.Target("peer", 2)}
    return interleave.measure_servers(targets, ["p"], n, len)


def opens(calls, api=None) -> list:
    return [c for c in calls if c[0] == "open" and api in (None, c[1])]


def test_probes_down_then_bisect_then_open_loop_at_70_percent_of_capacity(server):
    server.capacity["ours"] = 0.7
    server.closed16 = 150.0  # start 0.99 behind, 0.83 behind, 0.69 ok; bisection 0.75 behind
    start = 0.7 * 150.0 / MEAN
    out = ours_alone()
    rates = [c[2] for c in opens(server.calls)]
    assert rates[:3] == pytest.approx([start, start / 1.2, start / 1.44])
    assert rates[3] == pytest.approx((start / 1.2 * start / 1.44) ** 0.5)  # the bisection
    assert out["capacity"] == pytest.approx(start / 1.44)  # the bisection rate fell behind
    assert len(out["probes"]) == 4
    assert [c[3:] for c in opens(server.calls)[:4]] == [(100, 10)] * 4
    assert out["rate_from"] == {"rate": out["capacity"], "measured": True}
    assert out["plan_rate"] == pytest.approx(0.7 * out["capacity"])
    assert server.calls[-2] == ("open", "ours", out["plan_rate"], 1, 100)  # open loop last
    assert server.calls[-1] == ("alone", "ours", 8)  # then the short answer alone again
    assert out["open"]["rate"] == out["plan_rate"]


def test_a_bisection_probe_that_keeps_up_is_the_capacity(server):
    server.capacity["ours"] = 0.76
    server.closed16 = 150.0  # as above, but the bisection at 0.75 keeps up
    out = ours_alone()
    assert [p["kept_up"] for p in out["probes"]] == [False, False, True, True]
    assert out["capacity"] == pytest.approx(out["probes"][3]["rate"])
    assert out["plan_rate"] == pytest.approx(0.7 * out["probes"][3]["rate"])


def test_probes_up_then_bisect(server):
    server.capacity["ours"] = 1.3  # start 0.84 ok, 1.01 ok, 1.21 ok, 1.45 behind; 1.33 behind
    server.closed16 = 100.0 * 0.84 / (0.7 * 100.0 / MEAN)
    out = ours_alone()
    rates = [p["rate"] for p in out["probes"]]
    assert rates[:4] == pytest.approx([0.84, 0.84 * 1.2, 0.84 * 1.44, 0.84 * 1.728])
    assert rates[4] == pytest.approx((0.84 * 1.44 * 0.84 * 1.728) ** 0.5)
    assert out["capacity"] == pytest.approx(0.84 * 1.44)


def test_bisection_counts_within_the_probe_budget(server):
    server.capacity["ours"] = 10.0  # keeps up with every probe: five steps up, no bisection
    out = ours_alone()
    assert len(out["probes"]) == 5 and all(p["kept_up"] for p in out["probes"])
    assert out["capacity"] == pytest.approx(out["probe_start"] * 1.2**4)


def test_no_probe_kept_up_falls_back_to_lowest_rate_over_1_2(server):
    server.capacity["ours"] = 0.01
    out = ours_alone()
    lowest = min(p["rate"] for p in out["probes"])
    assert out["capacity"] == 0 and len(out["probes"]) == 5
    assert out["rate_from"] == {"rate": pytest.approx(lowest / 1.2), "measured": False}
    assert out["plan_rate"] == pytest.approx(0.7 * lowest / 1.2)
    assert "no capacity probe kept up" in openloop.rate_source(out)


def test_split_keeps_the_requests_per_client():
    assert interleave.split(4, 3) == [2, 1, 1]
    assert interleave.split(3, 3) == [1, 1, 1]
    assert interleave.split(1, 3) == [1]  # never a round of nothing
    assert interleave.split(5, 2) == [3, 2]


def test_closed_loops_alternate_in_rounds_with_the_order_flipped(server):
    n = dict(N, cb_single=4, cb_each=3)
    out = both(n)
    closed = [c for c in server.calls if c[0] == "closed"]
    for clients, per in ((1, [2, 1, 1]), (8, [1, 1, 1]), (16, [1, 1, 1])):
        got = [(api, k) for _, api, c, k in closed if c == clients]
        assert got == [("ours", per[0]), ("peer", per[0]), ("peer", per[1]), ("ours", per[1]),
                       ("ours", per[2]), ("peer", per[2])]  # fmt: skip
    for x in out.values():  # the same total work as one run of per-client requests
        assert x["closed"][1]["requests"] == 4 and x["closed"][16]["requests"] == 16 * 3
        assert x["closed"][8]["rounds"] == 3
    # tokens and seconds summed over the rounds (each round's rate is the same here)
    assert out["ours"]["closed"][16]["tok_s"] == pytest.approx(100.0)
    assert out["peer"]["closed"][16]["tok_s"] == pytest.approx(50.0)
    assert out["ours"]["closed"][8]["seconds"] == pytest.approx(sum(
        1.0 + i for i, c in enumerate(server.calls, 1) if c[:3] == ("closed", "ours", 8)
    ))  # fmt: skip


def test_summed_divides_the_sums():
    runs = [dict(clients=8, requests=8, tokens=100.0, seconds=1.0, tok_s=100.0),
            dict(clients=8, requests=8, tokens=100.0, seconds=4.0, tok_s=25.0)]  # fmt: skip
    got = interleave.summed(runs)
    assert got["tok_s"] == pytest.approx(40.0)  # not the mean of rates (62.5)
    assert (got["requests"], got["tokens"], got["seconds"]) == (16, 200.0, 5.0)


def test_probe_walks_alternate_and_stay_independent(server):
    server.capacity = {"ours": 10.0, "peer": 0.7}
    server.closed16 = 150.0  # start 0.99: ours keeps up 5 times; the peer walks down, bisects
    out = both()
    start = out["ours"]["probe_start"]
    assert out["peer"]["probe_start"] == start  # the same start for both
    probes = [c[1] for c in opens(server.calls)][:-2]
    assert probes == ["ours", "peer", "peer", "ours", "ours", "peer", "peer", "ours", "ours"]
    assert len(out["ours"]["probes"]) == 5 and len(out["peer"]["probes"]) == 4
    assert out["ours"]["capacity"] == pytest.approx(start * 1.2**4)
    assert out["peer"]["capacity"] == pytest.approx(start / 1.44)
    alone = ours_alone()  # each walk is the one the server would walk alone
    assert alone["probes"] == out["ours"]["probes"]


def test_open_loops_back_to_back_with_ours_rate_and_arrivals(server):
    server.capacity = {"ours": 0.9, "peer": 0.5}
    out = both()
    last = opens(server.calls)[-2:]
    rate = out["ours"]["plan_rate"]
    assert rate == pytest.approx(0.7 * out["ours"]["capacity"])
    assert last == [("open", "ours", rate, 1, 100), ("open", "peer", rate, 1, 100)]
    assert out["peer"]["plan_rate"] == rate and out["peer"]["rate_from"] is None
    assert "mmserve's rate" in openloop.rate_source(out["peer"])
    assert out["peer"]["capacity"] < out["ours"]["capacity"]


def test_report_line_names_the_capacity_the_rate_came_from(server):
    ours = ours_alone()
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
    note = report.cb_note({"counts": N})
    assert "at most 5 probes per server" in note and "up to 3 rounds" in note
    assert "alone on the machine" not in note


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


def test_the_short_answer_alone_is_timed_right_before_and_after_each_open_loop(server):
    out = both()
    tail = server.calls[-6:]
    plan = out["ours"]["plan_rate"]
    assert tail == [("alone", "ours", 8), ("open", "ours", plan, 1, 100), ("alone", "ours", 8),
                    ("alone", "peer", 8), ("open", "peer", plan, 1, 100), ("alone", "peer", 8)]  # fmt: skip
    assert out["ours"]["short_alone"] == pytest.approx([0.5, 0.6])  # both samples kept
    assert out["peer"]["short_alone"] == pytest.approx([0.7, 0.8])
    assert [c for c in server.calls if c[0] == "alone"] == [c for c in tail if c[0] == "alone"]


def test_replace_section_swaps_its_own_section_and_appends_a_new_one(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n## Targets\n\nt\n\n## Kernel\n\nold\n\n## Cluster\n\nc\n")
    report.replace_section(path, ["## Kernel", "", "new \\1 row", ""])
    assert (
        path.read_text()
        == "# R\n\n## Targets\n\nt\n\n## Kernel\n\nnew \\1 row\n\n## Cluster\n\nc\n"
    )
    report.replace_section(path, ["## Structured output", "", "s", ""])
    assert path.read_text().endswith("## Cluster\n\nc\n\n## Structured output\n\ns\n")
    report.replace_section(tmp_path / "new.md", ["## Kernel", "", "k"])
    assert (tmp_path / "new.md").read_text() == "\n\n## Kernel\n\nk"

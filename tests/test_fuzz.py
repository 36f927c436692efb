"""Property-based fuzzing of every route: malformed bodies never produce a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import tiny_entry

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "data:image/png;base64,!!!", "data:,", "aGVsbG8=", "////", "-1", "10m"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
NATIVE_KEYS = ["prompt", "system", "max_new_tokens", "temperature", "top_p", "top_k", "stop",
               "seed", "keep_alive", "stream", "raw", "image", "images", "audio", "video",
               "repetition_penalty", "return_audio"]  # fmt: skip
OPENAI_KEYS = ["model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens",
               "temperature", "top_p", "stop", "seed", "n", "stream", "stream_options",
               "keep_alive", "encoding_format", "reasoning_format", "dimensions",
               "truncate"]  # fmt: skip


def bodies(keys):
    return st.one_of(
        st.dictionaries(st.sampled_from(keys), values, max_size=6),
        values,
        st.binary(max_size=40),
    )


ROUTES = [
    ("POST", "/generate/tiny_text", NATIVE_KEYS),
    ("POST", "/generate/tiny_vl", NATIVE_KEYS),
    ("POST", "/admin/load/tiny_text", ["keep_alive"]),
    ("POST", "/admin/cleanup_temp", ["expired_only"]),
    ("POST", "/v1/chat/completions", OPENAI_KEYS),
    ("POST", "/v1/completions", OPENAI_KEYS),
    ("POST", "/v1/embeddings", OPENAI_KEYS),
    ("POST", "/v1/audio/transcriptions", OPENAI_KEYS),
    ("POST", "/embed/tiny_embed", ["input", "truncate", "keep_alive"]),
]


@pytest.fixture(scope="module")
def fuzz_client(tiny_models_dir, tmp_path_factory):
    from app import create_app

    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app(
        {
            "models_dir": tiny_models_dir,
            "models": [
                tiny_entry(n, generation={"max_new_tokens": 2})
                for n in ("tiny_text", "tiny_vl", "tiny_embed", "tiny_audio")
            ],
            "replace_models": True,
            "offline": True,
            "log_to_file": False,
            "log_level": "ERROR",
            "tmp_dir": tmp / "tmp",
            "default_keep_alive": -1,
            "max_new_tokens_limit": 4,
        }
    )
    yield app.test_client()
    app.extensions["mmserve_close"](timeout=5)


@pytest.mark.parametrize("method, path, keys", ROUTES, ids=[r[1] for r in ROUTES])
def test_no_5xx_from_malformed_bodies(fuzz_client, method, path, keys):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies(keys))
    def run(body):
        if isinstance(body, bytes):
            r = fuzz_client.open(path, method=method, data=body, content_type="application/json")
        else:
            r = fuzz_client.open(
                path,
                method=method,
                data=json.dumps(body, allow_nan=True),
                content_type="application/json",
            )
        assert r.status_code < 500, (path, body, r.get_data(as_text=True)[:300])

    run()
    assert fuzz_client.get("/health").status_code == 200


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.text(min_size=1, max_size=40))
def test_no_5xx_from_odd_model_names(fuzz_client, name):
    from urllib.parse import quote

    r = fuzz_client.post(f"/generate/{quote(name, safe='')}", json={"prompt": "x"})
    assert r.status_code < 500

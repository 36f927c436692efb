"""GET /openapi.json (valid OpenAPI 3.1 of every route, typed /v1 bodies) and GET /docs (its
Swagger UI page and assets come from the install: nothing refers to another host)."""

from __future__ import annotations

import re

from openapi_spec_validator import validate


def test_openapi_json_is_valid_3_1_and_covers_every_route(make_app):
    app = make_app([])
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    paths = spec["paths"]
    for path in ("/generate/{model}", "/admin/load/{model}", "/v1/chat/completions",
                 "/v1/completions", "/v1/embeddings", "/v1/models", "/health"):  # fmt: skip
        assert path in paths, path
    chat = paths["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ChatCompletionRequest")
    body = spec["components"]["schemas"]["ChatCompletionRequest"]
    for field in ("messages", "tools", "tool_choice", "response_format", "parallel_tool_calls"):
        assert field in body["properties"], field
    answer = chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert answer.endswith("/ChatCompletion")
    assert chat["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse"
    )


def test_docs_page_loads_with_no_network(make_app):
    client = make_app([]).test_client()
    page = client.get("/docs/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "/openapi.json" in html
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith("/docs/") for r in refs), refs  # no CDN
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.data) > 100, ref


def test_docs_need_no_api_key(make_app):
    client = make_app([], api_key="sekret").test_client()
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs/").status_code == 200
    assert client.post("/v1/chat/completions", json={}).status_code == 401

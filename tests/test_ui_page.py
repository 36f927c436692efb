"""The page at / and /ui through the Flask test client: served without a key, self-contained."""

from __future__ import annotations

import re

from mmserve.ui import STATIC
from tests.conftest import tiny_entry


def test_page_and_its_files_need_no_key_but_every_call_does(make_app):
    client = make_app([tiny_entry("tiny_text")], api_key="k-api", admin_key="k-admin").test_client()
    for path in ("/", "/ui", "/ui/"):
        r = client.get(path)
        assert r.status_code == 200 and r.mimetype == "text/html", path
        assert b'<script type="module" src="/ui/static/js/main.js">' in r.data
    assert client.get("/ui/static/app.css").mimetype == "text/css"
    for script in sorted((STATIC / "js").glob("*.js")):
        r = client.get(f"/ui/static/js/{script.name}")
        assert r.status_code == 200 and "javascript" in r.mimetype, script.name
    assert client.get("/ui/static/nope.js").status_code == 404
    assert client.get("/v1/models").status_code == 401
    ok = client.get("/v1/models", headers={"Authorization": "Bearer k-api"})
    assert ok.status_code == 200
    assert (
        client.get("/admin/model_status", headers={"Authorization": "Bearer k-api"}).status_code
        == 401
    )


def test_page_loads_nothing_from_outside_the_server():
    """Air-gapped: every URL in the page and its modules is on this server."""
    html = (STATIC / "index.html").read_text()
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert url.startswith(("/ui/static/", "#")), url
    for path in STATIC.rglob("*"):
        if path.suffix in (".js", ".css", ".html"):
            text = path.read_text()
            assert not re.search(r"https?://|//cdn|@import", text), path.name
            for spec in re.findall(r'^import .* from "([^"]+)";', text, flags=re.M):
                assert spec.startswith("./"), (path.name, spec)

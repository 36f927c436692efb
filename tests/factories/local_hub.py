"""A Hub-compatible HTTP server on 127.0.0.1 serving folders as model repos (for pull tests).

It answers what huggingface_hub 2.x calls for `model_info` and `hf_hub_download`:
GET /api/models/<repo>/revision/<rev> (id, sha, siblings) and HEAD/GET
/<repo>/resolve/<rev>/<file> with X-Repo-Commit, ETag, Content-Length and Range support.
`cut_once` names files whose first full GET is cut after half the bytes (a dropped
connection); every request's Range header is recorded in `ranges`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    def __init__(self, repos: dict[str, Path], cut_once: tuple[str, ...] = ()):
        self.repos = {k: Path(v) for k, v in repos.items()}
        self.cut = set(cut_once)
        self.ranges: list[tuple[str, str | None]] = []  # (file, Range header) per GET
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        for repo in self.repos:
            info = f"/api/models/{repo}/revision/"
            resolve = f"/{repo}/resolve/"
            if path.startswith(info):
                siblings = [{"rfilename": f} for f in self._files(repo)]
                data = json.dumps({"id": repo, "modelId": repo, "sha": SHA, "private": False,
                                   "siblings": siblings}).encode()  # fmt: skip
                return _send(h, 200, data, {"Content-Type": "application/json"}, body)
            if path.startswith(resolve):
                name = path[len(resolve) :].split("/", 1)[1]
                return self._file(h, repo, name, body)
        _send(h, 404, b'{"error": "not found"}', {"Content-Type": "application/json"}, body)

    def _file(self, h, repo: str, name: str, body: bool) -> None:
        f = self.repos[repo] / name
        if not f.is_file():
            return _send(h, 404, b"", {"X-Error-Code": "EntryNotFound"}, body)
        data = f.read_bytes()
        headers = {
            "X-Repo-Commit": SHA,
            "ETag": '"' + hashlib.sha256(data).hexdigest() + '"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if not body:
            return _send(h, 200, data, headers, False)
        rng = h.headers.get("Range")
        self.ranges.append((name, rng))
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return _send(h, 206, data[start:], headers, True)
        if name in self.cut:
            self.cut.discard(name)
            h.send_response(200)
            for k, v in {**headers, "Content-Length": str(len(data))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the connection drops mid-file
            return
        _send(h, 200, data, headers, True)


def _send(h, status: int, data: bytes, headers: dict, body: bool) -> None:
    h.send_response(status)
    for k, v in {**headers, "Content-Length": str(len(data))}.items():
        h.send_header(k, v)
    h.end_headers()
    if body:
        h.wfile.write(data)

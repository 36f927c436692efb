"""The built-in web playground and dashboard: the page at / and /ui and its static files."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory

STATIC = Path(__file__).resolve().parent / "static"
# The page and its files need no key (every call the page makes does): see http._check_keys.
PUBLIC_PREFIX = "/ui/"

bp = Blueprint("ui", __name__, static_folder=str(STATIC), static_url_path="/ui/static")


def is_public(path: str) -> bool:
    """True for the page itself and its static files."""
    return path in ("/", "/ui") or path.startswith(PUBLIC_PREFIX)


@bp.get("/")
@bp.get("/ui")
@bp.get("/ui/")
def page():
    """The single-page UI (plain HTML, CSS and ES modules; no CDN, no build step)."""
    response = send_from_directory(STATIC, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response

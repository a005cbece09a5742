"""``/`` and ``/static/*``: the demo page and its files, served from ``server/static/``.

Owns only where the page comes from; the page itself lives in ``server/static/``. The SDK
and the widget there (``headcast.js``, ``headcast-widget.js``) are links to their one source
in ``clients/web/`` (the npm package), so the static files follow links. When that folder
has no ``index.html``, ``/`` answers with a minimal page that points at the API.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""Folder of the demo page and its scripts (filled by the web client's build)."""

INDEX_FILE = "index.html"

FALLBACK_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>headcast</title></head>
<body><h1>headcast</h1>
<p>The demo page is not installed (no <code>server/static/index.html</code>).
The API is up: <a href="readyz">/readyz</a>, <a href="metrics">/metrics</a>,
<a href="docs">/docs</a>.</p></body></html>
"""


def web_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    """The router serving ``/`` from ``static_dir``."""
    router = APIRouter(tags=["web"])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        page = static_dir / INDEX_FILE
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(FALLBACK_PAGE)

    return router


def mount_static(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve ``static_dir`` under ``/static`` (checked when files are requested).

    Links inside it are followed (the SDK lives in ``clients/web/``); request paths still
    cannot climb out of it.
    """
    files = StaticFiles(directory=static_dir, check_dir=False, follow_symlink=True)
    app.mount("/static", files, name="static")

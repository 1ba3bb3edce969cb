"""ConsolePages: an ASGI middleware serving the console's static pages (GET and HEAD only).

```
/  /console  /console/chat   -> static/chat.html        /console/dashboard -> dashboard.html
/console/planner             -> static/planner.html     /console/static/NAME -> static/NAME
anything else                -> the app (API key, limits, routes)
```

It sits outside the API-key middleware on purpose: a browser cannot attach a bearer token
to a page load, and these files hold no data (plain HTML, CSS and JS shipped in the
package, loaded into memory once). Everything the pages show comes from the API-key
protected JSON routes; the pages ask for the key and keep it in sessionStorage. Responses
carry a strict Content-Security-Policy (same-origin scripts, no inline code).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("membound.server")

STATIC_DIR = Path(__file__).parent / "static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
PAGES = {
    "/": "chat.html",
    "/console": "chat.html",
    "/console/": "chat.html",
    "/console/chat": "chat.html",
    "/console/dashboard": "dashboard.html",
    "/console/planner": "planner.html",
}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)


def load_static(folder: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """URL path -> (body, content type) for every page and every file in ``folder``."""
    if not all((folder / name).is_file() for name in set(PAGES.values())):
        logger.warning("the web console's files are missing from %s; serving the API only",
                       folder)
        return {}
    files = {
        p.name: (p.read_bytes(), _TYPES[p.suffix])
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in _TYPES
    }
    routes = {f"/console/static/{name}": entry for name, entry in files.items()}
    routes.update({path: files[name] for path, name in PAGES.items()})
    return routes


class ConsolePages:
    """Answers GET/HEAD for the console's files; passes every other request on."""

    def __init__(self, app: Any, files: dict[str, tuple[bytes, str]] | None = None) -> None:
        self.app = app
        self.files = load_static() if files is None else files

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        entry = None
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            entry = self.files.get(scope.get("path", ""))
        if entry is None:
            await self.app(scope, receive, send)
            return
        body, content_type = entry
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-security-policy", _CSP.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

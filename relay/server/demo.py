"""The demo page at `/`: a shared text where every tab sees the others' carets, selections,
avatars, typing and viewports, built on the browser SDK alone (docs/demo.md).

What is served is a fixed table, read into memory once at start: a request path is looked up
in it as sent, never joined to a directory, so no spelling of `..` (encoded or not) can reach
a file outside it. Everything else on the port keeps its own routes (http.py).

The page lives in `relay/demo/`; the SDK modules it imports are the browser SDK's own files:
a wheel carries copies in `relay/demo/sdk/` (setup.py puts them there), a source checkout
serves them straight from `sdk/browser/`, so there is one copy of the SDK in the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PAGE_DIR = PACKAGE_DIR / "demo"
SOURCE_SDK_DIR = PACKAGE_DIR.parent / "sdk" / "browser"

# URL path -> file of the page (relative to relay/demo/).
PAGE_FILES = {
    "/": "index.html",
    "/demo.js": "demo.js",
    "/demo.css": "demo.css",
    "/favicon.svg": "favicon.svg",
}
# URL path -> file of the browser SDK (relative to sdk/browser/, or relay/demo/sdk/ in a wheel).
SDK_FILES = {
    "/sdk/presence.js": "presence.js",
    "/sdk/msgpack.js": "msgpack.js",
    "/sdk/ui.js": "ui.js",
    "/sdk/adapters/textarea.js": "adapters/textarea.js",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page needs its own scripts and styles, the relay's WebSocket ('self' covers ws: and wss:
# of the same host in CSP 3) and nothing else: no inline script, no CDN, no frames.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def sdk_dir() -> Path:
    """Where the SDK modules are: the wheel's copy, else the source checkout's."""
    packaged = PAGE_DIR / "sdk"
    return packaged if (packaged / "presence.js").is_file() else SOURCE_SDK_DIR


def load_assets() -> dict[str, Asset]:
    """Every file of the demo, by URL path. A missing file is an error at start (a broken
    install), not a 404 the first user finds."""
    files = {path: PAGE_DIR / name for path, name in PAGE_FILES.items()}
    base = sdk_dir()
    files.update({path: base / name for path, name in SDK_FILES.items()})
    assets = {}
    for path, file in files.items():
        try:
            body = file.read_bytes()
        except OSError as exc:
            raise RuntimeError(f"demo: cannot read {file} ({exc.strerror})") from None
        assets[path] = Asset(body, CONTENT_TYPES[file.suffix])
    return assets

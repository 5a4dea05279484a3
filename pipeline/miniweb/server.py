"""The mini-web's HTTP server: a real threaded server on 127.0.0.1 serving ``root/web``.

Stateless: 404s, ``/slow/`` delays and content types follow from the files
:func:`pipeline.miniweb.generate.generate_miniweb` writes. Entry points: :func:`serve_miniweb` (context manager),
:func:`serve_forever`. Behaviour in full: docs/miniweb.md ("Serving")."""
from __future__ import annotations

import contextlib
import mimetypes
import posixpath
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

SLOW_PREFIX = "slow/"  # web-relative paths under this prefix are served after a delay
_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"))


def sniff_content_type(body: bytes, name: str) -> str:
    """Content-Type from the body's magic bytes, else from the file name."""
    for magic, ctype in _MAGIC:
        if body.startswith(magic):
            return ctype
    head = body[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "text/html; charset=utf-8"
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return guessed + "; charset=utf-8" if guessed.startswith("text/") else guessed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # img2dataset opens many connections at once

    def __init__(self, address: tuple[str, int], web_dir: Path, slow_delay_s: float) -> None:
        self.web_dir = web_dir
        self.slow_delay_s = slow_delay_s
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """Clients that hang up mid-response are normal for a crawler target: stay quiet about those."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wit-miniweb/1.0"
    timeout = 30  # an idle keep-alive connection is closed after this many seconds
    server: _Server

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log lines."""

    def _file(self) -> tuple[str, Path] | None:
        """The web-relative path and file of the request, or None (outside the root, or missing)."""
        rel = posixpath.normpath(unquote(urlsplit(self.path).path)).lstrip("/")
        if rel in ("", "."):
            rel = "index.html"
        if rel.startswith("..") or "\x00" in rel:
            return None
        path = self.server.web_dir / rel
        if path.is_dir():
            rel, path = posixpath.join(rel, "index.html"), path / "index.html"
        return (rel, path) if path.is_file() else None

    def _respond(self, send_body: bool) -> None:
        found = self._file()
        if found is None:
            self.send_error(404, "Not Found")
            return
        rel, path = found
        body = path.read_bytes()
        if rel.startswith(SLOW_PREFIX):
            time.sleep(self.server.slow_delay_s)
        self.send_response(200)
        self.send_header("Content-Type", sniff_content_type(body, path.name))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)


@dataclass
class MiniWebServer:
    """A running mini-web server; ``base_url`` is what :func:`generate_miniweb` needs."""

    root: Path
    host: str
    port: int
    _httpd: _Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def web_dir(self) -> Path:
        return self.root / "web"

    def close(self) -> None:
        """Stop accepting requests and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def start_server(root: str | Path, host: str = "127.0.0.1", port: int = 0,
                 slow_delay_s: float = 1.0) -> MiniWebServer:
    """Start serving ``root/web`` in a background thread; call ``.close()`` when done."""
    root = Path(root)
    (root / "web").mkdir(parents=True, exist_ok=True)
    httpd = _Server((host, port), root / "web", slow_delay_s)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"miniweb-{httpd.server_address[1]}", daemon=True)
    thread.start()
    return MiniWebServer(root, host, int(httpd.server_address[1]), httpd, thread)


@contextlib.contextmanager
def serve_miniweb(root: str | Path, host: str = "127.0.0.1", port: int = 0,
                  slow_delay_s: float = 1.0) -> Iterator[MiniWebServer]:
    """Serve ``root/web`` over HTTP while the ``with`` block runs (port 0: any free port)."""
    server = start_server(root, host, port, slow_delay_s)
    try:
        yield server
    finally:
        server.close()


def serve_forever(root: str | Path, host: str = "127.0.0.1", port: int = 8765, slow_delay_s: float = 1.0) -> None:
    """Serve ``root/web`` until Ctrl-C or SIGTERM (``wit mini-web serve``)."""
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    with serve_miniweb(root, host, port, slow_delay_s) as server:
        print(f"serving {server.web_dir} at {server.base_url} (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        print("stopped", flush=True)

"""A fault-injecting HTTP/1.1 server on 127.0.0.1 for download tests (keep-alive, threaded, bounded).

Routes (``name`` is a key of the ``images`` dict given to :class:`FaultServer`):

| path | answer |
| --- | --- |
| ``/img/<name>`` | the image (``?delay=<s>`` waits first, at most 5 s) |
| ``/status/<code>`` | that status with a short text body |
| ``/flaky/<n>/<name>`` | 503 for the first ``n`` requests of this path, then the image |
| ``/sleep/<s>`` | nothing for ``s`` seconds (at most 10), then a 200 (a read timeout) |
| ``/drip/<name>`` | headers, then the image 64 bytes every 0.2 s (gives up after 10 s) |
| ``/truncated/<name>`` | Content-Length of the image, half of it, connection closed |
| ``/cut/<name>`` | half of the image, no Content-Length, connection closed (a cut-short file) |
| ``/bytes/<n>`` | ``n`` random bytes (at most 64 MiB) as image/jpeg, with (``?length=0``: without) Content-Length |
| ``/robots/<value>/<name>`` | the image with ``X-Robots-Tag: <value>`` (URL-quoted) |
| ``/redirect?to=<url>`` | 302 to ``url`` |
| ``/loop/<n>`` | 302 to ``/loop/<n+1>`` (forever) |
| ``/html`` | an HTML page served as ``image/jpeg`` |

``blackhole_url`` points at a listening socket whose accept queue is full: connecting times out.
``hits`` counts requests per path, ``max_concurrent`` the most requests in flight at once,
``max_delaying`` the most ``/img/...?delay=`` requests waiting at once, ``user_agents`` the User-Agents seen.
"""
from __future__ import annotations

import collections
import contextlib
import io
import socket
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np
from PIL import Image

MAX_SLEEP_S = 10.0
MAX_BYTES = 64 << 20


def smooth_image(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_header_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (100 megapixels by default)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def corrupt_jpeg(data: bytes) -> bytes:
    """A JPEG whose header parses but whose Huffman table is broken: decoding fails."""
    at = data.find(b"\xff\xc4")
    bad = bytearray(data)
    bad[at + 5:at + 21] = bytes([255] * 16)
    return bytes(bad)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as web servers do (nginx tcp_nodelay): no 40 ms delayed-ACK stalls
    server: "_Server"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        state = self.server.state
        state.enter(self.path, self.headers.get("User-Agent", ""))
        try:
            self._route(urlsplit(self.path))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            state.leave()

    def _route(self, url: Any) -> None:
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        handler = getattr(self, f"_r_{parts[0]}", None)
        if handler is None:
            self._send(404, b"no such route", "text/plain")
        else:
            handler(parts[1:], query)

    def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", headers: dict[str, str] | None = None,
              length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _image(self, name: str) -> bytes:
        return self.server.images[name]

    def _r_img(self, args: list[str], q: dict[str, str]) -> None:
        with self.server.state.waiting():
            time.sleep(min(float(q.get("delay", 0)), 5.0))
        self._send(200, self._image(args[0]))

    def _r_status(self, args: list[str], q: dict[str, str]) -> None:
        self._send(int(args[0]), f"status {args[0]}".encode(), "text/plain")

    def _r_flaky(self, args: list[str], q: dict[str, str]) -> None:
        if self.server.state.hits[self.path] <= int(args[0]):
            self._send(503, b"try again", "text/plain")
        else:
            self._send(200, self._image(args[1]))

    def _r_sleep(self, args: list[str], q: dict[str, str]) -> None:
        time.sleep(min(float(args[0]), MAX_SLEEP_S))
        self._send(200, b"late", "text/plain")

    def _r_drip(self, args: list[str], q: dict[str, str]) -> None:
        body = self._image(args[0])
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        deadline = time.monotonic() + MAX_SLEEP_S
        for start in range(0, len(body), 64):
            if time.monotonic() > deadline:
                break
            self.wfile.write(body[start:start + 64])
            self.wfile.flush()
            time.sleep(0.2)
        self.close_connection = True

    def _r_truncated(self, args: list[str], q: dict[str, str]) -> None:
        body = self._image(args[0])
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.close_connection = True

    def _r_cut(self, args: list[str], q: dict[str, str]) -> None:
        body = self._image(args[0])
        self._send(200, body[: len(body) // 2], length=False)

    def _r_bytes(self, args: list[str], q: dict[str, str]) -> None:
        n = min(int(args[0]), MAX_BYTES)
        self._send(200, np.random.default_rng(n).bytes(n), length=q.get("length", "1") != "0")

    def _r_robots(self, args: list[str], q: dict[str, str]) -> None:
        self._send(200, self._image(args[1]), headers={"X-Robots-Tag": args[0]})

    def _r_redirect(self, args: list[str], q: dict[str, str]) -> None:
        self._send(302, b"", "text/plain", headers={"Location": q["to"]})

    def _r_loop(self, args: list[str], q: dict[str, str]) -> None:
        self._send(302, b"", "text/plain", headers={"Location": f"/loop/{int(args[0]) + 1}"})

    def _r_html(self, args: list[str], q: dict[str, str]) -> None:
        self._send(200, b"<!doctype html><html><body>not an image</body></html>", "image/jpeg")


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: collections.Counter = collections.Counter()
        self.in_flight = 0
        self.max_concurrent = 0
        self.delaying = 0
        self.max_delaying = 0
        self.user_agents: set[str] = set()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count requests in their delay (the client holds its connection slot the whole time)."""
        with self.lock:
            self.delaying += 1
            self.max_delaying = max(self.max_delaying, self.delaying)
        try:
            yield
        finally:
            with self.lock:
                self.delaying -= 1

    def enter(self, path: str, user_agent: str) -> None:
        with self.lock:
            self.hits[path] += 1
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
            self.user_agents.add(user_agent)

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images = images
        self.state = _State()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hang up on purpose here (opt-outs, caps, timeouts): no tracebacks for that."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FaultServer:
    """Context manager: the server in a background thread, plus a black-hole listener."""

    def __init__(self, images: dict[str, bytes]) -> None:
        self.httpd = _Server(images)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._hole, self._fillers = self._blackhole()
        self.blackhole_url = f"http://127.0.0.1:{self._hole.getsockname()[1]}/img/x"

    @staticmethod
    def _blackhole() -> tuple[socket.socket, list[socket.socket]]:
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        fillers = []
        for _ in range(4):  # fill the accept queue: later SYNs are dropped, connects time out
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(hole.getsockname())
            except BlockingIOError:
                pass
            fillers.append(s)
        return hole, fillers

    @property
    def state(self) -> _State:
        return self.httpd.state

    def url(self, path: str) -> str:
        return self.base_url + path

    def robots_url(self, value: str, name: str) -> str:
        return self.url(f"/robots/{quote(value, safe='')}/{name}")

    def __enter__(self) -> "FaultServer":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        for s in [self._hole, *self._fillers]:
            s.close()

"""``wit dashboard --serve``: the dashboard over HTTP on this machine, regenerated while a build runs.

Each request for the page first checks whether a stage has written anything since the page was made
(:func:`pipeline.report.dashboard.is_stale`) and regenerates it then, at most once per ``min_interval_s``;
the served page reloads itself every ``refresh_s`` seconds, so stages appear as they finish. Local build
directories only (a build on a store: ``wit dashboard URL`` writes its page there).
"""
from __future__ import annotations

import contextlib
import http.server
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from pipeline.core.errors import WitError
from pipeline.core.io import is_url
from pipeline.report.dashboard import PAGE, is_stale, write_report
from pipeline.report.page import HEAD_START

ROUTES = ("/", "/index.html", f"/{PAGE}")


class DashboardState:
    """The build being watched and when its page was last regenerated (one regeneration at a time)."""

    def __init__(self, build_dir: Path, refresh_s: int, min_interval_s: float,
                 log: Callable[[str], None] = print) -> None:
        self.build_dir, self.refresh_s, self.min_interval_s, self.log = build_dir, refresh_s, min_interval_s, log
        self.page = build_dir / "reports" / PAGE
        self.lock = threading.Lock()
        self.last = 0.0

    def body(self) -> bytes:
        """The page as served: the file plus a reload every ``refresh_s`` seconds."""
        reload = f'<meta http-equiv=refresh content="{self.refresh_s}">'.encode()
        start = HEAD_START.encode()
        return self.page.read_bytes().replace(start, start + reload, 1) if self.refresh_s else self.page.read_bytes()

    def refresh(self, force: bool = False) -> None:
        with self.lock:
            due = time.monotonic() - self.last >= self.min_interval_s
            if force or (due and is_stale(self.build_dir)):
                write_report(self.build_dir)
                self.last = time.monotonic()
                self.log(f"regenerated {self.page}")


def _handler(state: DashboardState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] not in ROUTES:
                self.send_error(404, "only the dashboard is served here")
                return
            state.refresh()
            body = state.body()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per regeneration instead
            return

    return Handler


@contextlib.contextmanager
def dashboard_server(build_dir: str | Path, host: str = "127.0.0.1", port: int = 0, refresh_s: int = 30,
                     min_interval_s: float = 5.0, log: Callable[[str], None] = print
                     ) -> Iterator[http.server.ThreadingHTTPServer]:
    """A running server (in a background thread) for the dashboard of ``build_dir`` (a local folder: a build on
    a store gets its page from ``wit dashboard URL`` without --serve); ``.url`` is its address."""
    if is_url(str(build_dir)):
        raise WitError(f"{build_dir}: --serve serves a local build directory only (without --serve the page is "
                       "written to the build's reports/)")
    state = DashboardState(Path(build_dir), refresh_s, min_interval_s, log)
    state.refresh(force=True)
    server = http.server.ThreadingHTTPServer((host, port), _handler(state))
    server.url = f"http://{host}:{server.server_address[1]}/"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, name="wit-dashboard", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

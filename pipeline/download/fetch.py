"""Polite, bounded HTTP fetching for the download workers (urllib3, one pool per download task).

:class:`Fetcher` (made by :func:`new_fetcher`) fetches each image behind the address guard, with per-host
limits, redirects, timeouts, byte cap, ``X-Robots-Tag`` opt-outs and ``Retry-After``-aware retries.
The rules in full: docs/download.md ("Fetching politely")."""
from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import http.client
import itertools
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, TypeVar
from urllib.parse import urljoin, urlsplit

import urllib3

import pipeline.download.netguard as netguard
from pipeline.download.config import DownloadConfig
from pipeline.download.reasons import Dropped, error_reason, is_retryable

T = TypeVar("T")
R = TypeVar("R")
CHUNK = 1 << 16
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Directives that take a value ("unavailable_after: <date>"): the part before ':' is not a user agent.
VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
FETCH_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError)
OPTED_OUT_MESSAGE = "Use of image disallowed by X-Robots-Tag directive"
MAX_RETRY_AFTER = 60.0  # seconds; a longer Retry-After is not waited for (no retry); a shorter one gets a jitter
BACKOFF_BASE, BACKOFF_MAX = 0.5, 8.0  # seconds: attempt n waits 2**n x base (at most max), jittered in [1/2, 1]


@dataclasses.dataclass(frozen=True)
class FetchOptions:
    user_agent: str
    robots_token: str
    directives: frozenset[str]
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_redirects: int
    max_bytes: int
    max_per_host: int
    retries: int
    policy: netguard.AddressPolicy
    max_retry_after: float = MAX_RETRY_AFTER

    @classmethod
    def from_config(cls, cfg: DownloadConfig) -> "FetchOptions":
        return cls(cfg.user_agent, cfg.robots_token.strip().lower(),
                   frozenset(d.strip().lower() for d in cfg.disallowed_header_directives),
                   cfg.connect_timeout, cfg.read_timeout, cfg.timeout, cfg.max_redirects, cfg.max_image_bytes,
                   cfg.max_per_host, cfg.retries,
                   netguard.AddressPolicy(cfg.allow_private_networks, tuple(cfg.allowed_networks)))


@dataclasses.dataclass(frozen=True)
class Fetched:
    """The body of an image, or why there is none (``error`` as free text, ``reason`` as a stable name)."""

    data: bytes | None
    error: str | None = None
    reason: str | None = None
    attempts: int = 1


def opted_out(values: Iterable[str], token: str, directives: frozenset[str]) -> bool:
    """True when an ``X-Robots-Tag`` value applies to us (unscoped, or scoped to ``token``) and holds a
    disallowed directive. ``values``: the header's values (it may be repeated)."""
    for value in values:
        scope, sep, rest = value.partition(":")
        scope = scope.strip().lower()
        scoped = bool(sep) and scope not in VALUED_DIRECTIVES and "," not in scope and " " not in scope
        if scoped and scope != token:
            continue
        names = {d.strip().lower().split(":", 1)[0] for d in (rest if scoped else value).split(",")}
        if names & directives:
            return True
    return False


class HostLimiter:
    """At most ``limit`` concurrent holders of a slot per host."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._semaphores: dict[str, threading.BoundedSemaphore] = {}

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            semaphore = self._semaphores.setdefault(host, threading.BoundedSemaphore(self.limit))
        with semaphore:
            yield


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header value asks to wait (delta-seconds or an HTTP-date, a past date is 0);
    None when absent or unreadable."""
    value = (value or "").strip()
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(exc: Dropped, attempt: int, max_retry_after: float) -> float | None:
    """Seconds to wait before retrying after failure ``exc`` of attempt ``attempt`` (0-based); None: no retry."""
    if not is_retryable(exc.reason):
        return None
    if exc.retry_after is not None:
        return exc.retry_after + random.uniform(0, BACKOFF_BASE) if exc.retry_after <= max_retry_after else None
    step = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** attempt)
    return random.uniform(step / 2, step)


def _host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or ''}"


class Fetcher:
    """Fetches image bodies under :class:`FetchOptions`; thread-safe; ``close()`` when done."""

    def __init__(self, opts: FetchOptions, pool_size: int = 64) -> None:
        self.opts = opts
        self.hosts = HostLimiter(opts.max_per_host)
        headers = {"User-Agent": opts.user_agent, "Accept": "image/avif,image/webp,image/*;q=0.9,*/*;q=0.5"}
        self.pool = netguard.pool_manager(opts.policy, num_pools=pool_size, maxsize=opts.max_per_host,
                                          block=False, retries=False, headers=headers)

    def close(self) -> None:
        self.pool.clear()

    def fetch(self, url: Any) -> Fetched:
        """The body at ``url``, retrying retryable failures ``retries`` times (see :func:`retry_delay`)."""
        url = url.strip() if isinstance(url, str) else url
        for attempt in range(self.opts.retries + 1):
            try:
                return Fetched(self._fetch_once(url), attempts=attempt + 1)
            except Dropped as exc:
                failure = Fetched(None, str(exc), exc.reason, attempt + 1)
                delay = retry_delay(exc, attempt, self.opts.max_retry_after)
            if delay is None or attempt == self.opts.retries:
                return failure
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _fetch_once(self, url: Any) -> bytes:
        deadline = time.monotonic() + self.opts.total_timeout
        for _ in range(self.opts.max_redirects + 1):
            refusal = netguard.url_refusal(url, self.opts.policy)
            if refusal is not None:
                raise Dropped(refusal, f"refused ({refusal}): {_shown(url)}")
            body = self._get(url, deadline)
            if isinstance(body, bytes):
                return body
            url = body
        raise Dropped("too_many_redirects", f"more than {self.opts.max_redirects} redirects")

    def _get(self, url: str, deadline: float) -> bytes | str:
        """One request: the body, or the absolute URL a redirect points to."""
        with self.hosts.slot(_host_key(url)):
            try:
                response = self.pool.urlopen("GET", url, redirect=False, retries=False, preload_content=False,
                                             timeout=self._timeout(deadline))
            except FETCH_ERRORS as exc:
                raise Dropped(error_reason("failed_to_download", str(exc)), _one_line(exc)) from None
            try:
                return self._handle(response, url, deadline)
            except FETCH_ERRORS as exc:
                response.close()
                raise Dropped(error_reason("failed_to_download", str(exc)), _one_line(exc)) from None
            except Dropped:
                response.close()
                raise
            finally:
                response.release_conn()

    def _timeout(self, deadline: float) -> urllib3.Timeout:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Dropped("timeout", f"timed out: image not complete within {self.opts.total_timeout:g} s")
        return urllib3.Timeout(connect=min(self.opts.connect_timeout, left), read=min(self.opts.read_timeout, left))

    def _handle(self, response: urllib3.BaseHTTPResponse, url: str, deadline: float) -> bytes | str:
        status = response.status
        if status in REDIRECT_CODES:
            location = response.headers.get("Location")
            if not location:
                raise Dropped("http_3xx", f"HTTP Error {status}: redirect without a Location")
            response.close()
            return urljoin(url, location.strip())
        if not 200 <= status < 300:
            message = f"HTTP Error {status}: {response.reason or ''}".strip()
            raise Dropped(error_reason("failed_to_download", message), message,
                          retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if self.opts.directives and opted_out(response.headers.getlist("X-Robots-Tag"), self.opts.robots_token,
                                              self.opts.directives):
            raise Dropped("opted_out", OPTED_OUT_MESSAGE)
        return self._read_body(response, deadline)

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.opts.max_bytes:
            raise Dropped("too_large", f"too large: Content-Length {length} > max_image_bytes")
        body = bytearray()
        while chunk := response.read1(CHUNK):
            body += chunk
            if len(body) > self.opts.max_bytes:
                raise Dropped("too_large", f"too large: body over {self.opts.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise Dropped("timeout", f"timed out: image not complete within {self.opts.total_timeout:g} s")
        return bytes(body)


def _shown(url: Any) -> str:
    """``url`` for an error message: as is when a printable string, else its repr; at most 200 characters."""
    return (url if isinstance(url, str) and url.isprintable() else repr(url))[:200]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def map_unordered(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn`` over ``items`` on ``threads`` threads, results in completion order, at most 2 x threads
    items in flight (so a shard's images are never all in memory at once)."""
    source = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
        pending: set[Future[R]] = {pool.submit(fn, item) for item in itertools.islice(source, 2 * threads)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
                for item in itertools.islice(source, 1):
                    pending.add(pool.submit(fn, item))


def new_fetcher(cfg: DownloadConfig, **kwargs: Any) -> Fetcher:
    return Fetcher(FetchOptions.from_config(cfg), **kwargs)

"""Drop reasons of the download stage: one short, stable name per failed URL (the shard parquet's ``reason``).

| reason | meaning | retryable |
| --- | --- | --- |
| ``bad_url`` | null, empty, too long, not http(s), bad port or malformed host (:mod:`pipeline.download.netguard`) | no |
| ``bad_type`` | the URL is not a string (e.g. an integer column) | no |
| ``private_address`` | host is, resolves to or redirects to a loopback/private/link-local address | no |
| ``http_404``, ``http_403``, ``http_410``, ``http_4xx``, ``http_3xx`` | HTTP status | no |
| ``http_429``, ``http_5xx`` | rate limited, server error (``Retry-After`` honoured) | yes |
| ``timeout`` | connect/read timeout, or the whole image took longer than ``timeout`` | yes |
| ``connection_error`` | refused, reset, closed early | yes |
| ``truncated`` | body shorter than its Content-Length | yes |
| ``dns_error``, ``ssl_error`` | name does not resolve, TLS failure | no |
| ``too_many_redirects`` | more than ``max_redirects`` hops (loops included) | no |
| ``opted_out`` | ``X-Robots-Tag`` with a disallowed directive (noai, noimageai, noindex, ...) | no |
| ``too_large`` | body over ``max_image_bytes`` or header over ``max_image_pixels`` | no |
| ``not_image`` | no image format recognised (HTML, text, random bytes) | no |
| ``decode_error`` | an image header but undecodable data (corrupt, cut short) | no |
| ``image_too_small`` | shorter side under ``min_image_size`` | no |
| ``eval_duplicate`` | near-duplicate of an eval image, left out (``drop_eval_duplicates``) | no |
| ``shard_failed`` | the whole shard task failed after its retries (run stats only) | re-run |
"""
from __future__ import annotations

import re
from typing import Sequence

Patterns = Sequence[tuple[str, str]]


class Dropped(Exception):
    """A URL dropped for ``reason``; the message is the row's ``error_message``. ``size``: the image's
    (width, height) when its header was read; ``retry_after``: seconds the server asked to wait (Retry-After)."""

    def __init__(self, reason: str, message: str, size: tuple[int, int] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.size = size
        self.retry_after = retry_after


RETRYABLE_REASONS = frozenset({"timeout", "connection_error", "truncated", "http_429", "http_5xx"})

REASON_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"private address", "private_address"),
    (r"incompleteread|truncated", "truncated"),
    (r"timed? ?out", "timeout"),
    (r"name or service not known|temporary failure in name resolution|nodename nor servname"
     r"|no address associated|getaddrinfo failed|name resolution|failed to resolve", "dns_error"),
    (r"certificate|ssl", "ssl_error"),
    (r"connection refused|connection reset|remote end closed|connection aborted|broken pipe"
     r"|network is unreachable|no route to host|connection broken|failed to establish", "connection_error"),
    (r"x-robots-tag", "opted_out"),
    (r"redirect", "too_many_redirects"),
    (r"unknown url type|no host given|invalid url|url can't contain control|failed to parse", "bad_url"),
    (r"too large", "too_large"),
    (r"cannot identify image", "not_image"),
    (r"decod", "decode_error"),
    (r"too small", "image_too_small"),
)


def error_reason(status: str | None, error_message: str | None, patterns: Patterns = REASON_PATTERNS) -> str:
    """A short, stable drop reason from a row's ``status`` and free-text ``error_message``.

    ``HTTP Error 404: Not Found`` -> ``http_404`` (also 403, 410, 429), other codes -> ``http_4xx`` /
    ``http_5xx`` / ``http_3xx``; then the first of ``patterns`` (regex, reason) found in the lower-cased
    message (by default the patterns above); anything unrecognised -> ``download_error`` (or
    ``resize_error`` for ``failed_to_resize``).
    """
    message = (error_message or "").lower()
    http = re.search(r"http error (\d{3})", message)
    if http:
        code = int(http.group(1))
        return f"http_{code}" if code in (403, 404, 410, 429) else f"http_{code // 100}xx"
    for pattern, reason in patterns:
        if re.search(pattern, message):
            return reason
    return "resize_error" if status == "failed_to_resize" else "download_error"


def is_retryable(reason: str | None) -> bool:
    return reason in RETRYABLE_REASONS

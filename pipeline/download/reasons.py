"""Drop reasons of the download stage: one short, stable name per failed URL (the shard parquet's ``reason``).

:func:`error_reason` maps a status and error message to a reason, :func:`is_retryable` tells the retryable
ones (:data:`RETRYABLE_REASONS`). The table of reasons: docs/download.md ("Drop reasons")."""
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

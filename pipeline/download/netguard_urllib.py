"""Address guard of the img2dataset engine (urllib connections). Keep the downloader off private networks (SSRF guard).

Two layers, both off when ``allow_private_networks`` is set: :func:`screen_urls` (driver) and :func:`set_guard`
(each worker's urllib opener); URL parsing, the address policy and the error type are
:mod:`pipeline.download.netguard`'s. Details: docs/download.md ("Its address guard")."""
from __future__ import annotations

import functools
import http.client
import socket
import urllib.request
from typing import Any, Iterable

from pipeline.download.netguard import (ALLOWED_SCHEMES, BAD_URL, PRIVATE_ADDRESS, AddressPolicy, PrivateAddressError,
                               host_refusal, is_public_ip, pinned_addresses, url_host)
from pipeline.download.netguard import resolve as _resolve
from pipeline.download.netguard import screen_urls as _screen_urls

__all__ = ["ALLOWED_SCHEMES", "BAD_URL", "PRIVATE_ADDRESS", "PrivateAddressError", "host_is_private", "is_public_ip",
           "resolve", "screen_urls", "set_guard", "url_host"]


def resolve(host: str) -> list[str]:
    """All addresses ``host`` resolves to (empty when it does not resolve)."""
    return list(_resolve(host))


def host_is_private(host: str) -> bool:
    """True when ``host`` is, denotes or resolves to (at least one) non-global address."""
    return host_refusal(host, AddressPolicy()) == PRIVATE_ADDRESS


def screen_urls(urls: Iterable[Any], allow_private_networks: bool = False, threads: int = 32) -> list[str | None]:
    """Per URL: ``None`` if it may be fetched, else the reason (``bad_type``, ``bad_url`` or ``private_address``)."""
    return _screen_urls(urls, allow_private_networks, threads)


def _pinned_create_connection(policy: AddressPolicy, address: tuple[str, int], *args: Any,
                              **kwargs: Any) -> socket.socket:
    """``socket.create_connection`` to the checked addresses of ``address``'s host only (see docs/download.md)."""
    host, port = address
    errors: list[OSError] = []
    for ip in pinned_addresses(host, port, policy):
        try:
            return socket.create_connection((ip, port), *args, **kwargs)
        except OSError as exc:
            errors.append(exc)
    raise errors[-1]


_guarded_create_connection = functools.partial(_pinned_create_connection, AddressPolicy())


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_create_connection


def _via_proxy(req: urllib.request.Request) -> bool:
    """A proxied request connects to the (possibly internal) proxy, which then does the fetch."""
    return req.has_proxy() or bool(getattr(req, "_tunnel_host", None))


class GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        cls = http.client.HTTPConnection if _via_proxy(req) else _GuardedHTTPConnection
        return self.do_open(cls, req)


class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        cls = http.client.HTTPSConnection if _via_proxy(req) else _GuardedHTTPSConnection
        return self.do_open(cls, req, context=self._context)


def set_guard(enabled: bool) -> None:
    """Install (or remove) the connection guard for ``urllib.request.urlopen`` in this process."""
    if enabled:
        urllib.request.install_opener(urllib.request.build_opener(GuardedHTTPHandler, GuardedHTTPSHandler))
    else:
        urllib.request.install_opener(None)  # type: ignore[arg-type]

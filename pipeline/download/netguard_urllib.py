"""Address guard of the img2dataset engine (urllib connections). Keep the downloader off private networks (SSRF guard).

Two layers, both off when ``allow_private_networks`` is set:

1. :func:`screen_urls` (driver, before downloading): refuses URLs that are not http(s) or whose host
   is, or resolves to (``getaddrinfo``, cached per host, any address), a non-global address:
   loopback, RFC 1918, link-local (incl. the cloud metadata service 169.254.169.254), CGNAT,
   multicast, reserved, IPv4-mapped forms of these. Unresolvable hosts pass (the download then
   fails with ``dns_error``).
2. :func:`set_guard` (each download worker): a urllib opener whose connections check the peer
   address after connecting, so redirects and DNS rebinding cannot reach a private host either;
   such fetches fail with "private address refused".

URL parsing, the address test and the error type are :mod:`pipeline.download.netguard`'s (the default engine's guard).
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

from pipeline.download.netguard import (ALLOWED_SCHEMES, BAD_URL, PRIVATE_ADDRESS, PrivateAddressError, is_public_ip,
                               url_host)

__all__ = ["ALLOWED_SCHEMES", "BAD_URL", "PRIVATE_ADDRESS", "PrivateAddressError", "host_is_private", "is_public_ip",
           "resolve", "screen_urls", "set_guard", "url_host"]


def resolve(host: str) -> list[str]:
    """All addresses ``host`` resolves to (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def host_is_private(host: str) -> bool:
    """True when ``host`` is, or resolves to at least one, non-global address."""
    try:
        return not is_public_ip(str(ipaddress.ip_address(host.strip("[]"))))
    except ValueError:
        pass
    if host.lower().rstrip(".") in ("localhost",) or host.lower().endswith(".localhost"):
        return True
    return any(not is_public_ip(a) for a in resolve(host))


def screen_urls(urls: Iterable[str | None], allow_private_networks: bool = False,
                threads: int = 32) -> list[str | None]:
    """Per URL: ``None`` if it may be fetched, else the reason (``bad_url`` or ``private_address``).

    Hosts are resolved once each, in parallel.
    """
    parsed = [url_host(u) if isinstance(u, str) else (None, None) for u in urls]
    hosts = sorted({h for s, h in parsed if s in ALLOWED_SCHEMES and h})
    private: dict[str, bool] = {}
    if not allow_private_networks and hosts:
        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(hosts)))) as pool:
            private = dict(zip(hosts, pool.map(host_is_private, hosts)))
    reasons: list[str | None] = []
    for scheme, host in parsed:
        if scheme not in ALLOWED_SCHEMES or not host:
            reasons.append(BAD_URL)
        elif private.get(host, False):
            reasons.append(PRIVATE_ADDRESS)
        else:
            reasons.append(None)
    return reasons


def _guarded_create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    """``socket.create_connection`` that refuses a connected peer with a non-global address."""
    sock = socket.create_connection(address, *args, **kwargs)
    peer = str(sock.getpeername()[0])
    if not is_public_ip(peer):
        sock.close()
        raise PrivateAddressError(f"private address refused: {address[0]} -> {peer}")
    return sock


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

"""Keep the downloader off private networks (SSRF guard).

An :class:`AddressPolicy` says which peer addresses may be contacted: globally routable unicast ones,
plus ``allowed_networks`` (CIDRs an operator opts in, e.g. a local mirror), or everything when
``allow_private`` is set. Refused: loopback, RFC 1918, link-local (incl. the cloud metadata service
169.254.169.254), CGNAT, multicast, reserved, and IPv4-mapped forms of these. Two layers:

1. :func:`url_refusal` / :func:`screen_urls` (download workers, before each request and each redirect
   hop): refuses URLs that are not http(s) or whose host is, or resolves to (``getaddrinfo``, cached per
   host and process, any address), a refused address. Unresolvable hosts pass (the fetch then fails
   with ``dns_error``).
2. :func:`pool_manager` (the workers' urllib3 pools): connections check the peer address right after
   connecting, before TLS or any byte of the request, so DNS rebinding cannot reach a refused host
   either; such fetches fail with "private address refused".
"""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

ALLOWED_SCHEMES = ("http", "https")
PRIVATE_ADDRESS = "private_address"
BAD_URL = "bad_url"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PrivateAddressError(OSError):
    """A connection reached (or would reach) a refused address."""


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_public_ip(address: str) -> bool:
    """True for globally routable unicast addresses (IPv6 scope ids and IPv4-mapped forms handled)."""
    ip = _ip(address)
    return ip is not None and ip.is_global and not ip.is_multicast


@dataclasses.dataclass(frozen=True)
class AddressPolicy:
    """Which peer addresses the downloader may connect to."""

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()

    @functools.cached_property
    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)

    def permits(self, address: str) -> bool:
        if self.allow_private or is_public_ip(address):
            return True
        ip = _ip(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self.networks)


@functools.lru_cache(maxsize=1 << 16)
def resolve(host: str) -> tuple[str, ...]:
    """All addresses ``host`` resolves to (empty when it does not resolve); cached per process."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        return ()
    return tuple(sorted({str(info[4][0]) for info in infos}))


def host_addresses(host: str) -> tuple[str, ...]:
    """The addresses a connection to ``host`` may reach: itself if literal, else what it resolves to."""
    if _ip(host) is not None:
        return (str(_ip(host)),)
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return ("127.0.0.1", "::1")
    return resolve(name)


def url_host(url: str) -> tuple[str | None, str | None]:
    """``(scheme, host)`` of a URL, lower-cased; ``None`` parts when it does not parse."""
    try:
        parts = urlsplit(url.strip())
        return (parts.scheme.lower() or None), parts.hostname
    except ValueError:
        return None, None


def url_refusal(url: Any, policy: AddressPolicy) -> str | None:
    """``None`` if ``url`` may be fetched, else the reason (``bad_url`` or ``private_address``)."""
    scheme, host = url_host(url) if isinstance(url, str) else (None, None)
    if scheme not in ALLOWED_SCHEMES or not host:
        return BAD_URL
    if policy.allow_private:
        return None
    return PRIVATE_ADDRESS if any(not policy.permits(a) for a in host_addresses(host)) else None


def screen_urls(urls: Iterable[str | None], allow_private_networks: bool = False, threads: int = 32,
                allowed_networks: tuple[str, ...] = ()) -> list[str | None]:
    """:func:`url_refusal` of many URLs, hosts resolved in parallel."""
    policy = AddressPolicy(allow_private_networks, tuple(allowed_networks))
    urls = list(urls)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls) or 1))) as pool:
        return list(pool.map(lambda u: url_refusal(u, policy), urls))


class _PeerChecked:
    """Mixin for urllib3 connections: refuse a connected peer that the class's ``policy`` does not permit."""

    policy: AddressPolicy

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        peer = str(sock.getpeername()[0])
        if not self.policy.permits(peer):
            sock.close()
            raise PrivateAddressError(f"private address refused: {self.host} -> {peer}")  # type: ignore[attr-defined]
        return sock


def guarded_pool_classes(policy: AddressPolicy) -> dict[str, type]:
    """urllib3 pool classes (per scheme) whose connections enforce ``policy``."""
    classes: dict[str, type] = {}
    for scheme, pool_cls, conn_cls in (("http", HTTPConnectionPool, HTTPConnection),
                                       ("https", HTTPSConnectionPool, HTTPSConnection)):
        guarded_conn = type(f"Guarded{conn_cls.__name__}", (_PeerChecked, conn_cls), {"policy": policy})
        classes[scheme] = type(f"Guarded{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": guarded_conn})
    return classes


def pool_manager(policy: AddressPolicy, **kwargs: Any) -> urllib3.PoolManager:
    """A ``urllib3.PoolManager`` (``kwargs`` as for it) whose connections check their peer against ``policy``."""
    manager = urllib3.PoolManager(**kwargs)
    if not policy.allow_private:
        manager.pool_classes_by_scheme = guarded_pool_classes(policy)
    return manager

"""Keep the downloader off private networks (SSRF guard).

:class:`AddressPolicy` says which peer addresses may be contacted; two layers enforce it: :func:`url_refusal` /
:func:`screen_urls` before each request and redirect hop, and :func:`pool_manager` on every new connection
(checked addresses only, no re-resolving). Refused ranges and rules: docs/download.md ("The network guard")."""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable
from urllib.parse import urlsplit

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError
from urllib3.util import parse_url

ALLOWED_SCHEMES = ("http", "https")
PRIVATE_ADDRESS = "private_address"
BAD_URL = "bad_url"
BAD_TYPE = "bad_type"
MAX_URL_LENGTH = 2048
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_HOST_CHARS = re.compile(r"[a-z0-9._:-]+")  # a host name (IDNA-encoded) or IP literal: no %, \, @, spaces
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")  # an IPv4 part as inet_aton reads it (decimal, octal, hex)
# IPv6 ranges whose last 32 bits are the IPv4 destination: NAT64, IPv4-compatible, IPv4-translated
_LAST_32_BITS_V4 = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "::/96", "::ffff:0:0:0/96"))
_NOT_GLOBAL = (ipaddress.IPv6Network("64:ff9b:1::/48"),)  # local-use NAT64 (RFC 8215), global to Python 3.11


class PrivateAddressError(OSError):
    """A connection reached (or would reach) a refused address."""


def _ip(address: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 addresses an IPv6 address carries (6to4, Teredo server and client, NAT64, IPv4-compatible)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return ()
    found = list(ip.teredo or ()) + ([ip.sixtofour] if ip.sixtofour else [])
    if int(ip) > 1 and any(ip in n for n in _LAST_32_BITS_V4):  # :: and ::1 are not IPv4-compatible
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return tuple(found)


def _is_global(ip: IPAddress) -> bool:
    return ip.is_global and not ip.is_multicast and not any(ip in n for n in _NOT_GLOBAL)


@dataclasses.dataclass(frozen=True)
class AddressPolicy:
    """Which peer addresses the downloader may connect to."""

    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()

    @functools.cached_property
    def networks(self) -> tuple[IPNetwork, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.allowed_networks)

    def permits(self, address: str) -> bool:
        """True when ``address`` and every IPv4 address embedded in it are global or allowed."""
        if self.allow_private:
            return True
        ip = _ip(address)
        return ip is not None and all(self._permits(a) for a in (ip, *embedded_ipv4(ip)))

    def _permits(self, ip: IPAddress) -> bool:
        return _is_global(ip) or any(ip in n for n in self.networks)


def is_public_ip(address: str) -> bool:
    """True for globally routable unicast addresses (IPv6 scope ids, IPv4-mapped and embedded forms handled)."""
    return AddressPolicy().permits(address)


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


def _inet_aton_part(part: str) -> int:
    """One part of a numeric host: hex after ``0x``, octal after ``0``, else decimal (ValueError: bad octal)."""
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    return int(part, 8 if len(part) > 1 and part.startswith("0") else 10)


def legacy_ipv4(name: str) -> ipaddress.IPv4Address | None:
    """The address ``inet_aton`` (and so ``getaddrinfo``, urllib3, browsers) reads in a numeric host such as
    ``2130706433``, ``0x7f.1``, ``0177.0.0.1`` or ``127.1``; None when it is no such number."""
    parts = name[:-1].split(".") if name.endswith(".") else name.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    try:
        values = [_inet_aton_part(p) for p in parts]
    except ValueError:
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(parts)):
        return None
    return ipaddress.IPv4Address(sum(v << 8 * (3 - i) for i, v in enumerate(head)) + last)


def _normal_host(host: str) -> str | None:
    """``host`` lower-cased, without IPv6 brackets, IDNA-encoded; None when no host name could hold it."""
    name = host.lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return name if _HOST_CHARS.fullmatch(name) else None


def host_refusal(host: str, policy: AddressPolicy) -> str | None:
    """``None`` if ``host`` (as a URL names it) may be contacted, else ``bad_url`` or ``private_address``."""
    name = _normal_host(host)
    if name is None:
        return BAD_URL
    ip = _ip(name)
    if ip is None and ":" in name:
        return BAD_URL
    if ip is None and _NUMBER.fullmatch(name.rstrip(".").rsplit(".", 1)[-1]):
        legacy = legacy_ipv4(name)  # non-canonical IPv4: refused whatever it denotes
        return PRIVATE_ADDRESS if legacy is not None and not policy.permits(str(legacy)) else BAD_URL
    if policy.allow_private:
        return None
    return PRIVATE_ADDRESS if any(not policy.permits(a) for a in host_addresses(name)) else None


def url_host(url: str) -> tuple[str | None, str | None]:
    """``(scheme, host)`` of a URL as urllib reads it, lower-cased; ``None`` parts when it does not parse."""
    try:
        parts = urlsplit(url.strip())
        return (parts.scheme.lower() or None), parts.hostname
    except ValueError:
        return None, None


def url_hosts(url: str) -> tuple[str, ...]:
    """The hosts of an http(s) URL with a valid port as urllib and urllib3 read it (they differ on odd URLs
    such as ``http://a\\@b/``); empty when it is not one."""
    try:
        parts, parsed = urlsplit(url), parse_url(url)
        port = parts.port  # ValueError when out of range
    except ValueError:  # urllib3's LocationParseError included
        return ()
    if parts.scheme.lower() not in ALLOWED_SCHEMES or port == 0 or not parts.hostname or not parsed.host:
        return ()
    return tuple(dict.fromkeys((parts.hostname, parsed.host)))


def url_refusal(url: Any, policy: AddressPolicy) -> str | None:
    """``None`` if ``url`` may be fetched, else the reason (``bad_type``, ``bad_url`` or ``private_address``)."""
    if url is not None and not isinstance(url, str):
        return BAD_TYPE
    hosts = url_hosts(url.strip()) if url is not None and len(url) <= MAX_URL_LENGTH else ()
    if not hosts:
        return BAD_URL
    return next((r for r in (host_refusal(h, policy) for h in hosts) if r is not None), None)


def screen_urls(urls: Iterable[Any], allow_private_networks: bool = False, threads: int = 32,
                allowed_networks: tuple[str, ...] = ()) -> list[str | None]:
    """:func:`url_refusal` of many URLs, hosts resolved in parallel."""
    policy = AddressPolicy(allow_private_networks, tuple(allowed_networks))
    urls = list(urls)
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(urls) or 1))) as pool:
        return list(pool.map(lambda u: url_refusal(u, policy), urls))


def pinned_addresses(host: str, port: int, policy: AddressPolicy) -> list[str]:
    """Resolve ``host`` now; its addresses in ``getaddrinfo`` order, to connect to (and nothing else).

    Raises :class:`PrivateAddressError` when the policy refuses any of them, ``socket.gaierror`` when it
    does not resolve."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    refused = [a for a in addresses if not policy.permits(a)]
    if refused:
        raise PrivateAddressError(f"private address refused: {host} -> {refused[0]}")
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: no address")
    return addresses


class _Pinned:
    """Mixin for urllib3 connections: connect only to the addresses of the host that the class's ``policy``
    permits (all of them or none), resolved once per connection. ``host`` (Host header, SNI, certificate
    check) stays the name: only the address the socket connects to is swapped in, for the connect call."""

    policy: AddressPolicy
    _dns_host: str
    port: int
    host: str

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        try:
            addresses = pinned_addresses(name, self.port, self.policy)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        errors: list[ConnectTimeoutError] = []
        for address in addresses:
            self._dns_host = address
            try:
                return super()._new_conn()  # type: ignore[misc]
            except ConnectTimeoutError as exc:  # NewConnectionError too
                errors.append(exc)
            finally:
                self._dns_host = name
        raise errors[-1]


def guarded_pool_classes(policy: AddressPolicy) -> dict[str, type]:
    """urllib3 pool classes (per scheme) whose connections enforce ``policy``."""
    classes: dict[str, type] = {}
    for scheme, pool_cls, conn_cls in (("http", HTTPConnectionPool, HTTPConnection),
                                       ("https", HTTPSConnectionPool, HTTPSConnection)):
        guarded_conn = type(f"Guarded{conn_cls.__name__}", (_Pinned, conn_cls), {"policy": policy})
        classes[scheme] = type(f"Guarded{pool_cls.__name__}", (pool_cls,), {"ConnectionCls": guarded_conn})
    return classes


def pool_manager(policy: AddressPolicy, **kwargs: Any) -> urllib3.PoolManager:
    """A ``urllib3.PoolManager`` (``kwargs`` as for it) whose connections only reach addresses ``policy`` permits."""
    manager = urllib3.PoolManager(**kwargs)
    if not policy.allow_private:
        manager.pool_classes_by_scheme = guarded_pool_classes(policy)
    return manager

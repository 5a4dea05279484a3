"""The SSRF guard refuses every spelling of a private address before any packet reaches it.

A canary TCP listener on 127.0.0.1 counts the connections it was sent (the kernel completes a handshake
before ``accept``, so a connect-then-close guard is caught too): it must see none. Only loopback may ever
receive traffic here: every ``connect`` elsewhere fails (``no_outside_traffic``), and names resolve through
a fake table (``fake_dns``), never through a real DNS server.
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import urllib3

import pipeline.download.netguard as netguard
import pipeline.download.netguard_urllib as netguard_urllib
from pipeline.download.config import DownloadConfig
from pipeline.download.fetch import FetchOptions, Fetcher

PUBLIC = "93.184.216.34"  # never contacted: connects to it fail (no_outside_traffic)


# ---------------------------------------------------------------- fixtures

def _is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@pytest.fixture(autouse=True)
def no_outside_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets may only connect to loopback addresses (whatever the code under test would do)."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(address: Any) -> None:
        if isinstance(address, tuple) and not _is_loopback(str(address[0])):
            raise OSError(101, f"test: no traffic outside loopback ({address[0]})")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


class FakeDNS:
    """``socket.getaddrinfo`` over a table of names (each a list of answers, the last one repeated);
    numeric hosts and localhost resolve as usual, any other name does not resolve."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.names: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.lookups.append(name)
        answers = self.names.get(name.lower().rstrip("."))
        if answers is None:
            if name.lower() == "localhost" or set(name.lower()) <= set("0123456789abcdefx.:%"):
                return self.real(host, port, *args, **kwargs)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        return [info for a in addresses for info in self.real(a, port, *args, **kwargs)]


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDNS]:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    netguard.resolve.cache_clear()
    yield fake
    netguard.resolve.cache_clear()


class Canary:
    """A listener on 127.0.0.1 that nobody should reach: ``connections()`` drains and counts what did."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        self.sock.settimeout(0.3)
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.sock.close()


def loopback_forms(port: int) -> dict[str, str]:
    """URLs that reach the canary on 127.0.0.1:``port`` if a guard lets them through (name -> URL)."""
    return {
        "decimal": f"http://2130706433:{port}/x.jpg",
        "hex": f"http://0x7f000001:{port}/x.jpg",
        "hex parts": f"http://0x7f.0.0.1:{port}/x.jpg",
        "octal": f"http://0177.0.0.1:{port}/x.jpg",
        "short": f"http://127.1:{port}/x.jpg",
        "ipv4-mapped": f"http://[::ffff:127.0.0.1]:{port}/x.jpg",
        "localhost": f"http://localhost:{port}/x.jpg",
        "resolves to loopback": f"http://loop.test:{port}/x.jpg",
    }


def embedded_forms(port: int) -> dict[str, str]:
    """IPv6 forms that carry 127.0.0.1 but do not route there (refused before any connect)."""
    return {
        "ipv4-compatible": f"http://[::127.0.0.1]:{port}/x.jpg",
        "ipv4-compatible hex": f"http://[::7f00:1]:{port}/x.jpg",
        "ipv4-translated": f"http://[::ffff:0:7f00:1]:{port}/x.jpg",
        "nat64": f"http://[64:ff9b::7f00:1]:{port}/x.jpg",
        "6to4": f"http://[2002:7f00:1::1]:{port}/x.jpg",
        "teredo": f"http://[2001:0:4136:e378:8000:63bf:80ff:fffe]:{port}/x.jpg",
    }


@pytest.fixture
def names(fake_dns: FakeDNS) -> FakeDNS:
    fake_dns.names.update({"loop.test": [["127.0.0.1"]], "rebind.test": [[PUBLIC], ["127.0.0.1"]],
                           "public.test": [[PUBLIC]], "mixed.test": [[PUBLIC, "10.0.0.7"]]})
    return fake_dns


# ---------------------------------------------------------------- first layer: URL screening

NOTHING_PRIVATE = netguard.AddressPolicy()


@pytest.mark.parametrize("url, reason", [
    ("http://%31%30.0.0.1/x.jpg", "bad_url"),  # urllib3 would decode it to 10.0.0.1
    ("http://%31%32%37.0.0.1/x.jpg", "bad_url"),
    ("http://example%2ecom/x.jpg", "bad_url"),
    ("http://[fe80::1%25eth0]/x.jpg", "bad_url"),
    ("http://2130706433/x.jpg", "private_address"),
    ("http://167772161/x.jpg", "private_address"),  # 10.0.0.1
    ("http://0x7f000001/x.jpg", "private_address"),
    ("http://0x7f.1/x.jpg", "private_address"),
    ("http://0177.0.0.1/x.jpg", "private_address"),
    ("http://127.1/x.jpg", "private_address"),
    ("http://10.1/x.jpg", "private_address"),
    ("http://127.0.0.1./x.jpg", "private_address"),
    ("http://0/x.jpg", "private_address"),  # 0.0.0.0: this host on Linux
    ("http://[::]/x.jpg", "private_address"),
    ("http://134744072/x.jpg", "bad_url"),  # 8.8.8.8, but not canonical either
    ("http://8.8.010.8/x.jpg", "bad_url"),
    ("http://1.2.3.4.5/x.jpg", "bad_url"),
    ("http://09.1.1.1/x.jpg", "bad_url"),
    ("http://[::127.0.0.1]/x.jpg", "private_address"),
    ("http://[::a00:1]/x.jpg", "private_address"),
    ("http://[::ffff:127.0.0.1]/x.jpg", "private_address"),
    ("http://[::ffff:a9fe:a9fe]/x.jpg", "private_address"),
    ("http://[::ffff:0:a00:1]/x.jpg", "private_address"),
    ("http://[64:ff9b::7f00:1]/x.jpg", "private_address"),
    ("http://[64:ff9b::a9fe:a9fe]/x.jpg", "private_address"),  # the metadata service via NAT64
    ("http://[64:ff9b:1::808:808]/x.jpg", "private_address"),  # local-use NAT64
    ("http://[2002:7f00:1::1]/x.jpg", "private_address"),
    ("http://[2002:a00:1::1]/x.jpg", "private_address"),
    ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x.jpg", "private_address"),
    ("http://127.0.0.1\\@public.test/x.jpg", "private_address"),  # urllib3 reads host 127.0.0.1
    ("http://mixed.test/x.jpg", "private_address"),  # one address of several
    ("http://8.8.8.8/x.jpg", None),
    ("http://[64:ff9b::808:808]/x.jpg", None),
    ("http://[2002:808:808::1]/x.jpg", None),
    ("http://[2606:4700:4700::1111]/x.jpg", None),
    ("http://public.test/x.jpg", None),
    ("http://b\u00fccher.test/x.jpg", None),  # does not resolve: the fetch fails with dns_error
])
def test_url_refusal(names: FakeDNS, url: str, reason: str | None) -> None:
    assert netguard.url_refusal(url, NOTHING_PRIVATE) == reason


@pytest.mark.parametrize("url", ["http://%31%32%37.0.0.1/", "http://2130706433/", "http://0x7f.1/",
                                 "http://0177.0.0.1/", "http://127.1/", "http://127.0.0.1./"])
def test_non_canonical_hosts_refused_whatever_the_policy(fake_dns: FakeDNS, url: str) -> None:
    for policy in (netguard.AddressPolicy(allow_private=True),
                   netguard.AddressPolicy(allowed_networks=("127.0.0.0/8",))):
        assert netguard.url_refusal(url, policy) == "bad_url"
    assert fake_dns.lookups == []  # refused before any DNS lookup


def test_refused_forms_need_no_dns(fake_dns: FakeDNS) -> None:
    forms = {**loopback_forms(80), **embedded_forms(80)}
    literal = [u for name, u in forms.items() if name not in ("localhost", "resolves to loopback")]
    assert all(netguard.url_refusal(u, NOTHING_PRIVATE) == "private_address" for u in literal)
    assert fake_dns.lookups == []


def test_embedded_ipv4_follows_the_policy() -> None:
    teredo = netguard.AddressPolicy(allowed_networks=("2001::/32",))
    assert not teredo.permits("2001:0:4136:e378:8000:63bf:80ff:fffe")  # client 127.0.0.1 (bits inverted)
    assert teredo.permits("2001:0:4136:e378:8000:63bf:f7f7:f7f7")  # server 65.54.227.120, client 8.8.8.8
    assert not teredo.permits("2001:0:a00:1:8000:63bf:f7f7:f7f7")  # server 10.0.0.1, client 8.8.8.8
    nat64 = netguard.AddressPolicy(allowed_networks=("127.0.0.0/8",))
    assert nat64.permits("::ffff:127.0.0.1") and nat64.permits("64:ff9b::7f00:1")
    assert not nat64.permits("64:ff9b::a00:1") and not nat64.permits("2002:a00:1::1")
    assert netguard.AddressPolicy(allowed_networks=("::1/128",)).permits("::1")  # not "IPv4-compatible 0.0.0.1"
    assert netguard.AddressPolicy(allow_private=True).permits("2002:a00:1::1")


@pytest.mark.parametrize("url, reason", [
    ("http://example.test:99999/x.jpg", "bad_url"), ("http://example.test:0/x.jpg", "bad_url"),
    ("http://example.test:http/x.jpg", "bad_url"), (None, "bad_url"), ("", "bad_url"), ("   ", "bad_url"),
    (123, "bad_type"), (b"http://8.8.8.8/x.jpg", "bad_type"), ("ftp://8.8.8.8/x.jpg", "bad_url"),
    ("file:///etc/passwd", "bad_url"), ("http:///x.jpg", "bad_url"), ("http://[::1/x.jpg", "bad_url"),
    ("http://exa mple.test/x.jpg", "bad_url"), ("http://8.8.8.8/" + "a" * 2040, "bad_url"),
    ("http://8.8.8.8/" + "a" * 2000, None), (" http://8.8.8.8/x.jpg ", None),
])
def test_malformed_urls(url: Any, reason: str | None) -> None:
    assert netguard.url_refusal(url, NOTHING_PRIVATE) == reason


def test_screen_urls_of_both_engines(names: FakeDNS) -> None:
    forms = list({**loopback_forms(80), **embedded_forms(80)}.values())
    urls = forms + ["http://%31%32%37.0.0.1/", "http://example.test:99999/", None, 7]
    expected = ["private_address"] * len(forms) + ["bad_url", "bad_url", "bad_url", "bad_type"]
    assert netguard.screen_urls(urls) == expected
    assert netguard_urllib.screen_urls(urls) == expected


# ---------------------------------------------------------------- second layer: connections

def test_urllib3_guard_never_connects(names: FakeDNS, canary: Canary) -> None:
    """The pools' own check (URLs screened or not): refused before the handshake, not after it."""
    pool = netguard.pool_manager(NOTHING_PRIVATE, retries=False)
    forms = {**loopback_forms(canary.port), "percent": f"http://%31%32%37.0.0.1:{canary.port}/x.jpg"}
    for name, url in forms.items():
        with pytest.raises(urllib3.exceptions.HTTPError, match="private address refused"):
            pool.request("GET", url, timeout=2)
    assert canary.connections() == 0


def test_urllib_guard_never_connects(names: FakeDNS, canary: Canary) -> None:
    """The img2dataset engine's opener: same."""
    try:
        netguard_urllib.set_guard(True)
        for name, url in loopback_forms(canary.port).items():
            with pytest.raises(urllib.error.URLError, match="private address refused"):
                urllib.request.urlopen(url, timeout=2)
    finally:
        netguard_urllib.set_guard(False)
    assert canary.connections() == 0


def fetcher(**kw: Any) -> Fetcher:
    cfg = DownloadConfig(connect_timeout=2, read_timeout=2, timeout=4, retries=0, **kw)
    return Fetcher(FetchOptions.from_config(cfg), pool_size=4)


def test_download_fetch_never_connects(names: FakeDNS, canary: Canary) -> None:
    """The download workers' fetch path: every form refused with its reason, nothing reaches the canary."""
    forms = {**loopback_forms(canary.port), **embedded_forms(canary.port),
             "percent": f"http://%31%32%37.0.0.1:{canary.port}/x.jpg",
             "rebinding": f"http://rebind.test:{canary.port}/x.jpg"}  # public when screened, then loopback
    f = fetcher()
    try:
        got = {name: f.fetch(url) for name, url in forms.items()}
    finally:
        f.close()
    assert {name: r.reason for name, r in got.items() if r.reason not in ("private_address", "bad_url")} == {}
    assert got["rebinding"].reason == "private_address" and "private address refused" in got["rebinding"].error
    assert canary.connections() == 0


def test_connection_is_pinned_to_the_checked_address(names: FakeDNS, canary: Canary) -> None:
    """The host is resolved once per connection: what was checked is what is connected to."""
    pool = netguard.pool_manager(netguard.AddressPolicy(allowed_networks=("127.0.0.1/32",)), retries=False)
    names.names["flip.test"] = [["127.0.0.1"], [PUBLIC]]  # a re-resolving connect would go elsewhere
    names.lookups.clear()
    with pytest.raises(urllib3.exceptions.HTTPError):  # the canary never answers HTTP
        pool.request("GET", f"http://flip.test:{canary.port}/", timeout=0.5)
    assert names.lookups.count("flip.test") == 1 and canary.connections() == 1


# ---------------------------------------------------------------- allowed hosts still work, by name

class _EchoHost(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        sni = getattr(self.server, "sni", None)
        body = f"{self.headers.get('Host')} {sni}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def echo_server(tls: Callable[[ThreadingHTTPServer], ssl.SSLContext] | None = None
                ) -> Iterator[ThreadingHTTPServer]:
    """A server on 127.0.0.1 answering ``<Host header> <TLS SNI>``; ``tls`` gives it a server context."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHost)
    if tls is not None:
        server.socket = tls(server).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


LOCAL = ("127.0.0.0/8", "::1/128")


def test_allowed_host_keeps_its_name() -> None:
    f = fetcher(allowed_networks=LOCAL)
    with echo_server() as server:
        port = server.server_address[1]
        try:
            fetched = f.fetch(f"http://localhost:{port}/x.jpg")
        finally:
            f.close()
    assert fetched.data == f"localhost:{port} None".encode(), fetched


def _tls_files(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name ``localhost`` only (no IP address), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_tls_sni_and_certificate_use_the_name(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    cert, key = _tls_files(tmp_path)

    def tls(server: ThreadingHTTPServer) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda sock, name, ctx: setattr(server, "sni", name)
        return context

    pool = netguard.pool_manager(netguard.AddressPolicy(allowed_networks=LOCAL), retries=False, ca_certs=str(cert))
    with echo_server(tls) as server:
        port = server.server_address[1]
        response = pool.request("GET", f"https://localhost:{port}/", timeout=5)
        assert response.status == 200 and response.data == f"localhost:{port} localhost".encode()
        with pytest.raises(urllib3.exceptions.SSLError):  # checked against the name: the certificate has no IP
            pool.request("GET", f"https://127.0.0.1:{port}/", timeout=5)

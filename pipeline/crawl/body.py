"""The page bytes of an HTTP response record, de-chunked and decoded as its headers say.

gzip, deflate, br (``brotli``) and zstd (``zstandard``, both dependencies; looked up lazily); a body that does not
decode is given as stored, as warcio does, with its counter (``encoding_mismatch``, ``encoding_unsupported``).
"""
from __future__ import annotations

import functools
import importlib
import zlib
from typing import Any, Callable

from pipeline.crawl.archive import Record

_IDENTITY = ("", "identity", "none")


def http_body(record: Record, limit: int) -> tuple[bytes, str | None]:
    """The page bytes of a response, de-chunked and decoded as its HTTP headers say (at most ``limit``), and
    None, or the counter of a body whose Content-Encoding could not be undone, which is then given as stored:
    ``encoding_mismatch`` when it does not decode (crawlers store bodies already decoded under the original
    header), ``encoding_unsupported`` when there is no decoder (unknown coding, optional package missing)."""
    body = record.payload
    if "chunked" in record.transfer_encoding:
        body = dechunk(body)
    if record.content_encoding in _IDENTITY:
        return body[:limit], None
    try:
        return _decode_body(body, record.content_encoding, limit)[:limit], None
    except _BadBody:
        return body[:limit], "encoding_mismatch"
    except _NoDecoder:
        return body[:limit], "encoding_unsupported"


class _BadBody(ValueError):
    """An HTTP body does not decode with its Content-Encoding."""


class _NoDecoder(LookupError):
    """No decoder for a Content-Encoding (an unknown coding, or the package decoding it is not installed)."""


def _decode_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """``body`` with its content codings undone, the last one applied first (``Content-Encoding: gzip, br``)."""
    for coding in reversed(content_encoding.split(",")):
        coding = coding.strip()
        if coding not in _IDENTITY:
            body = _DECODERS.get(coding, _unknown_coding)(body, limit)
    return body


def dechunk(body: bytes) -> bytes:
    """Decode an HTTP/1.1 chunked body; a body that is not validly chunked is returned as is (as warcio does)."""
    parts, pos = [], 0
    while True:
        eol = body.find(b"\r\n", pos)
        size_text = body[pos:eol].split(b";")[0].strip() if eol >= 0 else b""
        if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
            return b"".join(parts) if parts else body
        size = int(size_text, 16)
        if size == 0:
            return b"".join(parts)
        parts.append(body[eol + 2:eol + 2 + size])
        pos = eol + 2 + size + 2


def _inflate_body(body: bytes, limit: int) -> bytes:
    """A gzip, zlib or raw-deflate HTTP body inflated (at most ``limit`` bytes)."""
    wbits = 47 if body[:1] in (b"\x1f", b"\x78") else -15
    try:
        return zlib.decompressobj(wbits).decompress(body, limit)
    except zlib.error as exc:
        raise _BadBody(f"bad gzip/deflate body ({exc})") from None


def _unbrotli(body: bytes, limit: int) -> bytes:
    """A brotli HTTP body."""
    return _package_decode("brotli", "brotli", "error", lambda brotli: brotli.decompress(body))


def _unzstd(body: bytes, limit: int) -> bytes:
    """A zstd HTTP body (at most ``limit`` bytes)."""
    def read(zstd: Any) -> bytes:
        with zstd.ZstdDecompressor().stream_reader(body) as reader:
            return reader.read(limit)
    return _package_decode("zstandard", "zstd", "ZstdError", read)


def _package_decode(package: str, coding: str, error: str, decode: Callable[[Any], bytes]) -> bytes:
    """``decode(module)`` with the decoder ``package``; _NoDecoder without it, _BadBody when it fails."""
    module = _optional_module(package)
    if module is None:
        raise _NoDecoder(f"{coding} body (install the {package} package to read it)")
    try:
        return decode(module)
    except getattr(module, error) as exc:
        raise _BadBody(f"bad {coding} body ({exc})") from None


def _unknown_coding(body: bytes, limit: int) -> bytes:
    """The decoder of a Content-Encoding the crawl does not know (``compress``, or a charset sent as one)."""
    raise _NoDecoder("unknown Content-Encoding")


@functools.lru_cache(maxsize=None)
def _optional_module(name: str) -> Any:
    """An optional package, or None when it is not installed (looked up once: a failed import is not cached)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_DECODERS = {"gzip": _inflate_body, "x-gzip": _inflate_body, "deflate": _inflate_body, "br": _unbrotli,
             "zstd": _unzstd}

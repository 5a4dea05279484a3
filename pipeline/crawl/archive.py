"""Records of one WARC, WAT or ARC archive, local or fsspec, gzipped or plain, as :class:`Record`.

WARC is parsed straight off the inflated byte stream, keeping only what the crawl may use (WAT JSON, the
first bytes of 2xx HTML pages); files that do not start with a WARC header (ARC) go through warcio.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import re
import zlib
from typing import Any, BinaryIO, Iterator

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeadersParserException

from pipeline.crawl.config import CrawlConfig
from pipeline.core.io import one_line
from pipeline.crawl.inputs import READ_ERRORS, open_source

try:  # ISA-L inflates about twice as fast as zlib, and reads gzip members in C; optional
    from isal import igzip as _gzip
    from isal import isal_zlib as _inflate

    _INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, _inflate.error)
except ImportError:  # pragma: no cover - depends on the environment
    _gzip = gzip  # type: ignore[assignment]
    _inflate = zlib  # type: ignore[assignment]
    _INFLATE_ERRORS = (zlib.error,)

HTML_TYPES = ("text/html", "application/xhtml+xml")
_GZIP_MAGIC = b"\x1f\x8b"
_BLANK_LINES = re.compile(rb"[\r\n]*")  # between WARC records
_CHUNK = 1 << 16            # bytes of a plain (not gzipped) archive read at a time
_MAX_INFLATE = 1 << 18      # uncompressed bytes read at a time (bounds memory on gzip bombs)
_MAX_HEADER = 1 << 20       # longest WARC header block accepted
_HTTP_HEAD = 1 << 16        # bytes of a response read to find its HTTP headers

# Errors of a broken archive stream: truncated/corrupt gzip, unparsable WARC headers, I/O, network.
STREAM_ERRORS = READ_ERRORS + (ArchiveLoadFailed, StatusAndHeadersParserException) + _INFLATE_ERRORS
# warcio fails on some truncated headers with these; only caught around its record parser.
_PARSE_ERRORS = STREAM_ERRORS + (AttributeError, ValueError)


class CorruptArchive(Exception):
    """A whole archive file is unreadable (truncated gzip, not a WARC); no part is written for it."""


class _NotWarc(Exception):
    """The stream does not start with a WARC header: read it with warcio instead (ARC files)."""


class ArchiveStreamError(OSError):
    """The compressed stream of an archive ends early, or a record runs past the end of the file."""


@dataclasses.dataclass(slots=True)
class Record:
    """What the crawl needs of one WARC record; ``payload`` is the HTTP body (or the block) as far as it was read."""

    rec_type: str
    target: str
    content_type: str = ""        # WARC Content-Type of the block
    status: str = ""              # HTTP status code of a response
    http_type: str = ""           # HTTP Content-Type of a response
    payload: bytes = b""
    complete: bool = True         # False when the block was longer than the read limit
    transfer_encoding: str = ""
    content_encoding: str = ""


def records(source: str, cfg: CrawlConfig = CrawlConfig()) -> Iterator[Record]:
    """Stream the records of one WARC/WAT file (gzipped or plain; ARC through warcio)."""
    try:
        with open_source(source) as raw:
            yield from _warc_records(_Stream(_inflated(raw)), source, cfg)
    except _NotWarc:
        yield from _warcio_records(source, cfg)


def record_kind(record: Record) -> str | None:
    """``"html"`` for 2xx HTML responses and HTML resources, ``"wat"`` for JSON metadata records, else None."""
    if record.rec_type == "metadata":
        return "wat" if record.content_type.lower().startswith("application/json") else None
    if record.rec_type == "response":
        return "html" if record.status.startswith("2") and _is_html(record.http_type) else None
    if record.rec_type == "resource":
        return "html" if _is_html(record.content_type) else None
    return None


def _is_html(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in HTML_TYPES


def _inflated(raw: BinaryIO) -> Iterator[bytes]:
    """The uncompressed bytes of a (multi-member) gzip stream, or the raw bytes, in chunks.

    Members are read one after another by the gzip reader (in C with ISA-L), in chunks of
    ``_MAX_INFLATE`` bytes that span many members: Common Crawl writes one member per record, and a
    Python loop per member cost more than inflating it.
    """
    data = raw.read(_CHUNK)
    if not data.startswith(_GZIP_MAGIC):
        while data:
            yield data
            data = raw.read(_CHUNK)
        return
    with _gzip.GzipFile(fileobj=_Replayed(data, raw), mode="rb") as members:
        while chunk := members.read(_MAX_INFLATE):
            yield chunk


class _Replayed(io.RawIOBase):
    """A binary stream that returns ``first`` (bytes already read off ``raw``), then the rest of ``raw``:
    the gzip magic is sniffed on streams that cannot seek back (HTTP)."""

    def __init__(self, first: bytes, raw: BinaryIO) -> None:
        super().__init__()
        self._first = memoryview(first)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the replayed bytes first, then from ``raw``."""
        out = memoryview(buffer).cast("B")
        if self._first:
            n = min(len(out), len(self._first))
            out[:n] = self._first[:n]
            self._first = self._first[n:]
            return n
        data = self._raw.read(len(out))
        out[:len(data)] = data
        return len(data)


class _Stream:
    """A sequential reader over byte chunks with a small look-ahead buffer; ``offset`` counts bytes consumed.

    Chunks are large (many records each), so the common calls slice the buffer without a Python loop.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self._start = 0         # stream offset of ``_buf[0]``

    @property
    def offset(self) -> int:
        return self._start + self._pos

    def _fill(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._start += self._pos
        self._buf = self._buf[self._pos:] + chunk if self._pos < len(self._buf) else chunk
        self._pos = 0
        return True

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the stream), not consumed."""
        while len(self._buf) - self._pos < n and self._fill():
            pass
        return self._buf[self._pos:self._pos + n]

    def head(self, limit: int) -> bytes | None:
        """The bytes before the next blank line (``CRLF CRLF``), consumed with it; None at the end of the stream."""
        while True:
            buf = self._buf
            pos = self._pos = _BLANK_LINES.match(buf, self._pos).end()  # type: ignore[union-attr]
            end = buf.find(b"\r\n\r\n", pos)
            if end >= 0:
                self._pos = end + 4
                return buf[pos:end]
            if len(buf) - pos > limit:
                raise ArchiveStreamError(f"record header longer than {limit} bytes at offset {self.offset}")
            if not self._fill():
                if self._pos < len(self._buf):
                    raise ArchiveStreamError(f"file ends inside a record header at offset {self.offset}")
                return None

    def take(self, n: int, keep: int) -> bytes:
        """Consume the next ``n`` bytes and return the first ``keep`` of them."""
        pos = self._pos
        if n <= len(self._buf) - pos:  # the usual case: the whole block is in the buffer
            self._pos = pos + n
            return self._buf[pos:pos + (n if n < keep else keep)] if keep > 0 else b""
        parts: list[bytes] = []
        while n > 0:
            if self._pos >= len(self._buf) and not self._fill():
                raise ArchiveStreamError(f"file ends inside a record, {n} bytes short, at offset {self.offset}")
            k = min(n, len(self._buf) - self._pos)
            if keep > 0:
                parts.append(self._buf[self._pos:self._pos + min(k, keep)])
                keep -= k
            self._pos += k
            n -= k
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _warc_records(stream: _Stream, source: str, cfg: CrawlConfig) -> Iterator[Record]:
    """Parse WARC records off the byte stream (raises :class:`_NotWarc` when the file is no WARC)."""
    if not stream.peek(5).lstrip(b"\r\n").startswith(b"WARC/") and stream.peek(5):
        raise _NotWarc(source)
    while True:
        head = stream.head(_MAX_HEADER)
        if head is None:
            return
        if not head.startswith(b"WARC/"):
            raise ArchiveStreamError(f"no WARC header at offset {stream.offset - len(head) - 4}")
        headers = _warc_headers(head)
        length = headers.get("content-length", "")
        if not length.isdigit():
            raise ArchiveStreamError(f"bad Content-Length {length[:20]!r} at offset {stream.offset}")
        yield _read_block(stream, headers, int(length), cfg)


_WANTED_HEADERS = frozenset((b"warc-type", b"warc-target-uri", b"content-type", b"content-length"))


def _warc_headers(head: bytes) -> dict[str, str]:
    """The WARC headers the crawl reads (type, target URI, content type and length), names lower-cased."""
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name in _WANTED_HEADERS:
            headers[name.decode("latin-1")] = value.strip().decode("utf-8", "replace")
    return headers


def _read_block(stream: _Stream, headers: dict[str, str], length: int, cfg: CrawlConfig) -> Record:
    """Read one record block, keeping only what the crawl may use (WAT JSON, an HTML page's first bytes)."""
    rec_type = headers.get("warc-type", "").lower()
    record = Record(rec_type, headers.get("warc-target-uri", "").strip().strip("<>"), headers.get("content-type", ""))
    if rec_type == "metadata" and record.content_type.lower().startswith("application/json"):
        record.payload = stream.take(length, cfg.max_record_bytes)
        record.complete = length <= cfg.max_record_bytes
    elif rec_type == "response":
        _read_response(stream, record, length, cfg)
    elif rec_type == "resource" and _is_html(record.content_type):
        record.payload = stream.take(length, cfg.max_html_bytes)
    else:
        stream.take(length, 0)
    return record


def _read_response(stream: _Stream, record: Record, length: int, cfg: CrawlConfig) -> None:
    """Parse the HTTP headers of a response; keep the body only of 2xx HTML pages."""
    head = stream.take(min(length, _HTTP_HEAD), _HTTP_HEAD)
    end, sep = _header_end(head)
    if end < 0:
        stream.take(length - len(head), 0)
        return
    lines = head[:end].split(b"\n")
    status = lines[0].split(None, 2)
    record.status = status[1].decode("latin-1") if len(status) > 1 else ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"content-type", b"transfer-encoding", b"content-encoding"):
            setattr(record, {b"content-type": "http_type", b"transfer-encoding": "transfer_encoding",
                             b"content-encoding": "content_encoding"}[name], value.strip().decode("latin-1").lower())
    keep = record.status.startswith("2") and _is_html(record.http_type)
    body = head[end + sep:] if keep else b""
    rest = stream.take(length - len(head), max(cfg.max_html_bytes - len(body), 0) if keep else 0)
    record.payload = body + rest if rest else body


def _header_end(head: bytes) -> tuple[int, int]:
    """``(offset, length)`` of the blank line ending HTTP headers: the first ``CRLF CRLF`` or ``LF LF``
    (ClueWeb09 writes bare LFs, and its bodies may hold a CRLF CRLF); offset -1 when there is none."""
    crlf = head.find(b"\r\n\r\n")
    lf = head.find(b"\n\n", 0, crlf if crlf >= 0 else len(head))
    return (crlf, 4) if lf < 0 else (lf, 2)


def _warcio_records(source: str, cfg: CrawlConfig) -> Iterator[Record]:
    """Records of an archive warcio reads (ARC files); CorruptArchive when it is not an archive at all."""
    with open_source(source) as raw:
        for record in guarded(iter(ArchiveIterator(raw)), source, _PARSE_ERRORS):
            if record.format == "arc" and not str(record.rec_headers.get_header("length") or "").isdigit():
                raise CorruptArchive(f"{source}: not a WARC/WAT file")
            yield _from_warcio(record, cfg)


def guarded(items: Iterator[Any], source: str, errors: tuple[type[BaseException], ...] = STREAM_ERRORS
            ) -> Iterator[Any]:
    """``items``, with errors of reading the archive (not of what the caller does with them) re-raised as
    :class:`CorruptArchive`."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except errors as exc:
            raise CorruptArchive(f"{source}: corrupt or truncated archive ({one_line(exc)})") from None
        yield item


def _from_warcio(record: ArcWarcRecord, cfg: CrawlConfig) -> Record:
    """A :class:`Record` of a warcio record (its payload already de-chunked and decoded by warcio)."""
    uri = record.rec_headers.get_header("WARC-Target-URI") or record.rec_headers.get_header("uri") or ""
    out = Record(record.rec_type, uri.strip().strip("<>"), record.rec_headers.get_header("Content-Type") or "")
    if record.http_headers is not None:
        out.status = record.http_headers.get_statuscode() or ""
        out.http_type = record.http_headers.get_header("Content-Type") or ""
    out.payload = record.content_stream().read(cfg.max_record_bytes)
    return out

"""The ``crawl`` stage: web archives (WARC HTML responses, Common Crawl WAT metadata) -> image/alt-text candidates.

``run_crawl(inputs, out_dir, cfg)`` writes one parquet part per input archive into ``out_dir``
(``part-<stem>-<hash of the input>.parquet``; columns ``uid``, ``url``, ``caption``, ``page_url``,
``source``, ``caption_attr``) and ``_stats.json``. Inputs are local files, folders and globs, fsspec
URLs (``https://``, ``s3://``, ``file://``, globs where the filesystem lists), and Common Crawl path
listings (``warc.paths.gz``, ``wat.paths.gz``: relative paths resolved against ``paths_prefix``).

Archives are streamed: gzip members are inflated in chunks spanning many members (ISA-L's gzip reader
when the ``isal`` package is installed, else the standard library's) and WARC records parsed straight
from the byte stream; only the first
``max_html_bytes`` of an HTML response and only HTML/WAT records are kept in memory. Files that do not
start with a WARC header (ARC files) go through warcio. With several files to do, archives are crawled
in parallel on Ray (:mod:`pipeline.crawl.on_ray`), one task per archive.

Parts are streamed in row groups to a temporary file and renamed when the archive is fully read, after
a per-part stats sidecar ``_parts/<part>.stats.json`` has been written; a re-run skips archives whose
part and sidecar exist and sums all sidecars, so a resumed crawl reports the whole crawl. A truncated
or corrupt archive leaves no part behind (``failed_files``); a corrupt record is counted and skipped. An HTTP
body is de-chunked and decoded as its headers say (gzip, deflate; br and zstd with the ``brotli``/``zstandard``
packages); one that does not decode is read as stored, as warcio does (ClueWeb09 and some Common
Crawl records keep ``Content-Encoding: gzip`` over a body stored decoded), and counted as ``encoding_mismatch``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import gzip
import hashlib
import importlib
import io
import os
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeadersParserException

from pipeline.core.config import Config, field
from pipeline.core.errors import WitError
from pipeline.crawl.extract import (WAT_DECODER_AVAILABLE, CorruptRecord, ImageColumns, ImageRef, decode_html, decode_wat,
                              html_images, make_uid, parse_wat, wat_batch, wat_columns, wat_images)
from pipeline.core.executor import QUIET_ENV, Resources, ray_session, submit_bounded
from pipeline.core.parts import PARTS_DIR, PartStore, file_identity, progress, run_key
from pipeline.core.io import atomic_path, clean_tmp
from pipeline.core.stats import StageStats
from pipeline.core.lock import locked

try:  # ISA-L inflates about twice as fast as zlib, and reads gzip members in C; optional
    from isal import igzip as _gzip
    from isal import isal_zlib as _inflate

    _INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, _inflate.error)
except ImportError:  # pragma: no cover - depends on the environment
    _gzip = gzip  # type: ignore[assignment]
    _inflate = zlib  # type: ignore[assignment]
    _INFLATE_ERRORS = (zlib.error,)

STAGE = "crawl"
SCHEMA = pa.schema([(name, pa.string()) for name in
                    ("uid", "url", "caption", "page_url", "source", "caption_attr")])
HTML_TYPES = ("text/html", "application/xhtml+xml")
ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".wat", ".wat.gz", ".arc", ".arc.gz")
LISTING_SUFFIXES = (".paths.gz", ".paths")
COMMON_CRAWL = "https://data.commoncrawl.org/"
_GZIP_MAGIC = b"\x1f\x8b"
_BLANK_LINES = re.compile(rb"[\r\n]*")  # between WARC records
_GLOB_RE = re.compile(r"[*?\[]")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CHUNK = 1 << 16            # bytes of a plain (not gzipped) archive read at a time
_MAX_INFLATE = 1 << 18      # uncompressed bytes read at a time (bounds memory on gzip bombs)
_MAX_HEADER = 1 << 20       # longest WARC header block accepted
_HTTP_HEAD = 1 << 16        # bytes of a response read to find its HTTP headers
# encoding_mismatch / encoding_unsupported: pages whose body did not decode with its Content-Encoding (stored
# already decoded, as ClueWeb09 and some Common Crawl records are) or that had no decoder, read as stored
_COUNTERS = ("records", "pages", "skipped_records", "corrupt_records", "encoding_mismatch", "encoding_unsupported")
_IDENTITY = ("", "identity", "none")
_WAT_BATCH_RECORDS = 2_000     # WAT records parsed together by Arrow's JSON reader
_WAT_BATCH_BYTES = 32 << 20


def _network_errors() -> tuple[type[BaseException], ...]:
    """Errors of remote filesystems that are not OSError (aiohttp's, for fsspec's HTTP filesystem)."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with fsspec[http]
        return ()
    return (aiohttp.ClientError,)


# Errors of a broken archive stream: truncated/corrupt gzip, unparsable WARC headers, I/O, network.
_STREAM_ERRORS = (EOFError, OSError, ArchiveLoadFailed, StatusAndHeadersParserException) + _INFLATE_ERRORS + \
    _network_errors()
# warcio fails on some truncated headers with these; only caught around its record parser.
_PARSE_ERRORS = _STREAM_ERRORS + (AttributeError, ValueError)


class CorruptArchive(Exception):
    """A whole archive file is unreadable (truncated gzip, not a WARC); no part is written for it."""


class _NotWarc(Exception):
    """The stream does not start with a WARC header: read it with warcio instead (ARC files)."""


@dataclasses.dataclass
class CrawlConfig(Config, section="crawl"):
    """Options of the crawl stage (checked when built)."""

    batch_rows: int = field(10_000, min=1, key=False, help="candidate rows buffered before a parquet row group is written")
    max_html_bytes: int = field(5_000_000, min=1, help="read at most this many bytes of one HTML page")
    max_record_bytes: int = field(50_000_000, min=1, help="a WAT record longer than this is counted as corrupt")
    max_caption_chars: int = field(2_000, min=1, help="drop alt texts longer than this (reason caption_too_long)")
    title_fallback: bool = field(True, help="use the <img title> as caption when alt is empty")
    progress: bool = field(True, key=False, help="show a progress bar over input files (only on a terminal)")
    paths_prefix: str = field(COMMON_CRAWL, key=False, help="base URL or folder of the relative paths in *.paths(.gz) listings")
    max_inputs: int = field(0, min=0, key=False, help="crawl only the first N input archives (0 = all), e.g. a sample of a listing")
    workers: int = field(0, min=0, key=False, help="archives crawled in parallel on Ray (0 = one per CPU of the Ray cluster; "
                                        "1 = one at a time in this process, without Ray)")
    ray_min_files: int = field(4, min=0, key=False, help="with fewer archives left to crawl, crawl in this process "
                                              "(Ray takes seconds to start)")
    ray_address: str | None = field(None, key=False, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")


@locked('crawl', 'out_dir')
def run_crawl(inputs: list[str], out_dir: str | Path, cfg: CrawlConfig = CrawlConfig()) -> StageStats:
    """Extract image/alt-text candidates from every archive in ``inputs`` (files, globs, folders, URLs, listings)."""
    sources = expand_inputs(inputs, cfg.paths_prefix)
    if cfg.max_inputs:
        sources = sources[:cfg.max_inputs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_tmp(out)
    clean_tmp(out / PARTS_DIR)
    store = PartStore(out, STAGE)
    todo = [(src, str(out / part_name(src))) for src in sources if not is_done(store, src, cfg)]
    if use_ray(cfg, len(todo)):
        failed = crawl_on_ray(todo, cfg)
    else:
        failed = [msg for src, part in _progress(todo, cfg) if (msg := crawl_job(src, part, cfg)) is not None]
    if failed and len(failed) == len(sources):
        more = f" (and {len(failed) - 1} more failed inputs)" if len(failed) > 1 else ""
        raise WitError(failed[0] + more)
    stats = _total_stats(store, sources, cfg, len(sources) - len(todo), failed)
    stats.write(out)
    return stats


def use_ray(cfg: CrawlConfig, n_todo: int) -> bool:
    """Crawl on Ray when there are at least ``ray_min_files`` archives to do and more than one worker."""
    return n_todo > 0 and cfg.workers != 1 and n_todo >= cfg.ray_min_files


RESOURCES = Resources(cpus=1, memory_mb=1024)  # one archive streamed at a time; bounded buffers


def crawl_on_ray(jobs: list[tuple[str, str]], cfg: CrawlConfig) -> list[str]:
    """Crawl ``(source, part)`` jobs as Ray tasks; return the failure messages. A worker that dies (e.g.
    killed for memory) fails its archive once Ray's retries are spent, and the crawl goes on."""
    import ray

    failed: list[str] = []
    with ray_session(cfg.ray_address, cfg.workers, QUIET_ENV):
        done = submit_bounded(((_crawl_task, job) for job in jobs), RESOURCES, cfg)
        for (source, _), ref in _progress(done, cfg, total=len(jobs)):
            try:
                message = ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as exc:
                message = f"{source}: crawl worker died ({type(exc).__name__})"
            if message is not None:
                failed.append(message)
    return failed


def _crawl_task(job: tuple[str, str], cfg: CrawlConfig) -> str | None:
    return crawl_job(job[0], job[1], cfg)


def crawl_job(source: str, part: str, cfg: CrawlConfig) -> str | None:
    """Crawl one archive into ``part``; the one-line reason when the archive is unreadable, else None."""
    try:
        crawl_file(source, Path(part), cfg)
    except CorruptArchive as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------- inputs

def is_url(item: str) -> bool:
    """True for ``scheme://...`` inputs (read with fsspec)."""
    return bool(_URL_RE.match(item))


def expand_inputs(inputs: Iterable[str | Path], paths_prefix: str = COMMON_CRAWL) -> list[str]:
    """Input archives: files, URLs, glob and folder matches, listing entries; in order, no duplicates."""
    found: dict[str, str] = {}
    for item in inputs:
        for source in _expand_one(str(item), paths_prefix):
            found.setdefault(source if is_url(source) else str(Path(source).resolve()), source)
    if not found:
        raise WitError("crawl: no input archives given")
    return list(found.values())


def _expand_one(item: str, paths_prefix: str) -> list[str]:
    """The archives one input names; WitError when there are none."""
    if item.endswith(LISTING_SUFFIXES):
        return read_listing(item, paths_prefix)
    if is_url(item):
        return _expand_url(item)
    path = Path(item)
    if path.is_file():
        return [item]
    if path.is_dir():
        matches = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))
        if not matches:
            raise WitError(f"{item}: folder holds no {'/'.join(ARCHIVE_SUFFIXES)} files")
        return matches
    if not _GLOB_RE.search(item):
        raise WitError(f"{item}: input archive not found")
    matches = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
    if not matches:
        raise WitError(f"{item}: no files match this pattern")
    return matches


def _filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of a URL, with a one-line error when its protocol is not available."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise WitError(f"{url}: cannot open this URL ({exc})") from None


def _expand_url(url: str) -> list[str]:
    """A URL as is (checked to exist), or the files a URL glob or folder matches."""
    fs, path = _filesystem(url)
    http = url.lower().startswith(("http://", "https://"))
    try:
        if _GLOB_RE.search(path) and not http:
            matches = sorted(fs.unstrip_protocol(p) for p in fs.glob(path) if not fs.isdir(p))
            if not matches:
                raise WitError(f"{url}: no files match this pattern")
            return matches
        if not http and fs.isdir(path):
            matches = sorted(fs.unstrip_protocol(p) for p in fs.find(path) if p.endswith(ARCHIVE_SUFFIXES))
            if not matches:
                raise WitError(f"{url}: folder holds no {'/'.join(ARCHIVE_SUFFIXES)} files")
            return matches
        exists = fs.exists(path)
    except _network_errors() + (OSError,) as exc:
        raise WitError(f"{url}: cannot list ({_one_line(exc)})") from None
    if not exists:
        raise WitError(f"{url}: input archive not found")
    return [url]


def read_listing(listing: str, paths_prefix: str = COMMON_CRAWL) -> list[str]:
    """Archives of a Common Crawl path listing (``*.paths.gz``): one path a line, relative ones joined to the prefix."""
    try:
        with _open_source(listing) as raw:
            data = raw.read()
        text = (gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data).decode("utf-8")
    except FileNotFoundError:
        raise WitError(f"{listing}: path listing not found") from None
    except _STREAM_ERRORS + (UnicodeDecodeError,) as exc:
        raise WitError(f"{listing}: not a readable path listing ({_one_line(exc)})") from None
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not entries:
        raise WitError(f"{listing}: path listing is empty")
    return [e if is_url(e) or os.path.isabs(e) else _join_prefix(paths_prefix, e) for e in entries]


def _join_prefix(prefix: str, relative: str) -> str:
    """``prefix`` (a URL or a folder) joined with a relative listing entry."""
    if is_url(prefix):
        return prefix.rstrip("/") + "/" + relative.lstrip("/")
    return str(Path(prefix) / relative)


@contextlib.contextmanager
def _open_source(source: str) -> Iterator[BinaryIO]:
    """A binary stream of a local file or (with fsspec) a URL; HTTP is read as a stream, not by ranges."""
    if not is_url(source):
        with open(source, "rb") as fh:
            yield fh
        return
    import fsspec

    kwargs = {"block_size": 0} if source.lower().startswith(("http://", "https://")) else {}
    with fsspec.open(source, "rb", **kwargs) as fh:
        yield fh


def part_name(source: str | Path) -> str:
    """Stable part file name of an input archive: its stem plus a hash of its absolute path or URL."""
    text = str(source)
    key = text if is_url(text) else str(Path(text).resolve())
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    name = text.rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name.split(".")[0])[:40] or "input"
    return f"part-{stem}-{digest}.parquet"


def part_key(source: str, cfg: CrawlConfig) -> str:
    """The run key of an archive's part: the output options and the archive's path, size and mtime (or ETag)."""
    return run_key(STAGE, cfg, [file_identity(source)])


def is_done(store: PartStore, source: str, cfg: CrawlConfig) -> bool:
    """Finished from this very archive content with these options (else it is crawled again)."""
    name = part_name(source)
    return store.finished(name, part_key(source, cfg), [store.out / name])


# ---------------------------------------------------------------- one archive

def crawl_file(source: str | Path, part: Path, cfg: CrawlConfig = CrawlConfig()) -> StageStats:
    """Crawl one archive into ``part`` (atomically, sidecar first); CorruptArchive leaves nothing behind."""
    stats = StageStats(STAGE, extra={k: 0 for k in _COUNTERS})
    source = str(source)
    key = part_key(source, cfg)
    with atomic_path(part) as tmp:
        with _PartWriter(tmp, cfg.batch_rows, source) as writer:
            wat = _WatRun()
            for record in _guarded(records(source, cfg), source):
                stats.extra["records"] += 1
                if record_kind(record) == "wat" and record.complete:
                    if wat.add(record):
                        _wat_records(wat, writer, cfg, stats)
                    continue
                _wat_records(wat, writer, cfg, stats)
                page_url, refs = _record_refs(record, cfg, stats)
                _emit(writer, page_url, refs, cfg, stats)
            _wat_records(wat, writer, cfg, stats)
        stats.extra["source"] = source
        PartStore(part.parent, STAGE).record(part.name, key, stats)
    return stats


class _WatRun:
    """Consecutive WAT records waiting to be extracted together (at most ``_WAT_BATCH_RECORDS`` / ``_BYTES``)."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.bytes = 0

    def add(self, record: Record) -> bool:
        """Add a record; True when the run is full."""
        self.records.append(record)
        self.bytes += len(record.payload)
        return len(self.records) >= _WAT_BATCH_RECORDS or self.bytes >= _WAT_BATCH_BYTES


def _wat_records(wat: _WatRun, writer: "_PartWriter", cfg: CrawlConfig, stats: StageStats) -> None:
    """Extract and write the images of a run of WAT records (columnar; one by one when that fails), then clear it."""
    if not wat.records:
        return
    if WAT_DECODER_AVAILABLE:
        _wat_decoded(wat.records, writer, cfg, stats)
    else:
        _wat_arrow(wat.records, writer, cfg, stats)
    wat.records, wat.bytes = [], 0


def _wat_decoded(records: list[Record], writer: "_PartWriter", cfg: CrawlConfig, stats: StageStats) -> None:
    """Columnar extraction of the records msgspec decodes; each other record in its place, one by one."""
    docs = [decode_wat(record.payload) for record in records]
    start = 0
    for i, (record, doc) in enumerate(zip(records, docs)):
        if doc is None:
            _wat_docs(docs[start:i], records[start:i], writer, cfg, stats)
            page_url, refs = _record_refs(record, cfg, stats)
            _emit(writer, page_url, refs, cfg, stats)
            start = i + 1
    _wat_docs(docs[start:], records[start:], writer, cfg, stats)


def _wat_docs(docs: list[Any], records: list[Record], writer: "_PartWriter", cfg: CrawlConfig,
              stats: StageStats) -> None:
    """Extract and write the images of consecutive decoded records."""
    if docs:
        _wat_columns(wat_columns(docs, [r.target for r in records], cfg.title_fallback), writer, cfg, stats)


def _wat_arrow(records: list[Record], writer: "_PartWriter", cfg: CrawlConfig, stats: StageStats) -> None:
    """Columnar extraction with Arrow's JSON reader (without msgspec); all records one by one when it fails."""
    batch = wat_batch([r.payload for r in records], [r.target for r in records], cfg.title_fallback)
    if batch is None:
        for record in records:
            page_url, refs = _record_refs(record, cfg, stats)
            _emit(writer, page_url, refs, cfg, stats)
    else:
        _wat_columns(batch, writer, cfg, stats)


def _wat_columns(batch: tuple[list[str], np.ndarray, ImageColumns], writer: "_PartWriter", cfg: CrawlConfig,
                 stats: StageStats) -> None:
    """Count the pages of a columnar batch and write its images."""
    page_urls, has_html, images = batch
    stats.extra["pages"] += int(has_html.sum())
    stats.extra["skipped_records"] += int((~has_html).sum())
    _emit_columns(writer, page_urls, images, cfg, stats)


def _emit_columns(writer: "_PartWriter", page_urls: list[str], images: ImageColumns, cfg: CrawlConfig,
                  stats: StageStats) -> None:
    """Count the images of many pages and write the candidates (columnar :func:`_emit`)."""
    stats.inputs += images.images
    for reason, n in images.drops.items():
        stats.drop(reason, n)
    long = np.asarray(pc.greater(pc.utf8_length(images.caption), cfg.max_caption_chars).to_numpy(
        zero_copy_only=False), dtype=bool)
    if long.any():
        stats.drop("caption_too_long", int(long.sum()))
    keep = pa.array(~long)
    pages = pa.array(page_urls, pa.string()).take(pa.array(images.page[~long], pa.int64()))
    columns = [images.url.filter(keep), images.caption.filter(keep), pages, images.caption_attr.filter(keep)]
    stats.kept += len(pages)
    writer.add_columns(*columns)


def _emit(writer: "_PartWriter", page_url: str, refs: list[ImageRef], cfg: CrawlConfig, stats: StageStats) -> None:
    """Count every image of a page and write the candidates."""
    stats.inputs += len(refs)
    keep = []
    for ref in refs:
        if ref.drop:
            stats.drop(ref.drop)
        elif len(ref.caption) > cfg.max_caption_chars:
            stats.drop("caption_too_long")
        else:
            keep.append(ref)
    if keep:
        stats.kept += len(keep)
        writer.add(keep, page_url)


def _guarded(items: Iterator[Any], source: str) -> Iterator[Any]:
    """Re-raise errors of reading the archive (not of writing the part) as :class:`CorruptArchive`."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except _STREAM_ERRORS as exc:
            raise CorruptArchive(f"{source}: corrupt or truncated archive ({_one_line(exc)})") from None
        yield item


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message, with its type."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


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
        with _open_source(source) as raw:
            yield from _warc_records(_Stream(_inflated(raw)), source, cfg)
    except _NotWarc:
        yield from _warcio_records(source, cfg)


class ArchiveStreamError(OSError):
    """The compressed stream of an archive ends early, or a record runs past the end of the file."""


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


def _is_html(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() in HTML_TYPES


def _warcio_records(source: str, cfg: CrawlConfig) -> Iterator[Record]:
    """Records of an archive warcio reads (ARC files); CorruptArchive when it is not an archive at all."""
    with _open_source(source) as raw:
        archive = ArchiveIterator(raw)
        while True:
            try:
                record = next(archive)
            except StopIteration:
                return
            except _PARSE_ERRORS as exc:
                raise CorruptArchive(f"{source}: corrupt or truncated archive ({_one_line(exc)})") from None
            if record.format == "arc" and not str(record.rec_headers.get_header("length") or "").isdigit():
                raise CorruptArchive(f"{source}: not a WARC/WAT file")
            yield _from_warcio(record, cfg)


def _from_warcio(record: ArcWarcRecord, cfg: CrawlConfig) -> Record:
    """A :class:`Record` of a warcio record (its payload already de-chunked and decoded by warcio)."""
    uri = record.rec_headers.get_header("WARC-Target-URI") or record.rec_headers.get_header("uri") or ""
    out = Record(record.rec_type, uri.strip().strip("<>"), record.rec_headers.get_header("Content-Type") or "")
    if record.http_headers is not None:
        out.status = record.http_headers.get_statuscode() or ""
        out.http_type = record.http_headers.get_header("Content-Type") or ""
    out.payload = record.content_stream().read(cfg.max_record_bytes)
    return out


# ---------------------------------------------------------------- records -> images

def _record_refs(record: Record, cfg: CrawlConfig, stats: StageStats) -> tuple[str, list[ImageRef]]:
    """``(page_url, images)`` of one record; corrupt and irrelevant records yield no images."""
    kind = record_kind(record)
    refs: list[ImageRef] | None = None
    page_url = record.target
    try:
        if kind == "html":
            refs = _html_refs(record, cfg, stats)
        elif kind == "wat":
            if not record.complete:
                raise CorruptRecord(f"WAT record longer than {cfg.max_record_bytes} bytes")
            page_url, refs = wat_images(parse_wat(record.payload), page_url, cfg.title_fallback)
    except CorruptRecord:
        stats.extra["corrupt_records"] += 1
        return page_url, []
    if refs is None:
        stats.extra["skipped_records"] += 1
        return page_url, []
    stats.extra["pages"] += 1
    return page_url, refs


def _html_refs(record: Record, cfg: CrawlConfig, stats: StageStats) -> list[ImageRef]:
    """The images of an HTML record; a body read as stored because its Content-Encoding could not be undone is
    counted (``encoding_mismatch``/``encoding_unsupported``) once it reads as a page, else it is corrupt."""
    body, issue = _http_body(record, cfg.max_html_bytes)
    html = decode_html(body, record.http_type or record.content_type, cut=len(body) >= cfg.max_html_bytes)
    if issue:
        stats.extra[issue] += 1
    return list(html_images(html, record.target, cfg.title_fallback))


def record_kind(record: Record) -> str | None:
    """``"html"`` for 2xx HTML responses and HTML resources, ``"wat"`` for JSON metadata records, else None."""
    if record.rec_type == "metadata":
        return "wat" if record.content_type.lower().startswith("application/json") else None
    if record.rec_type == "response":
        return "html" if record.status.startswith("2") and _is_html(record.http_type) else None
    if record.rec_type == "resource":
        return "html" if _is_html(record.content_type) else None
    return None


def _http_body(record: Record, limit: int) -> tuple[bytes, str | None]:
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
    """A brotli HTTP body, decoded when the ``brotli`` package is installed."""
    brotli = _optional_module("brotli")
    if brotli is None:
        raise _NoDecoder("brotli body (install the brotli package to read it)")
    try:
        return brotli.decompress(body)
    except brotli.error as exc:
        raise _BadBody(f"bad brotli body ({exc})") from None


def _unzstd(body: bytes, limit: int) -> bytes:
    """A zstd HTTP body (at most ``limit`` bytes), decoded when the ``zstandard`` package is installed."""
    zstd = _optional_module("zstandard")
    if zstd is None:
        raise _NoDecoder("zstd body (install the zstandard package to read it)")
    try:
        with zstd.ZstdDecompressor().stream_reader(body) as reader:
            return reader.read(limit)
    except zstd.ZstdError as exc:
        raise _BadBody(f"bad zstd body ({exc})") from None


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


# ---------------------------------------------------------------- output

class _PartWriter:
    """Buffers candidate rows (refs of one page, or columns of many) and writes row groups of ``batch_rows``."""

    def __init__(self, path: Path, batch_rows: int, source: str) -> None:
        # dictionary-encode only the low-cardinality columns (uids, urls and captions rarely repeat)
        self._writer = pq.ParquetWriter(path, SCHEMA, use_dictionary=["page_url", "source", "caption_attr"])
        self._batch_rows = batch_rows
        self._source = source
        self._refs: list[ImageRef] = []
        self._pages: list[str] = []
        self._tables: list[pa.Table] = []
        self._rows = 0

    def add(self, refs: list[ImageRef], page_url: str) -> None:
        """Buffer the candidate ``refs`` of one page."""
        self._refs.extend(refs)
        self._pages.extend([page_url] * len(refs))
        self._rows += len(refs)
        self._write_full()

    def add_columns(self, url: pa.Array, caption: pa.Array, page_url: pa.Array, caption_attr: pa.Array) -> None:
        """Buffer candidates given as columns."""
        self._table_from_refs()
        self._tables.append(self._table(url, caption, page_url, caption_attr))
        self._rows += len(url)
        self._write_full()

    def _table(self, url: Any, caption: Any, page_url: Any, caption_attr: Any) -> pa.Table:
        """The part's table of candidate columns, with their uids and source."""
        if isinstance(url, pa.Array):
            joined = pc.binary_join_element_wise(url, caption, "\t").cast(pa.binary()).to_pylist()
            uids = [hashlib.blake2b(b, digest_size=16).hexdigest() for b in joined]
        else:
            uids = [make_uid(u, c) for u, c in zip(url, caption)]
        n = len(uids)
        return pa.table([pa.array(uids, pa.string()), url, caption, page_url, pa.repeat(self._source, n),
                         caption_attr], schema=SCHEMA)

    def _table_from_refs(self) -> None:
        if self._refs:
            urls, captions, attrs, _ = zip(*self._refs)
            self._tables.append(self._table(list(urls), list(captions), self._pages, list(attrs)))
            self._refs, self._pages = [], []

    def _write_full(self) -> None:
        if self._rows >= self._batch_rows:
            self.flush(whole_groups=True)

    def flush(self, whole_groups: bool = False) -> None:
        """Write the buffered rows in row groups of ``batch_rows`` (keeping a partial last group if asked)."""
        self._table_from_refs()
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        end = (len(table) // self._batch_rows) * self._batch_rows if whole_groups else len(table)
        for start in range(0, end, self._batch_rows):
            self._writer.write_table(table.slice(start, min(self._batch_rows, end - start)))
        rest = table.slice(end)
        self._tables, self._rows = ([rest] if len(rest) else []), len(rest)

    def __enter__(self) -> "_PartWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.flush()
        self._writer.close()


def _total_stats(store: PartStore, sources: list[str], cfg: CrawlConfig, skipped: int, failed: list[str]
                 ) -> StageStats:
    """Sum the sidecars of every finished part of ``sources`` (this run's and earlier runs')."""
    stats = StageStats(STAGE, extra={k: 0 for k in _COUNTERS})
    for source in sources:
        if is_done(store, source, cfg):
            stats.merge(store.stats(part_name(source)))
    stats.extra.update(files=len(sources), skipped_files=skipped, failed_files=failed)
    return stats


def _progress(items: Iterable[Any], cfg: CrawlConfig, total: int | None = None) -> Iterable[Any]:
    return progress(items, STAGE, "file", total=total, enabled=cfg.progress)

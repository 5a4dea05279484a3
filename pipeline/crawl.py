"""The ``crawl`` stage: web archives (WARC HTML responses, Common Crawl WAT metadata) -> image/alt-text candidates.

``run_crawl(inputs, out_dir, cfg)`` writes one parquet part per input archive into ``out_dir``
(``part-<stem>-<hash of the input path>.parquet``; columns ``uid``, ``url``, ``caption``, ``page_url``,
``source``, ``caption_attr``) and ``_stats.json``. Parts are streamed in row groups to a temporary file
and renamed when the archive is fully read, after a per-part stats sidecar ``_parts/<part>.stats.json``
has been written; a re-run skips archives whose part and sidecar exist and sums all sidecars, so a
resumed crawl reports the whole crawl. A truncated or corrupt archive leaves no part behind.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import re
import sys
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord
from warcio.statusandheaders import StatusAndHeadersParserException

from pipeline.config import field
from pipeline.errors import WitError
from pipeline.extract import (CorruptRecord, ImageRef, decode_html, html_images, make_uid, parse_wat,
                              wat_images)
from pipeline.io import atomic_path, clean_tmp, read_json, write_json
from pipeline.stats import StageStats

STAGE = "crawl"
PARTS_DIR = "_parts"
SCHEMA = pa.schema([(name, pa.string()) for name in
                    ("uid", "url", "caption", "page_url", "source", "caption_attr")])
HTML_TYPES = ("text/html", "application/xhtml+xml")
ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".wat", ".wat.gz", ".arc", ".arc.gz")
_GZIP_MAGIC = b"\x1f\x8b"
_GLOB_RE = re.compile(r"[*?\[]")
_DRAIN = 1 << 16
# Errors of a broken archive stream: truncated/corrupt gzip, unparsable WARC headers, I/O.
_STREAM_ERRORS = (EOFError, zlib.error, OSError, ArchiveLoadFailed, StatusAndHeadersParserException)
# warcio fails on some truncated headers with these; only caught around its record parser.
_PARSE_ERRORS = _STREAM_ERRORS + (AttributeError, ValueError)
_COUNTERS = ("records", "pages", "skipped_records", "corrupt_records")


class CorruptArchive(Exception):
    """A whole archive file is unreadable (truncated gzip, not a WARC); no part is written for it."""


@dataclasses.dataclass
class CrawlConfig:
    """Options of the crawl stage."""

    batch_rows: int = field(10_000, help="candidate rows buffered before a parquet row group is written")
    max_html_bytes: int = field(5_000_000, help="read at most this many bytes of one HTML page")
    title_fallback: bool = field(True, help="use the <img title> as caption when alt is empty")
    progress: bool = field(True, help="show a progress bar over input files (only on a terminal)")

    def __post_init__(self) -> None:
        if self.batch_rows < 1 or self.max_html_bytes < 1:
            raise WitError("CrawlConfig: batch_rows and max_html_bytes must be positive")


def run_crawl(inputs: list[str], out_dir: str | Path, cfg: CrawlConfig = CrawlConfig()) -> StageStats:
    """Extract image/alt-text candidates from every archive in ``inputs`` (files, globs or folders)."""
    files = expand_inputs(inputs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean_tmp(out)
    clean_tmp(out / PARTS_DIR)
    failed: list[str] = []
    skipped = 0
    for path in _progress(files, cfg):
        part = out / part_name(path)
        if is_done(part):
            skipped += 1
            continue
        try:
            crawl_file(path, part, cfg)
        except CorruptArchive as exc:
            failed.append(str(exc))
    if failed and len(failed) == len(files):
        more = f" (and {len(failed) - 1} more failed inputs)" if len(failed) > 1 else ""
        raise WitError(failed[0] + more)
    stats = _total_stats(out, files, skipped, failed)
    stats.write(out)
    return stats


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Input archives: files as given, globs expanded, folders searched for WARC/WAT files; no duplicates."""
    found: dict[Path, Path] = {}
    for item in inputs:
        for path in _expand_one(str(item)):
            found.setdefault(path.resolve(), path)
    if not found:
        raise WitError("crawl: no input archives given")
    return list(found.values())


def _expand_one(item: str) -> list[Path]:
    """The files one input names (a file, a folder of archives or a glob); WitError when there are none."""
    path = Path(item)
    if path.is_file():
        return [path]
    if path.is_dir():
        matches = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES))
        if not matches:
            raise WitError(f"{item}: folder holds no {'/'.join(ARCHIVE_SUFFIXES)} files")
        return matches
    if not _GLOB_RE.search(item):
        raise WitError(f"{item}: input archive not found")
    matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
    if not matches:
        raise WitError(f"{item}: no files match this pattern")
    return matches


def part_name(path: Path) -> str:
    """Stable part file name of an input archive: its stem plus a hash of its absolute path."""
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.name.split(".")[0])[:40] or "input"
    return f"part-{stem}-{digest}.parquet"


def sidecar_path(part: Path) -> Path:
    """Where the stats of one finished part are kept (``_parts/`` is ignored by parquet readers)."""
    return part.parent / PARTS_DIR / f"{part.stem}.stats.json"


def is_done(part: Path) -> bool:
    """A part is finished when both it and its stats sidecar exist."""
    return part.is_file() and sidecar_path(part).is_file()


def crawl_file(path: Path, part: Path, cfg: CrawlConfig = CrawlConfig()) -> StageStats:
    """Crawl one archive into ``part`` (atomically, sidecar first); CorruptArchive leaves nothing behind."""
    stats = StageStats(STAGE, extra={k: 0 for k in _COUNTERS})
    with atomic_path(part) as tmp:
        with _PartWriter(tmp, cfg.batch_rows) as writer:
            for row in _guarded(_file_rows(path, cfg, stats), path):
                writer.add(row)
        write_json(sidecar_path(part), {**stats.to_dict(), "source": str(path)})
    return stats


def _guarded(rows: Iterator[dict[str, str]], path: Path) -> Iterator[dict[str, str]]:
    """Re-raise errors of reading the archive (not of writing the part) as :class:`CorruptArchive`."""
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except _STREAM_ERRORS as exc:
            raise CorruptArchive(f"{path}: corrupt or truncated archive ({_one_line(exc)})") from None
        yield row


def _one_line(exc: BaseException) -> str:
    """First non-empty line of an exception message, with its type."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _file_rows(path: Path, cfg: CrawlConfig, stats: StageStats) -> Iterator[dict[str, str]]:
    """Candidate rows of one archive, counting every image seen into ``stats``."""
    source = str(path)
    for record in _records(path):
        stats.extra["records"] += 1
        page_url, refs = _record_refs(record, cfg, stats)
        for ref in refs:
            stats.inputs += 1
            if ref.drop:
                stats.drop(ref.drop)
                continue
            stats.kept += 1
            yield {"uid": make_uid(ref.url, ref.caption), "url": ref.url, "caption": ref.caption,
                   "page_url": page_url, "source": source, "caption_attr": ref.caption_attr}
        _finish_record(record, path)


class ArchiveStreamError(OSError):
    """The compressed stream of an archive ends early (raised instead of EOFError, which warcio swallows)."""


class _StrictGzip:
    """A gzip reader for warcio that fails loudly on truncation instead of ending the iteration quietly."""

    def __init__(self, raw: BinaryIO) -> None:
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")

    def read(self, size: int = -1) -> bytes:
        try:
            return self._gz.read(size)
        except EOFError as exc:
            raise ArchiveStreamError(str(exc)) from None

    def tell(self) -> int:
        return self._gz.tell()

    def close(self) -> None:
        self._gz.close()


def _open_stream(raw: BinaryIO) -> BinaryIO:
    """The archive's uncompressed stream: gunzipped with Python's gzip when the file is gzipped."""
    head = raw.read(2)
    raw.seek(0)
    return _StrictGzip(raw) if head == _GZIP_MAGIC else raw  # type: ignore[return-value]


def _records(path: Path) -> Iterator[ArcWarcRecord]:
    """Stream the records of one WARC/WAT/ARC file (gzipped or plain); CorruptArchive when it is broken."""
    with open(path, "rb") as raw:
        stream = _open_stream(raw)
        archive = ArchiveIterator(stream)
        while True:
            try:
                record = next(archive)
            except StopIteration:
                break
            except _PARSE_ERRORS as exc:
                raise CorruptArchive(f"{path}: corrupt or truncated archive ({_one_line(exc)})") from None
            _check_format(record, path)
            yield record
        if stream.read(1) or stream.tell() > archive.offset:
            raise CorruptArchive(f"{path}: truncated archive (incomplete record at offset {archive.offset})")


def _check_format(record: ArcWarcRecord, path: Path) -> None:
    """Reject files warcio only guessed to be ARC (any text line parses as an ARC header)."""
    if record.format == "arc" and not str(record.rec_headers.get_header("length") or "").isdigit():
        raise CorruptArchive(f"{path}: not a WARC/WAT file")


def _finish_record(record: ArcWarcRecord, path: Path) -> None:
    """Read the rest of a record and fail when the file ended inside it (truncated plain archive)."""
    stream = record.raw_stream
    while stream.read(_DRAIN):
        pass
    if getattr(stream, "limit", 0) > 0:
        raise CorruptArchive(f"{path}: truncated archive (record of {_target(record) or 'unknown URL'} ends early)")


def _target(record: ArcWarcRecord) -> str:
    """The record's target URI without the angle brackets some writers add."""
    uri = record.rec_headers.get_header("WARC-Target-URI") or record.rec_headers.get_header("uri") or ""
    return uri.strip().strip("<>")


def record_kind(record: ArcWarcRecord) -> str | None:
    """``"html"`` for 2xx HTML responses/resources, ``"wat"`` for JSON metadata records, else None."""
    if record.rec_type == "metadata":
        ctype = (record.rec_headers.get_header("Content-Type") or "").lower()
        return "wat" if ctype.startswith("application/json") else None
    if record.rec_type not in ("response", "resource"):
        return None
    http = record.http_headers
    if http is not None and record.rec_type == "response":
        status = (http.get_statuscode() or "")
        if not status.startswith("2"):
            return None
    ctype = (http.get_header("Content-Type") if http is not None else None) or \
        record.rec_headers.get_header("Content-Type") or ""
    return "html" if ctype.split(";")[0].strip().lower() in HTML_TYPES else None


def _record_refs(record: ArcWarcRecord, cfg: CrawlConfig,
                 stats: StageStats) -> tuple[str, list[ImageRef]]:
    """``(page_url, images)`` of one record; corrupt and irrelevant records yield no images."""
    kind = record_kind(record)
    refs: list[ImageRef] | None = None
    page_url = _target(record)
    try:
        if kind == "html":
            refs = _html_refs(record, page_url, cfg)
        elif kind == "wat":
            page_url, refs = wat_images(parse_wat(record.content_stream().read()), page_url, cfg.title_fallback)
    except CorruptRecord:
        stats.extra["corrupt_records"] += 1
        return page_url, []
    if refs is None:
        stats.extra["skipped_records"] += 1
        return page_url, []
    stats.extra["pages"] += 1
    return page_url, refs


def _html_refs(record: ArcWarcRecord, page_url: str, cfg: CrawlConfig) -> list[ImageRef]:
    """Images of one HTML response (at most ``max_html_bytes`` of it is parsed)."""
    body = record.content_stream().read(cfg.max_html_bytes)
    http = record.http_headers
    ctype = (http.get_header("Content-Type") if http is not None else None) or \
        record.rec_headers.get_header("Content-Type")
    return list(html_images(decode_html(body, ctype), page_url, cfg.title_fallback))


class _PartWriter:
    """Buffers candidate rows and writes them to a parquet file in row groups of ``batch_rows``."""

    def __init__(self, path: Path, batch_rows: int) -> None:
        self._writer = pq.ParquetWriter(path, SCHEMA)
        self._batch_rows = batch_rows
        self._columns: dict[str, list[str]] = {name: [] for name in SCHEMA.names}

    def add(self, row: dict[str, str]) -> None:
        for name, values in self._columns.items():
            values.append(row[name])
        if len(self._columns["uid"]) >= self._batch_rows:
            self.flush()

    def flush(self) -> None:
        if self._columns["uid"]:
            self._writer.write_table(pa.table(self._columns, schema=SCHEMA))
            self._columns = {name: [] for name in SCHEMA.names}

    def __enter__(self) -> "_PartWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.flush()
        self._writer.close()


def _total_stats(out: Path, files: list[Path], skipped: int, failed: list[str]) -> StageStats:
    """Sum the sidecars of every finished part of ``files`` (this run's and earlier runs')."""
    stats = StageStats(STAGE, extra={k: 0 for k in _COUNTERS})
    for path in files:
        part = out / part_name(path)
        if is_done(part):
            stats.merge(StageStats.from_dict(read_json(sidecar_path(part))))
    stats.extra.update(files=len(files), skipped_files=skipped, failed_files=failed)
    return stats


def _progress(files: list[Path], cfg: CrawlConfig) -> Iterable[Path]:
    """``files`` wrapped in a tqdm bar on stderr when it is a terminal."""
    return tqdm(files, desc=STAGE, unit="file", file=sys.stderr,
                disable=not (cfg.progress and sys.stderr.isatty()))

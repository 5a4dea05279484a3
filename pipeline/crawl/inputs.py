"""Crawl inputs: local files, folders and globs, fsspec URLs, Common Crawl path listings -> archive sources.

Also how a source is opened (:func:`open_source`) and named as a part (:func:`part_name`).
"""
from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import os
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

from pipeline.core.errors import WitError
from pipeline.core.io import is_url, one_line
from pipeline.crawl.config import COMMON_CRAWL

ARCHIVE_SUFFIXES = (".warc", ".warc.gz", ".wat", ".wat.gz", ".arc", ".arc.gz")
LISTING_SUFFIXES = (".paths.gz", ".paths")
_GZIP_MAGIC = b"\x1f\x8b"
_GLOB_RE = re.compile(r"[*?\[]")


def network_errors() -> tuple[type[BaseException], ...]:
    """Errors of remote filesystems that are not OSError (aiohttp's, for fsspec's HTTP filesystem)."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with fsspec[http]
        return ()
    return (aiohttp.ClientError,)


# Errors of reading a (gzipped) source: truncated or corrupt gzip, I/O, network.
READ_ERRORS = (EOFError, OSError, zlib.error) + network_errors()


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
    except network_errors() + (OSError,) as exc:
        raise WitError(f"{url}: cannot list ({one_line(exc)})") from None
    if not exists:
        raise WitError(f"{url}: input archive not found")
    return [url]


def read_listing(listing: str, paths_prefix: str = COMMON_CRAWL) -> list[str]:
    """Archives of a Common Crawl path listing (``*.paths.gz``): one path a line, relative ones joined to the prefix."""
    try:
        with open_source(listing) as raw:
            data = raw.read()
        text = (gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data).decode("utf-8")
    except FileNotFoundError:
        raise WitError(f"{listing}: path listing not found") from None
    except READ_ERRORS + (UnicodeDecodeError,) as exc:
        raise WitError(f"{listing}: not a readable path listing ({one_line(exc)})") from None
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
def open_source(source: str) -> Iterator[BinaryIO]:
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

"""The ``crawl`` stage: web archives (WARC HTML responses, WAT metadata) -> image/alt-text candidates.

:func:`run_crawl` writes one parquet part per input archive and ``_stats.json`` into its output folder (a local
path or an fsspec URL, :class:`pipeline.core.storage.Folder`), skipping archives already done with the same run
key, crawling in this process or on Ray; :func:`crawl_job` crawls one archive into a node-local staging folder
and publishes the part, then its ``_parts/`` sidecar (the commit marker); :func:`crawl_file` does one archive:
records (:mod:`.archive`) -> images (:mod:`.extract`, :mod:`.columns`) -> part (:mod:`.writer`).
See ``docs/crawl.md``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import WitError
from pipeline.core.env import worker_env
from pipeline.core.executor import Resources, ray_session, submit_bounded
from pipeline.core.executor import use_ray as executor_use_ray
from pipeline.core.io import atomic_path, clean_tmp
from pipeline.core.lock import locked
from pipeline.core.parts import PARTS_DIR, PartStore, file_identity, progress, run_key
from pipeline.core.stats import StageStats
from pipeline.core.storage import Folder
from pipeline.crawl.archive import CorruptArchive, Record, guarded, record_kind, records
from pipeline.crawl.body import http_body
from pipeline.crawl.columns import ImageColumns, decode_wat, wat_columns
from pipeline.crawl.config import CrawlConfig
from pipeline.crawl.extract import CorruptRecord, ImageRef, decode_html, html_images, parse_wat, wat_images
from pipeline.crawl.inputs import expand_inputs, part_name
from pipeline.crawl.writer import PartWriter

__all__ = ["CrawlConfig", "crawl_file", "run_crawl"]

STAGE = "crawl"
# encoding_mismatch / encoding_unsupported: pages whose body did not decode with its Content-Encoding (stored
# already decoded, as ClueWeb09 and some Common Crawl records are) or that had no decoder, read as stored
_COUNTERS = ("records", "pages", "skipped_records", "corrupt_records", "encoding_mismatch", "encoding_unsupported")
_WAT_BATCH_RECORDS = 2_000     # consecutive WAT records extracted together, as columns
_WAT_BATCH_BYTES = 32 << 20


@locked('crawl', 'out_dir')
def run_crawl(inputs: list[str], out_dir: str | Path, cfg: CrawlConfig = CrawlConfig()) -> StageStats:
    """Extract image/alt-text candidates from every archive in ``inputs`` (files, globs, folders, URLs, listings)."""
    sources = expand_inputs(inputs, cfg.paths_prefix)
    if cfg.max_inputs:
        sources = sources[:cfg.max_inputs]
    out = _prepare(out_dir)
    store = PartStore(out, STAGE)
    keys = {src: part_key(src, cfg) for src in sources}  # one look at each input (a HEAD request for a URL)
    todo = [(src, out.location, keys[src]) for src in sources if not is_done(store, src, keys[src])]
    if use_ray(cfg, len(todo)):
        failed = crawl_on_ray(todo, cfg)
    else:
        failed = [msg for job in _progress(todo, cfg) if (msg := crawl_job(*job, cfg)) is not None]
    if failed and len(failed) == len(sources):
        more = f" (and {len(failed) - 1} more failed inputs)" if len(failed) > 1 else ""
        raise WitError(failed[0] + more)
    stats = _total_stats(store, keys, len(sources) - len(todo), failed)
    stats.write(out)
    return stats


def _prepare(out_dir: str | os.PathLike) -> Folder:
    """The output folder, made (local) and rid of a killed run's temporary files (a store has none: its
    tasks stage on their node)."""
    out = Folder(out_dir).ensure()
    if not out.remote:
        clean_tmp(out.path)
        clean_tmp(out.path / PARTS_DIR)
    return out


def use_ray(cfg: CrawlConfig, n_todo: int) -> bool:
    """On the cluster given, or on a local Ray for ``ray_min_files`` archives or more when ``workers`` is not 1."""
    return executor_use_ray(cfg.ray_address, cfg.workers, n_todo, min_local=cfg.ray_min_files)


RESOURCES = Resources(cpus=1, memory_mb=1024)  # one archive streamed at a time; bounded buffers


def crawl_on_ray(jobs: list[tuple[str, str, str]], cfg: CrawlConfig) -> list[str]:
    """Crawl ``(source, output folder, run key)`` jobs as Ray tasks; return the failure messages. A worker that
    dies (e.g. killed for memory) fails its archive once Ray's retries are spent, and the crawl goes on."""
    import ray

    failed: list[str] = []
    with ray_session(cfg.ray_address, cfg.workers, worker_env()):
        done = submit_bounded(((_crawl_task, job) for job in jobs), RESOURCES, cfg, speculate=True)
        for (source, *_), ref in _progress(done, cfg, total=len(jobs)):
            try:
                message = ray.get(ref)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as exc:
                message = f"{source}: crawl worker died ({type(exc).__name__})"
            if message is not None:
                failed.append(message)
    return failed


def _crawl_task(job: tuple[str, str, str], cfg: CrawlConfig) -> str | None:
    return crawl_job(*job, cfg)


def crawl_job(source: str, out: str, key: str, cfg: CrawlConfig) -> str | None:
    """Crawl one archive into its part of the folder ``out`` (a path or URL: a task rebuilds the
    :class:`Folder`), staged on this node and published part first, sidecar last; the one-line reason when the
    archive is unreadable (nothing published), else None."""
    try:
        with Folder(out).staging() as tmp:
            crawl_file(source, tmp / part_name(source), cfg, key)
    except CorruptArchive as exc:
        return str(exc)
    return None


def part_key(source: str, cfg: CrawlConfig) -> str:
    """The run key of an archive's part: the output options and the archive's path, size and mtime (or ETag)."""
    return run_key(STAGE, cfg, [file_identity(source)])


def is_done(store: PartStore, source: str, key: str) -> bool:
    """Finished from this very archive content with these options (``key``; else it is crawled again)."""
    name = part_name(source)
    return store.finished(name, key, [name])


def crawl_file(source: str | Path, part: Path, cfg: CrawlConfig = CrawlConfig(), key: str | None = None
               ) -> StageStats:
    """Crawl one archive into ``part`` (atomically, sidecar first) and record it with its run ``key`` (computed
    when not given); CorruptArchive leaves nothing behind."""
    stats = StageStats(STAGE, extra={k: 0 for k in _COUNTERS})
    source = str(source)
    key = key or part_key(source, cfg)
    with atomic_path(part) as tmp:
        with PartWriter(tmp, cfg.batch_rows, source) as writer:
            wat = _WatRun()
            for record in guarded(records(source, cfg), source):
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


def _wat_records(wat: _WatRun, writer: PartWriter, cfg: CrawlConfig, stats: StageStats) -> None:
    """Extract and write the images of a run of WAT records, then clear it: as columns where msgspec decodes
    them, each other record in its place, one by one."""
    if not wat.records:
        return
    docs = [decode_wat(record.payload) for record in wat.records]
    start = 0
    for i, (record, doc) in enumerate(zip(wat.records, docs)):
        if doc is None:
            _wat_docs(docs[start:i], wat.records[start:i], writer, cfg, stats)
            page_url, refs = _record_refs(record, cfg, stats)
            _emit(writer, page_url, refs, cfg, stats)
            start = i + 1
    _wat_docs(docs[start:], wat.records[start:], writer, cfg, stats)
    wat.records, wat.bytes = [], 0


def _wat_docs(docs: list[Any], records: list[Record], writer: PartWriter, cfg: CrawlConfig,
              stats: StageStats) -> None:
    """Count the pages of consecutive decoded records and write their images."""
    if not docs:
        return
    page_urls, has_html, images = wat_columns(docs, [r.target for r in records], cfg.title_fallback)
    stats.extra["pages"] += int(has_html.sum())
    stats.extra["skipped_records"] += int((~has_html).sum())
    _emit_columns(writer, page_urls, images, cfg, stats)


def _emit_columns(writer: PartWriter, page_urls: list[str], images: ImageColumns, cfg: CrawlConfig,
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


def _emit(writer: PartWriter, page_url: str, refs: list[ImageRef], cfg: CrawlConfig, stats: StageStats) -> None:
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
    body, issue = http_body(record, cfg.max_html_bytes)
    html = decode_html(body, record.http_type or record.content_type, cut=len(body) >= cfg.max_html_bytes)
    if issue:
        stats.extra[issue] += 1
    return list(html_images(html, record.target, cfg.title_fallback))


def _total_stats(store: PartStore, keys: dict[str, str], skipped: int, failed: list[str]) -> StageStats:
    """Sum the sidecars of every finished part of the sources (``keys``: source -> run key; this run's parts
    and earlier runs')."""
    stats = StageStats(STAGE, extra={k: 0 for k in _COUNTERS})
    for source, key in keys.items():
        if is_done(store, source, key):
            stats.merge(store.stats(part_name(source)))
    stats.extra.update(files=len(keys), skipped_files=skipped, failed_files=failed)
    return stats


def _progress(items: Iterable[Any], cfg: CrawlConfig, total: int | None = None) -> Iterable[Any]:
    return progress(items, STAGE, "file", total=total, enabled=cfg.progress)

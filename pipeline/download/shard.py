"""One shard, in one Ray task: fetch, decode once, hash, match eval sets, resize, write, commit.

:func:`download_shard` reads its row group of the staged URL list and writes img2dataset's shard contract into a
staging folder on its node, then commits it into the shards folder (a :class:`pipeline.core.storage.Folder`,
local or on an object store): tar, parquet, overlap rows, ``<shard>_stats.json`` last (the marker). On a local
disk the commit is a ``COMMIT`` file and renames that :func:`recover` finishes after a killed run; on a store
the files are uploaded in that order, and files without their marker are simply rebuilt.
:func:`retry_shard` re-fetches retryable failures. Shard layout and commit protocol: docs/download.md
("One shard")."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dedup.phash import HASH_SCHEMA
from dedup.match import MATCH_SCHEMA, MatchConfig, RobustIndex, match_table
from pipeline.download.config import DownloadConfig
from pipeline.download.image import ImageProcessor
from pipeline.download.fetch import Fetched, map_unordered, new_fetcher
from pipeline.download.reasons import Dropped, is_retryable
from pipeline.core.io import Part, open_parquet, write_json, write_parquet
from pipeline.core.storage import Folder, scratch_dir

SHARD_DIGITS = 5  # img2dataset's oom_shard_count: shard names 00000..99999
WORK_DIR = "_work"
OVERLAP_DIR = "_overlap"
COMMIT = "COMMIT"
MATCH_BATCH = 256
OVERLAP_SCHEMA = MATCH_SCHEMA.append(pa.field("url", pa.string()))
MATCH_INPUT_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("url", pa.string()),
                                pa.field("status", pa.string()), *HASH_SCHEMA])
META_FIELDS = [pa.field("key", pa.string()), pa.field("status", pa.string()), pa.field("error_message", pa.string()),
               pa.field("width", pa.int32()), pa.field("height", pa.int32()),
               pa.field("original_width", pa.int32()), pa.field("original_height", pa.int32()),
               pa.field("sha256", pa.string()), *HASH_SCHEMA, pa.field("reason", pa.string())]
RESULT_FIELDS = [f.name for f in META_FIELDS if f.name != "key"]


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


def stats_name(shard_id: int) -> str:
    """The shard's commit marker, inside the shards folder."""
    return f"{shard_name(shard_id)}_stats.json"


def overlap_name(shard_id: int) -> str:
    return f"{OVERLAP_DIR}/{shard_name(shard_id)}.parquet"


def part_at(location: str) -> Part:
    """The input part (local path or fsspec object) of the file at ``location``."""
    folder, _, name = location.rpartition("/")
    return Folder(folder).part(name)


def read_table(folder: Folder, name: str, columns: list[str] | None = None) -> pa.Table:
    """The parquet file ``name`` of ``folder`` (local or on a store)."""
    with open_parquet(folder.part(name)) as reader:
        return reader.read(columns=columns)


def write_table(folder: Folder, name: str, table: pa.Table) -> None:
    """Write a (small) parquet file into ``folder``: atomically on a disk, one PUT on a store."""
    if not folder.remote:
        write_parquet(table, folder.loc(name))
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    folder.write_bytes(name, sink.getvalue().to_pybytes())


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything a shard task needs (pickled to the Ray worker)."""

    shards_dir: str  # a path or URL (a task rebuilds the Folder)
    urls_file: str  # the path or URL of the staged URL list
    shard_id: int
    per_shard: int
    cfg: DownloadConfig
    eval_fingerprint: str

    @property
    def name(self) -> str:
        return shard_name(self.shard_id)

    @property
    def folder(self) -> Folder:
        return Folder(self.shards_dir)

    def key(self, index: int) -> str:
        """img2dataset's key: shard id then the row's index in the shard, zero-padded."""
        digits = math.ceil(math.log10(self.per_shard)) if self.per_shard > 1 else 0
        return f"{self.shard_id * 10 ** digits + index:0{digits + SHARD_DIGITS}d}"


# ---------------------------------------------------------------- eval matching

def shard_overlap(table: pa.Table, indexes: dict[str, RobustIndex], cfg: MatchConfig) -> pa.Table:
    """Overlap rows (``OVERLAP_SCHEMA``) of a shard table's successful, hashed samples against every index,
    by the robust detector of ``wit dedup`` (:func:`dedup.match.match_table`) on the stored hash columns."""
    hashed = table.filter(pc.and_(pc.equal(table["status"], "success"), pc.is_valid(table["phash"])))
    matches = match_table(hashed, indexes, cfg)
    url_of = dict(zip(hashed["key"].to_pylist(), hashed["url"].to_pylist()))
    return matches.append_column("url", pa.array([url_of[k] for k in matches["key"].to_pylist()], pa.string()))


def fingerprinted(table: pa.Table, eval_fingerprint: str) -> pa.Table:
    """Overlap rows marked with the eval indexes and thresholds they were matched with."""
    return table.replace_schema_metadata({"eval_fingerprint": eval_fingerprint})


def read_overlap(folder: Folder, shard_id: int, eval_fingerprint: str) -> pa.Table | None:
    """The overlap rows stored for a shard, or None when missing or matched against other eval indexes."""
    if not folder.exists(overlap_name(shard_id)):
        return None
    table = read_table(folder, overlap_name(shard_id))
    stored = (table.schema.metadata or {}).get(b"eval_fingerprint", b"").decode()
    return table.replace_schema_metadata(None) if stored == eval_fingerprint else None


# ---------------------------------------------------------------- building a shard

class SampleTar:
    """img2dataset's WebDataset layout, written as webdataset's ``TarWriter`` does (members sorted by
    extension, mode 0444, user/group ``bigdata``, ustar): ``<key>.<ext>``, ``<key>.json``, ``<key>.txt``
    (with a caption column). Plain ``tarfile``: importing webdataset in a worker would import torch."""

    def __init__(self, path: Path, ext: str, with_caption: bool) -> None:
        self.ext, self.with_caption = ext, with_caption
        self.tar = tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT)  # not "w|": its buffer copies

    def write(self, row: dict[str, Any], image: bytes) -> None:
        meta = {k: v for k, v in row.items() if not isinstance(v, bytes)}
        members = {self.ext: image, "json": json.dumps(meta, indent=4, default=str).encode()}
        if self.with_caption:
            members["txt"] = str(row["caption"] if row["caption"] is not None else "").encode()
        self.write_raw(row["key"], members)

    def write_raw(self, key: str, members: dict[str, bytes]) -> None:
        now = time.time()
        for ext in sorted(members):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(members[ext]), now, 0o444
            info.uname = info.gname = "bigdata"
            self.tar.addfile(info, io.BytesIO(members[ext]))

    def close(self) -> None:
        self.tar.close()


def read_tar_samples(path: Path) -> Iterable[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a WebDataset tar, in order."""
    key, members = None, {}
    with tarfile.open(path) as tar:
        for member in tar:
            fh = tar.extractfile(member) if member.isfile() else None
            if fh is None:
                continue
            k, _, ext = member.name.split("/")[-1].partition(".")
            if k != key and key is not None:
                yield key, members
                members = {}
            key, members[ext] = k, fh.read()
    if key is not None:
        yield key, members


class ShardBuilder:
    """Collects one shard's rows and samples into a staging folder."""

    def __init__(self, job: ShardJob, indexes: dict[str, RobustIndex], staging: Path, with_caption: bool) -> None:
        self.job, self.cfg, self.indexes, self.staging = job, job.cfg, indexes, staging
        self.processor = ImageProcessor(job.cfg)
        self.tar = SampleTar(staging / f"{job.name}.tar", job.cfg.encode_format, with_caption)
        self.rows: list[dict[str, Any]] = []
        self.pending: list[tuple[dict[str, Any], bytes]] = []
        self.attempts = 0

    def add(self, meta: dict[str, Any], fetched: Fetched) -> None:
        row = {**meta, **dict.fromkeys(RESULT_FIELDS)}
        self.attempts += fetched.attempts
        if fetched.data is None:
            row.update(status="failed_to_download", error_message=fetched.error, reason=fetched.reason)
            self.rows.append(row)
            return
        try:
            processed = self.processor(fetched.data)
        except Dropped as exc:
            self._reject(row, exc.reason, str(exc), exc.size)
            return
        self._accept(row, fetched.data, processed)

    def _reject(self, row: dict[str, Any], reason: str, message: str, size: tuple[int, int] | None) -> None:
        row.update(status="failed_to_resize", error_message=message, reason=reason)
        if size is not None:
            row.update(original_width=size[0], original_height=size[1])
        self.rows.append(row)

    def _accept(self, row: dict[str, Any], data: bytes, p: Any) -> None:
        row.update(status="success", width=p.width, height=p.height, original_width=p.original_width,
                   original_height=p.original_height, sha256=hashlib.sha256(data).hexdigest(), **p.hashes)
        self.pending.append((row, p.data))
        if len(self.pending) >= MATCH_BATCH:
            self.flush()

    def flush(self) -> None:
        """Write pending samples (after leaving out eval duplicates when ``drop_eval_duplicates``)."""
        duplicates = self._eval_duplicates() if self.cfg.drop_eval_duplicates else {}
        for row, image in self.pending:
            if row["key"] in duplicates:
                row.update(status="filtered", reason="eval_duplicate", error_message=duplicates[row["key"]])
            else:
                self.tar.write(row, image)
            self.rows.append(row)
        self.pending.clear()

    def _eval_duplicates(self) -> dict[str, str]:
        table = pa.Table.from_pylist([r for r, _ in self.pending], schema=MATCH_INPUT_SCHEMA)
        found: dict[str, str] = {}
        for m in shard_overlap(table, self.indexes, self.cfg.match_config()).to_pylist():
            found.setdefault(m["key"], f"eval near-duplicate of {m['eval_set']}/{m['eval_id']} (pHash distance "
                                       f"{m['distance']}, DCT {m['dct_distance']}, {m['variant']})")
        return found

    def finish(self, schema: pa.Schema, started: float, extra: dict[str, Any]) -> dict[str, Any]:
        """Close the tar; write the parquet, overlap and stats files into the staging folder."""
        self.flush()
        self.tar.close()
        table = pa.Table.from_pylist(sorted(self.rows, key=lambda r: r["key"]), schema=schema)
        write_parquet(table, self.staging / f"{self.job.name}.parquet")
        overlap = shard_overlap(table, self.indexes, self.cfg.match_config())
        write_parquet(fingerprinted(overlap, self.job.eval_fingerprint),
                      self.staging / f"{self.job.name}.overlap.parquet")
        stats = shard_stats(table, started, attempts=self.attempts, **extra)
        stats["bytes"] = (self.staging / f"{self.job.name}.tar").stat().st_size
        write_json(self.staging / f"{self.job.name}_stats.json", stats)
        return stats


def shard_stats(table: pa.Table, started: float, **extra: Any) -> dict[str, Any]:
    """img2dataset's ``<shard>_stats.json`` fields, plus ``reasons`` (failed rows per reason)."""
    statuses = Counter(table["status"].to_pylist())
    reasons = Counter(r for r, s in zip(table["reason"].to_pylist(), table["status"].to_pylist()) if s != "success")
    end = time.time()
    return {"count": table.num_rows, "successes": statuses["success"],
            "failed_to_download": statuses["failed_to_download"], "failed_to_resize": statuses["failed_to_resize"],
            "filtered": statuses["filtered"], "duration": round(end - started, 3), "start_time": started,
            "end_time": end, "status_dict": {"success": statuses["success"], **reasons},
            "reasons": dict(sorted(reasons.items())), **extra}


def shard_schema(input_schema: pa.Schema) -> pa.Schema:
    """img2dataset's column order: extra input columns, caption, url, then the result columns."""
    names = [n for n in input_schema.names if n not in ("caption", "url")]
    names += [n for n in ("caption", "url") if n in input_schema.names]
    return pa.schema([input_schema.field(n) for n in names] + META_FIELDS)


def _fetch_into(builder: ShardBuilder, metas: list[dict[str, Any]]) -> None:
    fetcher = new_fetcher(builder.cfg, pool_size=max(16, min(256, builder.cfg.thread_count * 2)))
    try:
        for meta, fetched in map_unordered(lambda m: (m, fetcher.fetch(m["url"])), metas, builder.cfg.thread_count):
            builder.add(meta, fetched)
    finally:
        fetcher.close()


def worker_node() -> str:
    """The Ray node this shard ran on (empty outside Ray): per-shard stats show how a cluster shared the work."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


@contextlib.contextmanager
def _staging(job: ShardJob) -> Iterator[Path]:
    """A private folder to build the shard in, removed afterwards: ``_work/<shard>-<token>/`` in a local shards
    folder (renames commit it), a temporary folder on this node (``$WIT_SCRATCH``) for a store."""
    if job.folder.remote:
        path = scratch_dir(f"{job.name}-")
    else:
        path = job.folder.path / WORK_DIR / f"{job.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def shard_rows(job: ShardJob) -> pa.Table:
    """The shard's row group of the staged URL list (ranged reads on a store)."""
    with open_parquet(part_at(job.urls_file)) as reader:
        return reader.read_row_group(job.shard_id)


def download_shard(job: ShardJob, indexes: dict[str, RobustIndex]) -> dict[str, Any]:
    """Build and commit shard ``job.shard_id`` from its row group of the staged URL list; return its stats.
    A re-run (Ray's retry, maybe on another node) rebuilds the whole shard and overwrites what a killed attempt
    left without its marker."""
    started = time.time()
    rows = shard_rows(job)
    metas = [{**r, "key": job.key(i)} for i, r in enumerate(rows.to_pylist())]
    with _staging(job) as staging:
        builder = ShardBuilder(job, indexes, staging, "caption" in rows.column_names)
        _fetch_into(builder, metas)
        stats = builder.finish(shard_schema(rows.schema), started, {"retried": 0, "node": worker_node()})
        commit(staging, job.folder, job.shard_id)
    return stats


def _local_tar(folder: Folder, name: str, staging: Path) -> Path:
    """A finished shard's tar to read: in place on a disk, copied into ``staging`` from a store."""
    return folder.get(name, staging / f"previous-{name}") if folder.remote else folder.path / name


def retry_shard(job: ShardJob, indexes: dict[str, RobustIndex]) -> dict[str, Any]:
    """Re-fetch the retryable failures of finished shard ``job.shard_id`` and commit the merged shard."""
    started = time.time()
    folder = job.folder
    table = read_table(folder, f"{job.name}.parquet")
    redo = {r["key"] for r in table.select(["key", "status", "reason"]).to_pylist()
            if r["status"] != "success" and is_retryable(r["reason"])}
    if not redo:
        return folder.read_json(stats_name(job.shard_id))
    rows = table.to_pylist()
    with _staging(job) as staging:
        builder = ShardBuilder(job, indexes, staging, "caption" in table.column_names)
        for key, members in read_tar_samples(_local_tar(folder, f"{job.name}.tar", staging)):
            if key not in redo:
                builder.tar.write_raw(key, members)
        builder.rows = [r for r in rows if r["key"] not in redo]
        metas = [{k: v for k, v in r.items() if k not in RESULT_FIELDS} for r in rows if r["key"] in redo]
        _fetch_into(builder, metas)
        stats = builder.finish(table.schema, started, {"retried": len(redo), "node": worker_node()})
        commit(staging, folder, job.shard_id)
    return stats


# ---------------------------------------------------------------- commit and recovery

def _targets(staging: Path) -> list[tuple[Path, str]]:
    """(staged file, name in the shards folder) in commit order: tar, parquet, overlap, stats last."""
    name = staging.name.split("-", 1)[0]
    return [(staging / f"{name}.tar", f"{name}.tar"), (staging / f"{name}.parquet", f"{name}.parquet"),
            (staging / f"{name}.overlap.parquet", f"{OVERLAP_DIR}/{name}.parquet"),
            (staging / f"{name}_stats.json", f"{name}_stats.json")]


def _roll_forward(staging: Path, shards_dir: Path) -> None:
    (shards_dir / OVERLAP_DIR).mkdir(exist_ok=True)
    for src, name in _targets(staging):
        if src.exists():
            os.replace(src, shards_dir / name)
    shutil.rmtree(staging, ignore_errors=True)


def commit(staging: Path, folder: Folder, shard_id: int) -> None:
    """Make a staged shard final (see docs/download.md). On a disk: stale staging of the same shard is dropped,
    a ``COMMIT`` file written, then the files renamed; on a store: the files uploaded, the marker last."""
    if folder.remote:
        for src, name in _targets(staging):
            folder.put(src, name)
        return
    shards_dir = folder.path
    for other in (shards_dir / WORK_DIR).glob(f"{shard_name(shard_id)}-*"):
        if other != staging:
            shutil.rmtree(other, ignore_errors=True)
    (staging / COMMIT).touch()
    _roll_forward(staging, shards_dir)


def recover(shards: Folder | Path) -> int:
    """Finish committed staging folders of a killed run, delete uncommitted ones; return how many were finished.
    A store has nothing to finish: a shard's files without its marker are rebuilt by the next run."""
    folder = Folder(shards)
    if folder.remote:
        return 0
    work = folder.path / WORK_DIR
    finished = 0
    for staging in sorted(work.iterdir()) if work.is_dir() else []:
        if (staging / COMMIT).is_file():
            _roll_forward(staging, folder.path)
            finished += 1
        else:
            shutil.rmtree(staging, ignore_errors=True)
    return finished


def done_shards(shards: Folder | Path) -> set[int]:
    """Shard ids whose commit finished (``<shard>_stats.json`` is written last)."""
    stems = (name.split("_")[0] for name in Folder(shards).names(pattern="*_stats.json"))
    return {int(stem) for stem in stems if stem.isdigit()}


def remove_shard(shards: Folder | Path, shard_id: int) -> None:
    """Delete whatever a failed shard left in place (its stats file is never among it)."""
    folder = Folder(shards)
    for name in (f"{shard_name(shard_id)}.tar", f"{shard_name(shard_id)}.parquet", overlap_name(shard_id)):
        folder.remove(name)


def overlap_from_parquet(folder: Folder, shard_id: int, indexes: dict[str, RobustIndex], cfg: MatchConfig,
                         eval_fingerprint: str) -> pa.Table:
    """Re-match a finished shard (its stored hashes) against the current eval indexes and store the rows."""
    table = read_table(folder, f"{shard_name(shard_id)}.parquet", columns=MATCH_INPUT_SCHEMA.names)
    overlap = shard_overlap(table, indexes, cfg)
    write_table(folder, overlap_name(shard_id), fingerprinted(overlap, eval_fingerprint))
    return overlap

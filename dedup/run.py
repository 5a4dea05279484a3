"""``wit dedup``: find (and optionally drop) near-duplicates of eval images in any WebDataset shards.

``run_dedup(shards, {"cifar10": "eval/cifar10"}, "dedup_out", DedupConfig(mode="drop"))``. ``shards`` are local
paths, globs or brace patterns (``{00000..00009}.tar``) or fsspec URLs (an ``s3://bucket/shards/`` folder, a glob,
tar URLs), or a list of these; ``out_dir`` is a local folder or a URL (:class:`pipeline.core.storage.Folder`).
The eval indexes are loaded here (index folders or URLs; raw eval sets are indexed first into ``OUT/_eval/``) and
shipped to the shard tasks once. A shard is one task: a Ray task with declared :data:`RESOURCES` when a cluster
is given (``ray_address`` or ``$RAY_ADDRESS``) or when ``workers`` is not 1 and two or more shards are to do (a
local Ray), else a call in this process (``threads`` shards at a time). A task reads its tar in place or, from a
store, through a copy on its node, and

1. **hashes** every sample (img2dataset layout, ours or not: ``<key>.jpg`` + ``.txt``/``.json``...) with
   :func:`dedup.phash.bytes_hash_columns` into ``OUT/_hashes/<shard>.parquet`` (``key``, ``status`` = ok /
   no_image / decode_error, the hash columns), reused while the tar (path or URL, size, mtime or ETag) and the
   hashing options are unchanged, so a run against other eval sets re-reads no tar. With ``use_stored_hashes``,
   a shard whose ``<shard>.parquet`` holds the hash columns for every sample (``wit download`` writes them) is
   not decoded at all;
2. **matches** its hashed samples against every eval index (:mod:`dedup.match`) into ``OUT/_overlap/<shard>.parquet``;
3. in **drop** mode writes the clean shard ``OUT/<shard>.tar`` (the same members in the same order, less the
   matched samples) and the shard parquet filtered the same way when there is one; an earlier run's clean shard
   made from the same tar with the same drops is kept as it is;
4. records ``OUT/_parts/<shard>.stats.json``, its commit marker, with the shard's run key (the tar's identity,
   the output options and the content of the eval indexes).

Its files are written into a staging folder on its node and published, the marker last (a task killed midway
leaves no marker). A re-run skips the shards whose marker holds the same key and whose outputs are there, so a
killed run resumes and a run with other options or eval sets redoes only what they change. At the end the driver
writes, from the markers and the overlap parts, ``OUT/overlap.parquet`` (``eval_set``, ``eval_id``, ``key``,
``distance``, ``dct_distance``, ``variant``, ``shard``; thresholds in the schema metadata), ``OUT/sizes.json``
(drop mode: samples per clean shard) and ``OUT/_stats.json``.

Every sample is kept or dropped with a reason (``eval_duplicate``); samples that cannot be hashed are kept
(nothing says they are duplicates) and counted in ``extra.unhashed``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from braceexpand import braceexpand
from PIL import Image

from dedup import sources
from dedup.index import INDEX_FILE, EvalIndexConfig, build_eval_index, check_eval_name, load_robust_index
from dedup.match import MATCH_SCHEMA, MatchConfig, RobustIndex, match_table
from dedup.phash import HASH_SCHEMA, bytes_hash_columns
from pipeline.core.config import field
from pipeline.core.env import worker_env
from pipeline.core.errors import WitError
from pipeline.core.executor import Resources, ray_result, ray_session, submit_bounded
from pipeline.core.executor import use_ray as executor_use_ray
from pipeline.core.io import clean_tmp, is_url, remote_files, write_json, write_parquet
from pipeline.core.lock import locked
from pipeline.core.parts import PARTS_DIR, PartStore, file_identity, progress, run_key
from pipeline.core.stats import StageStats
from pipeline.core.storage import Folder, scratch_dir

log = logging.getLogger(__name__)

STAGE = "dedup"
MODES = ("flag", "drop")
HASH_DIR = "_hashes"
OVERLAP_DIR = "_overlap"
EVAL_DIR = "_eval"
OVERLAP_FILE = "overlap.parquet"
SIZES_FILE = "sizes.json"
HASHES_SCHEMA = pa.schema([("key", pa.string()), ("status", pa.string()), *HASH_SCHEMA])
OVERLAP_SCHEMA = pa.schema([*MATCH_SCHEMA, ("shard", pa.string())])
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: One shard task: one sample decoded at a time, the shard's hash table (a few hundred bytes per sample) and its
#: tar streamed into the clean copy; the eval indexes come from the object store.
RESOURCES = Resources(cpus=1, memory_mb=1024, retries=2)


@dataclasses.dataclass
class DedupConfig(MatchConfig, section="dedup"):
    """Options of ``wit dedup`` (the detector's thresholds, see :mod:`dedup.match`, and how to run)."""

    mode: str = field("flag", help="flag: write overlap.parquet only; drop: also write clean shards without "
                                   "the matched samples", choices=MODES)
    use_stored_hashes: bool = field(True, help="use the hash columns of a shard's parquet when every sample "
                                               "has them (wit download writes them) instead of decoding")
    image_keys: tuple[str, ...] = field(sources.IMAGE_KEYS, help="sample extensions tried for the image, in order")
    workers: int = field(1, min=0, key=False, help="shards done in parallel as Ray tasks (0 = one per CPU of the "
                         "Ray cluster; 1 = in this process, `threads` at a time, unless a cluster is given)")
    threads: int = field(0, min=0, key=False, help="shards done in parallel threads when they run in this process "
                                                   "(0: one per CPU)")
    ray_address: str = field("", key=False, help="Ray cluster address (default: $RAY_ADDRESS; else a local Ray "
                                                 "when workers is not 1)")
    progress: bool = field(True, key=False, help="show a progress bar over shards (only on a terminal)")


# ---------------------------------------------------------------- inputs

def shard_locations(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """The ``.tar`` shards a shards argument names, as absolute paths or URLs: local ones as
    :func:`dedup.sources.shard_paths` finds them, URLs as a folder (its ``*.tar``), a glob, a brace pattern or
    a file. A missing shard is a ``WitError``."""
    if isinstance(spec, (list, tuple)):
        return [loc for s in spec for loc in shard_locations(s)]
    text = str(spec)
    if not is_url(text):
        return [str(p.resolve()) for p in sources.shard_paths(text)]
    return [url for pattern in braceexpand(text) for url in _remote_shards(pattern)]


def _remote_shards(url: str) -> list[str]:
    """The ``.tar`` URLs of a folder or glob URL, or the URL of the one shard it names (as a listing names it:
    one shard, one identity)."""
    fs, path, paths = remote_files(url, "shard not found")
    if paths is None:
        return [fs.unstrip_protocol(path)]
    tars = (p for p in paths if p.endswith(".tar") and not p.rsplit("/", 1)[-1].startswith("."))
    return [fs.unstrip_protocol(p) for p in tars]


def _check_out_dir(tars: list[str], out: Folder, mode: str) -> None:
    names = [Path(t).name for t in tars]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise WitError(f"{dup}: two input shards share this name; give them one folder each")
    if mode == "drop" and any(_in_folder(t, out) for t in tars):
        raise WitError(f"{out}: the output folder holds the input shards; choose another --out")


def _in_folder(tar: str, out: Folder) -> bool:
    if is_url(tar) or out.remote:
        folder = Folder(tar.rsplit("/", 1)[0])
        return folder.remote and out.remote and folder.fs.protocol == out.fs.protocol and folder.root == out.root
    return Path(tar).resolve().parent == Path(out.location).resolve()


class ShardInput:
    """A shard's tar and its ``<shard>.parquet`` as local files: in place on a disk; from a store copied, once and
    when first needed, into a temporary folder on this node (``$WIT_SCRATCH``), removed on exit."""

    def __init__(self, tar: str) -> None:
        self.location, self.name = tar, Path(tar).name
        self.meta_name = Path(self.name).with_suffix(".parquet").name
        self.folder = Folder(tar.rsplit("/", 1)[0]) if is_url(tar) else Folder(Path(tar).parent)
        self.scratch: Path | None = None
        self.copies: dict[str, Path | None] = {}

    def __enter__(self) -> "ShardInput":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def tar(self) -> Path:
        path = self._local(self.name)
        if path is None:
            raise WitError(f"{self.location}: shard not found")
        return path

    def metadata(self) -> Path | None:
        """The shard's parquet (img2dataset writes one beside each tar), None when there is none."""
        return self._local(self.meta_name)

    def where(self, name: str) -> str:
        """Where a file of the shard is, for messages."""
        return self.folder.loc(name)

    def _local(self, name: str) -> Path | None:
        if not self.folder.remote:
            path = self.folder.path / name
            return path if path.is_file() else None
        if name not in self.copies:
            if self.scratch is None:
                self.scratch = scratch_dir("wit-dedup-")
            try:
                self.copies[name] = self.folder.get(name, self.scratch / name)
            except FileNotFoundError:
                self.copies[name] = None
        return self.copies[name]


# ---------------------------------------------------------------- eval sets

def resolve_indexes(evals: dict[str, str | os.PathLike], out_dir: str | os.PathLike | Folder,
                    max_radius: int) -> dict[str, RobustIndex]:
    """Robust indexes of the eval sets: an index folder or file (local or URL) is loaded, anything else is indexed
    first into ``OUT/_eval/<name>`` (reused when already there)."""
    for name in evals:
        check_eval_name(name)
    out = Folder(out_dir)
    indexes = {}
    for name, value in sorted(evals.items()):
        path = Path(value)
        if is_url(str(value)) or path.is_dir() and (path / INDEX_FILE).is_file() or path.name == INDEX_FILE:
            indexes[name] = load_robust_index(str(value), max_radius)
            continue
        if not out.exists(f"{EVAL_DIR}/{name}/{INDEX_FILE}"):
            log.info("indexing eval set %s from %s", name, path)
            build_eval_index(name, path, out.loc(EVAL_DIR), EvalIndexConfig())
        indexes[name] = load_robust_index(out.loc(f"{EVAL_DIR}/{name}"), max_radius)
    return indexes


def eval_fingerprint(indexes: dict[str, RobustIndex]) -> str:
    """What the overlap of a shard depends on in the eval indexes: their names, ids, variants and hashes."""
    digest = hashlib.sha256()
    for name, index in sorted(indexes.items()):
        digest.update(json.dumps([name, list(index.variants), index.ids.tolist()]).encode())
        digest.update(index.phashes.tobytes())
        digest.update(index.dcts.tobytes())
    return digest.hexdigest()[:20]


# ---------------------------------------------------------------- jobs and resume

@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One shard to do: its tar (absolute path or URL), the output folder (absolute path or URL), the run key of
    its outputs, the run key of its hashes and the tar's fingerprint (its identity)."""

    tar: str
    out: str
    key: str
    hash_key: str
    source: str

    @property
    def name(self) -> str:
        return Path(self.tar).name

    @property
    def stem(self) -> str:
        return Path(self.tar).stem


def hash_name(stem: str) -> str:
    return f"{HASH_DIR}/{stem}.parquet"


def overlap_name(stem: str) -> str:
    return f"{OVERLAP_DIR}/{stem}.parquet"


def shard_jobs(tars: list[str], out: Folder, cfg: DedupConfig, evals_key: str) -> list[ShardJob]:
    """A job per shard with its run keys (one look at each tar: a HEAD for a URL)."""
    location = out.location if out.remote else str(Path(out.location).resolve())
    hashing = {"image_keys": list(cfg.image_keys), "use_stored_hashes": cfg.use_stored_hashes}
    jobs = []
    for tar in tars:
        identity = file_identity(tar)
        jobs.append(ShardJob(tar, location, run_key(STAGE, cfg, [identity], {"evals": evals_key}),
                             run_key(STAGE, hashing, [identity]), run_key(STAGE, {}, [identity])))
    return jobs


def _record(out: Folder, name: str) -> dict[str, Any] | None:
    """A shard's marker as written, None when there is none (or it is damaged: the shard is then redone)."""
    try:
        return out.read_json(PartStore.sidecar_name(name))
    except (FileNotFoundError, ValueError):
        return None


def _present(out: Folder) -> set[str]:
    """The files of the output folder that a finished shard may have written (one listing per folder)."""
    return {*out.names(), *(f"{sub}/{n}" for sub in (HASH_DIR, OVERLAP_DIR) for n in out.names(sub))}


def is_done(out: Folder, job: ShardJob, present: set[str]) -> bool:
    """Finished with this run key, and every output its marker lists still there."""
    record = _record(out, job.name)
    outputs = (record or {}).get("extra", {}).get("outputs")
    return bool(record and record.get("run_key") == job.key and outputs and all(o in present for o in outputs))


def use_ray(cfg: DedupConfig, n_todo: int) -> bool:
    """On the cluster given, or on a local Ray for two shards or more when ``workers`` is not 1."""
    return executor_use_ray(cfg.ray_address, cfg.workers, n_todo)


def run_shards(jobs: list[ShardJob], indexes: dict[str, RobustIndex], cfg: DedupConfig) -> Iterator[dict[str, Any]]:
    """:func:`dedup_shard` of every job (its stats), as Ray tasks in the order they finish (:func:`use_ray`), or in
    threads of this process, in order. A task's WitError is raised as its one line."""
    if not use_ray(cfg, len(jobs)):
        with ThreadPoolExecutor(max_workers=cfg.threads or os.cpu_count() or 1) as pool:
            yield from pool.map(lambda job: dedup_shard(job, indexes, cfg), jobs)
        return
    with ray_session(cfg.ray_address, cfg.workers, worker_env()):
        for _, ref in submit_bounded(((dedup_shard, job) for job in jobs), RESOURCES, indexes, cfg, speculate=True):
            yield ray_result(ref)


# ---------------------------------------------------------------- one shard

def dedup_shard(job: ShardJob, indexes: dict[str, RobustIndex], cfg: DedupConfig) -> dict[str, Any]:
    """Hash, match and (drop mode) clean one shard in a staging folder of this node, then publish its files to
    ``job.out``, the marker last; return its stats. The outputs are a function of the run key: a second copy of
    the task (a retry, a speculated straggler) publishes the same files."""
    out = Folder(job.out)
    previous = _record(out, job.name)
    with ShardInput(job.tar) as source, out.staging() as tmp:
        hashes, fresh = shard_hashes(source, out, job, cfg)
        overlap = shard_overlap(hashes, indexes, cfg, job.name)
        stats = shard_stats(hashes, overlap, cfg)
        outputs = [hash_name(job.stem), overlap_name(job.stem)]
        if fresh:
            write_parquet(hashes, tmp / hash_name(job.stem))
        write_parquet(overlap, tmp / overlap_name(job.stem))
        if cfg.mode == "drop":
            outputs += clean_shard(source, job, tmp, set(overlap["key"].to_pylist()), previous, stats)
        stats.extra["outputs"] = outputs
        PartStore(Folder(tmp), STAGE).record(job.name, job.key, stats)
    return stats.to_dict()


def shard_stats(hashes: pa.Table, overlap: pa.Table, cfg: DedupConfig) -> StageStats:
    """A shard's samples, each kept or dropped (``eval_duplicate``, drop mode), and the unhashed ones by status."""
    stats = StageStats(STAGE, inputs=hashes.num_rows, extra={"shards": 1})
    flagged = len(set(overlap["key"].to_pylist()))
    if cfg.mode == "drop":
        stats.drop("eval_duplicate", flagged)
    stats.kept = stats.inputs - stats.n_dropped
    unhashed = Counter(s for s in hashes["status"].to_pylist() if s != "ok")
    stats.extra.update(flagged_samples=flagged, unhashed=dict(sorted(unhashed.items())))
    return stats


def shard_overlap(hashes: pa.Table, indexes: dict[str, RobustIndex], cfg: DedupConfig, shard: str) -> pa.Table:
    m = match_table(hashes.filter(pc.equal(hashes["status"], "ok")), indexes, cfg)
    return m.append_column("shard", pa.array([shard] * m.num_rows, pa.string()))


# ---------------------------------------------------------------- hashing

def _hash_sample(files: dict[str, bytes], image_keys: Sequence[str]) -> tuple[str, dict | None]:
    data = sources.sample_image(files, image_keys)
    if data is None:
        return "no_image", None
    try:
        return "ok", bytes_hash_columns(data)
    except DECODE_ERRORS:
        return "decode_error", None


def _stored_hashes(source: ShardInput) -> dict[str, dict] | None:
    """``key -> row`` of ``<shard>.parquet`` when it has the hash columns, else None."""
    meta = source.metadata()
    if meta is None:
        return None
    try:
        if not {"key", *HASH_SCHEMA.names} <= set(pq.read_schema(meta).names):
            return None
        return {r["key"]: r for r in pq.read_table(meta, columns=["key", *HASH_SCHEMA.names]).to_pylist()}
    except sources.PARQUET_ERRORS as exc:
        raise sources.unreadable(source.where(source.meta_name), exc, "shard metadata") from None


def _from_stored(source: ShardInput, cfg: DedupConfig) -> pa.Table | None:
    """The shard's hash table from its parquet, when that has a row for every sample with an image (a row
    without hashes means its producer could not decode the image: ``decode_error``)."""
    stored = _stored_hashes(source)
    if stored is None:
        return None
    present = [(key, sources.sample_image(files, cfg.image_keys) is not None)
               for key, files in sources.tar_samples(source.tar())]
    if any(has and key not in stored for key, has in present):
        return None
    rows = [{"key": key, "status": "no_image"} if not has
            else {**stored[key], "status": "ok" if stored[key]["phash"] is not None else "decode_error"}
            for key, has in present]
    return pa.Table.from_pylist(rows, schema=HASHES_SCHEMA)


def _decode_and_hash(tar: Path, cfg: DedupConfig) -> pa.Table:
    rows = []
    for key, files in sources.tar_samples(tar):
        status, hashes = _hash_sample(files, cfg.image_keys)
        rows.append({"key": key, "status": status, **(hashes or {})})
    return pa.Table.from_pylist(rows, schema=HASHES_SCHEMA)


def shard_hashes(source: ShardInput, out: Folder, job: ShardJob, cfg: DedupConfig) -> tuple[pa.Table, bool]:
    """The per-sample hash table of one shard, and whether it was made now (else it is ``_hashes/<shard>``,
    made from the same tar with the same hashing options)."""
    cached = _read_cache(out, hash_name(job.stem))
    if cached is not None and (cached.schema.metadata or {}).get(b"source") == job.hash_key.encode():
        return cached, False
    table = _from_stored(source, cfg) if cfg.use_stored_hashes else None
    if table is None:
        table = _decode_and_hash(source.tar(), cfg)
    return table.replace_schema_metadata({"source": job.hash_key}), True


def _read_cache(out: Folder, name: str) -> pa.Table | None:
    """A shard's cached hash table, or None when there is none or it is damaged (it is then recomputed)."""
    try:
        with out.open(name) as f:
            return pq.read_table(f)
    except FileNotFoundError:
        return None
    except sources.PARQUET_ERRORS as exc:
        log.warning("%s; recomputing it", sources.unreadable(out.loc(name), exc, "hash cache"))
        return None


# ---------------------------------------------------------------- dropping

def clean_shard(source: ShardInput, job: ShardJob, tmp: Path, dropped: set[str], previous: dict[str, Any] | None,
                stats: StageStats) -> list[str]:
    """Drop mode: stage ``<shard>.tar`` without the members of ``dropped`` samples (and its parquet likewise)
    in ``tmp``, unless an earlier run made them from the same tar and drops (``previous``: the shard's last
    marker); return their names. ``stats.extra`` gets ``clean_samples`` (samples kept) and ``drop_digest``."""
    digest = hashlib.sha256((job.source + "\n" + "\n".join(sorted(dropped))).encode()).hexdigest()
    before = (previous or {}).get("extra", {})
    names = before.get("clean_files") or []
    if before.get("drop_digest") == digest and names and all(Folder(job.out).exists(n) for n in names):
        stats.extra.update(clean_samples=before["clean_samples"], drop_digest=digest, clean_files=names)
        return names
    names = [f"{job.stem}.tar"]
    kept = write_clean_tar(source.tar(), tmp / names[0], dropped)
    meta = source.metadata()
    if meta is not None:
        table = _read_shard_metadata(meta, source)
        if "key" in table.column_names and dropped:
            table = table.filter(pc.invert(pc.is_in(table["key"], pa.array(sorted(dropped), pa.string()))))
        names.append(f"{job.stem}.parquet")
        write_parquet(table, tmp / names[1])
    stats.extra.update(clean_samples=kept, drop_digest=digest, clean_files=names)
    return names


def write_clean_tar(tar: Path, target: Path, dropped: set[str]) -> int:
    """``target``: the members of ``tar`` in order, less those of ``dropped`` samples; returns the samples kept."""
    kept: set[str] = set()
    with tarfile.open(tar, "r|*") as src, tarfile.open(target, "w") as dst:
        for member in src:
            parts = sources.split_member(member.name) if member.isfile() else None
            if parts is not None and parts[0] in dropped:
                continue
            if parts is not None:
                kept.add(parts[0])
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    return len(kept)


def _read_shard_metadata(meta: Path, source: ShardInput) -> pa.Table:
    try:
        return pq.read_table(meta)
    except sources.PARQUET_ERRORS as exc:
        raise sources.unreadable(source.where(source.meta_name), exc, "shard metadata") from None


# ---------------------------------------------------------------- the stage

def run_dedup(shards: str | os.PathLike | Sequence[str | os.PathLike], evals: dict[str, str | os.PathLike],
              out_dir: str | os.PathLike, cfg: DedupConfig | None = None) -> StageStats:
    """Match (and in drop mode remove) eval near-duplicates in WebDataset shards (see module doc). The
    inputs are checked before anything is written (the output folder's lock included)."""
    start = time.time()
    cfg = cfg or DedupConfig()
    tars = shard_locations(shards)
    if not tars:
        raise WitError(f"{shards}: no .tar shards")
    if not evals:
        raise WitError("dedup: no eval sets given (--eval NAME=PATH)")
    for name in evals:
        check_eval_name(name)
    out = Folder(out_dir)
    _check_out_dir(tars, out, cfg.mode)
    return _dedup(tars, evals, out.location, cfg, start)


@locked(STAGE, "out_dir")
def _dedup(tars: list[str], evals: dict[str, str | os.PathLike], out_dir: str, cfg: DedupConfig,
           start: float) -> StageStats:
    out = _prepare(out_dir)
    indexes = resolve_indexes(evals, out, cfg.max_distance)
    jobs = shard_jobs(tars, out, cfg, eval_fingerprint(indexes))
    present = _present(out)
    todo = [job for job in jobs if not is_done(out, job, present)]
    for _ in progress(run_shards(todo, indexes, cfg), "dedup", "shard", total=len(todo), enabled=cfg.progress):
        pass
    stats = finish(out, jobs, indexes, cfg)
    stats.extra.update(skipped_shards=len(jobs) - len(todo), seconds=round(time.time() - start, 2))
    stats.write(out)
    return stats


def _prepare(out_dir: str) -> Folder:
    """The output folder, made (local) and rid of a killed run's temporary files (a store has none: its tasks
    stage on their node)."""
    out = Folder(out_dir).ensure()
    if not out.remote:
        for sub in ("", HASH_DIR, OVERLAP_DIR, PARTS_DIR):
            clean_tmp(out.path / sub)
    return out


def collect_overlap(out: Folder, jobs: list[ShardJob], cfg: DedupConfig) -> pa.Table:
    """Every shard's overlap rows, sorted, with the thresholds in the schema metadata."""
    parts = []
    for job in jobs:
        with out.open(overlap_name(job.stem)) as f:
            parts.append(pq.read_table(f).replace_schema_metadata(None).cast(OVERLAP_SCHEMA))
    overlap = pa.concat_tables(parts) if parts else OVERLAP_SCHEMA.empty_table()
    overlap = overlap.sort_by([("eval_set", "ascending"), ("eval_id", "ascending"), ("key", "ascending"),
                               ("shard", "ascending")])
    return overlap.replace_schema_metadata({"max_distance": str(cfg.max_distance),
                                            "max_dct_distance": str(cfg.max_dct_distance)})


def finish(out: Folder, jobs: list[ShardJob], indexes: dict[str, RobustIndex], cfg: DedupConfig) -> StageStats:
    """The run's stats, from the shards' markers, and ``overlap.parquet`` (and ``sizes.json``) written."""
    store = PartStore(out, STAGE)
    records = {job.name: store.stats(job.name) for job in jobs}
    overlap = collect_overlap(out, jobs, cfg)
    stats = StageStats(STAGE)
    unhashed: Counter = Counter()
    for record in records.values():
        stats.merge(StageStats(STAGE, record.inputs, record.kept, record.dropped))
        unhashed.update(record.extra["unhashed"])
    sets, ids = overlap["eval_set"].to_pylist(), overlap["eval_id"].to_pylist()
    stats.extra.update(
        mode=cfg.mode, shards=len(jobs), flagged_samples=sum(r.extra["flagged_samples"] for r in records.values()),
        unhashed=dict(sorted(unhashed.items())),
        eval_duplicates={n: len({i for s, i in zip(sets, ids) if s == n}) for n in indexes},
        eval_images={n: len(index) for n, index in indexes.items()},
        max_distance=cfg.max_distance, max_dct_distance=cfg.max_dct_distance)
    with out.staging() as tmp:
        write_parquet(overlap, tmp / OVERLAP_FILE)
        if cfg.mode == "drop":
            write_json(tmp / SIZES_FILE, {name: r.extra["clean_samples"] for name, r in records.items()})
    return stats

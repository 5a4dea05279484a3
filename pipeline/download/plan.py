"""The download plan: the input pairs staged once as ``shards_dir/_input/urls.parquet``, one row group per shard,
with ``_input/plan.json`` (written after it) in the shards folder, local or on a store (:class:`Folder`).

The input parts are streamed (never all in memory) into ``url``, ``caption`` and the ``keep_columns``
present in any part; row group N holds the rows of shard N, so a worker reads exactly its shard and a
re-run (same input bytes and shard-shaping options, see :meth:`DownloadConfig.shard_options`) finds the
same rows in the same shard. URLs are not screened here: each worker screens its own (no driver-side DNS).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.download.config import DownloadConfig, ShardShaping
from pipeline.download.shard import done_shards
from pipeline.core.errors import WitError
from pipeline.core.io import (InputSpec, Part, RemotePart, atomic_path, open_parquet, parquet_inputs, part_folder,
                              part_name, read_schema)
from pipeline.core.parts import file_identity
from pipeline.core.storage import Folder

log = logging.getLogger(__name__)

PLAN_DIR = "_input"
PLAN_FILE = "plan.json"
URLS_FILE = "urls.parquet"
BATCH_ROWS = 1 << 16


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a shards folder is built from: the staged URL list (its path or URL) and its shard layout."""

    urls_file: str
    inputs: int
    per_shard: int

    @property
    def n_shards(self) -> int:
        return math.ceil(self.inputs / self.per_shard)

    def shard_rows(self, shard_id: int) -> int:
        return min(self.per_shard, self.inputs - shard_id * self.per_shard)


def input_files(input_dir: InputSpec) -> list[Part]:
    """The input parts (local or fsspec, see :func:`pipeline.core.io.parquet_inputs`). Two parts may share a
    name here: the plan stages their rows into one file, no output is named after a part."""
    files = parquet_inputs(input_dir)
    if not files:
        raise WitError(f"{input_dir}: no parquet parts to download (has the filter stage run?)")
    return files


def fingerprint(files: list[Part], cfg: ShardShaping) -> str:
    """A hash of the shard-shaping options and of each part's name and content (see :func:`_add_content`)."""
    digest = hashlib.sha256(json.dumps(cfg.shard_options(), sort_keys=True, default=str).encode())
    for f in files:
        digest.update(part_name(f).encode())
        _add_content(digest, f)
    return digest.hexdigest()


def _add_content(digest: Any, part: Part) -> None:
    """A local part's bytes; a remote part's identity but its place (size, ETag, modification time), so that
    the plan does not fetch every object once more just to hash it."""
    if isinstance(part, RemotePart):
        identity = {k: v for k, v in file_identity(part).items() if k != "path"}
        digest.update(json.dumps(identity, sort_keys=True).encode())
        return
    with part.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def staged_schema(files: list[Part], keep_columns: tuple[str, ...]) -> pa.Schema:
    """``keep_columns`` present in any part (in that order), then ``caption`` if present, then ``url``."""
    fields: dict[str, pa.Field] = {}
    for f in files:
        schema = read_schema(f)
        if "url" not in schema.names:
            raise WitError(f"{f}: no 'url' column")
        for name in schema.names:
            fields.setdefault(name, schema.field(name))
    names = [c for c in dict.fromkeys(keep_columns) if c in fields] + [c for c in ("caption", "url") if c in fields]
    return pa.schema([fields[n] for n in names])


def _conform(batch: pa.RecordBatch, schema: pa.Schema, source: Part) -> pa.Table:
    columns = [batch.column(n) if n in batch.schema.names else pa.nulls(batch.num_rows, schema.field(n).type)
               for n in schema.names]
    try:
        return pa.Table.from_arrays(columns, names=schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise WitError(f"{source}: columns do not match the other parts ({str(exc).splitlines()[0]})") from None


def _batches(files: list[Part], schema: pa.Schema) -> Iterator[pa.Table]:
    for f in files:
        with open_parquet(f) as part:
            present = [n for n in schema.names if n in part.schema_arrow.names]
            for batch in part.iter_batches(batch_size=BATCH_ROWS, columns=present):
                yield _conform(batch, schema, f)


def stage_urls(files: list[Part], schema: pa.Schema, out: Path, per_shard: int) -> int:
    """Stream the parts into ``out`` with exactly ``per_shard`` rows per row group; return the row count."""
    total, buffered, pending = 0, 0, []
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for table in _batches(files, schema):
            pending.append(table)
            buffered += table.num_rows
            while buffered >= per_shard:
                merged = pa.concat_tables(pending)
                writer.write_table(merged.slice(0, per_shard), row_group_size=per_shard)
                pending, buffered, total = [merged.slice(per_shard)], buffered - per_shard, total + per_shard
        if buffered:
            writer.write_table(pa.concat_tables(pending), row_group_size=per_shard)
            total += buffered
        if total == 0:
            raise WitError(f"{part_folder(files[0])}: no rows to download")
    return total


def load_plan_record(shards_dir: Folder | Path, digest: str) -> dict[str, Any] | None:
    """The stored ``plan.json`` of ``shards_dir`` if it was made with fingerprint ``digest`` and its URL
    list is still there."""
    shards = Folder(shards_dir)
    if not shards.exists(f"{PLAN_DIR}/{PLAN_FILE}"):
        return None
    d = shards.read_json(f"{PLAN_DIR}/{PLAN_FILE}")
    if d.get("fingerprint") != digest or not shards.exists(f"{PLAN_DIR}/{URLS_FILE}"):
        return None
    return d


def _has_shards(shards: Folder) -> bool:
    return bool(done_shards(shards)) or any(n.split(".")[0].isdigit() for n in shards.names(pattern="*.tar"))


def open_plan(input_dir: InputSpec, shards_dir: Folder | Path, cfg: ShardShaping
              ) -> tuple[list[Part], str, dict[str, Any] | None]:
    """``(input parts, fingerprint, record of an earlier run's plan to reuse or None)`` (either engine).

    A folder that holds shards but no plan for this input and these options is refused."""
    shards = Folder(shards_dir)
    files = input_files(input_dir)
    digest = fingerprint(files, cfg)
    record = load_plan_record(shards, digest)
    if record is not None:
        log.info("%s: reusing the download plan of an earlier run", shards)
    elif _has_shards(shards):
        log.warning("%s: shards built from other input or options (%s): rebuilding them", shards,
                    _changes(shards, cfg))
        clear_shards(shards)
    return files, digest, record


def _changes(shards: Folder, cfg: ShardShaping) -> str:
    """``name: old -> new`` for each output option that differs from the stored plan's, else 'input changed'."""
    plan_file = f"{PLAN_DIR}/{PLAN_FILE}"
    old = shards.read_json(plan_file).get("options", {}) if shards.exists(plan_file) else {}
    new = json.loads(json.dumps(cfg.shard_options(), default=str))
    changed = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in sorted(new.items()) if k in old and old[k] != v]
    return ", ".join(changed) or "input or options changed"


def clear_shards(shards_dir: Folder | Path) -> None:
    """Remove a shard folder's shards, their stats, eval overlap rows and plan (not other files)."""
    shards = Folder(shards_dir)
    for name in shards.names():
        stem = name.split(".")[0].split("_")[0]
        if stem.isdigit() or name in ("sizes.json", "_stats.json"):
            shards.remove(name)
    for sub in (PLAN_DIR, "_overlap"):
        shards.remove(sub, recursive=True)


def save_plan_record(shards_dir: Folder | Path, digest: str, record: dict[str, Any]) -> None:
    """Write ``plan.json``: the fingerprint and ``record`` (what :func:`load_plan_record` gives back)."""
    Folder(shards_dir).write_json(f"{PLAN_DIR}/{PLAN_FILE}", {"fingerprint": digest, **record})


def make_plan(input_dir: InputSpec, shards_dir: Folder | Path, cfg: DownloadConfig) -> Plan:
    """Stage the input URLs (or reuse the plan of an earlier run on the same input and options): the URL list
    is written locally and published, then ``plan.json`` (which vouches for it)."""
    shards = Folder(shards_dir).ensure()
    files, digest, record = open_plan(input_dir, shards, cfg)
    if record is None:
        with shards.staging() as tmp:
            inputs = stage_urls(files, staged_schema(files, cfg.keep_columns), tmp / PLAN_DIR / URLS_FILE,
                                cfg.number_sample_per_shard)
        record = {"inputs": inputs, "per_shard": cfg.number_sample_per_shard, "options": cfg.shard_options()}
        save_plan_record(shards, digest, record)
    return Plan(shards.loc(f"{PLAN_DIR}/{URLS_FILE}"), record["inputs"], record["per_shard"])

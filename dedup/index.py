"""Eval-set indexes: the perceptual hashes of an evaluation set, one parquet file per set.

``build_eval_index("cifar10", "data/cifar10/test", "build/eval")`` writes ``build/eval/cifar10/index.parquet``
and ``_stats.json`` beside it (the folder is replaced atomically). The eval set may be

* an **ImageFolder** (one folder per class): ``eval_id`` is the path relative to the root (posix), the label
  the class folder;
* **WebDataset shards** (a ``.tar``, a folder of them, a glob or brace pattern): ``eval_id`` is the sample key
  (``__key__``), the label comes from ``.cls``/``.txt``/``.json`` when present;
* **parquet** files with encoded images in a binary column, or a struct with a ``bytes`` field as Hugging
  Face writes (``EvalIndexConfig.image_column``): ``eval_id`` from ``id_column`` or ``<file stem>/<row>``.

Columns: ``eval_id``, ``label`` (null when the set has none), ``phash`` (int64, the plain pHash that
:class:`dedup.search.HashIndex` searches), and for the robust detector (:mod:`dedup.match`)
``variant_phash`` (list of int64) and ``variant_dct`` (list of 32-byte DCT sign hashes), one entry per
:data:`dedup.phash.VARIANTS` (names in the schema metadata). Undecodable or image-less records are dropped
and counted (``decode_error``, ``no_image``); a duplicate ``eval_id`` is a ``WitError``.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from dedup import sources
from dedup.match import MAX_DISTANCE, RobustIndex, dct_words
from dedup.phash import DCT_BYTES, VARIANTS, eval_variants
from dedup.search import HashIndex
from pipeline.core.config import Config, field
from pipeline.core.errors import WitError
from pipeline.core.io import is_url
from pipeline.core.storage import Folder
from pipeline.core.stats import StageStats

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"
HASH_VERSION = "1"
META_VARIANTS = b"wit.dedup.variants"
META_VERSION = b"wit.dedup.hash_version"
SCHEMA = pa.schema([("eval_id", pa.string()), ("label", pa.string()), ("phash", pa.int64()),
                    ("variant_phash", pa.list_(pa.int64())), ("variant_dct", pa.list_(pa.binary(DCT_BYTES)))])
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: An eval-set name: it names the index folder ``OUT/<name>``, so it must stay a plain folder name.
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
REQUIRED = ("eval_id", "phash")
VARIANT_COLUMNS = ("variant_phash", "variant_dct")


@dataclasses.dataclass
class EvalIndexConfig(Config, section="eval_index"):
    """Options of ``wit eval-index`` (checked when built)."""

    kind: str = field("auto", help="eval set layout: imagefolder, webdataset, parquet, or auto (from PATH)",
                      choices=sources.KINDS)
    image_column: str = field("image", help="parquet: column with the encoded images (binary, or a struct "
                                            "with a 'bytes' field as Hugging Face writes)")
    id_column: str = field("", help="parquet: column with the eval ids (default: '<file stem>/<row>')")
    label_column: str = field("label", help="parquet: column with the labels, used when present")
    label_key: str = field("auto", help="webdataset: label member: cls, txt, json, or auto (the first present)",
                           choices=("auto", *sources.LABEL_KEYS))
    threads: int = field(4, help="images decoded and hashed in parallel")


def check_eval_name(name: str) -> str:
    """``name`` when it can name an eval set (and its index folder ``OUT/<name>``): 1 to 64 letters, digits,
    ``_``, ``.`` or ``-``, and not ``.`` or ``..``, so it cannot lead out of ``OUT``; else a ``WitError``."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None or name in (".", ".."):
        raise WitError(f"eval set name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-' (not '.' or '..')")
    return name


def eval_items(path: str | os.PathLike, cfg: EvalIndexConfig) -> tuple[str, Iterator[sources.Item]]:
    """``(kind, records)`` of an eval set."""
    root = Path(path)
    kind = sources.detect_kind(root) if cfg.kind == "auto" else cfg.kind
    if kind == "imagefolder":
        if not root.is_dir():
            raise WitError(f"{root}: folder not found")
        return kind, sources.imagefolder_items(root)
    if kind == "webdataset":
        paths = sources.shard_paths(root)
        if not paths:
            raise WitError(f"{root}: no .tar shards")
        return kind, sources.webdataset_items(paths, cfg.label_key)
    return kind, sources.parquet_items(root, cfg.image_column, cfg.id_column, cfg.label_column)


def _hash_item(item: sources.Item) -> tuple[sources.Item, str | None, tuple[list[int], list[bytes]] | None]:
    """``(item, drop reason, variant hashes)`` of one record (its bytes are released)."""
    data, item.data = item.data, None
    if data is None:
        return item, "no_image", None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return item, None, eval_variants(img)
    except DECODE_ERRORS as exc:
        log.debug("%s: cannot decode (%s)", item.id, exc)
        return item, "decode_error", None


def _hashed(items: Iterator[sources.Item], threads: int, chunk: int = 256) -> Iterator[tuple]:
    """:func:`_hash_item` over a stream, ``threads`` at a time, in order, ``chunk`` records in flight."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        while batch := list(islice(items, chunk)):
            yield from pool.map(_hash_item, batch)


def build_eval_index(name: str, path: str | os.PathLike, out_dir: str | os.PathLike,
                     cfg: EvalIndexConfig | None = None, threads: int | None = None) -> StageStats:
    """Hash every image of the eval set at ``path`` into ``out_dir/<name>/index.parquet`` (see module doc)."""
    check_eval_name(name)
    cfg = cfg or EvalIndexConfig()
    if threads is not None:
        cfg = dataclasses.replace(cfg, threads=threads)
    cfg.validate()
    try:
        kind, items = eval_items(path, cfg)
        rows, stats = _collect(name, _hashed(items, cfg.threads))
    except WitError as exc:
        raise WitError(f"eval set '{name}': {exc}") from None
    if not rows["eval_id"]:
        raise WitError(f"eval set '{name}': no images in {path} (read as {kind})")
    stats.extra.update(eval_set=name, kind=kind, source=str(path), variants=len(VARIANTS),
                       classes=len({label for label in rows["label"] if label is not None}))
    table = pa.table(rows, schema=SCHEMA).replace_schema_metadata(
        {META_VARIANTS: json.dumps(list(VARIANTS)).encode(), META_VERSION: HASH_VERSION.encode()})
    with Folder(out_dir).staging() as tmp:  # a local folder or a store; _stats.json (the marker) goes last
        (tmp / name).mkdir()
        pq.write_table(table, tmp / name / INDEX_FILE)
        stats.write(tmp / name)
    return stats


def _collect(name: str, hashed: Iterator[tuple]) -> tuple[dict[str, list], StageStats]:
    rows: dict[str, list] = {n: [] for n in SCHEMA.names}
    stats = StageStats(stage="eval-index")
    seen: set[str] = set()
    for item, reason, variants in hashed:
        stats.inputs += 1
        if item.id in seen:
            raise WitError(f"duplicate eval id {item.id!r}")
        seen.add(item.id)
        if reason is not None:
            stats.drop(reason)
            continue
        stats.kept += 1
        phashes, dcts = variants
        for key, value in zip(SCHEMA.names, (item.id, item.label, phashes[0], phashes, dcts)):
            rows[key].append(value)
    return rows, stats


# ---------------------------------------------------------------- loading

def index_file(path: str | os.PathLike) -> str:
    """The ``index.parquet`` of an eval index folder (local or URL), or ``path`` when it names the file."""
    text = str(path)
    if is_url(text):
        return text if text.endswith(".parquet") else f"{text.rstrip('/')}/{INDEX_FILE}"
    return str(Path(text) / INDEX_FILE) if Path(text).is_dir() else text


def index_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an eval index (its folder or file, local or URL; small: a few hashes per eval image)."""
    file = index_file(path)
    folder, name = file.rsplit("/", 1) if is_url(file) else (str(Path(file).parent), Path(file).name)
    try:
        return Folder(folder).read_bytes(name)
    except (FileNotFoundError, IsADirectoryError):
        raise WitError(f"{file}: eval index not found (build it with `wit eval-index`)") from None


def load_eval_index(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Read an eval index (its folder or its ``index.parquet``, local or URL): ``eval_id``, ``label``, ``phash``,
    ... A file that is unreadable, lacks a column, holds another type or empty ids or hashes is a ``WitError``."""
    file = index_file(path)
    data = pa.BufferReader(index_bytes(file))
    try:
        _check_schema(file, pq.read_schema(data), columns)
        table = pq.read_table(data, columns=columns)
    except sources.PARQUET_ERRORS as exc:
        raise WitError(f"{sources.unreadable(file, exc, 'eval index')}; rebuild it with `wit eval-index`") from None
    empty = [c for c in REQUIRED if c in table.column_names and table[c].null_count]
    if empty:
        raise WitError(f"{file}: {table[empty[0]].null_count} row(s) without {empty[0]}; "
                       "rebuild it with `wit eval-index`")
    return table


def _check_schema(file: str, schema: pa.Schema, columns: list[str] | None) -> None:
    """The index columns ``file`` must have (those asked for too) are there, with the types :data:`SCHEMA` says."""
    missing = [c for c in dict.fromkeys((*REQUIRED, *(columns or ()))) if c not in schema.names]
    if missing:
        raise WitError(f"{file}: not an eval index, missing column(s) {', '.join(missing)}")
    for name in (*REQUIRED, *VARIANT_COLUMNS):
        if name in schema.names and (columns is None or name in columns) and \
                schema.field(name).type != SCHEMA.field(name).type:
            raise WitError(f"{file}: not an eval index, column '{name}' holds {schema.field(name).type}, "
                           f"not {SCHEMA.field(name).type}")


def load_hash_index(path: str | os.PathLike) -> HashIndex:
    """An eval index ready for :meth:`dedup.search.HashIndex.search` (ids are ``eval_id``)."""
    table = load_eval_index(path, columns=["eval_id", "phash"])
    return HashIndex(table["phash"].to_numpy(zero_copy_only=False), table["eval_id"].to_pylist())


def load_robust_index(path: str | os.PathLike, max_radius: int = MAX_DISTANCE) -> RobustIndex:
    """An eval index ready for the robust detector (:class:`dedup.match.RobustIndex`)."""
    file = index_file(path)
    table = load_eval_index(file)
    meta = table.schema.metadata or {}
    if "variant_phash" not in table.column_names or meta.get(META_VERSION) != HASH_VERSION.encode():
        raise WitError(f"{file}: built by an older wit-builder without hash variants; rebuild it with `wit eval-index`")
    variants = _variant_names(file, table)
    n, v = table.num_rows, len(variants)
    flat_phashes, flat_dcts = (pc.list_flatten(table[c]) for c in VARIANT_COLUMNS)
    if len(flat_phashes) != n * v or len(flat_dcts) != n * v or flat_phashes.null_count or flat_dcts.null_count:
        raise WitError(f"{file}: variant columns do not hold {v} hashes per image")
    phashes, dcts = flat_phashes.to_numpy(zero_copy_only=False), dct_words(flat_dcts)
    return RobustIndex(table["eval_id"].to_pylist(), phashes.reshape(n, v), dcts.reshape(n, v, -1), variants,
                       max_radius)


def _variant_names(file: str, table: pa.Table) -> list[str]:
    """The hash variants an index holds (its schema metadata), checked against its columns."""
    if "variant_dct" not in table.column_names:
        raise WitError(f"{file}: not an eval index, missing column(s) variant_dct")
    try:
        variants = json.loads((table.schema.metadata or {})[META_VARIANTS])
    except (KeyError, ValueError):  # ValueError: not JSON, or not UTF-8
        variants = None
    if not isinstance(variants, list) or not variants or not all(isinstance(x, str) for x in variants):
        raise WitError(f"{file}: no list of hash variants in its metadata; rebuild it with `wit eval-index`")
    return variants

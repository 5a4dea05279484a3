"""Eval-set indexes: the perceptual hashes of an ImageFolder (one folder per class) as parquet.

``build_eval_index("cifar10", "data/cifar10/test", "build/eval")`` writes
``build/eval/cifar10/index.parquet`` (``eval_id``: path relative to the eval root in posix form,
``label``: class folder name, ``phash``: int64) and ``_stats.json`` beside it.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from dedup.phash import phash
from dedup.search import HashIndex
from pipeline.errors import WitError
from pipeline.io import write_parquet
from pipeline.stats import StageStats

log = logging.getLogger(__name__)

INDEX_FILE = "index.parquet"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
SCHEMA = pa.schema([("eval_id", pa.string()), ("label", pa.string()), ("phash", pa.int64())])


def list_images(root: Path) -> list[Path]:
    """Image files inside class folders of ``root`` (as torchvision's ImageFolder sees them), sorted."""
    return sorted(p for p in root.glob("*/**/*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _hash_file(path: Path) -> int | None:
    """The pHash of one image file, or None when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.load()
            return phash(img)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        log.debug("%s: cannot decode (%s)", path, exc)
        return None


def build_eval_index(name: str, image_folder: str | os.PathLike, out_dir: str | os.PathLike,
                     threads: int = 4) -> StageStats:
    """Hash every image of the ImageFolder ``image_folder`` into ``out_dir/<name>/index.parquet``.

    Undecodable images are dropped as ``decode_error``; a missing or image-less folder is a ``WitError``.
    """
    root = Path(image_folder)
    if not root.is_dir():
        raise WitError(f"eval set '{name}': folder not found: {root}")
    files = list_images(root)
    if not files:
        raise WitError(f"eval set '{name}': no images in class folders of {root}")
    stats = StageStats(stage="eval-index", inputs=len(files))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        hashes = list(pool.map(_hash_file, files))
    rows = [(f.relative_to(root).as_posix(), f.relative_to(root).parts[0], h)
            for f, h in zip(files, hashes) if h is not None]
    stats.kept = len(rows)
    stats.drop("decode_error", len(files) - len(rows))
    stats.extra.update(eval_set=name, classes=len({r[1] for r in rows}), source=str(root))
    table = pa.table({k: [r[i] for r in rows] for i, k in enumerate(SCHEMA.names)}, schema=SCHEMA)
    target = Path(out_dir) / name
    write_parquet(table, target / INDEX_FILE)
    stats.write(target)
    return stats


def load_eval_index(path: str | os.PathLike) -> pa.Table:
    """Read an eval index (its folder or its ``index.parquet``) as a table ``eval_id``, ``label``, ``phash``."""
    p = Path(path)
    file = p / INDEX_FILE if p.is_dir() else p
    if not file.is_file():
        raise WitError(f"{file}: eval index not found (build it with `wit eval-index`)")
    table = pq.read_table(file)
    missing = [c for c in ("eval_id", "phash") if c not in table.column_names]
    if missing:
        raise WitError(f"{file}: not an eval index, missing column(s) {', '.join(missing)}")
    return table


def load_hash_index(path: str | os.PathLike) -> HashIndex:
    """An eval index ready for :meth:`dedup.search.HashIndex.search` (ids are ``eval_id``)."""
    table = load_eval_index(path)
    return HashIndex(table["phash"].to_numpy(zero_copy_only=False), table["eval_id"].to_pylist())

"""Atomic writes and small file helpers shared by every stage.

Every output is written under a temporary name in the same folder and renamed into place,
so a killed run never leaves a partial file that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

TMP_PREFIX = ".tmp-"


def _tmp_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``path``, on error removed."""
    final = Path(path)
    tmp = _tmp_path(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` as a whole, on error it is removed."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a parquet file atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def clean_tmp(folder: str | os.PathLike) -> int:
    """Remove leftovers of killed runs (temporary files and folders) in ``folder``; return how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        removed += 1
    return removed


def parquet_files(folder: str | os.PathLike) -> list[Path]:
    """The finished parquet parts of a dataset folder, sorted (temporary files excluded)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))

"""Atomic writes and small file helpers shared by every stage.

Every output is written under a temporary name in the same folder and renamed into place,
so a killed run never leaves a partial file that looks complete.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import WitError

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


def read_schema(part: str | os.PathLike) -> pa.Schema:
    """The arrow schema of a parquet file, with a one-line error when it cannot be read."""
    try:
        return pq.read_schema(part)
    except (pa.ArrowException, OSError) as exc:
        raise WitError(f"{part}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


InputSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def parquet_inputs(spec: InputSpec) -> list[Path]:
    """The parquet files a user names: a folder (its finished parts), a file, a glob, or a list of these."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    files: list[Path] = []
    for item in items:
        text = str(item)
        if glob.has_magic(text):
            files += sorted(Path(p) for p in glob.glob(text) if p.endswith(".parquet") and Path(p).is_file())
        elif Path(text).is_dir():
            files += parquet_files(text)
        elif Path(text).is_file():
            files.append(Path(text))
        else:
            raise WitError(f"{text}: not found (give a folder of parquet parts, a parquet file, a glob or a list)")
    return list(dict.fromkeys(files))


def checked_parts(inputs: InputSpec, required: tuple[str, ...], hint: str) -> list[Path]:
    """The parquet parts of ``inputs`` (see :func:`parquet_inputs`), each checked for the ``required`` columns.

    ``hint`` completes "no parquet parts to ..." when there are none.
    """
    parts = parquet_inputs(inputs)
    if not parts:
        raise WitError(f"{inputs}: no parquet parts to {hint}")
    for part in parts:
        schema = read_schema(part)
        missing = [c for c in required if c not in schema.names]
        if missing:
            raise WitError(f"{part}: no '{missing[0]}' column (has: {', '.join(schema.names)})")
        wrong = [c for c in required if not _stringish(schema.field(c).type)]
        if wrong:
            raise WitError(f"{part}: column '{wrong[0]}' holds {schema.field(wrong[0]).type}, expected strings")
    return parts


def _stringish(tp: pa.DataType) -> bool:
    """A column of strings (an all-null column is typed null)."""
    return pa.types.is_string(tp) or pa.types.is_large_string(tp) or pa.types.is_null(tp)


def parse_json_strings(text: str, where: str | os.PathLike, what: str) -> list[str]:
    """A JSON list of strings (query lists, prompt templates), with one-line errors naming ``where``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WitError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, list):
        raise WitError(f"{where}: expected a JSON list of {what} strings, got {type(data).__name__}")
    bad = next((i for i, item in enumerate(data) if not isinstance(item, str)), None)
    if bad is not None:
        raise WitError(f"{where}: entry {bad} is not a string ({data[bad]!r})")
    return data

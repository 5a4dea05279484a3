"""Atomic writes, input parts (local or fsspec: :func:`parquet_inputs`, :func:`open_parquet`) and small file
helpers shared by every stage.

Every output is written under a temporary name in the same folder and renamed into place,
so a killed run never leaves a partial file that looks complete.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import os
import re
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


def is_part_name(name: str) -> bool:
    """A parquet part of a dataset folder: ``*.parquet``, not a sidecar or hidden file (``_*``, ``.*``, which
    also covers the temporary files of :func:`atomic_path`)."""
    return name.endswith(".parquet") and not name.startswith(("_", "."))


def parquet_files(folder: str | os.PathLike) -> list[Path]:
    """The finished parquet parts of a dataset folder, sorted (sidecars, hidden and temporary files excluded)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.parquet") if is_part_name(p.name))


# ------------------------------------------------------------------------------------- input parts

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(text: str) -> bool:
    """True for ``scheme://...`` inputs (read with fsspec)."""
    return bool(_URL_RE.match(text))


@dataclasses.dataclass(frozen=True)
class RemotePart:
    """An input parquet file read through fsspec: its URL, and the filesystem and path that read it."""

    url: str
    path: str = dataclasses.field(compare=False)
    fs: Any = dataclasses.field(compare=False, repr=False)

    def __str__(self) -> str:
        return self.url


#: An input part: a local file or an fsspec object (see :func:`parquet_inputs`).
Part = Union[Path, RemotePart]
InputSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]
_HINT = "give a folder of parquet parts, a parquet file, a glob or a list"
#: Bytes a remote part's reader fetches ahead of a read (s3fs would take 50 MiB): pyarrow reads whole column
#: chunks, so more read-ahead only holds more of the object in memory.
REMOTE_BLOCK = 8 << 20


def parquet_inputs(spec: InputSpec) -> list[Part]:
    """The parquet files a user names: a folder or prefix (its parts, see :func:`is_part_name`), a file, a glob,
    or a list of these; local paths or fsspec URLs (``s3://``, ``https://``, ...). In order, no duplicates."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    found: dict[str, Part] = {}
    for item in items:
        text = str(item)
        for part in (_remote_parts(text) if is_url(text) else _local_parts(text)):
            found.setdefault(part.url if isinstance(part, RemotePart) else str(part.resolve()), part)
    return list(found.values())


def _local_parts(text: str) -> list[Path]:
    if glob.has_magic(text):
        return sorted(Path(p) for p in glob.glob(text) if is_part_name(Path(p).name) and Path(p).is_file())
    if Path(text).is_dir():
        return parquet_files(text)
    if Path(text).is_file():
        return [Path(text)]
    raise WitError(f"{text}: not found ({_HINT})")


def _remote_parts(url: str) -> list[RemotePart]:
    """The parts an fsspec URL names (listed afresh: the filesystem's listing cache is dropped first)."""
    fs, path, paths = remote_files(url, f"not found ({_HINT})")
    if paths is None:
        return [RemotePart(url, path, fs)]
    names = [p for p in paths if is_part_name(p.rsplit("/", 1)[-1])]
    return [RemotePart(fs.unstrip_protocol(name), name, fs) for name in names]


def remote_files(url: str, missing: str = "not found") -> tuple[Any, str, list[str] | None]:
    """``(filesystem, path, files)`` of an fsspec URL, listed afresh (the listing cache dropped first): the
    sorted paths of a folder's files or a glob's matches, or None when the URL names one file. One-line
    WitErrors: ``<url>: <missing>``, or why it cannot be listed."""
    fs, path = _filesystem(url)
    listable = not url.lower().startswith(("http://", "https://"))  # HTTP URLs name files only
    try:
        fs.invalidate_cache()
        if listable and glob.has_magic(path):
            entries = list(fs.glob(path, detail=True).values())
        elif listable and fs.isdir(path):
            entries = fs.ls(path, detail=True)
        elif fs.exists(path):
            return fs, path, None
        else:
            raise FileNotFoundError(path)
    except FileNotFoundError:
        raise WitError(f"{url}: {missing}") from None
    except remote_errors() as exc:
        raise WitError(f"{url}: cannot list ({one_line(exc)})") from None
    return fs, path, sorted(e["name"] for e in entries if e.get("type") == "file")


def _filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of a URL, with a one-line error when its protocol is not available."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise WitError(f"{url}: cannot open this URL ({one_line(exc)})") from None


@functools.cache
def remote_errors() -> tuple[type[BaseException], ...]:
    """What reading an fsspec URL can raise for a missing object, bad credentials or an unreachable endpoint:
    OSError, ValueError, and the client libraries' own errors (botocore's, aiohttp's) where installed."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    with contextlib.suppress(ImportError):
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
    with contextlib.suppress(ImportError):
        import aiohttp

        errors.append(aiohttp.ClientError)
    return tuple(errors)


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message, with its type."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def part_name(part: Part) -> str:
    """The file name of an input part (its object's base name for a URL): the name of its outputs."""
    return part.name if isinstance(part, Path) else part.url.rstrip("/").rsplit("/", 1)[-1]


def part_folder(part: Part) -> str:
    """The folder (or prefix URL) an input part is in, for messages."""
    return str(part.parent) if isinstance(part, Path) else part.url.rstrip("/").rsplit("/", 1)[0]


@contextlib.contextmanager
def open_parquet(part: Part) -> Iterator[pq.ParquetFile]:
    """A parquet file reader of a local or remote part (a remote one is read by ranges as batches are asked
    for, never fetched whole); closed on exit. A missing or unreadable part is a one-line WitError."""
    with contextlib.ExitStack() as stack:
        yield _parquet_file(part, stack)


def _parquet_file(part: Part, stack: contextlib.ExitStack) -> pq.ParquetFile:
    try:
        source = stack.enter_context(part.fs.open(part.path, "rb", block_size=REMOTE_BLOCK)) \
            if isinstance(part, RemotePart) else part
    except FileNotFoundError:
        raise WitError(f"{part}: not found ({_HINT})") from None
    except remote_errors() as exc:  # credentials, endpoint, permissions
        raise WitError(f"{part}: cannot read ({one_line(exc)})") from None
    try:
        reader = pq.ParquetFile(source)
    except FileNotFoundError:
        raise WitError(f"{part}: not found ({_HINT})") from None
    except (pa.ArrowException,) + remote_errors() as exc:
        raise WitError(f"{part}: not a readable parquet file ({one_line(exc)})") from None
    stack.callback(reader.close)
    return reader


def read_schema(part: Part) -> pa.Schema:
    """The arrow schema of a parquet part, with a one-line error when it cannot be read."""
    with open_parquet(part) as reader:
        return reader.schema_arrow


def check_unique_names(parts: Sequence[Part]) -> None:
    """Refuse two parts with one name (from different folders or places): a stage that writes one output per
    input part, named after it, would overwrite the first's output with the second's."""
    seen: dict[str, Part] = {}
    for part in parts:
        first = seen.setdefault(part_name(part), part)
        if first is not part:
            raise WitError(f"{first} and {part}: two input parts named {part_name(part)} (their outputs would "
                           "overwrite each other; rename one)")


def checked_parts(inputs: InputSpec, required: tuple[str, ...], hint: str) -> list[Part]:
    """The parquet parts of ``inputs`` (see :func:`parquet_inputs`), named uniquely, each checked for the
    ``required`` columns.

    ``hint`` completes "no parquet parts to ..." when there are none.
    """
    parts = parquet_inputs(inputs)
    if not parts:
        raise WitError(f"{inputs}: no parquet parts to {hint}")
    check_unique_names(parts)
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

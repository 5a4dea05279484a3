"""Where images come from: ImageFolders, WebDataset shards (tar) and parquet files with image bytes.

Every reader streams :class:`Item` records (an id, a label or None, and the encoded image or None when the
record has none), so an eval set or a shard folder is never held in memory.

WebDataset conventions (as ``webdataset`` reads them): a sample is the run of consecutive tar members that
share a key, the member name up to the first dot of its base name (``dir/000123.jpg`` -> ``dir/000123``);
its image is the first of ``image_keys`` present; its label the ``.cls`` (integer text), ``.txt`` or ``.json``
(``"label"``) member.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import WitError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "tif", "tiff", "gif")
LABEL_KEYS = ("cls", "txt", "json")
KINDS = ("auto", "imagefolder", "webdataset", "parquet")
_KEY_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
#: What pyarrow raises on a file that is not (or no longer) parquet: truncated, garbage, empty, damaged pages,
#: a folder (ArrowInvalid is an ArrowException; a damaged page is an OSError).
PARQUET_ERRORS = (pa.ArrowException, OSError)


@dataclasses.dataclass
class Item:
    """One record: ``data`` is the encoded image (None when the record has none)."""

    id: str
    label: str | None
    data: bytes | None


# ---------------------------------------------------------------- kinds and shard lists

def shard_paths(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The ``.tar`` files a shards argument names: a folder (its ``*.tar``), a file, a glob or a brace pattern
    (``{00000..00009}.tar``), or a list of those. Missing files are a ``WitError``."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in shard_paths(s)]
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return sorted(p for p in path.glob("*.tar") if not p.name.startswith("."))
    if path.is_file():
        return [path]
    from braceexpand import braceexpand

    names = [n for pattern in braceexpand(text) for n in (sorted(glob.glob(pattern)) or [pattern])]
    missing = [n for n in names if not Path(n).is_file()]
    if missing:
        raise WitError(f"{missing[0]}: shard not found")
    return [Path(n) for n in names]


def detect_kind(path: Path) -> str:
    """``imagefolder``, ``webdataset`` or ``parquet`` from what ``path`` holds."""
    if path.is_file():
        if path.suffix == ".parquet":
            return "parquet"
        if path.suffix == ".tar":
            return "webdataset"
        raise WitError(f"{path}: not an eval set (a folder, .tar shards or .parquet files)")
    if path.is_dir():
        if any(path.glob("*.tar")):
            return "webdataset"
        if any(path.glob("*.parquet")):
            return "parquet"
        return "imagefolder"
    if any(c in str(path) for c in "{*?["):
        return "webdataset"
    raise WitError(f"{path}: eval set not found")


# ---------------------------------------------------------------- ImageFolder

def list_images(root: Path) -> list[Path]:
    """Image files inside class folders of ``root`` (as torchvision's ImageFolder sees them), sorted."""
    return sorted(p for p in root.glob("*/**/*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def imagefolder_items(root: Path) -> Iterator[Item]:
    """ImageFolder records: id = path relative to ``root`` (posix), label = class folder name."""
    for path in list_images(root):
        rel = path.relative_to(root)
        yield Item(rel.as_posix(), rel.parts[0], path.read_bytes())


# ---------------------------------------------------------------- WebDataset

def split_member(name: str) -> tuple[str, str] | None:
    """``(key, extension)`` of a tar member name (webdataset's rule), or None for names without one."""
    m = _KEY_RE.match(name)
    return (m.group(1), m.group(2).lower()) if m else None


def tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of a tar, in order. A corrupt tar is a ``WitError``."""
    key, files = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                parts = split_member(member.name) if member.isfile() else None
                if parts is None:
                    continue
                if parts[0] != key:
                    if key is not None:
                        yield key, files
                    key, files = parts[0], {}
                fh = tar.extractfile(member)
                files[parts[1]] = fh.read() if fh is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise WitError(f"{path}: unreadable tar ({exc})") from None
    if key is not None:
        yield key, files


def sample_image(files: dict[str, bytes], image_keys: Sequence[str] = IMAGE_KEYS) -> bytes | None:
    return next((files[k] for k in image_keys if k in files), None)


def sample_label(files: dict[str, bytes], label_key: str = "auto") -> str | None:
    """The label of a sample from ``.cls``, ``.txt`` or ``.json`` (``label``); None when it has none."""
    for k in LABEL_KEYS if label_key == "auto" else (label_key,):
        if k not in files:
            continue
        text = files[k].decode("utf-8", errors="replace").strip()
        if k != "json":
            return text
        try:
            value = json.loads(text).get("label") if text.startswith("{") else None
        except json.JSONDecodeError:
            value = None
        if value is not None:
            return str(value)
    return None


def webdataset_items(paths: list[Path], label_key: str = "auto") -> Iterator[Item]:
    """WebDataset records: id = the sample key (``__key__``), label from ``.cls``/``.txt``/``.json``."""
    for path in paths:
        for key, files in tar_samples(path):
            yield Item(key, sample_label(files, label_key), sample_image(files))


# ---------------------------------------------------------------- parquet

def unreadable(file: str | os.PathLike, exc: BaseException, what: str = "parquet file") -> WitError:
    """The one-line error for a ``file`` pyarrow could not read (the first line of its reason)."""
    reason = next(iter(str(exc).strip().splitlines()), "") or type(exc).__name__
    return WitError(f"{file}: unreadable {what} ({reason})")


def parquet_paths(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise WitError(f"{path}: no parquet files")
    return files


def _image_bytes(column: pa.Array, file: Path, name: str) -> list[bytes | None]:
    """Bytes from a binary column, or from the ``bytes`` field of a struct column (Hugging Face images)."""
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise WitError(f"{file}: column '{name}' is a struct without a 'bytes' field")
        column = column.field("bytes")
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        raise WitError(f"{file}: column '{name}' holds {column.type}, not image bytes")
    return column.to_pylist()


def parquet_items(path: Path, image_column: str = "image", id_column: str = "", label_column: str = "label",
                  batch_rows: int = 1024) -> Iterator[Item]:
    """Parquet records: id = ``id_column`` (default ``<file stem>/<row>``), label = ``label_column`` if present.
    An unreadable file is a ``WitError`` naming it."""
    for file in parquet_paths(path):
        try:
            yield from _parquet_file_items(file, image_column, id_column, label_column, batch_rows)
        except PARQUET_ERRORS as exc:
            raise unreadable(file, exc) from None


def _parquet_file_items(file: Path, image_column: str, id_column: str, label_column: str, batch_rows: int
                        ) -> Iterator[Item]:
    """The records of one parquet file (see :func:`parquet_items`)."""
    names = pq.read_schema(file).names
    for wanted in (image_column, id_column):
        if wanted and wanted not in names:
            raise WitError(f"{file}: no column '{wanted}' (columns: {', '.join(names)})")
    columns = [c for c in dict.fromkeys((image_column, id_column, label_column)) if c and c in names]
    row = 0
    for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns):
        images = _image_bytes(batch.column(image_column), file, image_column)
        ids = (batch.column(id_column).to_pylist() if id_column
               else [f"{file.stem}/{row + i}" for i in range(len(images))])
        labels = batch.column(label_column).to_pylist() if label_column in columns else [None] * len(images)
        for i, data in enumerate(images):
            yield Item(str(ids[i]), None if labels[i] is None else str(labels[i]), data)
        row += len(images)

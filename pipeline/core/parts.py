"""The per-part stage skeleton: run keys, stats sidecars, totals and the progress bar, shared by every stage.

A part is finished when its outputs exist and its sidecar (``_parts/<name>.stats.json``) records the
same **run key**: a hash of the options that change the output and of the input's identity (path, size,
modification time, or ETag). A part whose key changed is recomputed (never passed off as new); the
decision is made part by part, so a killed run resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TypeVar

from tqdm import tqdm

from pipeline.core.config import output_options
from pipeline.core.io import RemotePart
from pipeline.core.stats import StageStats
from pipeline.core.storage import Folder

PARTS_DIR = "_parts"
T = TypeVar("T")


def file_identity(path: str | os.PathLike | RemotePart) -> dict[str, Any]:
    """What identifies an input file's content cheaply: its absolute path or URL, size and mtime (or ETag)."""
    if isinstance(path, RemotePart):
        return _remote_identity(path.url, path.fs, path.path)
    text = str(path)
    if "://" in text:
        import fsspec

        return _remote_identity(text, *fsspec.core.url_to_fs(text))
    p = Path(text).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remote_identity(url: str, fs: Any, path: str) -> dict[str, Any]:
    try:
        info = fs.info(path)
    except (OSError, ValueError):
        return {"path": url}
    keep = ("size", "ETag", "etag", "LastModified", "mtime", "last_modified")
    return {"path": url, **{k: str(info[k]) for k in keep if k in info}}


def run_key(stage: str, cfg: Any, inputs: Iterable[Mapping[str, Any]], extra: Mapping[str, Any] | None = None) -> str:
    """The run key of one part: ``stage``, the output options of ``cfg``, the identity of its ``inputs``."""
    payload = {"stage": stage, "options": output_options(cfg) if dataclasses.is_dataclass(cfg) else cfg,
               "inputs": list(inputs), "extra": dict(extra or {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class PartStore:
    """The finished parts of one stage output folder (local or on a store, see :class:`Folder`):
    ``out/_parts/<name>.stats.json`` per part, the part's commit marker (published after its outputs)."""

    out: Folder
    stage: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Folder(self.out))

    @staticmethod
    def sidecar_name(name: str) -> str:
        return f"{PARTS_DIR}/{Path(name).stem}.stats.json"

    def sidecar(self, name: str) -> Path:
        """The local path of a part's sidecar (local folders only)."""
        return self.out.path / self.sidecar_name(name)

    def key_of(self, name: str) -> str | None:
        """The run key a finished part was made with (None: not finished, or made before run keys)."""
        try:
            return self.out.read_json(self.sidecar_name(name)).get("run_key")
        except FileNotFoundError:
            return None

    def finished(self, name: str, key: str, outputs: Iterable[str] = ()) -> bool:
        """Finished with ``key``, and every output file (names inside ``out``) still there."""
        return self.key_of(name) == key and all(self.out.exists(o) for o in outputs)

    def record(self, name: str, key: str, stats: StageStats) -> None:
        """Mark a part finished (call after its outputs are in place, or in the same staging folder)."""
        self.out.write_json(self.sidecar_name(name), {**stats.to_dict(), "run_key": key})

    def stats(self, name: str) -> StageStats:
        return StageStats.from_dict(self.out.read_json(self.sidecar_name(name)))

    def total(self, names: Iterable[str]) -> StageStats:
        """The sum of the sidecars of ``names`` (this run's and earlier runs')."""
        stats = StageStats(self.stage, extra={"parts": 0})
        for name in names:
            stats.merge(self.stats(name))
        return stats


def progress(items: Iterable[T], desc: str, unit: str = "part", total: int | None = None,
             enabled: bool = True) -> Iterator[T]:
    """``items`` with a progress bar on stderr when it is a terminal (stdout stays for results)."""
    yield from tqdm(items, desc=desc, unit=unit, total=total, file=sys.stderr, dynamic_ncols=True,
                    disable=not (enabled and sys.stderr.isatty()))

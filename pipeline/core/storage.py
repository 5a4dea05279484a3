"""A build folder on a local disk or on any fsspec store (``s3://bucket/prefix``, ``gs://``, ``memory://``).

:class:`Folder` is the one way stages read and write their outputs, so the same code runs with the build
directory on this machine's disk or on object storage, the only storage a cluster's nodes may share.

Commit semantics that hold on object stores (no rename, no directory, a PUT is atomic per object):
a task writes its files into a node-local **staging** folder (:meth:`Folder.staging`) and **publishes** them
when it has finished: data files first, **commit markers last** (files under ``_parts/`` and names ending in
``_stats.json``). Readers trust only what a marker vouches for (the stage skeleton's sidecars, the download's
``<shard>_stats.json``), so a task killed between two uploads leaves files no reader takes for finished, and
a re-run overwrites them. On a local disk the staging folder is inside the target folder and publishing is
``os.replace`` (atomic), as before.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.errors import StoreError, WitError
from pipeline.core.io import TMP_PREFIX, RemotePart, atomic_path, is_url, one_line, remote_errors, write_json

#: Where staging folders of a remote build go on a node (its own disk; default: the system temp folder).
SCRATCH_ENV = "WIT_SCRATCH"


def local_copy(url: str, kind: str) -> Path:
    """This machine's working copy of a folder on a store (for tools that need a local folder: open_clip's
    checkpoints, the overlap analysis): ``$WIT_SCRATCH`` (else the temp folder) / ``wit-<kind>-<hash of url>``."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    return Path(os.environ.get(SCRATCH_ENV) or tempfile.gettempdir()) / f"wit-{kind}-{digest}"


def scratch_dir(prefix: str) -> Path:
    """A new private folder on this node's own disk: in ``$WIT_SCRATCH`` (made when missing), else the temp
    folder. The caller removes it."""
    scratch = os.environ.get(SCRATCH_ENV) or None
    if scratch:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=scratch))


def commit_order(root: Path) -> list[str]:
    """The files under ``root`` (relative, ``/``-separated) in the order they are published: data first, commit
    markers (:func:`is_marker`) last."""
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [f for f in files if not is_marker(f)] + [f for f in files if is_marker(f)]


def is_marker(relpath: str) -> bool:
    """A commit marker: published after every other file of its task (a part's sidecar, a shard's stats)."""
    return relpath.startswith("_parts/") or "/_parts/" in relpath or relpath.endswith("_stats.json")


class Folder:
    """A folder of a build: a local path or an fsspec URL. Names are ``/``-separated paths inside it."""

    def __init__(self, location: str | os.PathLike | "Folder") -> None:
        if isinstance(location, Folder):
            location = location.location
        text = str(location)
        self.remote = is_url(text)
        if self.remote:
            import fsspec

            try:
                self.fs, self.root = fsspec.core.url_to_fs(text)
            except (ImportError, ValueError) as exc:
                raise WitError(f"{text}: cannot open this URL ({one_line(exc)})") from None
            self.location = text.rstrip("/")
            self.root = self.root.rstrip("/")
        else:
            self.fs, self.root, self.location = None, text, text

    # ------------------------------------------------------------------ naming

    def __str__(self) -> str:
        return self.location

    def __repr__(self) -> str:
        return f"Folder({self.location!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folder) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    def __truediv__(self, name: str) -> "Folder":
        return Folder(self.loc(name))

    @property
    def path(self) -> Path:
        """The local path (local folders only)."""
        if self.remote:
            raise WitError(f"{self}: a local folder is needed here")
        return Path(self.location)

    def loc(self, name: str) -> str:
        """The path or URL of ``name`` inside the folder."""
        return f"{self.location}/{name}" if self.remote else str(Path(self.location) / name)

    def _key(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def part(self, name: str) -> Path | RemotePart:
        """An input part (see :mod:`pipeline.core.io`) for the parquet file ``name``."""
        return RemotePart(self.loc(name), self._key(name), self.fs) if self.remote else Path(self.loc(name))

    # ------------------------------------------------------------------ reading

    def exists(self, name: str) -> bool:
        if not self.remote:
            return Path(self.loc(name)).exists()
        return self._call(name, self.fs.exists, self._key(name))

    def read_bytes(self, name: str) -> bytes:
        if not self.remote:
            return Path(self.loc(name)).read_bytes()
        return self._call(name, self.fs.cat_file, self._key(name))

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_bytes(name))

    def names(self, sub: str = "", pattern: str = "*") -> list[str]:
        """Base names of the files directly in ``sub`` matching ``pattern``, sorted (none when it is missing)."""
        if not self.remote:
            folder = Path(self.loc(sub)) if sub else Path(self.location)
            return sorted(p.name for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self._key(sub), detail=True)
        except FileNotFoundError:
            return []
        except remote_errors() as exc:
            raise StoreError(f"{self.loc(sub)}: cannot list ({one_line(exc)})") from None
        names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")
        return sorted(n for n in names if fnmatch.fnmatch(n, pattern))

    def open(self, name: str, mode: str = "rb") -> Any:
        if not self.remote:
            return open(self.loc(name), mode)
        return self._call(name, self.fs.open, self._key(name), mode)

    def get(self, name: str, local: str | os.PathLike) -> Path:
        """Copy file ``name`` to the local path ``local``; return it."""
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        if self.remote:
            self._call(name, self.fs.get_file, self._key(name), str(local))
        else:
            shutil.copyfile(self.loc(name), local)
        return local

    def pull(self, sub: str, local: str | os.PathLike, skip: tuple[str, ...] = ()) -> Path:
        """Copy the tree ``sub`` to the local folder ``local`` (files matching a ``skip`` pattern left out)."""
        local = Path(local)
        for rel in self.tree(sub):
            if not any(fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pat) for pat in skip):
                self.get(f"{sub}/{rel}" if sub else rel, local / rel)
        return local

    def tree(self, sub: str = "") -> list[str]:
        """Paths (relative to ``sub``) of every file under ``sub``, sorted."""
        if not self.remote:
            base = Path(self.loc(sub)) if sub else Path(self.location)
            return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        self.fs.invalidate_cache()
        base = self._key(sub)
        try:
            found = self._call(sub, self.fs.find, base)
        except FileNotFoundError:
            return []
        return sorted(p[len(base) + 1:] for p in found if p.startswith(base + "/"))

    # ------------------------------------------------------------------ writing

    def ensure(self, sub: str = "") -> "Folder":
        """Create the folder (local; object stores have no folders); return the sub-folder."""
        target = self / sub if sub else self
        if not self.remote:
            Path(target.location).mkdir(parents=True, exist_ok=True)
        return target

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` to ``name`` atomically (local: temporary file and rename; remote: one PUT)."""
        if not self.remote:
            with atomic_path(self.loc(name)) as tmp:
                tmp.write_bytes(data)
            return
        self._call(name, self.fs.pipe_file, self._key(name), data)

    def write_json(self, name: str, obj: Any) -> None:
        if not self.remote:
            write_json(self.loc(name), obj)
            return
        self.write_bytes(name, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def put(self, local: str | os.PathLike, name: str, keep: bool = False) -> None:
        """Move the local file ``local`` to ``name`` (a rename on a local disk, an upload to a store), or with
        ``keep`` copy it."""
        if not self.remote:
            target = Path(self.loc(name))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target) if keep else os.replace(local, target)
            return
        self._call(name, self.fs.put_file, str(local), self._key(name))

    def remove(self, name: str, recursive: bool = False) -> None:
        """Delete ``name`` (a file, or with ``recursive`` a whole sub-tree); missing is fine."""
        if not self.remote:
            target = Path(self.loc(name))
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True) if recursive else target.rmdir()
            else:
                target.unlink(missing_ok=True)
            return
        with contextlib.suppress(FileNotFoundError):
            self._call(name, self.fs.rm, self._key(name), recursive)

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A local folder to write a task's outputs into, laid out as in this folder; published on success
        (:meth:`publish`, commit markers last), removed either way."""
        if self.remote:
            tmp = scratch_dir("wit-stage-")
        else:
            self.ensure()
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}stage.", dir=self.location))
        try:
            yield tmp
            self.publish(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, staged: Path) -> list[str]:
        """Move every file of the local folder ``staged`` to the same place here (:func:`commit_order`: commit
        markers last). Returns the published names."""
        ordered = commit_order(staged)
        for rel in ordered:
            self.put(staged / rel, rel)
        return ordered

    def push(self, local: str | os.PathLike, sub: str = "") -> None:
        """Copy the local tree ``local`` into ``sub`` (markers last); the local files stay."""
        local, target = Path(local), self / sub if sub else self
        for rel in commit_order(local):
            target.put(local / rel, rel, keep=True)

    # ------------------------------------------------------------------ errors

    def _call(self, name: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise FileNotFoundError(self.loc(name)) from None
        except remote_errors() as exc:
            raise StoreError(f"{self.loc(name)}: {one_line(exc)}") from None

"""One writer per output folder: an advisory lock (``fcntl.flock``) on ``<folder>/.wit.lock``, released by the
kernel when the holder exits or is killed. A second writer gets one line naming the holder. Object stores have
no locks: a folder there is locked on the driver's machine only (see :func:`lock_path`)."""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pipeline.core.errors import WitError
from pipeline.core.io import is_url

LOCK_FILE = ".wit.lock"
F = TypeVar("F", bound=Callable[..., Any])


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')} ({info.get('command', '')})"


def lock_path(folder: str | os.PathLike) -> Path:
    """``<folder>/.wit.lock``; for a folder on an object store (which has no locks) a file in this machine's
    temp folder named after its URL, so two writers on one machine still exclude each other."""
    text = str(folder)
    if is_url(text):
        digest = hashlib.sha256(text.rstrip("/").encode()).hexdigest()[:24]
        return Path(tempfile.gettempdir()) / "wit-locks" / f"{digest}.lock"
    return Path(folder) / LOCK_FILE


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, stage: str) -> Iterator[None]:
    """Hold the lock of ``folder`` for the block; :class:`WitError` when another process holds it."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WitError(f"{folder}: {stage} output folder in use by {_holder(path)}") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "command": " ".join(sys.argv[:3])[:120]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def locked(stage: str, folder_param: str) -> Callable[[F], F]:
    """Decorate a stage's entry point so that it holds the lock of its output folder (``folder_param``)."""
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = signature.bind(*args, **kwargs).arguments[folder_param]
            with output_lock(folder, stage):
                return fn(*args, **kwargs)
        return wrapper  # type: ignore[return-value]
    return decorate

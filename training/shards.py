"""Where the training samples come from: a shards folder with img2dataset's ``sizes.json`` (local or an fsspec
URL) or a list of shard URLs/patterns, turned into open_clip's ``--train-data`` value.

webdataset opens local paths, ``pipe:`` commands and http(s) itself; any other fsspec URL (s3://, gs://,
hf://, ...) is read through ``pipe:python -m training.fscat URL``.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from pipeline.core.errors import WitError
from pipeline.core.storage import Folder
from training.config import TrainConfig

SIZES_FILE = "sizes.json"
_WDS_SCHEMES = ("pipe:", "http://", "https://")


@dataclasses.dataclass
class ShardSet:
    """What ``--train-data`` gets: a pattern or ``::``-joined list, the samples per epoch and the shard count."""

    train_data: str
    n_samples: int
    n_shards: int


def read_shards(shards_dir: str | Path) -> tuple[list[str], int]:
    """The shard file names listed in a shards folder's ``sizes.json`` (local or on a store) and their total
    sample count."""
    folder = Folder(shards_dir)
    sizes_path = folder.loc(SIZES_FILE)
    try:
        text = folder.read_bytes(SIZES_FILE).decode()
    except FileNotFoundError:
        raise WitError(f"{sizes_path}: not found (run the download stage first; the shards folder needs "
                       "img2dataset's sizes.json)") from None
    names, total = parse_sizes(text, sizes_path)
    present = set(folder.names("", "*.tar"))
    missing = [n for n in names if n not in present]
    if missing:
        raise WitError(f"{folder.loc(missing[0])}: listed in sizes.json but missing ({len(missing)} missing)")
    return names, total


def parse_sizes(text: str, where: str) -> tuple[list[str], int]:
    """(sorted shard names, total samples) of a ``sizes.json`` text."""
    try:
        sizes = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WitError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        raise WitError(f"{where}: expected {{\"00000.tar\": n_samples, ...}}")
    names = sorted(Path(k).name for k in sizes)
    total = sum(sizes.values())
    if not names or total <= 0:
        raise WitError(f"{where}: no samples to train on")
    return names, total


def shard_pattern(shards_dir: str | Path, names: list[str]) -> str:
    """A brace pattern for ``--train-data``: ``dir/{00000..00007}.tar`` when contiguous, else ``dir/{a,b}.tar``.
    Local folders become absolute paths; URLs are kept."""
    stems = [Path(n).stem for n in names]
    base = str(shards_dir).rstrip("/") if is_url(str(shards_dir)) else str(Path(shards_dir).resolve())
    if len(stems) == 1:
        return f"{base}/{names[0]}"
    width = len(stems[0])
    contiguous = all(s.isdigit() and len(s) == width for s in stems) and \
        [int(s) for s in stems] == list(range(int(stems[0]), int(stems[0]) + len(stems)))
    if contiguous:
        return f"{base}/{{{stems[0]}..{stems[-1]}}}.tar"
    return f"{base}/{{{','.join(stems)}}}.tar"


def is_url(path: str) -> bool:
    return "://" in path or path.startswith("pipe:")


def webdataset_url(url: str, python: str = sys.executable) -> str:
    """A shard URL or pattern as webdataset opens it: ``pipe:``, http(s) and local paths as they are
    (``file://`` stripped), any other fsspec URL through ``pipe:python -m training.fscat URL``."""
    if url.startswith("file://"):
        return url[len("file://"):]
    if not is_url(url) or url.startswith(_WDS_SCHEMES):
        return url
    return f"pipe:{python} -m training.fscat {url}"


def count_shards(train_data: str) -> int:
    """Shard URLs in a ``::``-joined list of brace patterns."""
    from braceexpand import braceexpand

    return sum(len(list(braceexpand(part))) for part in train_data.split("::") if part)


def _read_url_sizes(url: str) -> tuple[list[str], int]:
    import fsspec

    path = f"{url.rstrip('/')}/{SIZES_FILE}"
    try:
        with fsspec.open(path, "rt") as f:
            text = f.read()
    except FileNotFoundError:
        raise WitError(f"{path}: not found; the shards folder needs img2dataset's sizes.json") from None
    return parse_sizes(text, path)


def resolve_shards(shards_dir: str | Path | None, cfg: TrainConfig, python: str = sys.executable) -> ShardSet:
    """The shards to train on: ``cfg.shard_urls`` when given, else every shard of ``shards_dir``'s sizes.json
    (a local folder or an fsspec URL); ``cfg.train_num_samples`` overrides the sample count."""
    shards_dir = None if str(shards_dir or "") in ("", "-") else shards_dir
    urls = [cfg.shard_urls] if isinstance(cfg.shard_urls, str) else list(cfg.shard_urls)
    if urls:
        train_data = "::".join(webdataset_url(str(s), python) for s in urls)
        n_samples = cfg.train_num_samples
        if not n_samples and shards_dir:
            n_samples = _folder_sizes(shards_dir)[1]
        if not n_samples:
            raise WitError("train: shards given as a list: set train_num_samples (no sizes.json to count them)")
        return ShardSet(train_data, n_samples, count_shards(train_data))
    if not shards_dir:
        raise WitError("train: no shards: give the shards folder or the shard_urls option")
    names, total = _folder_sizes(shards_dir)
    train_data = webdataset_url(shard_pattern(shards_dir, names), python)
    return ShardSet(train_data, cfg.train_num_samples or total, len(names))


def _folder_sizes(shards_dir: str | Path) -> tuple[list[str], int]:
    text = str(shards_dir)
    if text.startswith("file://"):
        return read_shards(text[len("file://"):])
    return _read_url_sizes(text) if is_url(text) else read_shards(shards_dir)

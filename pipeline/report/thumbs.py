"""Small JPEG thumbnails as ``data:`` URIs: samples read from the shards' tars, eval images from their set.

Only the few samples a gallery shows are decoded; a shard's tar is opened once for all of its keys.
"""
from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from pipeline.core.io import read_json
from pipeline.core.stats import STATS_FILE
from pipeline.report.aggregate import IMAGE_EXTS

THUMB_PX = 96
SHARD_DIGITS = 5  # img2dataset's key = shard number (5 digits) + index in the shard


def thumbnail_uri(data: bytes, px: int = THUMB_PX) -> str | None:
    """A JPEG thumbnail (longer side ``px``) as a data URI, or None when the bytes are no image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            im.thumbnail((px, px))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=80)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _samples(tar: Path, keys: set[str] | None, limit: int) -> dict[str, dict[str, Any]]:
    """``{key: {"image": bytes, "caption": str}}`` of the wanted ``keys`` (or the first ``limit``) of a tar."""
    found: dict[str, dict[str, Any]] = {}
    with tarfile.open(tar) as tf:
        for member in tf:
            key, _, ext = member.name.rpartition(".")
            if not member.isfile() or (keys is not None and key not in keys):
                continue
            if keys is None and key not in found and len(found) >= limit:
                break
            if ext.lower() in IMAGE_EXTS or ext == "txt":
                data = tf.extractfile(member).read()  # type: ignore[union-attr]
                field = "caption" if ext == "txt" else "image"
                found.setdefault(key, {})[field] = data.decode("utf-8", "replace") if ext == "txt" else data
    return found


def shard_thumbnails(shards: Path, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Thumbnail and caption of each of ``keys`` (img2dataset keys), from the tar its number names."""
    by_tar: dict[str, set[str]] = {}
    for key in keys:
        by_tar.setdefault(key[:SHARD_DIGITS], set()).add(key)
    out = {}
    for shard, wanted in sorted(by_tar.items()):
        tar = shards / f"{shard}.tar"
        if tar.is_file():
            for key, s in _samples(tar, wanted, len(wanted)).items():
                out[key] = {"uri": thumbnail_uri(s.get("image", b"")), "caption": s.get("caption", "")}
    return out


def gallery(shards: Path, n: int = 24, per_shard: int = 6) -> list[dict[str, Any]]:
    """Up to ``n`` samples (key, thumbnail, caption): the first few of each shard (more when there are
    fewer than ``n / per_shard`` shards)."""
    out: list[dict[str, Any]] = []
    tars = sorted(shards.glob("[0-9]*.tar"))
    quota = max(per_shard, -(-n // max(1, len(tars))))
    for tar in tars:
        if len(out) >= n:
            break
        for key, s in sorted(_samples(tar, None, min(quota, n - len(out))).items()):
            uri = thumbnail_uri(s.get("image", b""))
            if uri:
                out.append({"key": key, "uri": uri, "caption": s.get("caption", "")})
    return out[:n]


def eval_thumbnail(build: Path, eval_set: str, eval_id: str) -> str | None:
    """The eval image ``eval_id`` of an ImageFolder eval set (its root is recorded by the eval index)."""
    stats = build / "eval" / eval_set / STATS_FILE
    extra = read_json(stats).get("extra", {}) if stats.is_file() else {}
    if extra.get("kind") != "imagefolder" or not extra.get("source"):
        return None
    path = Path(extra["source"]) / eval_id
    return thumbnail_uri(path.read_bytes()) if path.is_file() else None

"""Small JPEG thumbnails as ``data:`` URIs: samples read from the shards' tars, eval images from their set.

Only the few samples a gallery shows are decoded; a shard's tar is opened once for all of its keys and read
only as far as they are (a tar on a store is streamed from its start, never copied to the local disk).
"""
from __future__ import annotations

import base64
import io
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from pipeline.core.stats import STATS_FILE
from pipeline.core.storage import Folder
from pipeline.report.aggregate import IMAGE_EXTS
from pipeline.report.stream import open_tar

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


def _samples(shards: Folder, tar: str, keys: set[str] | None, limit: int) -> dict[str, dict[str, Any]]:
    """``{key: {"image": bytes, "caption": str}}`` of the wanted ``keys`` (or the first ``limit``) of a tar;
    the read stops once each wanted key has its image and caption."""
    found: dict[str, dict[str, Any]] = {}
    with open_tar(shards, tar) as tf:
        for member in tf:
            if keys is not None and _complete(found, keys):
                break
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


def _complete(found: dict[str, dict[str, Any]], keys: set[str]) -> bool:
    return len(found) == len(keys) and all(len(s) == 2 for s in found.values())


def shard_thumbnails(shards: Folder, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Thumbnail and caption of each of ``keys`` (img2dataset keys), from the tar its number names."""
    by_tar: dict[str, set[str]] = {}
    for key in keys:
        by_tar.setdefault(key[:SHARD_DIGITS], set()).add(key)
    out = {}
    for shard, wanted in sorted(by_tar.items()):
        tar = f"{shard}.tar"
        if shards.exists(tar):
            for key, s in _samples(shards, tar, wanted, len(wanted)).items():
                out[key] = {"uri": thumbnail_uri(s.get("image", b"")), "caption": s.get("caption", "")}
    return out


def gallery(shards: Folder, n: int = 24, per_shard: int = 6) -> list[dict[str, Any]]:
    """Up to ``n`` samples (key, thumbnail, caption): the first few of each shard (more when there are
    fewer than ``n / per_shard`` shards)."""
    out: list[dict[str, Any]] = []
    tars = shards.names("", "[0-9]*.tar")
    quota = max(per_shard, -(-n // max(1, len(tars))))
    for tar in tars:
        if len(out) >= n:
            break
        for key, s in sorted(_samples(shards, tar, None, min(quota, n - len(out))).items()):
            uri = thumbnail_uri(s.get("image", b""))
            if uri:
                out.append({"key": key, "uri": uri, "caption": s.get("caption", "")})
    return out[:n]


def eval_thumbnail(build: Folder, eval_set: str, eval_id: str) -> str | None:
    """The eval image ``eval_id`` of an ImageFolder eval set (its root, a local folder or a URL, is recorded
    by the eval index)."""
    stats = f"eval/{eval_set}/{STATS_FILE}"
    extra = build.read_json(stats).get("extra", {}) if build.exists(stats) else {}
    if extra.get("kind") != "imagefolder" or not extra.get("source"):
        return None
    source = Folder(extra["source"])
    return thumbnail_uri(source.read_bytes(eval_id)) if source.exists(eval_id) else None

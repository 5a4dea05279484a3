"""Perceptual hashes (64-bit DCT pHash) of images, stored as signed int64.

A pHash is robust to resizing, re-encoding and mild colour changes, but not to a horizontal flip, so
every image is hashed twice: as it is and mirrored. A query matches an indexed image when either of
its two hashes is close (see :mod:`dedup.search`). Eval images are indexed with the plain hash only.

Hashes are kept as *signed* int64 (the 64 bits reinterpreted), because parquet, Arrow and NumPy all
handle int64 natively; bit 63 of the pHash becomes the sign bit.
"""
from __future__ import annotations

import io

import imagehash
import numpy as np
from PIL import Image, ImageOps

HASH_BITS = 64


def to_int64(h: imagehash.ImageHash) -> int:
    """The 64 bits of an 8x8 ``ImageHash`` (row-major, first bit most significant) as a signed int."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    if bits.size != HASH_BITS:
        raise ValueError(f"expected a {HASH_BITS}-bit hash, got {bits.size} bits")
    value = int(np.packbits(bits).view(">u8")[0])
    return value - (1 << 64) if value >= (1 << 63) else value


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on white, as img2dataset does before re-encoding."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img


def phash(img: Image.Image) -> int:
    """The 64-bit pHash of a PIL image as a signed int64."""
    return to_int64(imagehash.phash(_flatten_alpha(img)))


def image_hashes(img: Image.Image) -> tuple[int, int]:
    """``(phash, phash_flip)``: the pHash of ``img`` and of its horizontal mirror."""
    img = _flatten_alpha(img)
    return to_int64(imagehash.phash(img)), to_int64(imagehash.phash(ImageOps.mirror(img)))


def bytes_hashes(data: bytes) -> tuple[int, int]:
    """``image_hashes`` of encoded image bytes; raises ``PIL.UnidentifiedImageError``/``OSError`` if undecodable."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return image_hashes(img)

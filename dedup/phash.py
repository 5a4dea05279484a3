"""Perceptual hashes of images, stored as signed int64 (and 32-byte DCT sign hashes).

Two families live here:

* the **plain pHash** (:func:`phash`, :func:`image_hashes`, :func:`bytes_hashes`): imagehash's 64-bit DCT
  pHash of the image and of its mirror. Robust to resizing, re-encoding and mild colour changes; what
  :class:`dedup.search.HashIndex` searches.
* the **robust columns** (:func:`hash_columns`, :data:`HASH_SCHEMA`) of the detector in
  :mod:`dedup.match`: the pHash of the image and of its mirror, the same two after trimming uniform
  borders (letterbox/pillarbox bars, see :func:`trim_box`), and a 256-bit *DCT sign hash* of the image
  and of the trimmed image (signs of the 16x16 lowest DCT coefficients of the same 32x32 thumbnail; a
  mirror flips the sign of odd horizontal frequencies, so the mirrored sign hash is the stored one
  XOR :data:`DCT_FLIP_MASK`). Eval images are indexed under :data:`VARIANTS` (crops, small rotations,
  trimmed) by :func:`eval_variants`; queries are hashed once, so the cost stays on the (small) eval side.

All pHashes are computed like ``imagehash.phash`` (greyscale, 32x32 Lanczos thumbnail, DCT, the 8x8
lowest coefficients against their median) with the DCT as two small matrix products, and are kept as
*signed* int64 (the 64 bits reinterpreted; bit 63 becomes the sign bit) because parquet, Arrow and
NumPy handle int64 natively. Cost: ~0.5 ms per 256-pixel image for :func:`hash_columns` after decoding.
"""
from __future__ import annotations

import io

import imagehash
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps
from scipy.fft import dct

HASH_BITS = 64
DCT_BITS = 256
DCT_BYTES = DCT_BITS // 8
THUMB = 32  # pHash thumbnail side
HASH_SIDE = 256  # larger images are box-reduced towards this shorter side before hashing
EVAL_SIDE = 128  # eval images are box-reduced towards this shorter side before hashing their variants
TRIM_SIDE = 128  # border detection works on a copy reduced to about this size
_BASIS = dct(np.eye(THUMB), axis=0)[:16]  # DCT-II rows (unnormalised, as scipy.fftpack.dct)
_ODD_COLUMNS = np.tile(np.arange(16) % 2 == 1, (16, 1))

#: XOR a DCT sign hash with this to get the sign hash of the mirrored image.
DCT_FLIP_MASK: bytes = np.packbits(_ODD_COLUMNS.ravel()).tobytes()

#: Columns of :func:`hash_columns`, with their Arrow types (what a shard parquet stores).
HASH_SCHEMA = pa.schema([
    ("phash", pa.int64()), ("phash_flip", pa.int64()),
    ("phash_trim", pa.int64()), ("phash_trim_flip", pa.int64()),
    ("dct256", pa.binary(DCT_BYTES)), ("dct256_trim", pa.binary(DCT_BYTES)),
])

CROP_OFFSETS = (0.0, 0.025, 0.075, 0.1)  # of the 90% crops (a 10% crop is within 2.5% of one of them)
CROP95_OFFSETS = (0.0, 0.05)  # of the 95% corner crops
ROTATIONS = (-4, 4)
#: Eval-side variants, in storage order: the image, trimmed, a centre 95% crop, rotated by +-4 degrees (black
#: corners, and corners cropped away), 95% crops at the corners, 90% crops on a 4x4 grid of offsets.
VARIANTS: tuple[str, ...] = (
    "full", "trim", "center95", *(f"rot{a:+d}" for a in ROTATIONS), *(f"rot{a:+d}_crop" for a in ROTATIONS),
    *(f"crop95_{x:g}_{y:g}" for y in CROP95_OFFSETS for x in CROP95_OFFSETS),
    *(f"crop90_{x:g}_{y:g}" for y in CROP_OFFSETS for x in CROP_OFFSETS),
)


def to_int64(h: imagehash.ImageHash) -> int:
    """The 64 bits of an 8x8 ``ImageHash`` (row-major, first bit most significant) as a signed int."""
    bits = np.asarray(h.hash, dtype=bool).ravel()
    if bits.size != HASH_BITS:
        raise ValueError(f"expected a {HASH_BITS}-bit hash, got {bits.size} bits")
    return _bits_to_int64(bits)


def _bits_to_int64(bits: np.ndarray) -> int:
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


# ---------------------------------------------------------------- robust hashing

def hash_view(img: Image.Image, side: int = HASH_SIDE) -> Image.Image:
    """The greyscale image the robust hashes are computed on: alpha flattened on white, box-reduced by an
    integer factor while the shorter side stays >= ``side`` (the 32x32 thumbnail barely changes)."""
    grey = _flatten_alpha(img).convert("L")
    factor = min(grey.size) // side
    return grey.reduce(factor) if factor >= 2 else grey


def dct_coefficients(grey: Image.Image) -> np.ndarray:
    """The 16x16 lowest DCT-II coefficients of the 32x32 Lanczos thumbnail of a greyscale image."""
    x = np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.float64)
    return _BASIS @ x @ _BASIS.T


def mirror_coefficients(coeffs: np.ndarray) -> np.ndarray:
    """The DCT coefficients of the horizontally mirrored image (odd horizontal frequencies change sign)."""
    return np.where(_ODD_COLUMNS[: coeffs.shape[0], : coeffs.shape[1]], -coeffs, coeffs)


def phash_of(coeffs: np.ndarray) -> int:
    """The pHash (signed int64) from DCT coefficients: the 8x8 lowest against their median."""
    low = coeffs[:8, :8]
    return _bits_to_int64((low > np.median(low)).ravel())


def dct256_of(coeffs: np.ndarray) -> bytes:
    """The 256-bit DCT sign hash (32 bytes) from the 16x16 lowest DCT coefficients."""
    return np.packbits((coeffs > 0).ravel()).tobytes()


def trim_box(grey: Image.Image, max_trim: float = 0.4) -> tuple[int, int, int, int] | None:
    """The box left after trimming uniform borders (letterbox bars, padding), or None when there are none.

    A border line is one whose pixels are (all but 1%) within a tolerance of the colour of the image edge on
    that side; the tolerance is 4% of the image's 1-99 percentile range (3 to 12 grey levels), so contrast and
    brightness edits trim the same lines. At most ``max_trim`` of each side is trimmed, plus one (reduced) line
    on trimmed sides: losing a line of content moves the pHash far less than keeping a line of a bar.
    """
    factor = max(1, max(grey.size) // TRIM_SIDE)
    a = np.asarray(grey.reduce(factor) if factor > 1 else grey, dtype=np.float32)
    lo, hi = np.percentile(a, (1, 99))
    tol = float(np.clip(0.04 * (hi - lo), 3.0, 12.0))
    h, w = a.shape
    top, bottom = (min(_border_run(x, tol), int(max_trim * h)) for x in (a, a[::-1]))
    left, right = (min(_border_run(x, tol), int(max_trim * w)) for x in (a.T, a.T[::-1]))
    if top == bottom == left == right == 0:
        return None
    width, height = grey.size
    sx, sy = width / w, height / h
    mx = my = factor  # one more (reduced) line: the bars' JPEG-ringing edge
    return (round(left * sx) + (mx if left else 0), round(top * sy) + (my if top else 0),
            width - round(right * sx) - (mx if right else 0), height - round(bottom * sy) - (my if bottom else 0))


def _border_run(lines: np.ndarray, tol: float) -> int:
    """How many leading rows of ``lines`` are (99%) within ``tol`` of the first row's median."""
    off = (np.abs(lines - np.median(lines[0])) > tol).mean(axis=1) > 0.01
    return int(np.argmax(off)) if off.any() else len(off)


def hash_columns(img: Image.Image) -> dict[str, int | bytes]:
    """The robust hash columns of one image (:data:`HASH_SCHEMA`): what a download worker stores per sample.

    ``phash``/``phash_flip`` equal :func:`image_hashes` of the image (up to the box reduction of images with a
    shorter side of 512+); the ``_trim`` columns repeat them when the image has no uniform border.
    """
    grey = hash_view(img)
    coeffs = dct_coefficients(grey)
    box = trim_box(grey)
    trimmed = dct_coefficients(grey.crop(box)) if box else coeffs
    return {
        "phash": phash_of(coeffs), "phash_flip": phash_of(mirror_coefficients(coeffs)),
        "phash_trim": phash_of(trimmed), "phash_trim_flip": phash_of(mirror_coefficients(trimmed)),
        "dct256": dct256_of(coeffs), "dct256_trim": dct256_of(trimmed),
    }


def bytes_hash_columns(data: bytes) -> dict[str, int | bytes]:
    """:func:`hash_columns` of encoded image bytes; raises ``PIL.UnidentifiedImageError``/``OSError`` if undecodable."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return hash_columns(img)


def _crop(grey: Image.Image, x0: float, y0: float, x1: float, y1: float) -> Image.Image:
    w, h = grey.size
    return grey.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))


def _rotated(grey: Image.Image, degrees: int, crop_corners: bool) -> Image.Image:
    """``grey`` rotated by ``degrees``, with black corners or (``crop_corners``) cropped to the largest centred
    box of the same aspect."""
    rotated = grey.rotate(degrees, resample=Image.Resampling.BICUBIC)
    if not crop_corners:
        return rotated
    w, h = grey.size
    rad = np.deg2rad(abs(degrees))
    m = (1.0 - 1.0 / (np.cos(rad) + np.sin(rad) * max(w / h, h / w))) / 2
    return _crop(rotated, m, m, 1 - m, 1 - m)


def _variant_images(grey: Image.Image) -> list[Image.Image]:
    """The images of :data:`VARIANTS`, in that order."""
    box = trim_box(grey)
    views = [grey, grey.crop(box) if box else grey, _crop(grey, 0.025, 0.025, 0.975, 0.975)]
    views += [_rotated(grey, a, crop) for crop in (False, True) for a in ROTATIONS]
    views += [_crop(grey, x, y, x + 0.95, y + 0.95) for y in CROP95_OFFSETS for x in CROP95_OFFSETS]
    views += [_crop(grey, x, y, x + 0.9, y + 0.9) for y in CROP_OFFSETS for x in CROP_OFFSETS]
    return views


def eval_variants(img: Image.Image) -> tuple[list[int], list[bytes]]:
    """The pHash and DCT sign hash of each of :data:`VARIANTS` of an eval image (an index stores all of them)."""
    coeffs = [dct_coefficients(v) for v in _variant_images(hash_view(img, EVAL_SIDE))]
    return [phash_of(c) for c in coeffs], [dct256_of(c) for c in coeffs]

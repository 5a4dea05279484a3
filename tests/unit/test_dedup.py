"""Perceptual hashes, exact Hamming search and eval-set indexes (fast, no network, no Ray)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from dedup.index import build_eval_index, load_eval_index, load_hash_index
from dedup.phash import bytes_hashes, image_hashes, phash, to_int64
from dedup.search import DEFAULT_MAX_DISTANCE, HashIndex, hamming
from pipeline.errors import WitError
from pipeline.stats import StageStats


def smooth_image(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A random low-frequency colour image (distinct pHash per seed, not mirror-symmetric)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    return small.resize(size, Image.BICUBIC)


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def brute_force(queries: list[int], flips: list[int] | None, targets: list[int], radius: int) -> list[tuple]:
    out = []
    for qi, q in enumerate(queries):
        for ti, t in enumerate(targets):
            d = bin((q ^ t) & (2**64 - 1)).count("1")
            if flips is not None:
                d = min(d, bin((flips[qi] ^ t) & (2**64 - 1)).count("1"))
            if d <= radius:
                out.append((qi, ti, d))
    return out


# ---------------------------------------------------------------- phash

def test_phash_is_signed_int64_and_matches_imagehash_bits() -> None:
    import imagehash

    img = smooth_image(1)
    h = imagehash.phash(img)
    value = phash(img)
    assert -(2**63) <= value < 2**63
    assert value & (2**64 - 1) == int(str(h), 16)
    assert to_int64(h) == value


def test_flip_hash_is_hash_of_mirror() -> None:
    img = smooth_image(2)
    plain, flip = image_hashes(img)
    assert flip == phash(ImageOps.mirror(img))
    assert image_hashes(ImageOps.mirror(img)) == (flip, plain)
    assert hamming(plain, flip) > DEFAULT_MAX_DISTANCE  # a flip is not caught by the plain hash alone


def test_near_duplicates_are_close_and_unrelated_are_far() -> None:
    img = smooth_image(3)
    base = phash(img)
    edited = [jpeg_roundtrip(img.resize((320, 240)), 60), jpeg_roundtrip(img.resize((64, 48)), 40),
              img.convert("L"), ImageOps.autocontrast(img)]
    for e in edited:
        assert hamming(base, phash(e)) <= 6
    mirrored_plain, mirrored_flip = image_hashes(jpeg_roundtrip(ImageOps.mirror(img).resize((200, 150)), 70))
    assert min(hamming(base, mirrored_plain), hamming(base, mirrored_flip)) <= 6
    others = [phash(smooth_image(s)) for s in range(10, 30)]
    assert min(int(hamming(base, o)) for o in others) > DEFAULT_MAX_DISTANCE


def test_bytes_hashes_decodes_and_rejects_garbage() -> None:
    buf = io.BytesIO()
    smooth_image(4).save(buf, "PNG")
    assert bytes_hashes(buf.getvalue()) == image_hashes(smooth_image(4))
    with pytest.raises(OSError):
        bytes_hashes(b"<html>not an image</html>")


def test_transparent_image_is_hashed_on_white() -> None:
    rgba = smooth_image(5).convert("RGBA")
    rgba.putalpha(255)
    assert phash(rgba) == phash(smooth_image(5))


# ---------------------------------------------------------------- search

@pytest.mark.parametrize("block_elems", [7, 64, 1 << 22])
def test_search_is_exact_vs_brute_force(block_elems: int) -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(-(2**63), 2**63 - 1, 150, dtype=np.int64)
    queries = rng.integers(-(2**63), 2**63 - 1, 90, dtype=np.int64)
    flips = rng.integers(-(2**63), 2**63 - 1, 90, dtype=np.int64)
    # plant neighbours at known distances, through the plain and the flipped hash
    for i in range(30):
        bits = rng.choice(64, size=i % 16, replace=False)
        mask = np.int64(0)
        for b in bits:
            mask |= np.int64(1) << np.int64(b) if b < 63 else np.int64(-(2**63))
        (queries if i % 2 else flips)[i] = targets[i] ^ mask
    index = HashIndex(targets, [f"id{i}" for i in range(150)], block_elems=block_elems)
    for radius in (0, 5, 10, 15, 24):
        m = index.search(queries, flips, radius)
        got = list(zip(m.query.tolist(), m.target.tolist(), m.distance.tolist()))
        assert got == brute_force(queries.tolist(), flips.tolist(), targets.tolist(), radius)
    m = index.search(queries, None, 10)
    got = list(zip(m.query.tolist(), m.target.tolist(), m.distance.tolist()))
    assert got == brute_force(queries.tolist(), None, targets.tolist(), 10)


def test_search_radius_is_inclusive() -> None:
    target = 0x0F0F0F0F0F0F0F0F
    query = target ^ 0b1111111111  # exactly 10 bits away
    index = HashIndex([to_signed(target)], ["t"])
    assert index.search_ids([to_signed(query)], max_distance=10) == [(0, "t", 10)]
    assert index.search_ids([to_signed(query)], max_distance=9) == []
    assert len(index.search([to_signed(query)], max_distance=-1)) == 0


def test_search_handles_sign_bit_and_empty_inputs() -> None:
    index = HashIndex(np.array([-1, 0, 2**62], dtype=np.int64))
    m = index.search(np.array([-1], dtype=np.int64), max_distance=1)
    assert m.target.tolist() == [0] and m.distance.tolist() == [0]
    assert hamming(-1, 0) == 64
    assert len(index.search(np.array([], dtype=np.int64))) == 0
    assert len(HashIndex([]).search([1, 2, 3])) == 0


def to_signed(v: int) -> int:
    return v - 2**64 if v >= 2**63 else v


# ---------------------------------------------------------------- eval index

def make_image_folder(root: Path) -> None:
    for label, seeds in {"cat": [1, 2], "dog": [3, 4]}.items():
        (root / label).mkdir(parents=True)
        for s in seeds:
            smooth_image(s).save(root / label / f"{s}.jpg", quality=90)
    (root / "dog" / "sub").mkdir()
    smooth_image(5).save(root / "dog" / "sub" / "5.png")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("ignored")
    (root / "README.jpg").write_bytes(b"outside any class folder: ignored")


def test_build_eval_index(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs")
    stats = build_eval_index("toy", tmp_path / "imgs", tmp_path / "eval")
    assert (stats.inputs, stats.kept, dict(stats.dropped)) == (6, 5, {"decode_error": 1})
    assert stats.accounted()
    table = load_eval_index(tmp_path / "eval" / "toy")
    assert table.column_names == ["eval_id", "label", "phash"]
    assert str(table.schema.field("phash").type) == "int64"
    assert table["eval_id"].to_pylist() == ["cat/1.jpg", "cat/2.jpg", "dog/3.jpg", "dog/4.jpg", "dog/sub/5.png"]
    assert table["label"].to_pylist() == ["cat", "cat", "dog", "dog", "dog"]
    assert table["phash"][0].as_py() == phash(Image.open(tmp_path / "imgs" / "cat" / "1.jpg"))
    assert StageStats.read(tmp_path / "eval" / "toy").kept == 5
    assert pq.read_table(tmp_path / "eval" / "toy" / "index.parquet").num_rows == 5
    hits = load_hash_index(tmp_path / "eval" / "toy").search_ids([phash(smooth_image(3).resize((300, 225)))])
    assert [h[1] for h in hits] == ["dog/3.jpg"]


def test_eval_index_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(WitError, match=r"eval set 'nope': folder not found: .*missing"):
        build_eval_index("nope", tmp_path / "missing", tmp_path / "eval")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(WitError, match="eval set 'empty': no images"):
        build_eval_index("empty", tmp_path / "empty", tmp_path / "eval")
    with pytest.raises(WitError, match="eval index not found"):
        load_eval_index(tmp_path / "eval" / "nope")

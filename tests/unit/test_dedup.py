"""Perceptual hashes, exact Hamming search (brute force and multi-index), eval-set indexes from ImageFolders,
WebDataset shards and parquet, and the robust detector on synthetic images (fast, no network, no Ray)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

import pyarrow as pa

from dedup.index import EvalIndexConfig, build_eval_index, load_eval_index, load_hash_index, load_robust_index
from dedup.match import MATCH_SCHEMA, MatchConfig, QueryHashes, match_table
from dedup.mih import MultiIndexHash, balanced_widths, best_chunks, chunk_radii, chunk_widths, probe_radii
from dedup.phash import (DCT_FLIP_MASK, HASH_SCHEMA, VARIANTS, bytes_hash_columns, bytes_hashes, eval_variants,
                         hash_columns, image_hashes, phash, to_int64, trim_box)
from dedup.search import DEFAULT_MAX_DISTANCE, HashIndex, hamming
from pipeline.core.errors import WitError
from pipeline.core.stats import StageStats


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
    assert stats.accounted() and stats.extra["kind"] == "imagefolder"
    table = load_eval_index(tmp_path / "eval" / "toy")
    assert table.column_names == ["eval_id", "label", "phash", "variant_phash", "variant_dct"]
    assert [len(v) for v in table["variant_phash"].to_pylist()] == [len(VARIANTS)] * 5
    assert str(table.schema.field("phash").type) == "int64"
    assert table["eval_id"].to_pylist() == ["cat/1.jpg", "cat/2.jpg", "dog/3.jpg", "dog/4.jpg", "dog/sub/5.png"]
    assert table["label"].to_pylist() == ["cat", "cat", "dog", "dog", "dog"]
    assert table["phash"][0].as_py() == phash(Image.open(tmp_path / "imgs" / "cat" / "1.jpg"))
    assert StageStats.read(tmp_path / "eval" / "toy").kept == 5
    assert pq.read_table(tmp_path / "eval" / "toy" / "index.parquet").num_rows == 5
    hits = load_hash_index(tmp_path / "eval" / "toy").search_ids([phash(smooth_image(3).resize((300, 225)))])
    assert [h[1] for h in hits] == ["dog/3.jpg"]


def test_eval_index_missing_or_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(WitError, match=r"eval set 'nope': .*missing: eval set not found"):
        build_eval_index("nope", tmp_path / "missing", tmp_path / "eval")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(WitError, match="eval set 'empty': no images"):
        build_eval_index("empty", tmp_path / "empty", tmp_path / "eval")
    with pytest.raises(WitError, match="eval index not found"):
        load_eval_index(tmp_path / "eval" / "nope")


# ---------------------------------------------------------------- robust hash columns

def letterboxed(img: Image.Image, colour: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def test_hash_columns_schema_and_plain_hashes() -> None:
    img = smooth_image(6)
    cols = hash_columns(img)
    assert list(cols) == HASH_SCHEMA.names
    assert (cols["phash"], cols["phash_flip"]) == image_hashes(img)  # imagehash's pHash, bit for bit
    assert (cols["phash_trim"], cols["dct256_trim"]) == (cols["phash"], cols["dct256"])  # no border to trim
    assert len(cols["dct256"]) == 32
    assert bytes_hash_columns(jpeg_bytes(img)) == hash_columns(Image.open(io.BytesIO(jpeg_bytes(img))))


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def test_mirrored_dct_sign_hash_is_a_xor() -> None:
    img = smooth_image(7)
    plain, mirrored = hash_columns(img)["dct256"], hash_columns(ImageOps.mirror(img))["dct256"]
    flipped = bytes(a ^ b for a, b in zip(plain, DCT_FLIP_MASK))
    diff = sum(bin(a ^ b).count("1") for a, b in zip(flipped, mirrored))
    assert diff <= 4  # only coefficients at ~0 may differ
    assert hash_columns(ImageOps.mirror(img))["phash"] == hash_columns(img)["phash_flip"]


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (40, 90, 200)])
def test_trim_box_finds_letterbox_bars(colour: tuple[int, int, int]) -> None:
    img = smooth_image(8, (200, 120))
    boxed = letterboxed(img, colour)
    box = trim_box(boxed.convert("L"))
    assert box is not None
    assert 40 <= box[1] <= 42 and 158 <= box[3] <= 160 and box[0] == 0 and box[2] == 200
    assert trim_box(img.convert("L")) is None
    cols, plain = hash_columns(jpeg_roundtrip(boxed, 85)), hash_columns(img)
    trimmed, untrimmed = int(hamming(cols["phash_trim"], plain["phash"])), int(hamming(cols["phash"], plain["phash"]))
    assert trimmed <= 6 and untrimmed >= 2 * trimmed + 8  # the plain pHash alone is far off


def test_eval_variants_cover_crops_and_rotations() -> None:
    img = smooth_image(9, (240, 180))
    phashes, dcts = eval_variants(img)
    assert len(phashes) == len(dcts) == len(VARIANTS)
    assert phashes[0] == hash_columns(img)["phash"]
    crop = img.crop((24, 0, 240, 162))  # 10% off the left and the bottom
    nearest = min(int(hamming(hash_columns(crop)["phash"], h)) for h in phashes)
    assert nearest <= 4


# ---------------------------------------------------------------- multi-index search

def random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, n, dtype=np.uint64)


def planted(rng: np.random.Generator, targets: np.ndarray, n: int, max_bits: int) -> np.ndarray:
    """Queries at 0..max_bits bits from random targets."""
    out = random_hashes(rng, n)
    for i in range(n // 2):
        bits = rng.choice(64, size=int(rng.integers(0, max_bits + 1)), replace=False)
        out[i] = targets[rng.integers(targets.size)] ^ np.uint64(sum(1 << int(b) for b in bits))
    return out


@pytest.mark.parametrize("use_numba", [True, False])
@pytest.mark.parametrize("chunks", [None, 3, 4, 7])
def test_multi_index_is_exact_vs_brute_force(use_numba: bool, chunks: int | None) -> None:
    rng = np.random.default_rng(chunks or 1)
    targets = random_hashes(rng, 3000)
    targets[:5] = targets[5]  # duplicates in the index
    queries = planted(rng, targets, 600, 14)
    index = MultiIndexHash(targets, max_radius=12, chunks=chunks, use_numba=use_numba)
    for radius in (0, 3, 8, 12):
        got = index.search(queries, radius)
        ref = HashIndex(targets).search(queries, max_distance=radius)  # checked against pure Python above
        assert [g.tolist() for g in got] == [ref.query.tolist(), ref.target.tolist(), ref.distance.tolist()]
    with pytest.raises(ValueError, match="above"):
        index.search(queries, 13)


def test_multi_index_edge_cases() -> None:
    assert best_chunks(50, 8) == 0  # a tiny index is brute-forced
    assert best_chunks(100_000, 8) >= 3
    index = MultiIndexHash(np.array([-1, 0, 2**62], dtype=np.int64), 4, chunks=3)
    q, t, d = index.search(np.array([-1, 1], dtype=np.int64))
    assert (q.tolist(), t.tolist(), d.tolist()) == ([0, 1, 1], [0, 1, 2], [0, 1, 2])
    with pytest.raises(ValueError, match="chunks"):
        MultiIndexHash([1, 2], 4, chunks=2)
    assert all(len(x) == 0 for x in MultiIndexHash([], 4).search([1, 2]))
    assert all(len(x) == 0 for x in index.search([]))
    assert chunk_radii(4, 8) == [2, 1, 1, 1] and sum(chunk_widths(5)) == 64


def assert_same_as_brute_force(index: MultiIndexHash, targets: np.ndarray, queries: np.ndarray, radius: int) -> None:
    """Same pairs, order and distances as the brute force (itself checked against pure Python above)."""
    got = index.search(queries, radius)
    ref = HashIndex(targets).search(queries, max_distance=radius)
    assert [g.tolist() for g in got] == [ref.query.tolist(), ref.target.tolist(), ref.distance.tolist()]


def planted_at(rng: np.random.Generator, targets: np.ndarray, n: int, bits: int) -> np.ndarray:
    """``n`` queries exactly ``bits`` bits (below the top bit) from random targets."""
    out = targets[rng.integers(targets.size, size=n)].copy()
    for i in range(n):
        out[i] ^= np.uint64(sum(1 << int(b) for b in rng.choice(63, size=bits, replace=False)))
    return out


@pytest.mark.parametrize("use_numba", [True, False])
def test_multi_index_exact_on_phash_like_hashes(use_numba: bool) -> None:
    """Top bit always set (as in real pHashes: the chunks are then balanced on the 63 varying bits), random and
    planted queries at every distance up to the radius and just past it, many queries per key (so the kernel
    copies shared buckets) and few, every radius from 0 to the maximum."""
    rng = np.random.default_rng(7)
    top = np.uint64(1 << 63)
    targets = random_hashes(rng, 4000) | top
    targets[:3] = targets[3]
    queries = np.concatenate([random_hashes(rng, 1500) | top]
                             + [planted_at(rng, targets, 150, bits) for bits in range(11)])
    index = MultiIndexHash(targets, max_radius=10, chunks=6, use_numba=use_numba)
    assert index.widths[0] == 12 and sum(index.widths) == 64  # the constant top bit rides with chunk 0
    for radius in range(11):
        assert_same_as_brute_force(index, targets, queries, radius)
    auto = MultiIndexHash(targets, max_radius=8, use_numba=use_numba)
    assert_same_as_brute_force(auto, targets, rng.permutation(queries), 8)


@pytest.mark.parametrize("use_numba", [True, False])
def test_multi_index_radius_edges_and_many_matches(use_numba: bool) -> None:
    """Radius 0 (one chunk is enough), radius 64 (every pair: each chunk's probes cover its whole key space)
    and queries with more matches than the kernel's first output buffer holds."""
    rng = np.random.default_rng(3)
    targets = random_hashes(rng, 300)
    queries = np.concatenate([targets[:40], random_hashes(rng, 40)])
    exact = MultiIndexHash(targets, max_radius=0, chunks=4, use_numba=use_numba)
    assert_same_as_brute_force(exact, targets, queries, 0)
    everything = MultiIndexHash(targets[:60], max_radius=64, chunks=8, use_numba=use_numba)
    assert_same_as_brute_force(everything, targets[:60], queries[:30], 64)
    crowded = np.concatenate([np.repeat(targets[:2], 1500), targets])  # 1500 copies of two hashes
    index = MultiIndexHash(crowded, max_radius=6, chunks=5, use_numba=use_numba)
    assert_same_as_brute_force(index, crowded, np.repeat(targets[:4], 3), 6)


def test_multi_index_layout() -> None:
    top_constant = (1 << 64) - 1 - (1 << 63)
    assert balanced_widths(4, top_constant) == [17, 16, 16, 15]
    assert balanced_widths(4, (1 << 64) - 1) == [16, 16, 16, 16] == chunk_widths(4)
    assert balanced_widths(5, 0b111) == chunk_widths(5)  # too few varying bits to share
    widths = chunk_widths(5)
    for radius in (0, 1, 4, 8, 12):
        t = probe_radii(widths, widths, 100_000, radius)
        assert sum(x + 1 for x in t) > radius and min(t) >= -1  # the pigeonhole condition
    assert sorted(probe_radii(widths, widths, 100_000, 0)) == [-1, -1, -1, -1, 0]


# ---------------------------------------------------------------- robust index

def test_robust_index_matches_edits_not_other_images(tmp_path: Path) -> None:
    root = tmp_path / "imgs" / "all"
    root.mkdir(parents=True)
    for s in range(20):
        smooth_image(100 + s, (240, 180)).save(root / f"{s}.png")
    build_eval_index("toy", tmp_path / "imgs", tmp_path / "eval")
    index = load_robust_index(tmp_path / "eval" / "toy")
    img = smooth_image(103, (240, 180))
    edits = [jpeg_roundtrip(img.resize((120, 90)), 50), ImageOps.mirror(img), letterboxed(img, (255, 255, 255)),
             img.crop((0, 18, 216, 180)), img.rotate(5, resample=Image.Resampling.BICUBIC),
             ImageOps.mirror(img.crop((12, 9, 228, 171)))]
    q = QueryHashes.from_rows([hash_columns(jpeg_roundtrip(e, 90)) for e in edits])
    hits = index.search_ids(q)
    assert [(i, eval_id) for i, eval_id, _ in hits] == [(i, "all/3.png") for i in range(len(edits))]
    others = QueryHashes.from_rows([hash_columns(smooth_image(500 + s, (240, 180))) for s in range(20)])
    assert index.search_ids(others) == []
    table = match_table(pa.table({"key": [f"k{i}" for i in range(len(edits))], **{
        n: pa.array([hash_columns(jpeg_roundtrip(e, 90))[n] for e in edits], HASH_SCHEMA.field(n).type)
        for n in HASH_SCHEMA.names}}), {"toy": index})
    assert table.column_names == MATCH_SCHEMA.names and table.num_rows == len(edits)
    assert set(table["eval_id"].to_pylist()) == {"all/3.png"}


def test_match_config_and_old_index_errors(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="max_distance"):
        MatchConfig(max_distance=40).validate()
    with pytest.raises(WitError, match="max_dct_distance"):
        MatchConfig(max_dct_distance=300).validate()
    pq.write_table(pa.table({"eval_id": ["a"], "label": ["x"], "phash": [1]}), tmp_path / "index.parquet")
    with pytest.raises(WitError, match="index.parquet: built by an older"):
        load_robust_index(tmp_path)
    assert len(load_hash_index(tmp_path)) == 1


# ---------------------------------------------------------------- eval sets from shards and parquet

def write_tar(path: Path, members: dict[str, bytes]) -> None:
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_eval_index_from_webdataset_shards(tmp_path: Path) -> None:
    (tmp_path / "wds").mkdir()
    write_tar(tmp_path / "wds" / "000.tar", {
        "s/a.jpg": jpeg_bytes(smooth_image(1)), "s/a.cls": b"3",
        "s/b.png": buf_png(smooth_image(2)), "s/b.txt": b"dog",
        "s/c.jpg": jpeg_bytes(smooth_image(3)), "s/c.json": b'{"label": "cat", "other": 1}',
        "s/d.txt": b"no image here",
    })
    write_tar(tmp_path / "wds" / "001.tar", {"e.webp": b"garbage, not webp", "f.jpeg": jpeg_bytes(smooth_image(4))})
    stats = build_eval_index("w", tmp_path / "wds", tmp_path / "eval", threads=2)
    assert (stats.inputs, stats.kept, dict(stats.dropped)) == (6, 4, {"decode_error": 1, "no_image": 1})
    assert stats.extra["kind"] == "webdataset"
    t = load_eval_index(tmp_path / "eval" / "w")
    assert t["eval_id"].to_pylist() == ["s/a", "s/b", "s/c", "f"]
    assert t["label"].to_pylist() == ["3", "dog", "cat", None]
    assert t["phash"][1].as_py() == phash(smooth_image(2))
    one = build_eval_index("one", tmp_path / "wds" / "001.tar", tmp_path / "eval")
    assert one.kept == 1
    write_tar(tmp_path / "wds" / "002.tar", {"s/a.jpg": jpeg_bytes(smooth_image(5))})
    with pytest.raises(WitError, match="eval set 'w': duplicate eval id 's/a'"):
        build_eval_index("w", tmp_path / "wds", tmp_path / "eval")
    (tmp_path / "bad.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(WitError, match="bad.tar: unreadable tar"):
        build_eval_index("bad", tmp_path / "bad.tar", tmp_path / "eval")


def buf_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_eval_index_from_parquet(tmp_path: Path) -> None:
    images = [jpeg_bytes(smooth_image(s)) for s in range(3)]
    pq.write_table(pa.table({"img": images, "label": [0, 1, None], "name": ["x", "y", "z"]}), tmp_path / "a.parquet")
    stats = build_eval_index("p", tmp_path / "a.parquet", tmp_path / "eval", EvalIndexConfig(image_column="img"))
    t = load_eval_index(tmp_path / "eval" / "p")
    assert stats.kept == 3 and stats.extra["kind"] == "parquet"
    assert t["eval_id"].to_pylist() == ["a/0", "a/1", "a/2"] and t["label"].to_pylist() == ["0", "1", None]
    named = EvalIndexConfig(image_column="img", id_column="name")
    build_eval_index("p", tmp_path / "a.parquet", tmp_path / "eval", named)
    assert load_eval_index(tmp_path / "eval" / "p")["eval_id"].to_pylist() == ["x", "y", "z"]
    structs = [{"bytes": b, "path": None} for b in images[:2]] + [{"bytes": b"junk", "path": None}]
    hf = pa.table({"image": pa.array(structs, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))})
    (tmp_path / "hf").mkdir()
    pq.write_table(hf, tmp_path / "hf" / "test-00000.parquet")
    stats = build_eval_index("hf", tmp_path / "hf", tmp_path / "eval")
    assert (stats.kept, dict(stats.dropped)) == (2, {"decode_error": 1})
    assert load_eval_index(tmp_path / "eval" / "hf")["eval_id"].to_pylist() == ["test-00000/0", "test-00000/1"]
    with pytest.raises(WitError, match=r"a.parquet: no column 'image'"):
        build_eval_index("p", tmp_path / "a.parquet", tmp_path / "eval")
    with pytest.raises(WitError, match=r"column 'name' holds string, not image bytes"):
        build_eval_index("p", tmp_path / "a.parquet", tmp_path / "eval", EvalIndexConfig(image_column="name"))
    with pytest.raises(WitError, match="eval_index.kind: expected one of"):
        build_eval_index("p", tmp_path / "a.parquet", tmp_path / "eval", EvalIndexConfig(kind="zip"))

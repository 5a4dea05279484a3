"""``wit dedup`` / ``wit eval-index`` library entry points on real WebDataset shards (written with webdataset)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from dedup import run as dedup_run
from dedup.index import build_eval_index, load_eval_index
from dedup.phash import HASH_SCHEMA, hash_columns
from dedup.run import DedupConfig, run_dedup
from pipeline.core.errors import WitError
from pipeline.core.io import read_json
from pipeline.core.stats import StageStats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def photo(seed: int, size: tuple[int, int] = (240, 180)) -> Image.Image:
    """A random image with coarse structure and some texture (distinct per seed)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    fine = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    return Image.blend(coarse, fine, 0.3)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def letterbox(img: Image.Image) -> Image.Image:
    side = max(img.size)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


EVAL = {"a/1.jpg": 1, "a/2.jpg": 2, "a/3.jpg": 3, "b/4.jpg": 4, "b/5.jpg": 5, "b/6.jpg": 6}
# shard -> [(key, image bytes or None, planted duplicate of)]
SHARDS = {
    "00000": [("000000000", jpeg(photo(1).crop((24, 0, 240, 162))), "a/1.jpg"),
              ("000000001", jpeg(letterbox(photo(4))), "b/4.jpg"),
              ("000000002", jpeg(photo(100)), None), ("000000003", jpeg(photo(101)), None),
              ("000000004", None, None), ("000000005", b"\xff\xd8 not a jpeg", None)],
    "00001": [("000010000", jpeg(ImageOps.mirror(photo(2)).resize((320, 240)), 70), "a/2.jpg"),
              ("000010001", jpeg(photo(102)), None), ("000010002", jpeg(photo(103)), None),
              ("000010003", jpeg(photo(104)), None)],
}
N_SAMPLES = sum(len(v) for v in SHARDS.values())
PLANTED = {(dup, key) for rows in SHARDS.values() for key, _, dup in rows if dup}


def write_shards(folder: Path, with_parquet: bool = True, hashes: bool = False) -> None:
    import webdataset as wds

    folder.mkdir(parents=True)
    for shard, rows in SHARDS.items():
        with wds.TarWriter(str(folder / f"{shard}.tar")) as sink:
            for key, data, _ in rows:
                sample = {"__key__": key, "txt": f"caption {key}", "json": {"key": key, "url": f"http://x/{key}"}}
                if data is not None:
                    sample["jpg"] = data
                sink.write(sample)
        if with_parquet:
            table = {"key": [r[0] for r in rows], "url": [f"http://x/{r[0]}" for r in rows],
                     "status": ["success" if r[1] else "failed_to_download" for r in rows]}
            if hashes:
                cols = [hash_columns(Image.open(io.BytesIO(r[1]))) if r[1] and r[0] != "000000005" else None
                        for r in rows]
                table.update({n: pa.array([c[n] if c else None for c in cols], HASH_SCHEMA.field(n).type)
                              for n in HASH_SCHEMA.names})
            pq.write_table(pa.table(table), folder / f"{shard}.parquet")
    (folder / "sizes.json").write_text(json.dumps({f"{s}.tar": len(r) for s, r in SHARDS.items()}))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dedup")
    for eval_id, seed in EVAL.items():
        (root / "evalset" / eval_id).parent.mkdir(parents=True, exist_ok=True)
        photo(seed).save(root / "evalset" / eval_id, quality=92)
    write_shards(root / "shards")
    build_eval_index("toy", root / "evalset", root / "eval")
    return root


def overlap_pairs(out: Path) -> set[tuple[str, str]]:
    table = pq.read_table(out / "overlap.parquet")
    return set(zip(table["eval_id"].to_pylist(), table["key"].to_pylist()))


def test_flag_mode_writes_overlap_only(data: Path) -> None:
    out = data / "flagged"
    stats = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out)
    table = pq.read_table(out / "overlap.parquet")
    assert table.column_names[:4] == ["eval_set", "eval_id", "key", "distance"]
    assert overlap_pairs(out) == PLANTED
    assert set(table["eval_set"].to_pylist()) == {"toy"} and max(table["distance"].to_pylist()) <= 8
    assert (stats.inputs, stats.kept, stats.n_dropped) == (N_SAMPLES, N_SAMPLES, 0) and stats.accounted()
    assert stats.extra["flagged_samples"] == 3 and stats.extra["unhashed"] == {"decode_error": 1, "no_image": 1}
    assert stats.extra["eval_duplicates"] == {"toy": 3}
    assert not list(out.glob("*.tar")) and StageStats.read(out).kept == N_SAMPLES


def test_drop_mode_writes_clean_shards(data: Path) -> None:
    import webdataset as wds

    out = data / "clean"
    stats = run_dedup(str(data / "shards" / "{00000..00001}.tar"), {"toy": data / "eval" / "toy"}, out,
                      DedupConfig(mode="drop"))
    assert dict(stats.dropped) == {"eval_duplicate": 3} and stats.kept == N_SAMPLES - 3 and stats.accounted()
    assert read_json(out / "sizes.json") == {"00000.tar": 4, "00001.tar": 3}
    samples = list(wds.WebDataset([str(out / "00000.tar"), str(out / "00001.tar")], shardshuffle=False))
    dropped = {key for _, key in PLANTED}
    assert [s["__key__"] for s in samples] == [k for rows in SHARDS.values() for k, _, _ in rows if k not in dropped]
    assert all(s["txt"] == f"caption {s['__key__']}".encode() and "json" in s for s in samples)
    kept_images = {s["__key__"]: s["jpg"] for s in samples if "jpg" in s}
    assert kept_images["000000002"] == SHARDS["00000"][2][1]  # members copied byte for byte
    assert pq.read_table(out / "00000.parquet")["key"].to_pylist() == ["000000002", "000000003", "000000004",
                                                                       "000000005"]
    assert overlap_pairs(out) == PLANTED

    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".tar", ".parquet") and
              p.name != "overlap.parquet"}
    again = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, DedupConfig(mode="drop"))
    after = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.suffix in (".tar", ".parquet") and
             p.name != "overlap.parquet"}
    assert after == before and again.dropped == stats.dropped  # nothing re-hashed or rewritten


def test_raw_eval_set_and_webdataset_eval_set(data: Path, tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "out"
    stats = run_dedup(data / "shards", {"raw": data / "evalset"}, out)  # indexed on the fly into OUT/_eval
    assert (out / "_eval" / "raw" / "index.parquet").is_file() and stats.extra["flagged_samples"] == 3
    (tmp_path / "evalwds").mkdir()
    with wds.TarWriter(str(tmp_path / "evalwds" / "e.tar")) as sink:
        for i, (eval_id, seed) in enumerate(EVAL.items()):
            sink.write({"__key__": f"img{i}", "jpg": jpeg(photo(seed)), "cls": str(i % 2)})
    build_eval_index("wds", tmp_path / "evalwds", tmp_path / "eval")
    assert load_eval_index(tmp_path / "eval" / "wds")["label"].to_pylist() == ["0", "1"] * 3
    run_dedup(data / "shards", {"wds": tmp_path / "eval" / "wds"}, tmp_path / "out2")
    assert {e for e, _ in overlap_pairs(tmp_path / "out2")} == {"img0", "img1", "img3"}


def test_stored_hashes_skip_decoding(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_shards(tmp_path / "ours", hashes=True)

    def no_decoding(data: bytes) -> dict:
        raise AssertionError("decoded although the shard parquet has the hashes")

    monkeypatch.setattr(dedup_run, "bytes_hash_columns", no_decoding)
    stats = run_dedup(tmp_path / "ours", {"toy": data / "eval" / "toy"}, tmp_path / "out")
    assert overlap_pairs(tmp_path / "out") == PLANTED
    assert stats.extra["unhashed"] == {"decode_error": 1, "no_image": 1}


def test_bad_inputs(data: Path, tmp_path: Path) -> None:
    with pytest.raises(WitError, match="holds the input shards"):
        run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, data / "shards", DedupConfig(mode="drop"))
    with pytest.raises(WitError, match="no .tar shards"):
        run_dedup(tmp_path, {"toy": data / "eval" / "toy"}, tmp_path / "o")
    with pytest.raises(WitError, match="missing.tar: shard not found"):
        run_dedup(tmp_path / "missing.tar", {"toy": data / "eval" / "toy"}, tmp_path / "o")
    with pytest.raises(WitError, match="dedup.mode: expected one of flag, drop"):
        run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, tmp_path / "o", DedupConfig(mode="delete"))
    with pytest.raises(WitError, match="no eval sets"):
        run_dedup(data / "shards", {}, tmp_path / "o")
    with pytest.raises(WitError, match="eval set 'x': .*nowhere: eval set not found"):
        run_dedup(data / "shards", {"x": tmp_path / "nowhere"}, tmp_path / "o")

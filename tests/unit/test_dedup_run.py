"""``wit dedup``'s per-shard tasks in this process (no Ray): resume from the shards' markers, what a changed
option or eval set redoes, when shards would go to Ray, and shards and output on an fsspec store (``memory://``,
one process) equal to the same run on local files."""
from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dedup import run as dedup_run
from dedup.index import build_eval_index
from dedup.run import DedupConfig, run_dedup, shard_locations, use_ray
from pipeline.core.errors import WitError
from pipeline.core.storage import Folder

EVAL_SEEDS = {"cat/0.jpg": 0, "cat/1.jpg": 1, "dog/2.jpg": 2}
# shard -> sample seeds (seeds of EVAL_SEEDS are planted duplicates; None: a sample without image)
SHARDS = {"00000": [0, 10, 11, None], "00001": [12, 2, 13], "00002": [14, 15]}
PLANTED = {("cat/0.jpg", "00000_0000"), ("dog/2.jpg", "00001_0001")}
N = sum(len(s) for s in SHARDS.values())


def jpeg(seed: int, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((96, 72), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def tar_bytes(shard: str, seeds: list[int | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, seed in enumerate(seeds):
            members = {"txt": f"caption {seed}".encode()}
            if seed is not None:
                members["jpg"] = jpeg(seed, 80)
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{shard}_{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parquet_bytes(shard: str, seeds: list[int | None]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"key": [f"{shard}_{i:04d}" for i in range(len(seeds))],
                             "url": [f"http://x/{s}" for s in seeds]}), buf)
    return buf.getvalue()


def shard_files() -> dict[str, bytes]:
    """The shards' files by name; 00002 has no parquet."""
    files = {f"{s}.tar": tar_bytes(s, seeds) for s, seeds in SHARDS.items()}
    files.update({f"{s}.parquet": parquet_bytes(s, seeds) for s, seeds in SHARDS.items() if s != "00002"})
    return files


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for name, data in shard_files().items():
        (tmp_path / "shards").mkdir(exist_ok=True)
        (tmp_path / "shards" / name).write_bytes(data)
    for eval_id, seed in EVAL_SEEDS.items():
        (tmp_path / "evalset" / eval_id).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "evalset" / eval_id).write_bytes(jpeg(seed))
    build_eval_index("toy", tmp_path / "evalset", tmp_path / "eval")
    return tmp_path


def cfg(**kw: Any) -> DedupConfig:
    return DedupConfig(progress=False, **kw)


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
            and not p.name.startswith(".")}


def overlap_rows(folder: Folder) -> list[dict[str, Any]]:
    with folder.open("overlap.parquet") as f:
        return pq.read_table(f).to_pylist()


def members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def comparable(stats: Any) -> dict[str, Any]:
    d = stats.to_dict()
    d["extra"] = {k: v for k, v in d["extra"].items() if k not in ("seconds", "skipped_shards")}
    return d


def test_rerun_skips_every_shard_and_a_deleted_marker_redoes_only_its_shard(data: Path) -> None:
    out = data / "out"
    first = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop"))
    assert first.inputs == N and first.dropped == {"eval_duplicate": 2} and first.accounted()
    assert first.extra["skipped_shards"] == 0 and first.extra["unhashed"] == {"no_image": 1}
    assert {(r["eval_id"], r["key"]) for r in overlap_rows(Folder(out))} == PLANTED
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 3, "00001.tar": 2, "00002.tar": 2}
    assert sorted(p.name for p in (out / "_parts").iterdir()) == [f"{s}.stats.json" for s in SHARDS]
    assert (out / "00001.parquet").is_file() and not (out / "00002.parquet").exists()

    before = mtimes(out)
    again = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop"))
    assert again.extra["skipped_shards"] == len(SHARDS) and comparable(again) == comparable(first)
    changed = {k for k, v in mtimes(out).items() if before[k] != v}
    assert changed == {"overlap.parquet", "sizes.json", "_stats.json"}

    (out / "_parts" / "00001.stats.json").unlink()
    redone = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop"))
    assert redone.extra["skipped_shards"] == len(SHARDS) - 1 and comparable(redone) == comparable(first)
    changed = {k for k, v in mtimes(out).items() if before.get(k) != v}
    assert changed == {"overlap.parquet", "sizes.json", "_stats.json", "_parts/00001.stats.json",
                       "_overlap/00001.parquet", "00001.tar", "00001.parquet"}  # its hashes are reused

    (out / "00002.tar").unlink()  # an output gone: its shard is redone although its marker is there
    fixed = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop"))
    assert fixed.extra["skipped_shards"] == len(SHARDS) - 1 and (out / "00002.tar").is_file()


def test_other_eval_sets_or_options_redo_shards_from_cached_hashes(data: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    out = data / "out"
    run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop"))
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}

    def no_decoding(data: bytes) -> dict:
        raise AssertionError("decoded although the shard's hashes are cached")

    monkeypatch.setattr(dedup_run, "bytes_hash_columns", no_decoding)
    build_eval_index("again", data / "evalset", data / "eval")  # the same images under another name
    other = run_dedup(data / "shards", {"again": data / "eval" / "again"}, out, cfg(mode="drop"))
    assert other.extra["skipped_shards"] == 0 and other.extra["eval_duplicates"] == {"again": 2}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == tars  # same drops: clean shards kept

    strict = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop", max_distance=0,
                                                                                 max_dct_distance=0))
    assert strict.extra["skipped_shards"] == 0 and strict.n_dropped == 0
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4, "00001.tar": 3, "00002.tar": 2}
    assert [n for n, _ in members((out / "00000.tar").read_bytes())] == \
        [n for n, _ in members((data / "shards" / "00000.tar").read_bytes())]

    flag = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(threads=2))
    assert flag.extra["skipped_shards"] == 0 and flag.kept == N and flag.extra["flagged_samples"] == 2


def test_shards_run_on_ray_only_for_a_cluster_or_a_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not use_ray(cfg(), 5) and not use_ray(cfg(workers=0), 1) and not use_ray(cfg(workers=2), 0)
    assert use_ray(cfg(workers=0), 2) and use_ray(cfg(workers=2), 2)
    assert use_ray(cfg(ray_address="ray://head:10001"), 1)
    monkeypatch.setenv("RAY_ADDRESS", "head:6379")
    assert use_ray(cfg(), 1) and not use_ray(cfg(), 0)


def test_store_shards_and_output_equal_the_local_run(data: Path) -> None:
    """Shards, eval index and output on ``memory://`` (in this process): the same overlap, clean shards, sizes
    and stats as on local files; nothing staged is left in the output folder."""
    store = f"memory://dedup-{uuid.uuid4().hex[:8]}"
    shards = Folder(f"{store}/shards")
    for name, body in shard_files().items():
        shards.write_bytes(name, body)
    Folder(f"{store}/eval/toy").write_bytes("index.parquet", (data / "eval" / "toy" / "index.parquet").read_bytes())
    for mode in ("flag", "drop"):
        local = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, data / mode, cfg(mode=mode))
        out = Folder(f"{store}/{mode}")
        remote = run_dedup(f"{store}/shards/", {"toy": f"{store}/eval/toy"}, out.location, cfg(mode=mode))
        assert comparable(remote) == comparable(local) and overlap_rows(out) == overlap_rows(Folder(data / mode))
        assert out.read_json("_stats.json") == remote.to_dict()
        names = [f"{s}.tar" for s in SHARDS] if mode == "drop" else []
        assert out.names(pattern="*.tar") == names
        for name in names:
            assert members(out.read_bytes(name)) == members((data / mode / name).read_bytes())
        if mode == "drop":
            assert out.read_json("sizes.json") == json.loads((data / mode / "sizes.json").read_text())
            assert out.read_bytes("00000.parquet") and not out.exists("00002.parquet")
        assert {p.split("/")[0] for p in out.tree()} == {*names, *(n.replace(".tar", ".parquet") for n in names[:2]),
                                                          "_hashes", "_overlap", "_parts", "overlap.parquet",
                                                          "_stats.json", *(["sizes.json"] if names else [])}
        again = run_dedup([f"{store}/shards/{{00000..00001}}.tar", f"{store}/shards/0000[2].tar"],
                          {"toy": f"{store}/eval/toy"}, out.location, cfg(mode=mode))
        assert again.extra["skipped_shards"] == len(SHARDS) and comparable(again) == comparable(local)


def test_bad_store_inputs(data: Path) -> None:
    store = f"memory://dedup-{uuid.uuid4().hex[:8]}"
    with pytest.raises(WitError, match="missing.tar: shard not found"):
        shard_locations(f"{store}/shards/missing.tar")
    Folder(store).write_bytes("shards/00000.tar", tar_bytes("00000", [0]))
    assert [Path(u).name for u in shard_locations(f"{store}/shards")] == ["00000.tar"]
    with pytest.raises(WitError, match="holds the input shards"):
        run_dedup(f"{store}/shards", {"toy": data / "eval" / "toy"}, f"{store}/shards/", cfg(mode="drop"))
    with pytest.raises(WitError, match="eval index not found"):
        run_dedup(f"{store}/shards", {"toy": f"{store}/eval/none"}, f"{store}/out", cfg())


def test_a_task_killed_before_its_marker_is_redone_on_resume(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shard 00001's data files are published, then its task dies before the marker: the re-run redoes it alone and
    ends as a clean run."""
    clean = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, data / "clean", cfg(mode="drop"))
    publish = Folder.publish

    def killed(self: Folder, staged: Path) -> list[str]:
        if (staged / "_parts" / "00001.stats.json").is_file():
            (staged / "_parts" / "00001.stats.json").unlink()
            publish(self, staged)
            raise RuntimeError("task killed")
        return publish(self, staged)

    monkeypatch.setattr(Folder, "publish", killed)
    out = data / "out"
    with pytest.raises(RuntimeError, match="task killed"):
        run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop", threads=1))
    assert (out / "00001.tar").is_file() and not (out / "_parts" / "00001.stats.json").exists()
    assert not (out / "_stats.json").exists()
    monkeypatch.setattr(Folder, "publish", publish)
    resumed = run_dedup(data / "shards", {"toy": data / "eval" / "toy"}, out, cfg(mode="drop"))
    assert resumed.extra["skipped_shards"] == len(SHARDS) - 1 and comparable(resumed) == comparable(clean)
    assert overlap_rows(Folder(out)) == overlap_rows(Folder(data / "clean"))
    assert (out / "00001.tar").read_bytes() == (data / "clean" / "00001.tar").read_bytes()

"""``wit dedup`` on a cluster without shared disk: shards, eval index and output on ``s3://`` (moto's S3 API server
on 127.0.0.1, tests/s3server.py), one Ray task per shard on a local Ray with two workers, which get the store's
endpoint and credentials through their runtime environment. Real WebDataset shards (written with webdataset) with
planted near-duplicates: flag and drop modes give the overlap rows, clean shard members and parquet, sizes and
stats of the in-process run on local files; a re-run skips every shard, and shards whose markers are deleted are
the only ones redone."""
from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq
import pytest
from PIL import ImageOps
from s3server import s3_server
from test_dedup_cli import EVAL, PLANTED, jpeg, photo, write_shards

from dedup import run as dedup_run
from dedup.index import build_eval_index
from dedup.run import DedupConfig, run_dedup
from pipeline.core.storage import Folder

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
BUCKET = "wit-dedup"
S3 = f"s3://{BUCKET}"
# two more shards, without parquet, beside test_dedup_cli's 00000 and 00001; 00002 with a duplicate of a/3.jpg
EXTRA = {"00002": [("000020000", jpeg(ImageOps.grayscale(photo(3)).resize((200, 150)), 75), "a/3.jpg"),
                   ("000020001", jpeg(photo(105)), None)],
         "00003": [("000030000", jpeg(photo(106)), None), ("000030001", jpeg(photo(107)), None)]}
SHARDS = ["00000", "00001", *EXTRA]


def write_extra(folder: Path) -> None:
    import webdataset as wds

    for shard, rows in EXTRA.items():
        with wds.TarWriter(str(folder / f"{shard}.tar")) as sink:
            for key, data, _ in rows:
                sink.write({"__key__": key, "jpg": data, "txt": f"caption {key}"})


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Shards and the eval index on disk, the same under ``shards/`` and ``eval/toy/`` in the bucket."""
    root = tmp_path_factory.mktemp("dedup-s3")
    for eval_id, seed in EVAL.items():
        (root / "evalset" / eval_id).parent.mkdir(parents=True, exist_ok=True)
        photo(seed).save(root / "evalset" / eval_id, quality=92)
    build_eval_index("toy", root / "evalset", root / "eval")
    write_shards(root / "shards")
    write_extra(root / "shards")
    (root / "shards" / "sizes.json").unlink()
    with s3_server(BUCKET) as client:
        for path in sorted((root / "shards").iterdir()):
            client.put_object(Bucket=BUCKET, Key=f"shards/{path.name}", Body=path.read_bytes())
        client.put_object(Bucket=BUCKET, Key="eval/toy/index.parquet",
                          Body=(root / "eval" / "toy" / "index.parquet").read_bytes())
        yield {"root": root, "client": client}


@pytest.fixture()
def ray_tasks(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The shards of each submit_bounded call (one per run that went to Ray)."""
    calls: list[list[str]] = []

    def spy(tasks: Any, *args: Any, **kwargs: Any) -> Any:
        tasks = list(tasks)
        assert all(fn is dedup_run.dedup_shard for fn, _ in tasks)
        calls.append(sorted(job.stem for _, job in tasks))
        return submit(tasks, *args, **kwargs)

    submit = dedup_run.submit_bounded
    monkeypatch.setattr(dedup_run, "submit_bounded", spy)
    return calls


def config(mode: str, workers: int) -> DedupConfig:
    return DedupConfig(mode=mode, workers=workers, progress=False)


def comparable(stats: dict[str, Any]) -> dict[str, Any]:
    return {**stats, "extra": {k: v for k, v in stats["extra"].items() if k not in ("seconds", "skipped_shards")}}


def members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def outputs(folder: Folder, mode: str) -> dict[str, Any]:
    """What a run leaves for its users: overlap rows, stats; in drop mode clean shards (members), parquet, sizes."""
    with folder.open("overlap.parquet") as f:
        overlap = pq.read_table(f)
    found = {"overlap": overlap.to_pylist(), "meta": overlap.schema.metadata,
             "stats": comparable(folder.read_json("_stats.json"))}
    if mode == "drop":
        found["sizes"] = folder.read_json("sizes.json")
        found.update({name: members(folder.read_bytes(name)) for name in folder.names(pattern="*.tar")})
        for name in folder.names(pattern="*.parquet"):
            with folder.open(name) as f:
                found[name] = pq.read_table(f).to_pylist()
    return found


def modified(client: Any, prefix: str) -> dict[str, Any]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    return {o["Key"][len(prefix):]: o["LastModified"] for o in listing}


@pytest.mark.parametrize("mode", ["flag", "drop"])
def test_shard_tasks_on_s3_equal_the_local_run_and_resume_shard_by_shard(build: dict[str, Any], mode: str,
                                                                         ray_tasks: list[list[str]]) -> None:
    root, client = build["root"], build["client"]
    local = run_dedup(root / "shards", {"toy": root / "eval" / "toy"}, root / mode, config(mode, workers=1))
    assert ray_tasks == [] and local.accounted() and local.extra["flagged_samples"] == len(PLANTED) + 1
    assert local.n_dropped == (len(PLANTED) + 1 if mode == "drop" else 0)

    out = Folder(f"{S3}/{mode}")
    remote = run_dedup(f"{S3}/shards/", {"toy": f"{S3}/eval/toy"}, out.location, config(mode, workers=2))
    assert ray_tasks == [SHARDS]
    assert comparable(remote.to_dict()) == comparable(local.to_dict())
    assert outputs(out, mode) == outputs(Folder(root / mode), mode)
    clean = [f"{s}.tar" for s in SHARDS] + ["00000.parquet", "00001.parquet"] if mode == "drop" else []
    assert {key.split("/")[0] for key in modified(client, f"{mode}/")} == {
        *clean, "_hashes", "_overlap", "_parts", "overlap.parquet", "_stats.json",
        *(["sizes.json"] if mode == "drop" else [])}  # nothing staged was left in the bucket

    before = modified(client, f"{mode}/")
    time.sleep(1.1)  # LastModified counts seconds: a file rewritten by the re-runs gets a new one
    again = run_dedup(f"{S3}/shards/", {"toy": f"{S3}/eval/toy"}, out.location, config(mode, workers=2))
    assert again.extra["skipped_shards"] == len(SHARDS) and ray_tasks == [SHARDS]
    finals = {"overlap.parquet", "_stats.json", *(["sizes.json"] if mode == "drop" else [])}
    after = modified(client, f"{mode}/")
    assert {key for key in before if after[key] != before[key]} == finals

    for shard in ("00001", "00002"):
        out.remove(f"_parts/{shard}.stats.json")
    redone = run_dedup(f"{S3}/shards/", {"toy": f"{S3}/eval/toy"}, out.location, config(mode, workers=2))
    assert redone.extra["skipped_shards"] == len(SHARDS) - 2 and ray_tasks == [SHARDS, ["00001", "00002"]]
    changed = {key for key, stamp in modified(client, f"{mode}/").items() if after.get(key) != stamp}
    assert finals | {"_parts/00001.stats.json", "_parts/00002.stats.json"} <= changed
    assert not {key for key in changed - finals if "00001" not in key and "00002" not in key}
    assert not {key for key in changed if key.startswith("_hashes/")}  # hashes reused
    assert outputs(out, mode) == outputs(Folder(root / mode), mode)

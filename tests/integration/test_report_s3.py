"""The report of a build on ``s3://`` (moto's S3 API server on 127.0.0.1, read through fsspec's real s3fs
client), read where it is: a small real build of the mini-web (crawl to download, with synthetic training
files) made locally, uploaded, and reported from the store. ``reports/stats.json`` equals the local report's,
the page shows the same numbers and images, and nothing of the build lands on the local disk."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest
from PIL import Image
from s3server import s3_server

from flows import stages
from flows.cli import main
from flows.config import build_config
from pipeline.core.io import REMOTE_BLOCK
from pipeline.core.storage import Folder
from pipeline.report import write_report
from pipeline.report.thumbs import gallery, shard_thumbnails

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]
BUCKET = "wit-report"
URL = f"s3://{BUCKET}/build"
DATA_STAGES = ["crawl", "filter", "balance", "eval_index", "download"]
STAT = re.compile(r'data-stat="([^"]+)">([^<]*)<')
IMAGE = re.compile(r"data:image/(?:jpeg|png);base64,[A-Za-z0-9+/=]+")
TRAIN_LOG = "".join(f"2024-01-01 | INFO | Train Epoch: {e} [{n}/64 ({n * 100 // 64}%)] Data (t): 0.1 "
                    f"Batch (t): 0.2, Loss: {3 - e - n / 64:.4f} ({3.1 - e - n / 64:.4f})\n"
                    for e in range(2) for n in (16, 32, 64))


def _training_files(build: Path) -> None:
    """What training and the overlap analysis leave in a build (they are not what is tested here)."""
    run = build / "train" / "2024_01_01-run"
    run.mkdir(parents=True)
    (run / "out.log").write_text(TRAIN_LOG)
    (run / "results.jsonl").write_text("".join(json.dumps({"epoch": e, "imagenet-zeroshot-val-top1": 0.1 * e}) + "\n"
                                               for e in (1, 2)))
    (build / "train" / "results.jsonl").write_text(json.dumps({"model": "RN50", "epochs": 2, "final_loss": 1.5}) + "\n")
    acc = {"acc_all": 0.5, "acc_clean": 0.48, "acc_overlap": 0.9, "delta": 0.42, "p_value": 0.01, "ci_low": 0.1,
           "ci_high": 0.7}
    (build / "reports").mkdir()
    (build / "reports" / "overlap.json").write_text(json.dumps({"miniweb": {"n_all": 200, "n_overlap": 6,
                                                                              "overlap_pct": 3.0, **acc}}))
    Image.new("RGB", (120, 80), "navy").save(build / "reports" / "overlap.png")


@pytest.fixture(scope="module")
def local_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's build (flows.demo.demo_config) of a 150-pair mini-web, data stages only, in a local folder."""
    from flows.demo import demo_config
    from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

    root = tmp_path_factory.mktemp("report")
    web = root / "web"
    with serve_miniweb(web, port=0) as server:
        generate_miniweb(web, server.base_url, n_pairs=150, seed=3)
        cfg = build_config(demo_config(root / "build", sorted((web / "archives").glob("*.gz")), web / "eval",
                                       DATA_STAGES))
        cfg.download.number_sample_per_shard = 40  # a few shards
        for name in DATA_STAGES:
            getattr(stages, "filter_pairs" if name == "filter" else name)(cfg)
    _training_files(root / "build")
    return root


def _upload(client: Any, local: Path, prefix: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local).as_posix()}")


@pytest.fixture(scope="module")
def s3(local_build: Path) -> Iterator[Any]:
    """The build (before its report) on S3, its eval set too: the eval index's recorded source points there."""
    with s3_server(BUCKET) as client:
        _upload(client, local_build / "build", "build")
        _upload(client, local_build / "web" / "eval", "eval-set")
        store = Folder(URL)
        stats = store.read_json("eval/miniweb/_stats.json")
        stats["extra"]["source"] = f"s3://{BUCKET}/eval-set"
        store.write_json("eval/miniweb/_stats.json", stats)
        yield client


@contextlib.contextmanager
def local_writes() -> Iterator[list[str]]:
    """The local files opened for writing (Python's ``open`` audit events) while the block runs."""
    seen: list[str] = []
    active = [True]

    def hook(event: str, args: tuple) -> None:
        if event == "open" and active[0] and args[0] is not None:
            mode, flags = args[1], args[2]
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else \
                bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                seen.append(str(args[0]))

    sys.addaudithook(hook)  # audit hooks cannot be removed: this one goes quiet on exit
    try:
        yield seen
    finally:
        active[0] = False


@pytest.fixture(scope="module")
def reports(local_build: Path, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The report of the local build and of its copy on S3, and the local files written meanwhile."""
    local = write_report(local_build / "build")
    scratch = tmp_path_factory.mktemp("scratch")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(scratch))
        mp.setenv("WIT_SCRATCH", str(scratch))
        with local_writes() as written:
            remote = write_report(URL)
    store = Folder(URL)
    return {"local": local, "remote": remote, "written": written, "scratch": list(scratch.iterdir()),
            "local_stats": json.loads((local_build / "build" / "reports" / "stats.json").read_text()),
            "remote_stats": store.read_json("reports/stats.json"),
            "local_page": (local_build / "build" / "reports" / "dashboard.html").read_text(),
            "remote_page": store.read_bytes("reports/dashboard.html").decode()}


def _without_paths(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "build_dir"}


def test_stats_from_the_store_equal_the_local_report(reports: dict[str, Any]) -> None:
    local, remote = reports["local_stats"], reports["remote_stats"]
    assert remote["build_dir"] == URL and local["build_dir"] != URL
    returned = json.loads(json.dumps(reports["remote"], default=str))
    assert _without_paths(remote) == _without_paths(local) == _without_paths(returned)
    f = remote["funnel"]
    assert f["candidates"] == 150 and f["shards"] >= 3 and f["samples"] == f["downloaded"] > 0
    assert f["eval_duplicates"] and all(remote["checks"].values()), remote["checks"]
    assert remote["train"] and remote["overlap"]
    assert Folder(URL).read_bytes("reports/stats.md").decode().startswith("# Build statistics")


def test_page_from_the_store_shows_the_same_numbers_and_images(reports: dict[str, Any]) -> None:
    local, remote = reports["local_page"], reports["remote_page"]
    shown = dict(STAT.findall(remote))
    assert shown == dict(STAT.findall(local)) and len(shown) > 20
    assert shown["funnel.candidates"] == "150"
    images = IMAGE.findall(remote)
    assert sorted(images) == sorted(IMAGE.findall(local))
    pairs = remote[remote.index("<section id=dedup>"):remote.index("<section id=gallery>")]
    gallery = remote[remote.index("<section id=gallery>"):remote.index("<section id=training>")]
    assert pairs.count("class=pair>") >= 2 and len(IMAGE.findall(pairs)) == 2 * pairs.count("class=pair>")  # eval, web
    assert len(IMAGE.findall(gallery)) >= 18  # the first 6 samples of each shard
    assert "data:image/png;base64," in remote  # reports/overlap.png
    assert "<b>not run</b>" not in remote
    assert remote.count("<svg") == local.count("<svg") >= 8
    assert "Training loss" in remote and URL in remote


def test_nothing_of_the_build_is_copied_to_the_local_disk(reports: dict[str, Any]) -> None:
    assert reports["scratch"] == []
    assert reports["written"] == []  # not a part, a tar, a stats file nor the outputs (written to the store)


def test_the_audit_sees_a_copy_to_the_local_disk(s3: Any, tmp_path: Path) -> None:
    """The check above can fail: a copy of one object, as the report made before, is seen."""
    with local_writes() as written:
        Folder(URL).get("shards/00000.tar", tmp_path / "00000.tar")
    assert written == [str(tmp_path / "00000.tar")]


def test_wit_dashboard_and_stats_on_a_url(reports: dict[str, Any], capsys: pytest.CaptureFixture) -> None:
    Folder(URL).remove("reports/dashboard.html")
    assert main(["dashboard", URL]) == 0
    assert capsys.readouterr().out.strip() == f"{URL}/reports/dashboard.html"
    assert Folder(URL).exists("reports/dashboard.html")
    assert main(["dashboard", URL, "--serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--serve serves a local build directory only" in err and len(err.splitlines()) == 1
    assert main(["dashboard", f"s3://{BUCKET}/nope"]) == 2
    assert main(["stats", URL]) == 0
    assert "candidates" in capsys.readouterr().out


def test_report_stage_of_a_build_on_the_store(local_build: Path, reports: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIT_SCRATCH", str(tmp_path / "scratch"))  # where its local working copy would be
    Folder(URL).remove("reports/stats.json")
    cfg = build_config({"build_dir": URL, "stages": ["report"],
                        "eval_sets": {"miniweb": str(local_build / "web" / "eval")}})
    result = stages.report(cfg)
    assert result["build_dir"] == URL and "local_dir" not in result
    assert _without_paths(Folder(URL).read_json("reports/stats.json")) == _without_paths(reports["local_stats"])
    assert not cfg.local_root().exists()


def _big_tar(path: Path, samples: int, filler_mb: int) -> None:
    """A shard's tar: ``samples`` small samples, then one large member (as a big shard's later samples)."""
    with tarfile.open(path, "w") as tf:
        for i in range(samples):
            buf = io.BytesIO()
            Image.new("RGB", (32, 24), (40 * i % 256, 90, 160)).save(buf, "JPEG")
            for ext, data in (("jpg", buf.getvalue()), ("txt", f"sample {i}".encode())):
                info = tarfile.TarInfo(f"00000{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        filler = os.urandom(filler_mb << 20)
        info = tarfile.TarInfo("000009999.jpg")
        info.size = len(filler)
        tf.addfile(info, io.BytesIO(filler))


def test_galleries_read_only_the_start_of_a_big_tar(s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    _big_tar(tmp_path / "00000.tar", 8, 40)
    s3.upload_file(str(tmp_path / "00000.tar"), BUCKET, "big/shards/00000.tar")
    fetched: list[int] = []
    fetch = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range",
                        lambda self, start, end: fetched.append(end - start) or fetch(self, start, end))
    shards = Folder(f"s3://{BUCKET}/big/shards")
    items = gallery(shards, n=4)
    found = shard_thumbnails(shards, ["000000002", "000000005"])
    assert [i["key"] for i in items] == [f"00000{i:04d}" for i in range(4)] and all(i["uri"] for i in items)
    assert sorted(found) == ["000000002", "000000005"] and found["000000005"]["caption"] == "sample 5"
    # one read-ahead block per opening of the tar, not the 40 MiB object
    assert len(fetched) == 2 and max(fetched) < REMOTE_BLOCK + (64 << 10), fetched
    assert sum(fetched) < (tmp_path / "00000.tar").stat().st_size / 2


def test_build_summary_and_dashboard_link_of_a_build_on_the_store(reports: dict[str, Any],
                                                                  capsys: pytest.CaptureFixture) -> None:
    """What ``wit build`` prints at its end and the flow's dashboard artifact link, read from the store."""
    from flows.build_wit import _dashboard_link
    from flows.cli import _print_summary

    _print_summary(URL + "/")
    out = capsys.readouterr().out
    assert re.search(r"^candidates +150$", out, re.M) and "check downloaded == samples in shards: ok" in out
    assert f"Dashboard: {URL}/reports/dashboard.html (copy it here" in out
    link, where = _dashboard_link(URL)
    assert link == f"{URL}/reports/dashboard.html" and where.startswith(link)
    assert _dashboard_link(f"s3://{BUCKET}/nope") is None

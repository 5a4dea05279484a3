"""``train-wit`` on a real local Ray cluster: training submitted as a Ray job through the dashboard's job
server (torchrun with two CPU processes inside it, a custom model config file), waited for, then the overlap
analysis and the Prefect artifacts of the flow run."""
from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefectapi import read_artifacts
from PIL import Image

from pipeline.core.errors import WitError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_dashboard() -> Iterator[str]:
    """A fresh single-node Ray cluster of its own (``ray.cluster_utils.Cluster``, removed afterwards), with
    the dashboard's job server on 127.0.0.1. Every port is a free one, the dashboard agent's too (its default
    52365 would clash with another Ray on this machine and leave jobs with "No available agent")."""
    from ray.cluster_utils import Cluster

    saved = os.environ.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="wit-ray-")  # short: Ray's socket paths must stay under 108 bytes
    cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port(),
        "dashboard_agent_listen_port": free_port(), "temp_dir": temp_dir})
    try:
        yield f"http://{cluster.webui_url}"
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def write_build(build: Path) -> Path:
    """Two shards of coloured squares with captions (+ sizes.json), an eval ImageFolder and overlap.parquet."""
    import webdataset as wds

    shards = build / "shards"
    shards.mkdir(parents=True)
    names = list(COLOURS)
    sizes = {}
    for shard in range(2):
        with wds.TarWriter(str(shards / f"{shard:05d}.tar")) as sink:
            for i in range(32):
                colour = names[i % 4]
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), COLOURS[colour]).save(buf, "JPEG")
                sink.write({"__key__": f"{shard}{i:08d}", "jpg": buf.getvalue(), "txt": f"a {colour} square"})
        sizes[f"{shard:05d}.tar"] = 32
    (shards / "sizes.json").write_text(json.dumps(sizes))
    eval_root = build / "evalsets" / "colours"
    for name, colour in COLOURS.items():
        (eval_root / name).mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (48, 48), colour).save(eval_root / name / f"{j}.jpg")
    (build / "overlap").mkdir()
    pq.write_table(pa.table({"eval_set": ["colours", "colours"], "eval_id": ["red/0.jpg", "blue/1.jpg"],
                             "key": ["000000001", "100000002"], "distance": [0, 1]}), build / "overlap" / "overlap.parquet")
    return eval_root


def test_train_wit_flow_runs_training_as_ray_job(ray_dashboard: str, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    from flows.train_flow import train_wit
    from training import train as T
    from training.open_clip_main import MODEL_CONFIGS

    build = tmp_path / "build"
    eval_root = write_build(build)
    model_json = tmp_path / "configs" / "wit-tiny-job.json"  # a custom model config, given by path
    model_json.parent.mkdir()
    model_json.write_text((MODEL_CONFIGS / "wit-tiny.json").read_text())
    config = {
        "build_dir": str(build), "eval_sets": {"colours": str(eval_root)}, "stages": ["train", "overlap"],
        "train": {"ray_address": ray_dashboard, "device": "cpu", "model": str(model_json), "epochs": 2,
                  "batch_size": 16, "warmup": 1, "workers": 1, "nproc_per_node": 2},
        "overlap": {"templates": "simple", "batch_size": 8},
    }
    result = train_wit(config=config)

    trained = result["train"]
    assert trained["ray_job_id"].startswith("raysubmit_")
    assert (trained["launcher"], trained["world_size"], trained["model"]) == ("torchrun", 2, "wit-tiny-job")
    assert trained["steps"] == 4 and trained["samples"] == 128  # 64 samples, 16 per process, 2 processes, 2 epochs
    assert Path(trained["checkpoint"]) == build / "train" / "wit" / "checkpoints" / "epoch_2.pt"
    assert Path(trained["checkpoint"]).is_file() and len(T.read_results(build / "train")) == 1
    info = JobSubmissionClient(ray_dashboard).get_job_info(trained["ray_job_id"])
    assert str(info.status.value) == "SUCCEEDED" and "training.ray_job" in info.entrypoint

    report = json.loads((build / "reports" / "overlap.json").read_text())["colours"]
    assert (report["n_all"], report["n_overlap"], report["n_clean"]) == (12, 2, 10)
    assert {"acc_all", "acc_clean", "acc_overlap", "delta", "p_value", "ci_low", "ci_high"} <= set(report)
    assert (build / "reports" / "overlap.png").is_file() and result["overlap"]["colours"]["n_all"] == 12

    artifacts = read_artifacts(result["artifacts"])
    assert set(artifacts) == {"train-wit-overlap", "train-wit-overlap-table", "train-wit-overlap-plot",
                              "train-wit-overlap-png"}
    assert "Zero-shot accuracy on Overlap / Clean / All" in artifacts["train-wit-overlap"]["data"]
    assert "raysubmit_" in artifacts["train-wit-overlap"]["data"]
    assert artifacts["train-wit-overlap-plot"]["type"] == "image"
    assert "file://" in artifacts["train-wit-overlap-png"]["data"]  # a link artifact (stored as markdown)
    assert len({a["flow_run_id"] for a in artifacts.values()}) == 1
    table = artifacts["train-wit-overlap-table"]["data"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert rows[0]["eval_set"] == "colours" and rows[0]["n_overlap"] == 2


def test_failed_ray_job_is_one_line_error(ray_dashboard: str, tmp_path: Path) -> None:
    from training import train as T

    build = tmp_path / "build"
    write_build(build)
    cfg = T.TrainConfig(ray_address=ray_dashboard, device="cpu", model="no-such-model", epochs=1)
    with pytest.raises(T.TrainRunFailed, match=r"failed \(exit code 2\): wit train: error: .*unknown open_clip model") as err:
        T.run_train(build / "shards", build / "train", cfg, echo=lambda line: None)
    assert "\n" not in str(err.value) and not err.value.transient
    assert isinstance(err.value, WitError)

"""The train stage: open_clip launched on a tiny synthetic WebDataset shard (CPU, wit-tiny), killed and
resumed; presets, command lines (torchrun, SLURM, Ray jobs) and shard URLs as pure functions."""
from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pipeline.core.config import to_dict
from pipeline.core.errors import WitError
from training import launch as L
from training import shards as S
from training import train as T

COLORS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30)}


def write_shards(shards: Path, n: int = 64, per_shard: int = 64) -> None:
    """img2dataset-style shards of solid-colour squares with captions, plus sizes.json."""
    import webdataset as wds

    shards.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    names = list(COLORS)
    for start in range(0, n, per_shard):
        name = f"{start // per_shard:05d}.tar"
        with wds.TarWriter(str(shards / name)) as sink:
            for i in range(start, min(n, start + per_shard)):
                colour = names[i % len(names)]
                buf = io.BytesIO()
                Image.new("RGB", (40, 40), COLORS[colour]).save(buf, "JPEG")
                caption = f"a {colour} square on a grey background"
                sink.write({"__key__": f"{i:09d}", "jpg": buf.getvalue(), "txt": caption,
                            "json": json.dumps({"caption": caption, "key": f"{i:09d}"}).encode()})
        sizes[name] = min(n, start + per_shard) - start
    (shards / "sizes.json").write_text(json.dumps(sizes))


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wds") / "shards"
    write_shards(path)
    return path


def quiet(line: str) -> None:
    """Swallow open_clip's output (pytest -s would otherwise show it all)."""


FAST = dict(batch_size=4, warmup=1, workers=1, model="wit-tiny", precision="fp32", device="cpu")
REPO = Path(__file__).resolve().parents[2]


def start_training(shards: Path, out: Path, cfg: T.TrainConfig) -> subprocess.Popen:
    """``wit train`` (as the Ray job runs it) in its own process group, output piped."""
    cmd = [sys.executable, "-m", "training.ray_job", str(shards), str(out), "--config-json", json.dumps(to_dict(cfg))]
    return subprocess.Popen(cmd, cwd=REPO, env=T.subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def kill_when(proc: subprocess.Popen, marker: str) -> list[str]:
    """Read the output until a line contains ``marker``, then SIGKILL the whole process group."""
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    return seen


@pytest.mark.slow
def test_train_killed_mid_epoch_resumes_then_skips(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    # Killed (SIGKILL to the whole process group) after the first step of epoch 3 of 3 (16 steps an epoch).
    proc = start_training(shards, out, T.TrainConfig(epochs=3, **FAST))
    lines = kill_when(proc, "train: epoch 2/3 done")  # printed as the first step of epoch 3 is logged
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-5:])
    assert not (out / "wit" / "checkpoints" / "epoch_3.pt").exists()
    assert T._latest_epoch(out) == 2 and T.read_results(out) == []

    # Re-run after the kill: continues from the last finished epoch.
    second = T.run_train(shards, out, T.TrainConfig(epochs=3, **FAST), echo=quiet)
    assert Path(second.checkpoint) == out / "wit" / "checkpoints" / "epoch_3.pt"
    assert Path(second.checkpoint).is_file()
    assert (second.model, second.epochs, second.steps, second.samples) == ("wit-tiny", 3, 48, 192)
    assert second.start_epoch == 2 and not second.skipped and second.launcher == "python"
    assert second.final_loss is not None and second.final_loss > 0 and second.samples_per_s > 0
    records = T.read_results(out)
    assert len(records) == 1 and records[0]["checkpoint"] == second.checkpoint
    assert records[0]["preset"] == "cpu" and records[0]["start_epoch"] == 2

    # Finished: a re-run is skipped without launching open_clip.
    third = T.run_train(shards, out, T.TrainConfig(epochs=3, **FAST), echo=quiet)
    assert third.skipped and third.checkpoint == second.checkpoint and third.final_loss == second.final_loss
    assert len(T.read_results(out)) == 1
    assert T.latest_checkpoint(out) == (second.checkpoint, "wit-tiny")

    # Fewer epochs than trained: an earlier final checkpoint is reused, else the run refuses.
    with pytest.raises(WitError, match="already trained to epoch 3"):
        T.run_train(shards, out, T.TrainConfig(epochs=2, **FAST), echo=quiet)
    (out / "wit" / "checkpoints" / "epoch_2.pt").write_bytes(Path(second.checkpoint).read_bytes())
    assert T.run_train(shards, out, T.TrainConfig(epochs=2, **FAST), echo=quiet).skipped


def test_trainer_without_checkpoint_is_one_line_error(shards: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Judged by what open_clip wrote, not by its exit code: a trainer that exits without the checkpoint fails.
    fake = [sys.executable, "-c", "print('Loss: 1.0 (2.5)'); print('open_clip refused\\nreally'); raise SystemExit(3)"]
    monkeypatch.setattr(L, "launch_command", lambda *a, **k: fake)
    with pytest.raises(T.TrainRunFailed, match=r"no final checkpoint \(exit code 3\): really") as err:
        T.run_train(shards, tmp_path / "train", T.TrainConfig(epochs=1, **FAST), echo=quiet)
    assert "\n" not in str(err.value) and not err.value.transient
    assert not (tmp_path / "train" / T.RESULTS_FILE).exists()
    # Unknown models are caught before anything is launched.
    with pytest.raises(WitError, match="unknown open_clip model"):
        T.run_train(shards, tmp_path / "train2", T.TrainConfig(epochs=1, **{**FAST, "model": "no-such-model"}))
    with pytest.raises(WitError, match="model config file not found"):
        T.run_train(shards, tmp_path / "train2", T.TrainConfig(epochs=1, **{**FAST, "model": "nope/x.json"}))
    assert T.TrainRunFailed("killed", -9).transient and not T.TrainRunFailed("bad", 2).transient


def test_missing_shards_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="no epoch_<n>.pt checkpoint"):
        T.latest_checkpoint(tmp_path)
    with pytest.raises(WitError, match="nope/sizes.json: not found .run the download stage first"):
        T.run_train(tmp_path / "nope", tmp_path / "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WitError, match="sizes.json"):
        T.run_train(tmp_path / "empty", tmp_path / "train")
    (tmp_path / "empty" / "sizes.json").write_text('{"00000.tar": 5}')
    with pytest.raises(WitError, match="00000.tar: listed in sizes.json but missing"):
        T.run_train(tmp_path / "empty", tmp_path / "train")
    with pytest.raises(WitError, match="train.epochs: expected an integer >= 1"):
        T.run_train(tmp_path / "empty", tmp_path / "train", T.TrainConfig(epochs=0))
    with pytest.raises(WitError, match="train.preset: expected one of auto"):
        T.run_train(tmp_path / "empty", tmp_path / "train", T.TrainConfig(preset="huge"))
    (tmp_path / "empty" / "sizes.json").write_text("{}")
    with pytest.raises(WitError, match="no samples"):
        T.read_shards(tmp_path / "empty")
    with pytest.raises(WitError, match="set train_num_samples"):
        S.resolve_shards(None, T.TrainConfig(shard_urls=["s3://bucket/{0..3}.tar"]))


def test_shard_pattern_and_steps(tmp_path: Path) -> None:
    base = str(tmp_path.resolve())
    assert T.shard_pattern(tmp_path, ["00000.tar"]) == f"{base}/00000.tar"
    assert T.shard_pattern(tmp_path, ["00000.tar", "00001.tar", "00002.tar"]) == f"{base}/{{00000..00002}}.tar"
    assert T.shard_pattern(tmp_path, ["00000.tar", "00002.tar"]) == f"{base}/{{00000,00002}}.tar"
    assert T.shard_pattern("s3://b/shards/", ["00000.tar", "00001.tar"]) == "s3://b/shards/{00000..00001}.tar"
    assert T.batches_per_epoch(700, 64, 1) == 11
    assert T.batches_per_epoch(700, 64, 2) == 12  # rounded up to whole shares per worker
    assert T.batches_per_epoch(10, 64, 1) == 1
    assert T.batches_per_epoch(700, 64, 1, world_size=4) == 3  # per device: ceil(700 / 256)


def test_shard_urls_and_fsspec_pipe(shards: Path, tmp_path: Path) -> None:
    py = "/usr/bin/python3"
    assert S.webdataset_url("s3://b/x/{00000..00003}.tar", py) == "pipe:/usr/bin/python3 -m training.fscat s3://b/x/{00000..00003}.tar"
    assert S.webdataset_url("https://h/x.tar", py) == "https://h/x.tar"
    assert S.webdataset_url("pipe:aws s3 cp s3://b/x.tar -", py) == "pipe:aws s3 cp s3://b/x.tar -"
    assert S.webdataset_url(f"file://{tmp_path}/x.tar", py) == f"{tmp_path}/x.tar"
    assert S.webdataset_url("/data/{0..1}.tar", py) == "/data/{0..1}.tar"
    listed = S.resolve_shards(None, T.TrainConfig(shard_urls=["s3://b/{0..3}.tar", "/d/a.tar"], train_num_samples=500), py)
    assert listed.train_data == "pipe:/usr/bin/python3 -m training.fscat s3://b/{0..3}.tar::/d/a.tar"
    assert (listed.n_samples, listed.n_shards) == (500, 5)
    by_url = S.resolve_shards(f"file://{shards}", T.TrainConfig())
    assert by_url.train_data == f"{shards.resolve()}/00000.tar" and (by_url.n_samples, by_url.n_shards) == (64, 1)
    fs_url = S.resolve_shards(f"local://{shards}", T.TrainConfig(), py)  # sizes.json read through fsspec
    assert fs_url.train_data.startswith("pipe:/usr/bin/python3 -m training.fscat local://") and fs_url.n_samples == 64

    # The fsspec pipe feeds webdataset like a local file.
    import webdataset as wds

    url = S.webdataset_url(f"local://{shards}/00000.tar", sys.executable)
    env = {k: v for k, v in T.subprocess_env().items() if k == "PYTHONPATH"}
    os.environ.setdefault("PYTHONPATH", env["PYTHONPATH"])
    keys = [s["__key__"] for s in wds.WebDataset([url], shardshuffle=False)]
    assert len(keys) == 64 and keys[0] == "000000000"


def test_presets_cpu_and_clip() -> None:
    from open_clip_train.params import parse_args

    cpu = T.plan_training(T.TrainConfig(), 700, 2, cuda=False)
    assert (cpu.preset, cpu.model, cpu.precision, cpu.device) == ("cpu", "wit-tiny", "fp32", "cpu")
    assert (cpu.epochs, cpu.batch_size, cpu.lr, cpu.wd, cpu.warmup, cpu.accum_freq) == (15, 64, 2e-3, 0.1, 30, 1)
    assert (cpu.beta1, cpu.beta2, cpu.eps) == (None, None, None)

    # The CLIP paper's ViT-B/32 recipe on GPUs: global batch 32,768 through gradient accumulation.
    n = 10_000_000
    gpu1 = T.plan_training(T.TrainConfig(), n, 1000, cuda=True, world_size=1)
    assert (gpu1.preset, gpu1.model, gpu1.precision, gpu1.device) == ("clip", "ViT-B-32", "amp_bf16", "cuda")
    assert (gpu1.epochs, gpu1.batch_size, gpu1.lr, gpu1.wd, gpu1.warmup) == (32, 256, 5e-4, 0.2, 2000)
    assert (gpu1.beta1, gpu1.beta2, gpu1.eps) == (0.9, 0.98, 1e-6)
    assert (gpu1.accum_freq, gpu1.global_batch) == (128, 32768)
    gpu8 = T.plan_training(T.TrainConfig(), n, 1000, cuda=True, world_size=8)
    assert (gpu8.accum_freq, gpu8.global_batch) == (16, 32768)
    assert gpu8.steps_per_epoch == math.ceil(n / (256 * 8)) // 16  # open_clip drops the partial accumulation
    assert T.plan_training(T.TrainConfig(), 1000, 4, cuda=True, bf16=False).precision == "amp"
    small = T.plan_training(T.TrainConfig(), 1000, 4, cuda=True)  # 4 batches: one optimizer step per epoch
    assert (small.accum_freq, small.steps_per_epoch) == (4, 1)
    mine = T.plan_training(T.TrainConfig(preset="clip", batch_size=128, lr=1e-3, global_batch=0), n, 10, cuda=False)
    assert (mine.device, mine.precision, mine.batch_size, mine.lr, mine.accum_freq, mine.wd) == ("cpu", "fp32", 128, 1e-3, 1, 0.2)
    with pytest.raises(WitError, match="2 shard"):
        T.plan_training(T.TrainConfig(), n, 2, cuda=True, world_size=4)
    assert T.plan_training(T.TrainConfig(workers=8), n, 16, cuda=True, world_size=4).workers == 4

    cfg = T.TrainConfig(extra_args=["--grad-clip-norm", "1.0"])
    args = T.open_clip_args("x/{00000..00001}.tar", n, Path("/tmp/o"), cfg, gpu1)
    parsed = parse_args(args)  # open_clip's own parser accepts every flag
    assert (parsed.accum_freq, parsed.batch_size, parsed.beta1, parsed.beta2, parsed.eps) == (128, 256, 0.9, 0.98, 1e-6)
    assert (parsed.lr, parsed.wd, parsed.warmup, parsed.lr_scheduler, parsed.precision) == (5e-4, 0.2, 2000, "cosine", "amp_bf16")
    assert parsed.train_num_samples == n and parsed.resume == "latest" and parsed.save_most_recent
    assert args[-2:] == ["--grad-clip-norm", "1.0"] and parsed.grad_clip_norm == 1.0
    cpu_args = T.open_clip_args("x.tar", 700, Path("/tmp/o"), T.TrainConfig(), cpu)
    assert "--accum-freq" not in cpu_args and "--beta1" not in cpu_args


@pytest.mark.slow
def test_temperature_init_is_clip_0_07() -> None:
    import open_clip

    from training.open_clip_main import register_model_configs

    register_model_configs()
    model = open_clip.create_model("wit-tiny")
    assert float(model.logit_scale.detach().exp()) == pytest.approx(1 / 0.07, rel=1e-5)


def test_custom_model_config_file(tmp_path: Path) -> None:
    from training.open_clip_main import MODEL_CONFIGS, _resolve_model_arg

    path = tmp_path / "configs" / "my-tiny.json"
    path.parent.mkdir()
    path.write_text((MODEL_CONFIGS / "wit-tiny.json").read_text())
    assert T.resolve_auto(T.TrainConfig(model=str(path)), cuda=False)[0] == "my-tiny"
    env = T.model_config_env(str(path), tmp_path / "out")
    assert (tmp_path / "out" / "wit" / "model_configs" / "my-tiny.json").is_file()
    T.check_model(str(path), env)
    assert T.model_config_env("ViT-B-32", tmp_path / "out") == {}
    assert _resolve_model_arg(["--model", str(path), "--epochs", "1"]) == ["--model", "my-tiny", "--epochs", "1"]
    import open_clip

    assert "my-tiny" in open_clip.list_models()


def test_launch_single_multi_gpu_and_nodes() -> None:
    cfg = T.TrainConfig()
    assert L.resolve_launch(cfg, {}, n_gpus=0) == L.Launch("python")
    assert L.resolve_launch(cfg, {}, n_gpus=1) == L.Launch("python")
    four = L.resolve_launch(cfg, {}, n_gpus=4)
    assert four == L.Launch("torchrun", 4, 1, 4, 0, "")
    py = "/venv/bin/python"
    assert L.launch_command(four, ["--epochs", "1"], cfg, py) == [
        py, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone",
        "-m", "training.open_clip_main", "--", "--epochs", "1"]
    assert L.launch_command(L.Launch("python"), ["--epochs", "1"], cfg, py) == [
        py, "-m", "training.open_clip_main", "--epochs", "1"]
    forced = L.resolve_launch(T.TrainConfig(launcher="torchrun"), {}, n_gpus=1)
    assert (forced.launcher, forced.nproc_per_node) == ("torchrun", 1)
    with pytest.raises(WitError, match="launcher=python runs one process"):
        L.resolve_launch(T.TrainConfig(launcher="python"), {}, n_gpus=2)

    # Several nodes: c10d rendezvous at the option's endpoint or MASTER_ADDR:MASTER_PORT; a static one (node 0 is
    # rank 0) when the node rank is known.
    nodes = T.TrainConfig(nnodes=2, nproc_per_node=8, rdzv_id="job7")
    with pytest.raises(WitError, match="rdzv_endpoint"):
        L.resolve_launch(nodes, {}, n_gpus=8)
    two = L.resolve_launch(nodes, {"MASTER_ADDR": "10.0.0.1"}, n_gpus=8)
    assert (two.world_size, two.rdzv_endpoint) == (16, "10.0.0.1:29500")
    assert L.launch_command(two, ["--epochs", "1"], nodes, py)[:13] == [
        py, "-m", "torch.distributed.run", "--nproc-per-node", "8", "--nnodes", "2", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", "10.0.0.1:29500", "--rdzv-id", "job7"]
    second = L.resolve_launch(nodes, {"MASTER_ADDR": "10.0.0.1", "SLURM_NODEID": "1"}, n_gpus=8)
    assert not second.primary and second.rank == 8
    assert L.launch_command(second, [], nodes, py)[5:13] == [
        "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29500"]
    explicit = L.resolve_launch(T.TrainConfig(nnodes=2, rdzv_endpoint="head:1234"), {"MASTER_ADDR": "x"}, n_gpus=2)
    assert explicit.rdzv_endpoint == "head:1234" and explicit.world_size == 4

    # Started by an outer torchrun or srun: open_clip joins that job (env passed through), rank 0 writes.
    outer = L.resolve_launch(cfg, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, n_gpus=8)
    assert outer == L.Launch("external", 1, 1, 8, 3) and not outer.primary
    slurm = {"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"}
    with pytest.raises(WitError, match="export MASTER_ADDR"):
        L.resolve_launch(cfg, slurm, n_gpus=8)
    on_slurm = L.resolve_launch(cfg, {**slurm, "MASTER_ADDR": "n1"}, n_gpus=8)
    assert (on_slurm.launcher, on_slurm.world_size, on_slurm.primary) == ("external", 16, True)
    assert L.resolve_launch(cfg, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, n_gpus=4).launcher == "torchrun"


def test_cpu_threads_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert T.cpu_threads_env("cpu", 1, 1, {}) == {"OMP_NUM_THREADS": "8"}
    assert T.cpu_threads_env("cpu", 2, 3, {}) == {"OMP_NUM_THREADS": "2"}
    assert T.cpu_threads_env("cpu", 8, 8, {}) == {"OMP_NUM_THREADS": "1"}
    assert T.cpu_threads_env("cuda", 1, 1, {}) == {} and T.cpu_threads_env("cpu", 1, 1, {"OMP_NUM_THREADS": "3"}) == {}


def test_ray_job_submission_is_wit_train(tmp_path: Path) -> None:
    cfg = T.TrainConfig(ray_address="http://head:8265", epochs=2, extra_args=["--grad-clip-norm", "1"],
                        ray_python="/opt/venv/bin/python", ray_runtime_env={"env_vars": {"NCCL_DEBUG": "INFO"}})
    job = L.job_submission(tmp_path / "shards", "s3://b/train", cfg)
    argv = __import__("shlex").split(job["entrypoint"])
    assert argv[:5] == ["/opt/venv/bin/python", "-m", "training.ray_job", str((tmp_path / "shards").resolve()), "s3://b/train"]
    sent = json.loads(argv[argv.index("--config-json") + 1])
    assert sent["ray_address"] == "" and sent["epochs"] == 2 and sent["extra_args"] == ["--grad-clip-norm", "1"]
    assert job["entrypoint_num_gpus"] == 1.0  # device auto: the job goes to a GPU node
    env = job["runtime_env"]["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "disabled" and env["NCCL_DEBUG"] == "INFO"
    assert L.ray_job_gpus(T.TrainConfig(device="cpu")) == 0
    assert L.ray_job_gpus(T.TrainConfig(nproc_per_node=4)) == 4
    assert L.ray_job_gpus(T.TrainConfig(ray_gpus=2, device="cpu")) == 2
    logs = "noise\nWIT_TRAIN_RESULT " + json.dumps(T.TrainResult("/o/epoch_2.pt", "wit-tiny", 2, 4, 64, 1.5).to_dict())
    assert L.parse_job_result(logs) == T.TrainResult("/o/epoch_2.pt", "wit-tiny", 2, 4, 64, 1.5)
    assert L.parse_job_result("no result") is None
    with pytest.raises(WitError, match="not reachable"):
        L.run_train_on_ray(tmp_path, tmp_path / "o", T.TrainConfig(ray_address="http://127.0.0.1:9"))


def test_parse_loss_and_speed() -> None:
    line = ("2026-01-01,00:00:00 | INFO | Train Epoch: 0 [704/704 (100%)] Data (t): 0.002 Batch (t): 0.251, "
            "127.289/s, 63.6446/s/gpu LR: 0.000733 "
            "Logit Scale: 14.268 Contrastive_loss: 3.3267 (3.7999) Loss: 3.3267 (3.7999)")
    assert T.parse_loss(line) == pytest.approx(3.7999)
    assert T.parse_speed(line) == pytest.approx(127.289)
    assert T.parse_loss("Start epoch 0") is None and T.parse_speed("Start epoch 0") is None


@pytest.mark.slow
def test_wit_train_cli_options_build_the_config() -> None:
    from flows.cli import make_parser
    from pipeline.core.config import config_from_args

    args = make_parser().parse_args(["train", "shards", "out", "--preset", "clip", "--nproc-per-node", "8",
                                     "--shard-urls", "s3://b/{0..9}.tar", "--ray-address", "http://h:8265"])
    cfg = config_from_args(T.TrainConfig, args)
    assert (cfg.preset, cfg.nproc_per_node, cfg.shard_urls, cfg.ray_address) == ("clip", 8, ["s3://b/{0..9}.tar"], "http://h:8265")
    assert cfg.epochs is None and cfg.extra_args == []  # unset: from the preset
    assert config_from_args(T.TrainConfig, make_parser().parse_args(["train", "s", "o"])) == T.TrainConfig()


def test_pull_training_copies_only_the_latest_checkpoint(tmp_path: Path) -> None:
    """The overlap analysis of a build on a store copies the most-trained checkpoint, not every epoch's."""
    import uuid

    from pipeline.core.storage import Folder

    store = Folder(f"memory://wit-test-{uuid.uuid4().hex[:8]}/train")
    for epoch in (1, 2, 10):
        store.write_bytes(f"{T.EXPERIMENT}/checkpoints/epoch_{epoch}.pt", b"weights")
    store.write_bytes(f"{T.EXPERIMENT}/params.txt", b"model: wit-tiny\n")
    store.write_bytes(f"{T.EXPERIMENT}/out.log", b"log")
    T.pull_training(store.location, tmp_path / "train")
    assert T.finished_epochs(tmp_path / "train") == [10]
    assert (tmp_path / "train" / T.EXPERIMENT / "params.txt").is_file()
    assert not (tmp_path / "train" / T.EXPERIMENT / "out.log").exists()

"""The ``train`` stage: contrastive training with open_clip on the WebDataset shards.

open_clip runs in a subprocess (``python -m training.open_clip_main``, which registers our model configs;
under ``torchrun`` for several GPUs or nodes, see :mod:`training.launch`) with its output streamed through,
or as a Ray job on a cluster's GPU node when ``ray_address`` is set. Success is judged by the checkpoint
open_clip writes (``out_dir/wit/checkpoints/epoch_<epochs>.pt``), not by its exit code: open_clip returns
quietly when it refuses to run. Every launch passes ``--resume latest`` with ``--save-most-recent``, so a
killed run continues from its last finished epoch, a run asked for more epochs continues from the last one,
and a run whose final checkpoint exists is skipped.

Options left unset come from a preset: ``cpu`` (wit-tiny, trains in minutes on a laptop) or ``clip`` (the
CLIP paper's ViT-B/32 recipe for GPUs: global batch 32,768 through gradient accumulation, lr 5e-4, wd 0.2,
2,000 warm-up steps, cosine schedule, Adam betas (0.9, 0.98), eps 1e-6, bf16 autocast; temperature init
0.07 is open_clip's default logit scale).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.config import field, to_dict
from pipeline.errors import WitError
from pipeline.io import atomic_path
from training.open_clip_main import MODEL_CONFIG_DIRS_ENV, OFFLINE_ENV, is_config_file, model_config_name
from training.shards import SIZES_FILE, ShardSet, is_url, read_shards, resolve_shards, shard_pattern  # noqa: F401

EXPERIMENT = "wit"
RESULTS_FILE = "results.jsonl"
RUN_MODEL_CONFIGS = "model_configs"  # copies of custom model configs, in out_dir/wit/
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(model="wit-tiny", epochs=15, batch_size=64, global_batch=0, lr=2e-3, wd=0.1, warmup=30,
                beta1=None, beta2=None, eps=None),
    "clip": dict(model="ViT-B-32", epochs=32, batch_size=256, global_batch=32768, lr=5e-4, wd=0.2, warmup=2000,
                 beta1=0.9, beta2=0.98, eps=1e-6),
}
PRESET_FIELDS = ("epochs", "batch_size", "global_batch", "lr", "wd", "warmup", "beta1", "beta2", "eps")
_LOSS_RE = re.compile(r"\bLoss: [-+0-9.eEnaif]+ \(([-+0-9.eEnaif]+)\)")
_SPEED_RE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.eE+]+)/s,")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class TrainConfig:
    """Options of ``wit train``; with nothing set they train ``wit-tiny`` on CPU in a few minutes."""

    preset: str = field("auto", help="defaults for the options left unset: cpu (wit-tiny, minutes on a laptop) "
                        "or clip (CLIP's ViT-B/32 recipe); auto: clip on CUDA, cpu otherwise")
    model: str = field("auto", help="open_clip model name, or a model config JSON file (its folder is "
                       "registered); auto: the preset's (ViT-B-32 / wit-tiny)")
    epochs: int | None = field(None, help="passes over the shards (cpu 15, clip 32)")
    batch_size: int | None = field(None, help="batch size per device (cpu 64, clip 256)")
    global_batch: int | None = field(None, help="contrastive batch over all devices and gradient-accumulation "
                                     "steps (open_clip --accum-freq); 0: no accumulation (cpu 0, clip 32768)")
    lr: float | None = field(None, help="peak learning rate (cpu 2e-3, clip 5e-4)")
    wd: float | None = field(None, help="AdamW weight decay (cpu 0.1, clip 0.2)")
    warmup: int | None = field(None, help="warm-up steps (cpu 30, clip 2000)")
    beta1: float | None = field(None, help="Adam beta1 (clip 0.9; cpu: open_clip's default)")
    beta2: float | None = field(None, help="Adam beta2 (clip 0.98; cpu: open_clip's default)")
    eps: float | None = field(None, help="Adam epsilon (clip 1e-6; cpu: open_clip's default)")
    lr_scheduler: str = field("cosine", help="open_clip learning-rate schedule: cosine, const, const-cooldown")
    workers: int = field(1, help="data-loader worker processes per device (capped by the shards per device)")
    seed: int = field(0, help="random seed")
    precision: str = field("auto", help="open_clip precision; auto: amp_bf16 on CUDA (amp without bf16), fp32 on CPU")
    device: str = field("auto", help="cuda, cpu or auto")
    shard_urls: list[str] = field([], help="WebDataset shards to train on instead of the shards folder: local paths, "
                              "brace patterns, fsspec URLs (s3://, gs://, file://...), http(s):// or pipe:")
    train_num_samples: int = field(0, help="samples per epoch; 0: the sum of the shards folder's sizes.json")
    launcher: str = field("auto", help="python, torchrun or auto (torchrun for several processes or nodes; "
                          "under an outer torchrun/srun, open_clip joins that job)")
    nproc_per_node: int = field(0, help="training processes per node; 0: every visible GPU (1 on CPU)")
    nnodes: int = field(1, help="nodes (torchrun --nnodes); > 1 needs rdzv_endpoint or MASTER_ADDR; with "
                                 "$NODE_RANK or $SLURM_NODEID set the rendezvous is static (node 0 is rank 0 and "
                                 "writes the checkpoints), else c10d ranks nodes as they arrive")
    rdzv_endpoint: str = field("", help="HOST:PORT of the rendezvous for several nodes; "
                               "empty: $MASTER_ADDR:$MASTER_PORT")
    rdzv_id: str = field("wit-train", help="rendezvous id shared by the nodes of one job")
    ray_address: str = field("", help="Ray dashboard address (http://HEAD:8265): run training as a Ray job on a "
                             "cluster GPU node, wait for it; empty: on this machine")
    ray_gpus: float = field(-1.0, help="GPUs the Ray job asks for; -1: nproc_per_node (at least 1), 0 with device cpu")
    ray_python: str = field("", help="python on the Ray node that runs the job; empty: this interpreter's path")
    ray_runtime_env: dict = field({}, help="extra Ray runtime_env for the job (merged over the offline env vars)")
    extra_args: list[str] = field([], help="further open_clip_train arguments, passed through last")


@dataclasses.dataclass
class TrainResult:
    """What a training run produced; ``steps``/``samples`` count all epochs, including resumed ones."""

    checkpoint: str
    model: str
    epochs: int
    steps: int
    samples: int
    final_loss: float | None  # mean loss of the last epoch trained, when open_clip's log shows it
    start_epoch: int = 0  # epoch this run resumed from (0: fresh)
    skipped: bool = False  # the final checkpoint already existed; nothing was run
    wall_s: float = 0.0
    samples_per_s: float | None = None  # median training throughput open_clip logged (all devices)
    world_size: int = 1
    global_batch: int = 0
    accum_freq: int = 1
    launcher: str = "python"
    primary: bool = True  # False on the ranks/nodes that do not write checkpoints
    ray_job_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainPlan:
    """Every choice of a run, with the ``auto`` and preset values decided."""

    preset: str
    model: str
    precision: str
    device: str
    epochs: int
    batch_size: int
    accum_freq: int
    global_batch: int
    lr: float
    wd: float
    warmup: int
    beta1: float | None
    beta2: float | None
    eps: float | None
    workers: int
    world_size: int
    batches_per_epoch: int

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.accum_freq

    @property
    def samples_per_epoch(self) -> int:
        return self.batches_per_epoch * self.batch_size * self.world_size


# ---------------------------------------------------------------- configuration (pure functions)

def validate(cfg: TrainConfig) -> None:
    """One-line errors for option values open_clip would fail on obscurely."""
    if cfg.preset not in ("auto", *PRESETS):
        raise WitError(f"train: unknown preset {cfg.preset!r}; known: auto, {', '.join(PRESETS)}")
    for name in ("epochs", "batch_size", "nnodes"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise WitError(f"train: {name} must be at least 1, got {value}")
    if (cfg.lr is not None and cfg.lr <= 0) or (cfg.warmup or 0) < 0 or cfg.workers < 0 or (cfg.global_batch or 0) < 0:
        raise WitError(f"train: need lr > 0 and warmup, workers, global_batch >= 0 "
                       f"(got {cfg.lr}, {cfg.warmup}, {cfg.workers}, {cfg.global_batch})")
    if cfg.launcher not in ("auto", "python", "torchrun"):
        raise WitError(f"train: launcher must be auto, python or torchrun, got {cfg.launcher!r}")
    if cfg.nproc_per_node < 0 or cfg.train_num_samples < 0:
        raise WitError("train: nproc_per_node and train_num_samples must be >= 0")
    if cfg.model.endswith(".json") and not is_config_file(cfg.model):
        raise WitError(f"{cfg.model}: model config file not found")


def on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def resolve_device(cfg: TrainConfig, cuda: bool) -> str:
    return cfg.device if cfg.device != "auto" else ("cuda" if cuda else "cpu")


def resolve_preset(cfg: TrainConfig, device: str) -> str:
    return cfg.preset if cfg.preset != "auto" else ("clip" if on_cuda(device) else "cpu")


def resolve_auto(cfg: TrainConfig, cuda: bool | None = None, bf16: bool = True) -> tuple[str, str, str]:
    """(model, precision, device) with the ``auto`` values decided by whether CUDA (with bf16) is present."""
    if cuda is None:
        cuda, _, bf16 = detect_cuda()
    device = resolve_device(cfg, cuda)
    preset = PRESETS[resolve_preset(cfg, device)]
    model = model_config_name(cfg.model) if cfg.model != "auto" else preset["model"]
    gpu_precision = "amp_bf16" if bf16 else "amp"
    precision = cfg.precision if cfg.precision != "auto" else (gpu_precision if on_cuda(device) else "fp32")
    return model, precision, device


def batches_per_epoch(n_samples: int, batch_size: int, workers: int, world_size: int = 1) -> int:
    """Batches per device and epoch as open_clip's WebDataset loader computes them (rounded up to whole
    global batches and whole worker shares)."""
    n_workers = max(1, workers)
    return math.ceil(math.ceil(n_samples / (batch_size * world_size)) / n_workers) * n_workers


def plan_training(cfg: TrainConfig, n_samples: int, n_shards: int, cuda: bool, world_size: int = 1,
                  bf16: bool = True) -> TrainPlan:
    """Decide every value of a run: preset defaults for unset options, workers capped so that each device's
    loader workers have a shard, and gradient accumulation reaching ``global_batch`` (capped at one optimizer
    step per epoch on a small data set)."""
    model, precision, device = resolve_auto(cfg, cuda, bf16)
    preset = resolve_preset(cfg, device)
    value = {name: getattr(cfg, name) if getattr(cfg, name) is not None else PRESETS[preset][name]
             for name in PRESET_FIELDS}
    if n_shards < world_size:
        raise WitError(f"train: {n_shards} shard(s) for {world_size} training processes; "
                       "each process needs at least one shard")
    workers = max(0, min(cfg.workers, n_shards // world_size))
    batch = value["batch_size"]
    batches = batches_per_epoch(n_samples, batch, workers, world_size)
    wanted = max(1, round(value["global_batch"] / (batch * world_size))) if value["global_batch"] else 1
    accum = max(1, min(wanted, batches))
    return TrainPlan(preset, model, precision, device, value["epochs"], batch, accum, batch * world_size * accum,
                     value["lr"], value["wd"], value["warmup"], value["beta1"], value["beta2"], value["eps"],
                     workers, world_size, batches)


def open_clip_args(train_data: str, n_samples: int, out_dir: Path, cfg: TrainConfig, plan: TrainPlan) -> list[str]:
    """The argument list for ``open_clip_train.main``."""
    args = [
        "--train-data", train_data, "--dataset-type", "webdataset", "--train-num-samples", str(n_samples),
        "--logs", str(out_dir), "--name", EXPERIMENT, "--model", plan.model, "--precision", plan.precision,
        "--device", plan.device, "--epochs", str(plan.epochs), "--batch-size", str(plan.batch_size),
        "--lr", str(plan.lr), "--wd", str(plan.wd), "--warmup", str(plan.warmup),
        "--lr-scheduler", cfg.lr_scheduler, "--workers", str(plan.workers), "--seed", str(cfg.seed),
        "--save-frequency", "0", "--save-most-recent", "--resume", "latest",
        "--log-every-n-steps", "10", "--report-to", "",
    ]
    if plan.accum_freq > 1:
        args += ["--accum-freq", str(plan.accum_freq)]
    for name in ("beta1", "beta2", "eps"):
        if getattr(plan, name) is not None:
            args += [f"--{name}", str(getattr(plan, name))]
    return args + [str(a) for a in cfg.extra_args]


# ---------------------------------------------------------------- running open_clip

def detect_cuda() -> tuple[bool, int, bool]:
    """(CUDA available, visible GPU count, bf16 supported)."""
    import torch

    if not torch.cuda.is_available():
        return False, 0, False
    return True, torch.cuda.device_count(), bool(torch.cuda.is_bf16_supported())


def cpu_threads_env(device: str, processes: int, workers: int, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """On CPU, ``OMP_NUM_THREADS`` so that the trainer processes and their loader workers share the cores
    instead of oversubscribing them (torch's default thread count per process makes a loaded 2-core
    machine several times slower); nothing on GPUs or when the user set it."""
    if on_cuda(device) or "OMP_NUM_THREADS" in env:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // (processes * (1 + workers))))}


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment (so torchrun/SLURM variables pass through), offline, with the repo importable."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **OFFLINE_ENV, **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def parse_loss(line: str) -> float | None:
    """The running mean loss in one of open_clip's ``Train Epoch`` lines, else None."""
    match = _LOSS_RE.search(line)
    if not match:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def parse_speed(line: str) -> float | None:
    """Samples/s (all devices) in one of open_clip's ``Train Epoch`` lines, else None."""
    match = _SPEED_RE.search(line)
    return float(match.group(1)) if match else None


def _echo(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


@dataclasses.dataclass
class RunLog:
    """What a streamed command left: exit code, last loss and throughputs seen, last output line."""

    returncode: int
    last_loss: float | None
    last_line: str
    speeds: list[float]

    @property
    def samples_per_s(self) -> float | None:
        return round(statistics.median(self.speeds), 2) if self.speeds else None


def stream_command(cmd: list[str], cwd: Path, echo: Callable[[str], None] = _echo,
                   env: Mapping[str, str] | None = None) -> RunLog:
    """Run ``cmd``, echoing its merged output line by line; the child is killed if we are interrupted."""
    log = RunLog(0, None, "", [])
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(cmd, cwd=cwd, env=subprocess_env(env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                echo(line)
                if line.strip():
                    tail.append(line.strip())
                loss, speed = parse_loss(line), parse_speed(line)
                log.last_loss = loss if loss is not None else log.last_loss
                if speed is not None:
                    log.speeds.append(speed)
        except BaseException:
            proc.kill()
            raise
        log.returncode = proc.wait()
    log.last_line = tail[-1] if tail else ""
    return log


# ---------------------------------------------------------------- the run folder

def checkpoint_dir(out_dir: str | Path) -> Path:
    """Where open_clip writes this experiment's checkpoints."""
    return Path(out_dir) / EXPERIMENT / "checkpoints"


def finished_epochs(out_dir: str | Path) -> list[int]:
    """Epoch numbers of the ``epoch_<n>.pt`` checkpoints present, sorted."""
    found = (re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in checkpoint_dir(out_dir).glob("epoch_*.pt"))
    return sorted(int(m.group(1)) for m in found if m)


def read_results(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``results.jsonl`` (one per training run), oldest first."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(out_dir: str | Path, record: dict[str, Any]) -> None:
    """Add one JSON line to ``results.jsonl`` (rewritten atomically)."""
    path = Path(out_dir) / RESULTS_FILE
    old = path.read_text() if path.is_file() else ""
    with atomic_path(path) as tmp:
        tmp.write_text(old + json.dumps(record, sort_keys=True, default=str) + "\n")


def _previous_result(out_dir: Path, checkpoint: Path) -> dict[str, Any]:
    runs = [r for r in read_results(out_dir) if r.get("checkpoint") == str(checkpoint)]
    return runs[-1] if runs else {}


def _latest_epoch(out_dir: Path) -> int:
    """The epoch a resumed run starts from: that of ``epoch_latest.pt`` (0 when there is none)."""
    latest = checkpoint_dir(out_dir) / "epoch_latest.pt"
    if not latest.is_file():
        return 0
    import torch

    return int(torch.load(latest, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))


def model_config_env(model: str, out_dir: Path, copy: bool = True) -> dict[str, str]:
    """For a model config file: copy it into the run (``copy``; so evaluation finds it later) and return the
    env that registers its folder in the trainer; nothing for a registered model name."""
    if not is_config_file(model):
        return {}
    run_configs = out_dir / EXPERIMENT / RUN_MODEL_CONFIGS
    if copy:
        run_configs.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_configs / Path(model).name) as tmp:
            shutil.copyfile(model, tmp)
    folders = [str(Path(model).resolve().parent), str(run_configs), os.environ.get(MODEL_CONFIG_DIRS_ENV, "")]
    return {MODEL_CONFIG_DIRS_ENV: os.pathsep.join(f for f in folders if f)}


def known_models(extra_dirs: list[str]) -> set[str]:
    """open_clip's model config names and ours, read from the config folders (no open_clip import)."""
    import importlib.util

    from training.open_clip_main import MODEL_CONFIGS

    spec = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in (spec.submodule_search_locations or [])] if spec else []
    folders += [MODEL_CONFIGS, *(Path(d) for d in extra_dirs)]
    return {p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.json")}


def check_model(model: str, extra_env: Mapping[str, str]) -> None:
    """A one-line error for a model open_clip does not know (before a trainer starts); ``hf-hub:`` and
    ``local-dir:`` names are left to open_clip."""
    folders = extra_env.get(MODEL_CONFIG_DIRS_ENV, os.environ.get(MODEL_CONFIG_DIRS_ENV, ""))
    dirs = [d for d in folders.split(os.pathsep) if d]
    name = model_config_name(model)
    if ":" not in name and name not in known_models(dirs):
        raise WitError(f"train: model {model!r}: unknown open_clip model (not a model name or config .json file)")


def _skip_result(out_dir: Path, final: Path, plan: TrainPlan, steps: int) -> TrainResult:
    from training.zeroshot import model_name_from_run

    previous = _previous_result(out_dir, final)
    return TrainResult(str(final), model_name_from_run(final) or plan.model, plan.epochs, steps,
                       plan.samples_per_epoch * plan.epochs, previous.get("final_loss"), start_epoch=plan.epochs,
                       skipped=True, samples_per_s=previous.get("samples_per_s"), world_size=plan.world_size,
                       global_batch=plan.global_batch, accum_freq=plan.accum_freq)


def _plan_here(cfg: TrainConfig, shards: ShardSet) -> tuple[Any, TrainPlan]:
    """(launch, plan) on this machine: its GPUs (none looked for with device=cpu) and environment."""
    from training.launch import resolve_launch

    cuda, n_gpus, bf16 = detect_cuda() if cfg.device != "cpu" else (False, 0, False)
    launch = resolve_launch(cfg, os.environ, n_gpus if on_cuda(resolve_device(cfg, cuda)) else 0)
    return launch, plan_training(cfg, shards.n_samples, shards.n_shards, cuda, launch.world_size, bf16)


def _previous_run(out_dir: Path, plan: TrainPlan) -> TrainResult | None:
    """The result of a finished run with these epochs (skip), None to train; an error if trained further."""
    final = checkpoint_dir(out_dir) / f"epoch_{plan.epochs}.pt"
    if final.is_file():
        return _skip_result(out_dir, final, plan, plan.steps_per_epoch * plan.epochs)
    done = finished_epochs(out_dir)
    if done and done[-1] > plan.epochs:
        raise WitError(f"{checkpoint_dir(out_dir)}: already trained to epoch {done[-1]} > epochs={plan.epochs}; "
                       "use a new output folder or more epochs")
    return None


def _judge(result: TrainResult, log: RunLog, launch: Any) -> TrainResult:
    """Success is the final checkpoint open_clip wrote (ranks/nodes that write none may exit 0)."""
    if Path(result.checkpoint).is_file():
        return result
    if log.returncode == 0 and (not launch.primary or launch.nnodes > 1):
        return dataclasses.replace(result, checkpoint="", primary=False)
    raise TrainRunFailed(f"{result.checkpoint}: open_clip wrote no final checkpoint (exit code {log.returncode}): "
                         f"{log.last_line[:300]}", log.returncode)


def run_train(shards_dir: str | Path | None, out_dir: str | Path, cfg: TrainConfig | None = None,
              echo: Callable[[str], None] = _echo) -> TrainResult:
    """Train on ``shards_dir`` (or ``cfg.shard_urls``) with open_clip into ``out_dir``; resume or skip a previous
    run there. With ``cfg.ray_address`` the same runs as a Ray job on the cluster (see training.launch)."""
    from training import launch as L

    cfg = cfg or TrainConfig()
    validate(cfg)
    if cfg.ray_address:
        return L.run_train_on_ray(shards_dir, out_dir, cfg, echo)
    shards = resolve_shards(shards_dir, cfg)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    launch, plan = _plan_here(cfg, shards)
    previous = _previous_run(out_dir, plan)
    if previous is not None:
        return previous
    env = model_config_env(cfg.model, out_dir, copy=launch.primary)
    check_model(cfg.model if cfg.model != "auto" else plan.model, env)
    env.update(cpu_threads_env(plan.device, launch.nproc_per_node, plan.workers))
    start_epoch, t0 = _latest_epoch(out_dir), time.monotonic()
    args = open_clip_args(shards.train_data, shards.n_samples, out_dir, cfg, plan)
    log = stream_command(L.launch_command(launch, args, cfg), out_dir, echo, env)
    result = _judge(TrainResult(
        str(checkpoint_dir(out_dir) / f"epoch_{plan.epochs}.pt"), plan.model, plan.epochs,
        plan.steps_per_epoch * plan.epochs, plan.samples_per_epoch * plan.epochs, log.last_loss,
        start_epoch=start_epoch, wall_s=round(time.monotonic() - t0, 2), samples_per_s=log.samples_per_s,
        world_size=plan.world_size, global_batch=plan.global_batch, accum_freq=plan.accum_freq,
        launcher=launch.launcher, primary=launch.primary), log, launch)
    if result.primary:
        append_result(out_dir, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result.to_dict(),
                                "shards": shards.n_shards, "train_num_samples": shards.n_samples,
                                "precision": plan.precision, "device": plan.device, "preset": plan.preset,
                                "config": to_dict(cfg)})
    return result


class TrainRunFailed(WitError):
    """The trainer ended without its final checkpoint; ``transient`` when it was killed (by a signal or a
    lost Ray node), so that a retry resumes from the latest checkpoint."""

    def __init__(self, message: str, returncode: int | None = None, transient: bool | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.transient = bool(returncode is not None and returncode < 0) if transient is None else transient


def latest_checkpoint(train_dir: str | Path) -> tuple[str, str]:
    """(checkpoint, model name) of the most-trained ``epoch_<n>.pt`` in a training folder of :func:`run_train`."""
    from training.zeroshot import model_name_from_run

    epochs = finished_epochs(train_dir)
    if not epochs:
        raise WitError(f"{checkpoint_dir(train_dir)}: no epoch_<n>.pt checkpoint (run the train stage first)")
    checkpoint = checkpoint_dir(train_dir) / f"epoch_{epochs[-1]}.pt"
    model = model_name_from_run(checkpoint)
    if model is None:
        raise WitError(f"{Path(train_dir) / EXPERIMENT / 'params.txt'}: no 'model' line; pass the model name")
    return str(checkpoint), model

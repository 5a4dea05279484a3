"""The ``train`` stage: contrastive training with open_clip on the WebDataset shards.

Entry point: :func:`run_train` runs ``python -m training.open_clip_main`` (locally, under torchrun or as a Ray
job, see :mod:`training.launch`), judges success by the final checkpoint and resumes from the latest one;
unset options come from the ``cpu`` or ``clip`` preset. Details: docs/training.md ("The train stage")."""
from __future__ import annotations

import contextlib
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

from pipeline.core.config import to_dict
from pipeline.core.errors import WitError
from pipeline.core.io import atomic_path
from pipeline.core.storage import Folder, local_copy
from training import launch as L
from training.config import (EXPERIMENT, PRESET_FIELDS, PRESETS, REPO_ROOT, RESULTS_FILE, TrainConfig, TrainResult,  # noqa: F401
                             TrainRunFailed, echo_line)
from training.progress import TrainProgress
from training.open_clip_main import (MODEL_CONFIG_DIRS_ENV, MODEL_CONFIGS, OFFLINE_ENV, is_config_file, model_config_name,
                                     model_name_from_run)
from training.shards import SIZES_FILE, ShardSet, is_url, read_shards, resolve_shards, shard_pattern  # noqa: F401

RUN_MODEL_CONFIGS = "model_configs"  # copies of custom model configs, in out_dir/wit/
_LOSS_RE = re.compile(r"\bLoss: [-+0-9.eEnaif]+ \(([-+0-9.eEnaif]+)\)")
_SPEED_RE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.eE+]+)/s,")


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


def stream_command(cmd: list[str], cwd: Path, echo: Callable[[str], None] = echo_line,
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
    previous = _previous_result(out_dir, final)
    return TrainResult(str(final), model_name_from_run(final) or plan.model, plan.epochs, steps,
                       plan.samples_per_epoch * plan.epochs, previous.get("final_loss"), start_epoch=plan.epochs,
                       skipped=True, samples_per_s=previous.get("samples_per_s"), world_size=plan.world_size,
                       global_batch=plan.global_batch, accum_freq=plan.accum_freq)


def _plan_here(cfg: TrainConfig, shards: ShardSet) -> tuple[Any, TrainPlan]:
    """(launch, plan) on this machine: its GPUs (none looked for with device=cpu) and environment."""
    cuda, n_gpus, bf16 = detect_cuda() if cfg.device != "cpu" else (False, 0, False)
    launch = L.resolve_launch(cfg, os.environ, n_gpus if on_cuda(resolve_device(cfg, cuda)) else 0)
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
              echo: Callable[[str], None] | None = None) -> TrainResult:
    """Train on ``shards_dir`` (or ``cfg.shard_urls``) with open_clip into ``out_dir``; resume or skip a previous
    run there. With ``cfg.ray_address`` the same runs as a Ray job on the cluster (see training.launch)."""
    cfg = cfg or TrainConfig()  # checked when built (TrainConfig.__post_init__)
    if cfg.ray_address:
        return L.run_train_on_ray(shards_dir, out_dir, cfg, echo or echo_line)
    if is_url(str(out_dir)):
        return _train_to_store(shards_dir, str(out_dir), cfg, echo)
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
    with TrainProgress(out_dir, plan.epochs) if echo is None else contextlib.nullcontext(echo) as show:
        log = stream_command(L.launch_command(launch, args, cfg), out_dir, show, env)
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


def _train_to_store(shards_dir: str | Path | None, url: str, cfg: TrainConfig,
                    echo: Callable[[str], None] | None) -> TrainResult:
    """Train into a folder on a store: open_clip writes to this machine's working copy of it (first filled from
    the store, so a run on another machine resumes from its checkpoints), which the primary copies there after.
    The result names the checkpoint by its URL."""
    store, local = Folder(url), local_copy(url, "train")
    if not local.is_dir():
        store.pull("", local)
    result = run_train(shards_dir, local, cfg, echo)
    if result.primary:
        store.push(local)
    checkpoint = Path(result.checkpoint)
    if checkpoint.is_relative_to(local):
        result = dataclasses.replace(result, checkpoint=store.loc(checkpoint.relative_to(local).as_posix()))
    return result


def pull_training(url: str, local: str | Path) -> Path:
    """Copy a training folder on a store to ``local`` for :func:`latest_checkpoint`: everything but the older
    checkpoints (only the most-trained ``epoch_<n>.pt`` is needed) and the logs."""
    store = Folder(url)
    names = store.names(f"{EXPERIMENT}/checkpoints", "epoch_*.pt")
    epochs = {int(m.group(1)): n for n in names if (m := re.fullmatch(r"epoch_(\d+)\.pt", n))}
    older = tuple(n for e, n in epochs.items() if e != max(epochs, default=0))
    return store.pull("", local, skip=older + ("*.log",))


def latest_checkpoint(train_dir: str | Path) -> tuple[str, str]:
    """(checkpoint, model name) of the most-trained ``epoch_<n>.pt`` in a training folder of :func:`run_train`."""
    epochs = finished_epochs(train_dir)
    if not epochs:
        raise WitError(f"{checkpoint_dir(train_dir)}: no epoch_<n>.pt checkpoint (run the train stage first)")
    checkpoint = checkpoint_dir(train_dir) / f"epoch_{epochs[-1]}.pt"
    model = model_name_from_run(checkpoint)
    if model is None:
        raise WitError(f"{Path(train_dir) / EXPERIMENT / 'params.txt'}: no 'model' line; pass the model name")
    return str(checkpoint), model

"""The ``train`` stage: contrastive training with open_clip on the WebDataset shards.

open_clip runs in a subprocess (``python -m training.open_clip_main``, which registers our model configs)
with its output streamed through. Success is judged by the checkpoint open_clip writes
(``out_dir/wit/checkpoints/epoch_<epochs>.pt``), not by its exit code: open_clip returns quietly when it
refuses to run. Every launch passes ``--resume latest`` with ``--save-most-recent``, so a killed run
continues from its last finished epoch, a run asked for more epochs continues from the last one, and a run
whose final checkpoint exists is skipped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from pipeline.config import field, to_dict
from pipeline.errors import WitError
from pipeline.io import atomic_path
from training.open_clip_main import OFFLINE_ENV

EXPERIMENT = "wit"
RESULTS_FILE = "results.jsonl"
SIZES_FILE = "sizes.json"
GPU_MODEL, GPU_PRECISION = "ViT-B-32", "amp_bf16"
CPU_MODEL, CPU_PRECISION = "wit-tiny", "fp32"
_LOSS_RE = re.compile(r"\bLoss: [-+0-9.eEnaif]+ \(([-+0-9.eEnaif]+)\)")
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class TrainConfig:
    """Options of ``wit train``; the defaults train ``wit-tiny`` on CPU in a few minutes."""

    model: str = field("auto", help="open_clip model name; auto: ViT-B-32 on CUDA, wit-tiny on CPU")
    epochs: int = field(15, help="passes over the shards")
    batch_size: int = field(64, help="batch size per device")
    lr: float = field(2e-3, help="peak learning rate (cosine schedule)")
    wd: float = field(0.1, help="AdamW weight decay")
    warmup: int = field(30, help="warm-up steps")
    workers: int = field(1, help="data-loader worker processes (capped at the number of shards)")
    seed: int = field(0, help="random seed")
    precision: str = field("auto", help="open_clip precision; auto: amp_bf16 on CUDA, fp32 on CPU")
    device: str = field("auto", help="cuda, cpu or auto")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate(cfg: TrainConfig) -> None:
    """One-line errors for option values open_clip would fail on obscurely."""
    for name in ("epochs", "batch_size"):
        if getattr(cfg, name) < 1:
            raise WitError(f"train: {name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.lr <= 0 or cfg.warmup < 0 or cfg.workers < 0:
        raise WitError(f"train: need lr > 0, warmup >= 0 and workers >= 0 (got {cfg.lr}, {cfg.warmup}, {cfg.workers})")


def read_shards(shards_dir: str | Path) -> tuple[list[str], int]:
    """The shard file names listed in ``sizes.json`` and their total sample count."""
    shards_dir = Path(shards_dir)
    sizes_path = shards_dir / SIZES_FILE
    if not shards_dir.is_dir():
        raise WitError(f"{shards_dir}: shards folder not found (run the download stage first)")
    if not sizes_path.is_file():
        raise WitError(f"{sizes_path}: not found; the shards folder needs img2dataset's sizes.json")
    try:
        sizes = json.loads(sizes_path.read_text())
    except json.JSONDecodeError as exc:
        raise WitError(f"{sizes_path}: not valid JSON ({exc.msg})") from None
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        raise WitError(f"{sizes_path}: expected {{\"00000.tar\": n_samples, ...}}")
    names = sorted(Path(k).name for k in sizes)
    missing = [n for n in names if not (shards_dir / n).is_file()]
    if missing:
        raise WitError(f"{shards_dir / missing[0]}: listed in sizes.json but missing ({len(missing)} missing)")
    total = sum(sizes.values())
    if not names or total <= 0:
        raise WitError(f"{sizes_path}: no samples to train on")
    return names, total


def shard_pattern(shards_dir: str | Path, names: list[str]) -> str:
    """A brace pattern for ``--train-data``: ``dir/{00000..00007}.tar`` when contiguous, else ``dir/{a,b}.tar``."""
    stems = [Path(n).stem for n in names]
    base = str(Path(shards_dir).resolve())
    if len(stems) == 1:
        return f"{base}/{names[0]}"
    width = len(stems[0])
    contiguous = all(s.isdigit() and len(s) == width for s in stems) and \
        [int(s) for s in stems] == list(range(int(stems[0]), int(stems[0]) + len(stems)))
    if contiguous:
        return f"{base}/{{{stems[0]}..{stems[-1]}}}.tar"
    return f"{base}/{{{','.join(stems)}}}.tar"


def resolve_auto(cfg: TrainConfig, cuda: bool | None = None) -> tuple[str, str, str]:
    """(model, precision, device) with the ``auto`` values decided by whether CUDA is present."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    device = cfg.device if cfg.device != "auto" else ("cuda" if cuda else "cpu")
    on_gpu = device.startswith("cuda")
    model = cfg.model if cfg.model != "auto" else (GPU_MODEL if on_gpu else CPU_MODEL)
    precision = cfg.precision if cfg.precision != "auto" else (GPU_PRECISION if on_gpu else CPU_PRECISION)
    return model, precision, device


def batches_per_epoch(n_samples: int, batch_size: int, workers: int) -> int:
    """Steps per epoch as open_clip's WebDataset loader computes them (rounded up to whole worker shares)."""
    n_workers = max(1, workers)
    return math.ceil(math.ceil(n_samples / batch_size) / n_workers) * n_workers


def open_clip_args(train_data: str, n_samples: int, out_dir: Path, cfg: TrainConfig,
                   model: str, precision: str, device: str, workers: int) -> list[str]:
    """The argument list for ``open_clip_train.main``."""
    args = [
        "--train-data", train_data, "--dataset-type", "webdataset", "--train-num-samples", str(n_samples),
        "--logs", str(out_dir), "--name", EXPERIMENT, "--model", model, "--precision", precision,
        "--device", device, "--epochs", str(cfg.epochs), "--batch-size", str(cfg.batch_size),
        "--lr", str(cfg.lr), "--wd", str(cfg.wd), "--warmup", str(cfg.warmup), "--workers", str(workers),
        "--seed", str(cfg.seed), "--save-frequency", "0", "--save-most-recent", "--resume", "latest",
        "--log-every-n-steps", "10", "--report-to", "",
    ]
    return args + [str(a) for a in cfg.extra_args]


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
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


def _echo(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def stream_command(cmd: list[str], cwd: Path, echo: Callable[[str], None] = _echo) -> tuple[int, float | None, str]:
    """Run ``cmd``, echoing its merged output line by line; return (exit code, last loss seen, last line)."""
    last_loss: float | None = None
    tail: deque[str] = deque(maxlen=20)
    with subprocess.Popen(cmd, cwd=cwd, env=_subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line)
            if line.strip():
                tail.append(line.strip())
            loss = parse_loss(line)
            last_loss = loss if loss is not None else last_loss
        rc = proc.wait()
    return rc, last_loss, (tail[-1] if tail else "")


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


def _previous_loss(out_dir: Path, checkpoint: Path) -> float | None:
    runs = [r for r in read_results(out_dir) if r.get("checkpoint") == str(checkpoint)]
    return runs[-1].get("final_loss") if runs else None


def _latest_epoch(out_dir: Path) -> int:
    """The epoch a resumed run starts from: that of ``epoch_latest.pt`` (0 when there is none)."""
    latest = checkpoint_dir(out_dir) / "epoch_latest.pt"
    if not latest.is_file():
        return 0
    import torch

    return int(torch.load(latest, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))


def run_train(shards_dir: str | Path, out_dir: str | Path, cfg: TrainConfig | None = None,
              echo: Callable[[str], None] = _echo) -> TrainResult:
    """Train on ``shards_dir`` with open_clip into ``out_dir``; resume or skip a previous run there."""
    cfg = cfg or TrainConfig()
    validate(cfg)
    names, n_samples = read_shards(shards_dir)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, precision, device = resolve_auto(cfg)
    workers = max(0, min(cfg.workers, len(names)))
    steps = batches_per_epoch(n_samples, cfg.batch_size, workers) * cfg.epochs
    final = checkpoint_dir(out_dir) / f"epoch_{cfg.epochs}.pt"
    done = finished_epochs(out_dir)
    if final.is_file():
        from training.zeroshot import model_name_from_run

        return TrainResult(str(final), model_name_from_run(final) or model, cfg.epochs, steps, steps * cfg.batch_size,
                           _previous_loss(out_dir, final), start_epoch=cfg.epochs, skipped=True)
    if done and done[-1] > cfg.epochs:
        raise WitError(f"{checkpoint_dir(out_dir)}: already trained to epoch {done[-1]} > epochs={cfg.epochs}; "
                       "use a new output folder or more epochs")
    start_epoch = _latest_epoch(out_dir)
    args = open_clip_args(shard_pattern(shards_dir, names), n_samples, out_dir, cfg, model, precision, device, workers)
    t0 = time.monotonic()
    rc, loss, last = stream_command([sys.executable, "-m", "training.open_clip_main", *args], out_dir, echo)
    if not final.is_file():
        raise WitError(f"{final}: open_clip wrote no final checkpoint (exit code {rc}): {last[:300]}")
    result = TrainResult(str(final), model, cfg.epochs, steps, steps * cfg.batch_size, loss,
                         start_epoch=start_epoch, wall_s=round(time.monotonic() - t0, 2))
    append_result(out_dir, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **result.to_dict(),
                            "shards": len(names), "train_num_samples": n_samples, "precision": precision,
                            "device": device, "config": to_dict(cfg)})
    return result


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

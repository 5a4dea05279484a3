"""Options and results of ``wit train``: :class:`TrainConfig` (checked when built), :class:`TrainResult`."""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from pipeline.core.config import Config, field
from pipeline.core.errors import WitError
from training.open_clip_main import is_config_file

EXPERIMENT = "wit"
RESULTS_FILE = "results.jsonl"
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(model="wit-tiny", epochs=15, batch_size=64, global_batch=0, lr=2e-3, wd=0.1, warmup=30,
                beta1=None, beta2=None, eps=None),
    "clip": dict(model="ViT-B-32", epochs=32, batch_size=256, global_batch=32768, lr=5e-4, wd=0.2, warmup=2000,
                 beta1=0.9, beta2=0.98, eps=1e-6),
}
PRESET_FIELDS = ("epochs", "batch_size", "global_batch", "lr", "wd", "warmup", "beta1", "beta2", "eps")
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class TrainConfig(Config, section="train"):
    """Options of ``wit train``; with nothing set they train ``wit-tiny`` on CPU in a few minutes. Checked when
    built (field bounds, then :meth:`check`)."""

    preset: str = field("auto", help="defaults for the options left unset: cpu (wit-tiny, minutes on a laptop) "
                        "or clip (CLIP's ViT-B/32 recipe); auto: clip on CUDA, cpu otherwise",
                        choices=("auto", *PRESETS))
    model: str = field("auto", help="open_clip model name, or a model config JSON file (its folder is "
                       "registered); auto: the preset's (ViT-B-32 / wit-tiny)")
    epochs: int | None = field(None, help="passes over the shards (cpu 15, clip 32)", min=1)
    batch_size: int | None = field(None, help="batch size per device (cpu 64, clip 256)", min=1)
    global_batch: int | None = field(None, help="contrastive batch over all devices and gradient-accumulation "
                                     "steps (open_clip --accum-freq); 0: no accumulation (cpu 0, clip 32768)", min=0)
    lr: float | None = field(None, help="peak learning rate (cpu 2e-3, clip 5e-4)", gt=0)
    wd: float | None = field(None, help="AdamW weight decay (cpu 0.1, clip 0.2)")
    warmup: int | None = field(None, help="warm-up steps (cpu 30, clip 2000)", min=0)
    beta1: float | None = field(None, help="Adam beta1 (clip 0.9; cpu: open_clip's default)")
    beta2: float | None = field(None, help="Adam beta2 (clip 0.98; cpu: open_clip's default)")
    eps: float | None = field(None, help="Adam epsilon (clip 1e-6; cpu: open_clip's default)")
    lr_scheduler: str = field("cosine", help="open_clip learning-rate schedule: cosine, const, const-cooldown",
                              choices=("cosine", "const", "const-cooldown"))
    workers: int = field(1, help="data-loader worker processes per device (capped by the shards per device)", min=0)
    seed: int = field(0, help="random seed")
    precision: str = field("auto", help="open_clip precision; auto: amp_bf16 on CUDA (amp without bf16), fp32 on CPU")
    device: str = field("auto", help="cuda, cpu or auto")
    shard_urls: list[str] = field([], help="WebDataset shards to train on instead of the shards folder: local paths, "
                              "brace patterns, fsspec URLs (s3://, gs://, file://...), http(s):// or pipe:")
    train_num_samples: int = field(0, help="samples per epoch; 0: the sum of the shards folder's sizes.json", min=0)
    launcher: str = field("auto", help="python, torchrun or auto (torchrun for several processes or nodes; "
                          "under an outer torchrun/srun, open_clip joins that job)",
                          choices=("auto", "python", "torchrun"))
    nproc_per_node: int = field(0, help="training processes per node; 0: every visible GPU (1 on CPU)", min=0)
    nnodes: int = field(1, help="nodes (torchrun --nnodes); > 1 needs rdzv_endpoint or MASTER_ADDR; with "
                                 "$NODE_RANK or $SLURM_NODEID set the rendezvous is static (node 0 is rank 0 and "
                                 "writes the checkpoints), else c10d ranks nodes as they arrive", min=1)
    rdzv_endpoint: str = field("", help="HOST:PORT of the rendezvous for several nodes; "
                               "empty: $MASTER_ADDR:$MASTER_PORT")
    rdzv_id: str = field("wit-train", help="rendezvous id shared by the nodes of one job")
    ray_address: str = field("", help="Ray dashboard address (http://HEAD:8265): run training as a Ray job on a "
                             "cluster GPU node, wait for it; empty: on this machine")
    ray_gpus: float = field(-1.0, help="GPUs the Ray job asks for; -1: nproc_per_node (at least 1), 0 with device cpu")
    ray_python: str = field("", help="python on the Ray node that runs the job; empty: this interpreter's path")
    ray_runtime_env: dict = field({}, help="extra Ray runtime_env for the job (merged over the offline env vars)")
    extra_args: list[str] = field([], help="further open_clip_train arguments, passed through last")

    def check(self) -> None:
        """What open_clip or the launcher would fail on obscurely, or only after a build's earlier stages ran."""
        if self.model.endswith(".json") and not is_config_file(self.model):
            self.fail("model", f"model config file not found: {self.model}")
        if self.ray_address and self.nnodes > 1:
            self.fail("nnodes", f"a Ray job runs on one node, got nnodes={self.nnodes} with ray_address; for "
                                "several nodes use torchrun or srun (nnodes, rdzv_endpoint)")


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


class TrainRunFailed(WitError):
    """The trainer ended without its final checkpoint; ``transient`` when it was killed (by a signal or a
    lost Ray node), so that a retry resumes from the latest checkpoint."""

    def __init__(self, message: str, returncode: int | None = None, transient: bool | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.transient = bool(returncode is not None and returncode < 0) if transient is None else transient


def echo_line(line: str) -> None:
    """The default echo of a trainer's output lines: this process's stdout."""
    sys.stdout.write(line)
    sys.stdout.flush()

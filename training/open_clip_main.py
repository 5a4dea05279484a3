"""open_clip_train's entry point with wit-builder's model configs registered.

Run as ``python -m training.open_clip_main ARGS`` (the same ARGS as ``python -m open_clip_train.main``); registers
``training/model_configs``, ``$WIT_MODEL_CONFIG_DIRS`` and ``--model path/to/config.json`` files' folders.
Details: docs/training.md ("Model configs")."""
from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path
from typing import Any

MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
MODEL_CONFIG_DIRS_ENV = "WIT_MODEL_CONFIG_DIRS"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def model_name_from_run(checkpoint: str | Path) -> str | None:
    """The ``model`` recorded in open_clip's ``params.txt`` beside ``<run>/checkpoints/<ckpt>.pt``."""
    params = Path(checkpoint).resolve().parent.parent / "params.txt"
    if not params.is_file():
        return None
    for line in params.read_text().splitlines():
        key, _, value = line.partition(": ")
        if key == "model":
            return value.strip()
    return None


def register_model_configs(*extra: str | Path) -> None:
    """Make ``wit-tiny``, the configs of ``$WIT_MODEL_CONFIG_DIRS`` and ``extra`` folders known to open_clip
    (idempotent)."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIG_PATHS

    env_dirs = [d for d in os.environ.get(MODEL_CONFIG_DIRS_ENV, "").split(os.pathsep) if d]
    for folder in (MODEL_CONFIGS, *env_dirs, *extra):
        path = Path(folder).resolve()
        if path not in _MODEL_CONFIG_PATHS:
            open_clip.add_model_config(path)


def is_config_file(model: str) -> bool:
    """Whether ``model`` names a model config JSON file rather than a registered model."""
    return model.endswith(".json") and Path(model).is_file()


def model_config_name(model: str) -> str:
    """The open_clip model name of ``model``: the file's stem for a config JSON file, else ``model``."""
    return Path(model).stem if is_config_file(model) else model


def _resolve_model_arg(argv: list[str]) -> list[str]:
    """Register the folder of a ``--model FILE.json`` and replace it by the model's name."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--model" and is_config_file(out[i + 1]):
            register_model_configs(Path(out[i + 1]).parent)
            out[i + 1] = model_config_name(out[i + 1])
    return out


def allow_cpu_ddp() -> None:
    """open_clip wraps the model in DDP with ``device_ids=[device]``, which torch refuses for CPU modules;
    drop CPU device ids so several CPU processes (gloo) can train together, as tests and CPU nodes do."""
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel
    if getattr(ddp, "_wit_cpu_ok", False):
        return

    class CpuDDP(ddp):  # type: ignore[misc, valid-type]
        _wit_cpu_ok = True

        def __init__(self, module: Any, device_ids: Any = None, *args: Any, **kwargs: Any) -> None:
            if device_ids and all(torch.device(d).type == "cpu" for d in device_ids):
                device_ids = None
            super().__init__(module, device_ids, *args, **kwargs)

    torch.nn.parallel.DistributedDataParallel = CpuDDP  # type: ignore[misc]


def quiet_torch_exit_logs() -> None:
    """open_clip's logging setup puts every logger at INFO, so torch's own exit hooks (dynamo's compile
    statistics, once per rank) would print a dozen lines after training; raise torch's loggers to WARNING
    just before those hooks run (atexit runs the last registered first)."""
    import torch._dynamo  # noqa: F401  (its exit hooks must be registered before ours)

    def quiet() -> None:
        for name in list(logging.root.manager.loggerDict):
            if name.startswith("torch"):
                logging.getLogger(name).setLevel(logging.WARNING)

    atexit.register(quiet)


def _distributed_on_cpu(argv: list[str]) -> bool:
    device = argv[argv.index("--device") + 1] if "--device" in argv[:-1] else "cuda"
    return device == "cpu" and int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))) > 1


def main(argv: list[str] | None = None) -> int:
    """Register our model configs, then run open_clip's trainer with ``argv``."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    register_model_configs()
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = _resolve_model_arg(argv[1:] if argv[:1] == ["--"] else argv)  # torchrun ... -m MODULE -- ARGS
    if _distributed_on_cpu(argv):
        allow_cpu_ddp()
    from open_clip_train.main import main as open_clip_train_main

    quiet_torch_exit_logs()

    result = open_clip_train_main(argv)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""open_clip_train's entry point with wit-builder's model configs registered.

Run as ``python -m training.open_clip_main ARGS`` (the same ARGS as ``python -m open_clip_train.main``);
``training.train.run_train`` launches it in a subprocess.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def register_model_configs() -> None:
    """Make ``wit-tiny`` and the other configs in ``training/model_configs`` known to open_clip (idempotent)."""
    import open_clip
    from open_clip.factory import _MODEL_CONFIG_PATHS

    if MODEL_CONFIGS not in _MODEL_CONFIG_PATHS:
        open_clip.add_model_config(MODEL_CONFIGS)


def main(argv: list[str] | None = None) -> int:
    """Register our model configs, then run open_clip's trainer with ``argv``."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    register_model_configs()
    from open_clip_train.main import main as open_clip_train_main

    result = open_clip_train_main(sys.argv[1:] if argv is None else argv)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The environment of an offline machine: telemetry and update checks off, here and in Ray workers."""
from __future__ import annotations

import os

#: No network but package registries: telemetry and update checks off, in this process (before anything
#: imports those libraries) and in Ray workers.
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "WANDB_MODE": "disabled",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def set_quiet_env() -> None:
    """:data:`QUIET_ENV` as defaults of this process's environment (values already set win)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)

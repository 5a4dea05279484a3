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


#: Variables the object-store clients read (endpoint, credentials, region, fsspec options): a Ray worker gets
#: the driver's, so its tasks reach the store the driver reaches (a worker of a cluster does not inherit them).
STORE_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_")


def worker_env() -> dict[str, str]:
    """The Ray workers' environment: :data:`QUIET_ENV` and this process's object-store variables."""
    return {**QUIET_ENV, **{k: v for k, v in os.environ.items() if k.startswith(STORE_ENV_PREFIXES)}}


def cluster_address(address: str = "") -> str:
    """The Ray cluster a stage was given: its ``ray_address`` option, else ``$RAY_ADDRESS`` ("" for none)."""
    return address or os.environ.get("RAY_ADDRESS", "")

"""The one way stages start or join Ray: the caller's Ray when initialised, else the cluster at ``address``
(or ``$RAY_ADDRESS``), else a local Ray with ``num_cpus`` CPUs that is shut down afterwards."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Mapping

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


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int = 0, env_vars: Mapping[str, str] | None = None
                ) -> Iterator[None]:
    """Ray for the duration of the block. ``num_cpus`` 0 means every core. ``env_vars`` become the workers'
    runtime environment (telemetry and update checks off); leave it out where worker start-up time matters,
    as a runtime_env makes Ray prepare one per job."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(env_vars)}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()

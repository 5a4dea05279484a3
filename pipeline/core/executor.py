"""The executor: how stages start or join Ray (:func:`ray_session`: the caller's Ray, else the cluster at
``address`` or ``$RAY_ADDRESS``, else a local Ray shut down afterwards) and run their parts as bounded Ray
tasks with declared resources (:func:`submit_bounded`)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, Iterable, Iterator, Mapping

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


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one task of a stage needs; Ray schedules by it (declared per stage, not hard-coded)."""

    cpus: float = 1.0
    memory_mb: int = 0  # 0: not declared
    retries: int = 0  # Ray re-runs a task this often when it raises or its worker dies

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "max_retries": self.retries,
                                   "retry_exceptions": self.retries > 0}
        if self.memory_mb:
            options["memory"] = self.memory_mb << 20
        return options


def submit_bounded(tasks: Iterable[tuple[Callable[..., Any], Any]], resources: Resources, *shared: Any,
                   per_slot: int = 2) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(item, *shared)`` for every ``(fn, item)`` as Ray tasks, at most ``per_slot`` tasks per
    schedulable slot in flight (so a listing of 100,000 files never queues 100,000 tasks); yield
    ``(item, ObjectRef)`` as tasks finish. ``shared`` objects are put in the object store once."""
    import ray

    remotes: dict[Callable[..., Any], Any] = {}
    refs = [ray.put(obj) for obj in shared]
    slots = ray.cluster_resources().get("CPU", 1) / max(resources.cpus, 1e-3)
    window = max(2, int(per_slot * slots))
    queue, pending = iter(tasks), {}
    while True:
        while len(pending) < window and (task := next(queue, None)) is not None:
            fn, item = task
            if fn not in remotes:
                remotes[fn] = ray.remote(**resources.ray_options())(fn)
            pending[remotes[fn].remote(item, *refs)] = item
        if not pending:
            return
        [ref], _ = ray.wait(list(pending), num_returns=1)
        yield pending.pop(ref), ref

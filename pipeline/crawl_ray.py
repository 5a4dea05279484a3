"""Crawl archives in parallel on Ray: one task per archive, each streaming its archive into its own part.

A local Ray sized to the machine by default; ``CrawlConfig.ray_address`` or ``$RAY_ADDRESS`` for a
cluster (whose workers must see ``out_dir``: a shared filesystem). At most two tasks per worker slot are
in flight, so a listing of 100,000 archives does not queue 100,000 tasks. A task returns None or the
one-line reason its archive is unreadable; a worker that dies (e.g. killed for memory) fails its archive
the same way once Ray's retries are spent, and the crawl goes on.
"""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from pipeline.crawl import STAGE, CrawlConfig, crawl_job
from pipeline.raysession import QUIET_ENV, ray_session


def crawl_on_ray(jobs: list[tuple[str, str]], cfg: CrawlConfig) -> list[str]:
    """Run ``crawl_job(source, part, cfg)`` for every job on Ray; return the failure messages."""
    import ray

    with ray_session(cfg.ray_address, cfg.workers, QUIET_ENV):
        slots = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(num_cpus=1)(crawl_job)
        cfg_ref = ray.put(cfg)
        pending: dict[Any, str] = {}
        failed: list[str] = []
        queue = iter(jobs)
        with tqdm(total=len(jobs), desc=STAGE, unit="file", file=sys.stderr,
                  disable=not (cfg.progress and sys.stderr.isatty())) as bar:
            while True:
                for source, part in queue:
                    pending[task.remote(source, part, cfg_ref)] = source
                    if len(pending) >= 2 * slots:
                        break
                if not pending:
                    return failed
                ready, _ = ray.wait(list(pending), num_returns=1)
                source = pending.pop(ready[0])
                message = _result(ready[0], source)
                if message is not None:
                    failed.append(message)
                bar.update(1)


def _result(ref: Any, source: str) -> str | None:
    """A task's result; a worker that died becomes a failed archive, other errors propagate."""
    import ray

    try:
        return ray.get(ref)
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError) as exc:
        return f"{source}: crawl worker died ({type(exc).__name__})"

"""The executor: how stages start or join Ray (:func:`ray_session`: the caller's Ray, else the cluster at
``address`` or ``$RAY_ADDRESS``, else a local Ray bound to 127.0.0.1, shut down on exit and on SIGINT/SIGTERM/
SIGHUP) and run their parts as bounded Ray tasks with declared resources (:func:`submit_bounded`)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import statistics
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping
from unittest import mock

from pipeline.core.env import cluster_address
from pipeline.core.errors import WitError
from pipeline.core.io import remote_errors


#: A local Ray that stays on this machine. Ray 2.60 picks the node address with
#: ``ray._private.services.get_node_ip_address``, which is 127.0.0.1 only where
#: ``ray_constants.ENABLE_RAY_CLUSTER`` is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, as on macOS); otherwise
#: it is this host's LAN address (found by connecting a UDP socket to 8.8.8.8), ``_node_ip_address="127.0.0.1"``
#: is turned back into it, and the GCS, raylet, agents and workers listen on it or on 0.0.0.0 / ``::``.
#: The driver read the constant when it imported ray, so :func:`_init_local` sets both for its ``ray.init``; the
#: processes it starts (and the workers the raylet starts) inherit the variable.
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int = 0, env_vars: Mapping[str, str] | None = None
                ) -> Iterator[None]:
    """Ray for the duration of the block. ``num_cpus`` 0 means every core. ``env_vars`` become the workers'
    runtime environment (telemetry and update checks off); leave it out where worker start-up time matters,
    as a runtime_env makes Ray prepare one per job.

    While the block runs, stdout is redirected to stderr: Ray prints its workers' output and its error
    messages on the driver's stdout, which carries the CLI's result. SIGINT, SIGTERM and SIGHUP end the block
    (in the main thread; see :func:`_shutdown_at_exit`), so Ray is shut down whichever way the block ends."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": dict(env_vars)}
    with contextlib.redirect_stdout(sys.stderr), _shutdown_at_exit(ray) as arm:
        if address:
            ray.init(address=address, **kwargs)
        else:
            _init_local(num_cpus, kwargs)
        arm()  # again: ray.init replaced the SIGTERM handler with its own, which exits with code 15
        yield


def _init_local(num_cpus: int, kwargs: dict[str, Any]) -> None:
    """``ray.init`` of a new local Ray (never a cluster found on this machine) bound to 127.0.0.1, without the
    dashboard process (see :func:`_no_api_server`)."""
    import ray
    from ray._private import node, ray_constants

    with _environ(LOCAL_ONLY_ENV), mock.patch.object(ray_constants, "ENABLE_RAY_CLUSTER", False), \
            mock.patch.object(node.Node, "start_api_server", _no_api_server):
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)


def _no_api_server(self: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
    """Stands in for Ray's ``Node.start_api_server``. With ``include_dashboard=False`` Ray still starts a
    dashboard process, with one module, ``UsageStatsHead``; its ``run()`` calls
    ``usage_lib.get_cluster_config_to_report``, which (without ``~/ray_bootstrap_config.yaml``) asks the cloud
    metadata servers (169.254.169.254, metadata.google.internal) which cloud this is, whatever
    ``RAY_USAGE_STATS_ENABLED`` says; no setting turns that off. Nothing else of a local session needs that
    process (Ray runs without it when it fails to start), so it is not started."""


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` for the block, the previous values (or their absence) restored after;
    unlike ``mock.patch.dict``, other changes made meanwhile (ray.init makes some) are kept."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _Stop:
    """The signal handler of a Ray session: the first signal ends the block, SIGINT with KeyboardInterrupt,
    others with ``SystemExit(128 + signal)`` (a shell's exit code for them); one that comes while Ray shuts
    down, or after the first, does not interrupt the shutdown."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised = False
        self.deferred = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            if not self.deferred:
                self.raise_()

    def raise_(self) -> None:
        self.raised = True
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + (self.signum or 0))


@contextlib.contextmanager
def _shutdown_at_exit(ray: Any) -> Iterator[Callable[[], None]]:
    """``ray.shutdown()`` when the block ends, also by SIGINT, SIGTERM or SIGHUP, so no GCS, raylet or agent
    outlives the driver (the agents of a raylet that dies under them linger a minute or more, reporting its
    death to the dead GCS). Yields ``arm``, which (re)installs the handler for the signals not ignored (as
    under ``nohup``); the previous handlers come back afterwards. Python runs signal handlers in the main
    thread only: elsewhere the signals keep their handlers."""
    if threading.current_thread() is not threading.main_thread():
        try:
            yield lambda: None
        finally:
            ray.shutdown()
        return
    stop, previous = _Stop(), {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def arm() -> None:
        for sig, handler in previous.items():
            if handler is not signal.SIG_IGN:
                signal.signal(sig, stop)

    arm()
    try:
        yield arm
    finally:
        stop.deferred = True
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if stop.signum is not None and not stop.raised:
            stop.raise_()


def transient_errors() -> tuple[type[BaseException], ...]:
    """What a task may raise that another try can cure: OS and network errors, the store clients' errors
    (:func:`pipeline.core.io.remote_errors` without ValueError, which is bad input)."""
    return tuple(e for e in remote_errors() if e is not ValueError) + (TimeoutError, ConnectionError)


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one task of a stage needs; Ray schedules by it (declared per stage, not hard-coded)."""

    cpus: float = 1.0
    memory_mb: int = 0  # 0: not declared
    retries: int = 0  # Ray re-runs a task this often when it raises or its worker dies

    def ray_options(self) -> dict[str, Any]:
        """Ray's task options: a task is retried when its worker dies, and when it raises a transient error
        (:func:`transient_errors`: I/O, the store's client), never for bad input (a WitError fails at once)."""
        options: dict[str, Any] = {"num_cpus": self.cpus, "max_retries": self.retries,
                                   "retry_exceptions": list(transient_errors()) if self.retries > 0 else False}
        if self.memory_mb:
            options["memory"] = self.memory_mb << 20
        return options


def use_ray(address: str | None, workers: int, n_todo: int, min_local: int = 2) -> bool:
    """Whether a stage runs its ``n_todo`` parts on Ray: always on a cluster it is given (``address`` or
    ``$RAY_ADDRESS``), on a local Ray when there are ``min_local`` or more and ``workers`` is not 1, else in
    this process."""
    if n_todo < 1:
        return False
    return bool(cluster_address(address or "")) or (n_todo >= min_local and workers != 1)


def ray_result(ref: Any, ray: Any = None) -> Any:
    """A task's result; a task's WitError is raised again as its one line (not Ray's traceback)."""
    if ray is None:
        import ray
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, WitError):
            raise WitError(str(exc.cause)) from None
        raise


def run_parts(fn: Callable[..., Any], items: Iterable[Any], resources: Resources, *shared: Any,
              on_ray: bool, speculate: bool = False) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item, *shared))`` for every item: as Ray tasks in the order they finish (in the caller's
    :func:`ray_session`; see :func:`submit_bounded`), or in this process, in order."""
    if not on_ray:
        for item in items:
            yield item, fn(item, *shared)
        return
    for item, ref in submit_bounded(((fn, item) for item in items), resources, *shared, speculate=speculate):
        yield item, ray_result(ref)


def submit_bounded(tasks: Iterable[tuple[Callable[..., Any], Any]], resources: Resources, *shared: Any,
                   per_slot: int = 2, speculate: bool = False, stragglers: "Stragglers | None" = None
                   ) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(item, *shared)`` for every ``(fn, item)`` as Ray tasks, at most ``per_slot`` tasks per
    schedulable slot in flight (so a listing of 100,000 files never queues 100,000 tasks); yield
    ``(item, ObjectRef)`` as tasks finish. ``shared`` objects are put in the object store once. A task that
    runs far longer than its finished peers is reported (:class:`Stragglers`); with ``speculate`` (for tasks
    whose outputs are a function of their input, published whole) a second copy of it is started, the first
    copy to finish wins and the other is cancelled. ``stragglers`` sets what counts as slow."""
    import ray

    run = _Bounded(resources, [ray.put(obj) for obj in shared], stragglers or Stragglers())
    slots = ray.cluster_resources().get("CPU", 1) / max(resources.cpus, 1e-3)
    window = max(2, int(per_slot * slots))
    queue = iter(tasks)
    while True:
        while run.running() < window and (task := next(queue, None)) is not None:
            run.submit(*task)
        if not run.pending:
            return
        ready, _ = ray.wait(list(run.pending), num_returns=1, timeout=run.watch.poll_s)
        if not ready:
            for ref in run.watch.report(run.pending):
                if speculate:
                    run.speculate(ref)
            continue
        yield run.finished(ready[0]), ready[0]


class _Bounded:
    """The tasks of one :func:`submit_bounded` call in flight, with the second copies of stragglers."""

    def __init__(self, resources: Resources, shared: list[Any], watch: "Stragglers") -> None:
        self.resources, self.shared = resources, shared
        self.remotes: dict[Callable[..., Any], Any] = {}
        self.pending: dict[Any, Any] = {}  # ref -> item
        self.fn_of: dict[Any, Callable[..., Any]] = {}
        self.twins: dict[Any, Any] = {}  # ref -> the other copy's ref, both ways
        self.watch = watch

    def running(self) -> int:
        return len(self.pending) - len(self.twins) // 2

    def submit(self, fn: Callable[..., Any], item: Any) -> Any:
        if fn not in self.remotes:
            import ray

            self.remotes[fn] = ray.remote(**self.resources.ray_options())(fn)
        ref = self.remotes[fn].remote(item, *self.shared)
        self.pending[ref], self.fn_of[ref] = item, fn
        self.watch.started(ref)
        return ref

    def speculate(self, ref: Any) -> None:
        """Start a second copy of the straggler ``ref`` (once)."""
        if ref in self.twins:
            return
        twin = self.submit(self.fn_of[ref], self.pending[ref])
        self.watch.reported.add(twin)
        self.twins[ref], self.twins[twin] = twin, ref
        log.warning("%s: started a second copy of the slow task; the first to finish is kept", self.pending[ref])

    def finished(self, ref: Any) -> Any:
        """The item of the finished ``ref``; its twin, if any, is cancelled and forgotten."""
        import ray

        self.watch.finished(ref)
        self.fn_of.pop(ref)
        twin = self.twins.pop(ref, None)
        if twin is not None:
            self.twins.pop(twin)
            self.pending.pop(twin)
            self.fn_of.pop(twin)
            self.watch.start.pop(twin, None)
            ray.cancel(twin)
        return self.pending.pop(ref)


class Stragglers:
    """Finds tasks running ``factor`` times longer than the median of their finished peers (and at least
    ``min_s``), and logs each once: on a cluster that is a slow node or a part far larger than the rest."""

    def __init__(self, factor: float = 4.0, min_s: float = 60.0, poll_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.factor, self.min_s, self.poll_s, self.clock = factor, min_s, poll_s, clock
        self.start: dict[Any, float] = {}
        self.durations: list[float] = []
        self.reported: set[Any] = set()

    def started(self, key: Any) -> None:
        self.start[key] = self.clock()

    def finished(self, key: Any) -> None:
        self.durations.append(self.clock() - self.start.pop(key))

    def slow(self) -> list[tuple[Any, float]]:
        """``(key, seconds running)`` of the running tasks that are stragglers now, not reported before."""
        if len(self.durations) < 3:
            return []
        limit = max(self.min_s, self.factor * statistics.median(self.durations))
        now = self.clock()
        return [(key, now - t0) for key, t0 in self.start.items() if now - t0 > limit and key not in self.reported]

    def report(self, names: Mapping[Any, Any]) -> list[Any]:
        """Log the new stragglers (named by ``names``); return their keys."""
        found = self.slow()
        median = statistics.median(self.durations) if self.durations else 0.0
        for key, seconds in found:
            self.reported.add(key)
            log.warning("%s: running %.0f s, %.1fx the median %.0f s of finished tasks (a slow node or a large "
                        "part?)", names.get(key, key), seconds, seconds / max(median, 1e-9), median)
        return [key for key, _ in found]

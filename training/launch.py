"""Where and how open_clip runs: one process, torchrun (several GPUs, several nodes), an outer launcher's
job (``wit train`` itself started by torchrun or ``srun``), or a Ray job on a cluster's GPU node.

The command lines are built by pure functions (unit-tested without GPUs); :func:`run_train_on_ray` submits
``python -m training.ray_job SHARDS OUT --config-json CFG`` (what ``wit train`` runs) with Ray's
``JobSubmissionClient``, streams the job's log, waits and returns the :class:`TrainResult` the job printed.
"""
from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.core.config import to_dict
from pipeline.core.errors import WitError
from training.open_clip_main import OFFLINE_ENV
from training.shards import is_url
from training.config import REPO_ROOT, TrainConfig, TrainResult, TrainRunFailed, echo_line

RESULT_MARKER = "WIT_TRAIN_RESULT "
EXIT_BAD_INPUT, EXIT_TRANSIENT = 2, 75  # the job's exit codes: a WitError, a killed trainer (EX_TEMPFAIL)
DEFAULT_MASTER_PORT = "29500"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclasses.dataclass(frozen=True)
class Launch:
    """How the trainer starts. ``external``: this process is one rank of an outer torchrun/srun job."""

    launcher: str  # python | torchrun | external
    nproc_per_node: int = 1
    nnodes: int = 1
    world_size: int = 1
    rank: int = 0
    rdzv_endpoint: str = ""
    node_rank_known: bool = False  # several nodes with $NODE_RANK/$SLURM_NODEID: a static rendezvous

    @property
    def primary(self) -> bool:
        """Whether this process's trainer writes checkpoints and results.jsonl: global rank 0. For a multi-node
        torchrun launch the node rank comes from $NODE_RANK or $SLURM_NODEID, and the rendezvous is static so
        node 0 is rank 0; with neither set torchrun's c10d rendezvous assigns ranks in order of arrival, every
        node assumes it may be first, and a node that finds no checkpoint after exit code 0 is not an error."""
        return self.rank == 0


def outer_world(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(global rank, world size) when this process is one rank of a torchrun or multi-task SLURM job."""
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    return None


def rendezvous_endpoint(cfg: TrainConfig, env: Mapping[str, str]) -> str:
    """``HOST:PORT`` of the multi-node rendezvous: the option, else ``$MASTER_ADDR:$MASTER_PORT``."""
    if cfg.rdzv_endpoint:
        return cfg.rdzv_endpoint
    if env.get("MASTER_ADDR"):
        return f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', DEFAULT_MASTER_PORT)}"
    raise WitError(f"train: nnodes={cfg.nnodes} needs rdzv_endpoint (HOST:PORT of node 0) or MASTER_ADDR")


def resolve_launch(cfg: TrainConfig, env: Mapping[str, str], n_gpus: int) -> Launch:
    """Decide the launcher from the options, the environment and the visible GPU count (0 on CPU)."""
    outer = outer_world(env)
    if outer is not None and cfg.launcher != "torchrun":
        if "SLURM_PROCID" in env and "WORLD_SIZE" not in env and not env.get("MASTER_ADDR"):
            raise WitError("train: under srun with several tasks, export MASTER_ADDR (the first node, e.g. "
                           "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1)) and MASTER_PORT")
        return Launch("external", 1, 1, outer[1], outer[0])
    nproc = cfg.nproc_per_node or max(1, n_gpus)
    world = nproc * cfg.nnodes
    if cfg.launcher == "python" and world > 1:
        raise WitError(f"train: launcher=python runs one process, but nproc_per_node x nnodes = {world}")
    if cfg.launcher == "torchrun" or world > 1:
        endpoint = rendezvous_endpoint(cfg, env) if cfg.nnodes > 1 else ""
        node_env = env.get("NODE_RANK", env.get("SLURM_NODEID")) if cfg.nnodes > 1 else None
        return Launch("torchrun", nproc, cfg.nnodes, world, int(node_env or 0) * nproc, endpoint, node_env is not None)
    return Launch("python")


def torchrun_command(launch: Launch, module_args: list[str], rdzv_id: str, python: str = sys.executable) -> list[str]:
    """``torchrun`` (as ``python -m torch.distributed.run``) running ``training.open_clip_main`` per process."""
    cmd = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(launch.nproc_per_node)]
    if launch.nnodes > 1 and launch.node_rank_known:
        host, port = launch.rdzv_endpoint.rsplit(":", 1)
        cmd += ["--nnodes", str(launch.nnodes), "--node-rank", str(launch.rank // launch.nproc_per_node),
                "--master-addr", host, "--master-port", port]
    elif launch.nnodes > 1:
        cmd += ["--nnodes", str(launch.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", launch.rdzv_endpoint,
                "--rdzv-id", rdzv_id]
    else:
        cmd += ["--standalone"]
    # "--": torchrun's parser would otherwise take open_clip's --logs for an abbreviation of its --logs-specs
    return cmd + ["-m", "training.open_clip_main", "--", *module_args]


def launch_command(launch: Launch, module_args: list[str], cfg: TrainConfig, python: str = sys.executable) -> list[str]:
    """The trainer's command line for ``launch``."""
    if launch.launcher == "torchrun":
        return torchrun_command(launch, module_args, cfg.rdzv_id, python)
    return [python, "-m", "training.open_clip_main", *module_args]


# ---------------------------------------------------------------- Ray jobs

def _job_path(path: str | Path | None) -> str:
    """A path as the job sees it: URLs unchanged, local paths absolute (the cluster shares the file system)."""
    if path is None or str(path) == "":
        return ""
    return str(path) if is_url(str(path)) else str(Path(path).resolve())


def ray_job_gpus(cfg: TrainConfig) -> float:
    """GPUs the job asks Ray for (so it lands on a GPU node): ``ray_gpus``, else 0 on CPU, else one per process."""
    if cfg.ray_gpus >= 0:
        return cfg.ray_gpus
    return 0.0 if cfg.device == "cpu" else float(max(1, cfg.nproc_per_node))


def job_entrypoint(shards_dir: str | Path | None, out_dir: str | Path, cfg: TrainConfig, python: str) -> str:
    """The job's shell command: ``wit train`` (as ``python -m training.ray_job``) with the config as JSON,
    running on the node it lands on (``ray_address`` cleared)."""
    local = dataclasses.replace(cfg, ray_address="")
    return shlex.join([python, "-m", "training.ray_job", _job_path(shards_dir) or "-", _job_path(out_dir),
                       "--config-json", json.dumps(to_dict(local), sort_keys=True)])


def job_submission(shards_dir: str | Path | None, out_dir: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of ``JobSubmissionClient.submit_job`` for a training job."""
    python = cfg.ray_python or sys.executable
    env_vars = {**OFFLINE_ENV, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    runtime_env = {**cfg.ray_runtime_env, "env_vars": {**env_vars, **cfg.ray_runtime_env.get("env_vars", {})}}
    return {"entrypoint": job_entrypoint(shards_dir, out_dir, cfg, python), "runtime_env": runtime_env,
            "entrypoint_num_gpus": ray_job_gpus(cfg), "entrypoint_num_cpus": 1,
            "metadata": {"wit_stage": "train", "out_dir": _job_path(out_dir)}}


def parse_job_result(logs: str) -> TrainResult | None:
    """The TrainResult the job printed on its last ``WIT_TRAIN_RESULT {json}`` line."""
    lines = [line for line in logs.splitlines() if line.startswith(RESULT_MARKER)]
    if not lines:
        return None
    data = json.loads(lines[-1][len(RESULT_MARKER):])
    names = {f.name for f in dataclasses.fields(TrainResult)}
    return TrainResult(**{k: v for k, v in data.items() if k in names})


def wait_for_job(client: Any, job_id: str, echo: Callable[[str], None], poll_s: float = 1.0) -> tuple[str, str]:
    """Poll a job until it ends, echoing new log text; return (final status, whole log). Interrupting stops it."""
    shown = 0
    try:
        while True:
            status = str(client.get_job_status(job_id).value)
            logs = client.get_job_logs(job_id)
            if len(logs) > shown:
                echo(logs[shown:])
                shown = len(logs)
            if status in TERMINAL:
                return status, logs
            time.sleep(poll_s)
    except KeyboardInterrupt:
        client.stop_job(job_id)
        raise


def _connect(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WitError(f"train: Ray job server at {address} not reachable ({first})") from None


def submit_job(client: Any, job: dict[str, Any], address: str, agent_wait_s: float = 60.0) -> str:
    """Submit, waiting for the node's job agent while a fresh cluster starts it ("No available agent")."""
    deadline = time.monotonic() + agent_wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            waiting = "No available agent" in first
            if waiting and time.monotonic() < deadline:
                time.sleep(1.0)
                continue
            raise TrainRunFailed(f"train: Ray job server at {address} refused the job: {first}",
                                 transient=waiting) from None


def run_train_on_ray(shards_dir: str | Path | None, out_dir: str | Path, cfg: TrainConfig,
                     echo: Callable[[str], None] = echo_line, poll_s: float = 1.0) -> TrainResult:
    """Submit training as a Ray job (``ray job submit`` equivalent), wait for it and return its result.
    ``cfg`` was checked when built (one node only: :meth:`TrainConfig.check`)."""
    client = _connect(cfg.ray_address)
    job_id = submit_job(client, job_submission(shards_dir, out_dir, cfg), cfg.ray_address)
    echo(f"submitted Ray job {job_id} to {cfg.ray_address}\n")
    status, logs = wait_for_job(client, job_id, echo, poll_s)
    result = parse_job_result(logs)
    if status != "SUCCEEDED" or result is None:
        info = client.get_job_info(job_id)
        last = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
        why = last if last.startswith("wit train: error:") else (info.message or last or "(no output)")
        code = info.driver_exit_code
        raise TrainRunFailed(f"train: Ray job {job_id} on {cfg.ray_address} {status.lower()} "
                             f"(exit code {code}): {why.strip()[:300]}", code,
                             transient=status == "FAILED" and code != EXIT_BAD_INPUT)
    local = Path(result.checkpoint)
    if result.checkpoint and Path(_job_path(out_dir)).is_dir() and not local.is_file():
        raise WitError(f"{local}: the Ray job reported it but it is not in {out_dir} (is the folder shared?)")
    return dataclasses.replace(result, ray_job_id=job_id)

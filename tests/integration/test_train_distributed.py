"""``wit train`` across processes for real, on CPU (gloo): torchrun with two processes, two torchrun "nodes"
meeting at a c10d rendezvous on 127.0.0.1, and two ranks started the way ``srun`` starts them (SLURM
variables, no torchrun). What is checked is what open_clip wrote, on the rank that writes it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training import train as T

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_train import write_shards  # noqa: E402

TINY = ["--model", "wit-tiny", "--epochs", "1", "--batch-size", "4", "--warmup", "1", "--workers", "1",
        "--precision", "fp32", "--device", "cpu"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wds") / "shards"
    write_shards(path, n=64, per_shard=16)  # 4 shards: 2 per rank
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wit_train(shards: Path, out: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``wit train SHARDS OUT --json ...`` as a user (or srun) starts it."""
    cmd = [str(Path(sys.executable).parent / "wit"), "train", "--json", str(shards), str(out), *TINY, *options]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def printed_result(output: str) -> dict:
    """The TrainResult JSON that ``wit train`` prints last (indented, after open_clip's log)."""
    return json.loads(output[output.rfind("\n{") + 1:])  # the JSON alone, or after log lines


def assert_trained(out: Path, world_size: int) -> dict:
    """The final checkpoint exists and results.jsonl records a run over ``world_size`` processes."""
    assert (out / "wit" / "checkpoints" / "epoch_1.pt").is_file()
    record = T.read_results(out)[-1]
    assert record["world_size"] == world_size and record["global_batch"] == 4 * world_size
    # 64 samples, global batch 8: 8 steps; open_clip logged a loss
    assert record["steps"] == 8 and record["final_loss"] is not None
    return record


def test_torchrun_two_processes(shards: Path, tmp_path: Path) -> None:
    finish(wit_train(shards, tmp_path / "out", "--nproc-per-node", "2"))
    assert assert_trained(tmp_path / "out", 2)["launcher"] == "torchrun"
    assert "world_size: 2" in (tmp_path / "out" / "wit" / "params.txt").read_text()


def two_nodes(shards: Path, tmp_path: Path, node_rank_env: bool) -> list[str]:
    """Two torchrun nodes (one process each) with their own output folders, as two machines with own disks."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [wit_train(shards, tmp_path / f"node{rank}", "--nnodes", "2", "--nproc-per-node", "1",
                       "--rdzv-endpoint", endpoint, "--rdzv-id", "itest",
                       env={"NODE_RANK": str(rank)} if node_rank_env else {}) for rank in (0, 1)]
    return [finish(node) for node in nodes]


def test_two_nodes_with_node_ranks_static_rendezvous(shards: Path, tmp_path: Path) -> None:
    """$NODE_RANK known (as under SLURM): node 0 is global rank 0 and writes the checkpoint."""
    outputs = two_nodes(shards, tmp_path, node_rank_env=True)
    assert_trained(tmp_path / "node0", 2)
    assert not list((tmp_path / "node1").glob("wit/checkpoints/*.pt")), "only the global rank 0 writes checkpoints"
    assert printed_result(outputs[0])["primary"] is True and printed_result(outputs[1])["primary"] is False


def test_two_nodes_elastic_c10d_rendezvous(shards: Path, tmp_path: Path) -> None:
    """No node rank: the c10d rendezvous ranks nodes by arrival; whichever became rank 0 has the checkpoint,
    the other ends without error and says it is not the primary."""
    outputs = two_nodes(shards, tmp_path, node_rank_env=False)
    primary = [printed_result(out)["primary"] for out in outputs]
    assert sorted(primary) == [False, True], primary
    assert_trained(tmp_path / f"node{primary.index(True)}", 2)


def test_srun_style_ranks_without_torchrun(shards: Path, tmp_path: Path) -> None:
    """Each rank is one ``wit train`` process with SLURM's variables, as ``srun --ntasks 2 wit train`` runs it."""
    port = str(free_port())
    ranks = [wit_train(shards, tmp_path / "out", env={
        "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2", "SLURM_NODEID": "0",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}) for rank in (0, 1)]
    outputs = [finish(rank) for rank in ranks]
    record = assert_trained(tmp_path / "out", 2)
    assert record["launcher"] == "external"
    assert printed_result(outputs[1])["primary"] is False

"""``wit download`` on a real two-node Ray cluster (a head and a worker node, each its own raylet, on this
machine), reached by address the way a user reaches a cluster: shards run on both nodes, and when the worker
node dies mid-run its shards are retried on the head, with every URL accounted for and no duplicate."""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from faultserver import FaultServer, jpeg_bytes, smooth_image
from test_download_faults import assert_consistent, config, slow_urls, write_input

from pipeline.download.stage import run_download
from pipeline.core.io import read_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer({f"g{i}": jpeg_bytes(smooth_image(i)) for i in range(12)}) as srv:
        yield srv


@pytest.fixture()
def cluster() -> Iterator[Any]:
    """A head node and one worker node with a CPU each; the driver (run_download) connects by address."""
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    saved = os.environ.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="wit-rc-")  # Ray's socket paths must stay short
    env = {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    c = Cluster(initialize_head=True, shutdown_at_exit=True,
                head_node_args={"num_cpus": 1, "include_dashboard": False, "temp_dir": temp_dir})
    c.worker = c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


def shard_nodes(shards: Path) -> list[str]:
    return [read_json(p)["node"] for p in sorted(shards.glob("0*_stats.json"))]


def test_shards_run_on_both_nodes(server: FaultServer, cluster: Any, tmp_path: Path) -> None:
    urls = slow_urls(server, 48, "two")
    stats = run_download(write_input(tmp_path / "in", urls), tmp_path / "shards",
                         config(number_sample_per_shard=6, thread_count=2, ray_address=cluster.address),
                         None, tmp_path / "ov")
    assert stats.kept == 48 and stats.extra["failed_shards"] == 0
    assert_consistent(tmp_path / "shards", urls, stats)
    nodes = set(shard_nodes(tmp_path / "shards"))
    assert nodes == {cluster.head_node.node_id, cluster.worker.node_id}, nodes


def test_lost_node_shards_are_retried(server: FaultServer, cluster: Any, tmp_path: Path) -> None:
    urls = slow_urls(server, 48, "lost")
    removed: list[str] = []

    def remove_worker_node() -> None:
        """Once a few of its images were served, kill the worker node's raylet and workers."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(server.state.hits[u[len(server.base_url):]] for u in urls) >= 10:
                cluster.remove_node(cluster.worker, allow_graceful=False)
                removed.append(cluster.worker.node_id)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_worker_node, daemon=True)
    killer.start()
    stats = run_download(write_input(tmp_path / "in", urls), tmp_path / "shards",
                         config(number_sample_per_shard=6, thread_count=2, shard_retries=3,
                                ray_address=cluster.address), None, tmp_path / "ov")
    killer.join(5)
    assert removed, "the worker node was not removed"
    assert stats.kept == 48 and stats.extra["failed_shards"] == 0
    assert_consistent(tmp_path / "shards", urls, stats)
    assert set(shard_nodes(tmp_path / "shards")) >= {cluster.head_node.node_id}
    refetched = [u for u in urls if server.state.hits[u[len(server.base_url):]] > 1]
    assert refetched, "no shard of the lost node was run again"

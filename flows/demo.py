"""``wit demo``: the embedded 1k-pair sample, built end to end through the ``build-wit`` flow.

Starts the mini-web server on 127.0.0.1, (re)generates the mini-web pointing at it, and runs the
flow with no Prefect server (ephemeral). The port is fixed by default so a re-run resumes the same build.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any
from flows.build_wit import build_wit
from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

DEMO_DOWNLOAD = {
    "allow_private_networks": True,  # the mini-web is on 127.0.0.1
    "image_size": 64,
    "number_sample_per_shard": 256,
}


def demo_config(out: Path, archives: list[Path], eval_dir: Path, stages: list[str] | None = None) -> dict[str, Any]:
    """The build config of the demo: the mini-web's archives and eval set, small images, CPU training."""
    cfg: dict[str, Any] = {
        "build_dir": str(out),
        "inputs": [str(p) for p in archives],
        "eval_sets": {"miniweb": str(eval_dir)},
        "download": dict(DEMO_DOWNLOAD),
    }
    if stages:
        cfg["stages"] = stages
    return cfg


def run_demo(out: Path, n_pairs: int = 1000, port: int = 8765, seed: int = 0,
             stages: list[str] | None = None) -> dict[str, Any]:
    """Serve and generate the mini-web under ``out/web``, then build it into ``out``."""
    web_root = out / "web"
    with serve_miniweb(web_root, port=port) as server:
        generate_miniweb(web_root, server.base_url, n_pairs=n_pairs, seed=seed)
        archives = sorted((web_root / "archives").glob("*.gz"))
        return build_wit(config=demo_config(out, archives, web_root / "eval", stages))

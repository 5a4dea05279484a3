"""The ``train-wit`` Prefect flow: train where the GPUs are, wait, run the overlap analysis, publish it.

Entry point: :func:`train_wit` (also ``build-wit``'s subflow for its train and overlap stages); standalone:
``python -m flows.train_flow --config FILE`` (no server needed; ephemeral API).
Where training runs and which artifacts are published: docs/training.md ("The train-wit flow")."""
from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_image_artifact, create_link_artifact, create_markdown_artifact,
                               create_table_artifact)
from prefect.cache_policies import NO_CACHE

import flows.stages as stages
from flows.config import BuildConfig, build_config
from pipeline.core.errors import WitError
from pipeline.report import overlap_table

ARTIFACT_PREFIX = "train-wit"


def _retry_killed_training(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a trainer that was killed (signal, lost Ray node): the retry resumes from its latest checkpoint.
    Bad input and configs (any other WitError) fail the same way again."""
    exc = state.result(raise_on_failure=False)
    return bool(getattr(exc, "transient", False)) or not isinstance(exc, WitError)


train_task = task(stages.train, name="train", retries=2, retry_delay_seconds=10,
                  retry_condition_fn=_retry_killed_training, cache_policy=NO_CACHE)
overlap_task = task(stages.overlap, name="overlap", cache_policy=NO_CACHE)


def _train_lines(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return []
    keys = ("model", "epochs", "steps", "samples", "final_loss", "samples_per_s", "world_size", "global_batch",
            "launcher", "ray_job_id", "checkpoint", "skipped")
    return ["## Training", "", "| | |", "| --- | --- |",
            *(f"| {k} | {result.get(k)} |" for k in keys if result.get(k) not in (None, "")), ""]


def publish(cfg: BuildConfig, train_result: dict[str, Any] | None, report: dict[str, Any] | None) -> list[str]:
    """Attach the training summary and the overlap analysis to the running flow; return the artifact keys."""
    reports = cfg.path("reports")
    md = reports / "overlap.md"
    body = _train_lines(train_result) + ([md.read_text()] if report and md.is_file() else ["(no overlap analysis)"])
    keys = [f"{ARTIFACT_PREFIX}-overlap"]
    create_markdown_artifact(key=keys[0], markdown="\n".join(body), description=f"train-wit {cfg.build_dir}")
    if report:
        keys.append(f"{ARTIFACT_PREFIX}-overlap-table")
        create_table_artifact(key=keys[-1], table=overlap_table(report), description="CLIP section 5 per eval set")
    png = reports / "overlap.png"
    if report and png.is_file():
        data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        keys += [f"{ARTIFACT_PREFIX}-overlap-plot", f"{ARTIFACT_PREFIX}-overlap-png"]
        create_image_artifact(image_url=data_url, key=keys[-2], description="All vs Clean accuracy (figure 17)")
        create_link_artifact(key=keys[-1], link=png.resolve().as_uri(), link_text=str(png))
    return keys


@flow(name="train-wit", log_prints=True)
def train_wit(config: dict[str, Any] | None = None, config_path: str | None = None, train: bool = True,
              analyse: bool = True) -> dict[str, Any]:
    """Train on the build's shards (locally or as a Ray job), then the overlap analysis; returns
    ``{"train": TrainResult dict, "overlap": report, "artifacts": [keys]}``."""
    cfg = build_config(config, config_path)
    logger = get_run_logger()
    results: dict[str, Any] = {}
    if train:
        where = f"Ray job at {cfg.train.ray_address}" if cfg.train.ray_address else "this machine"
        logger.info("training on %s", where)
        results["train"] = train_task(cfg)
    if analyse and cfg.eval_sets:
        results["overlap"] = overlap_task(cfg)
    results["artifacts"] = publish(cfg, results.get("train"), results.get("overlap"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train_flow", description=train_wit.__doc__)
    parser.add_argument("--config", required=True, help="YAML/JSON build config")
    parser.add_argument("--build-dir", help="override the config's build_dir")
    parser.add_argument("--no-train", action="store_true", help="only the overlap analysis of the latest checkpoint")
    args = parser.parse_args(argv)
    overrides = {"build_dir": args.build_dir} if args.build_dir else {}
    try:
        build_config(overrides, args.config)
        result = train_wit(config=overrides, config_path=args.config, train=not args.no_train)
    except WitError as exc:
        print(f"train-wit: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k != "overlap"}, indent=2, default=str))
    print(Path(build_config(overrides, args.config).build_dir) / "reports")
    return 0


if __name__ == "__main__":
    sys.exit(main())

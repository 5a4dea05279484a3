"""The ``build-wit`` Prefect flow: the stages of a WIT build chained as tasks.

Thin on purpose: each task calls one function of ``flows.stages``. Run it with no server via
``wit build --config FILE`` (ephemeral), or serve it as a deployment (``wit serve``) so that
``prefect deployment run build-wit/<name>`` works against ``prefect server start``.
"""
from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

import flows.stages as stages
from flows.config import BuildConfig, build_config
from flows.train_flow import train_wit
from pipeline.core.errors import WitError
from pipeline.core.storage import Folder
from pipeline.report import funnel_lines, funnel_table, overlap_lines, overlap_table
from pipeline.report.dashboard import PAGE


class _OneLineWitErrors(logging.Filter):
    """Prefect logs failed task and flow runs with a traceback; a WitError is bad input, so one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], WitError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_OneLineWitErrors())


# Retries where a failure can be transient: downloads (network, a lost Ray worker). Pure CPU stages fail
# the same way twice; training retries inside the train-wit subflow (a killed trainer resumes).
def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only failures that may pass: a WitError (bad input or config) fails the same way again."""
    return not isinstance(state.result(raise_on_failure=False), WitError)


# Stages resume from their own outputs, so Prefect's result cache is not used (NO_CACHE).
crawl_task = task(stages.crawl, name="crawl", cache_policy=NO_CACHE)
filter_task = task(stages.filter_pairs, name="filter", cache_policy=NO_CACHE)
balance_task = task(stages.balance, name="balance", cache_policy=NO_CACHE)
eval_index_task = task(stages.eval_index, name="eval-index", cache_policy=NO_CACHE)
download_task = task(stages.download, name="download", retries=2, retry_delay_seconds=5, retry_condition_fn=_transient, cache_policy=NO_CACHE)
report_task = task(stages.report, name="report", cache_policy=NO_CACHE)

TASKS = {
    "crawl": crawl_task, "filter": filter_task, "balance": balance_task, "eval_index": eval_index_task, "download": download_task,
    "report": report_task,
}
MODEL_STAGES = ("train", "overlap")  # run together by the train-wit subflow


def _publish(report: dict[str, Any]) -> list[str]:
    """Attach the funnel and the overlap analysis to the flow run (markdown and tables) and link the
    dashboard page; return the artifact keys."""
    body = ["## Funnel", "", "```", *funnel_lines(report), "```", "", "## Overlap analysis", "",
            *(f"- {line}" for line in overlap_lines(report) or ["(not run)"])]
    description = f"wit-builder build {report['build_dir']}"
    create_markdown_artifact(key="build-wit-report", markdown="\n".join(body), description=description)
    create_table_artifact(key="build-wit-funnel", table=funnel_table(report), description=f"funnel of {description}")
    keys = ["build-wit-report", "build-wit-funnel"]
    if report.get("overlap"):
        create_table_artifact(key="build-wit-overlap", table=overlap_table(report["overlap"]),
                              description="zero-shot accuracy on All / Clean / Overlap per eval set (in %)")
        keys.append("build-wit-overlap")
    link = _dashboard_link(report["build_dir"])
    if link:
        create_link_artifact(key="build-wit-dashboard", link=link[0], link_text=f"dashboard: {link[1]}",
                             description=description)
        keys.append("build-wit-dashboard")
    return keys


def _dashboard_link(build_dir: str) -> tuple[str, str] | None:
    """``(link, where)`` of the dashboard page: a ``file://`` link for a local build, the page's URL on the store
    for a build there (a browser cannot open it: copy it here), None when it was not written."""
    build = Folder(build_dir)
    if not build.exists(f"reports/{PAGE}"):
        return None
    if build.remote:
        return build.loc(f"reports/{PAGE}"), f"{build.loc(f'reports/{PAGE}')} (on the store: copy it to open it)"
    page = (build.path / "reports" / PAGE).resolve()
    return page.as_uri(), str(page)


def _train_and_analyse(cfg: BuildConfig, config: dict[str, Any] | None, config_path: str | None) -> dict[str, Any]:
    """The train and overlap stages as the ``train-wit`` subflow (training where the GPUs are, then CLIP's
    section 5 analysis, with its artifacts); it gets the same config the parent got."""
    get_run_logger().info("stages %s as the train-wit subflow", " + ".join(s for s in MODEL_STAGES if s in cfg.stages))
    sub = train_wit(config=config, config_path=config_path, train="train" in cfg.stages,
                    analyse="overlap" in cfg.stages)
    return {name: sub[name] for name in (*MODEL_STAGES, "artifacts") if name in sub}


@flow(name="build-wit", log_prints=True)
def build_wit(config: dict[str, Any] | None = None, config_path: str | None = None) -> dict[str, Any]:
    """Build a WIT-style dataset (and train on it) as configured; returns each stage's result."""
    cfg: BuildConfig = build_config(config, config_path)
    logger = get_run_logger()
    results: dict[str, Any] = {}
    for name in cfg.stages:
        if name in MODEL_STAGES:
            if "artifacts" not in results:  # one subflow run does both
                results.update(_train_and_analyse(cfg, config, config_path))
            continue
        logger.info("stage %s", name)
        results[name] = TASKS[name](cfg)
    if "report" in results:
        results["report_artifacts"] = _publish(results["report"])
    return results

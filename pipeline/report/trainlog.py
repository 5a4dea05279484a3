"""Training curves from open_clip's own files in ``train/<name>/``: the loss from ``out.log`` (its
``Train Epoch`` lines, read line by line) and zero-shot accuracies from ``results.jsonl`` (written when it
evaluates); the build is a :class:`~pipeline.core.storage.Folder` (local or on a store)."""
from __future__ import annotations

import io
import json
import re
from typing import Any

from pipeline.core.storage import Folder

_TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)[^\]]*\].*?\bLoss: ([-+0-9.eE]+|nan|inf) \(([-+0-9.eE]+|nan|inf)\)")


def _run_dirs(build: Folder) -> list[str]:
    """``train/<name>`` of each open_clip run (a folder with an ``out.log``), sorted."""
    runs = sorted(rel.removesuffix("/out.log") for rel in build.tree("train")
                  if rel.endswith("/out.log") and rel.count("/") == 1)
    return [f"train/{run}" for run in runs]


def loss_curve(build: Folder) -> dict[str, list[float]] | None:
    """``{"epoch": [...], "loss": [...], "smoothed": [...]}``: one point per logged step, x in epochs."""
    runs = _run_dirs(build)
    if not runs:
        return None
    curve: dict[str, list[float]] = {"epoch": [], "loss": [], "smoothed": []}
    with build.open(f"{runs[-1]}/out.log") as raw, io.TextIOWrapper(raw, "utf-8", errors="replace") as log:
        for line in log:
            m = _TRAIN_LINE.search(line)
            if m:
                epoch, done, total = int(m[1]), int(m[2]), int(m[3])
                curve["epoch"].append(epoch + done / total if total else float(epoch))
                curve["loss"].append(float(m[4]))
                curve["smoothed"].append(float(m[5]))
    return curve if curve["epoch"] else None


def zeroshot_curves(build: Folder) -> dict[str, dict[str, list[float]]] | None:
    """``{metric: {"epoch": [...], "value": [...]}}`` of the zero-shot metrics open_clip evaluated."""
    curves: dict[str, dict[str, list[float]]] = {}
    for run in _run_dirs(build):
        path = f"{run}/results.jsonl"
        lines = build.read_bytes(path).decode().splitlines() if build.exists(path) else []
        for record in (json.loads(line) for line in lines if line.strip()):
            for metric, value in record.items():
                if "zeroshot" in metric and isinstance(value, (int, float)):
                    c = curves.setdefault(metric, {"epoch": [], "value": []})
                    c["epoch"].append(record.get("epoch", len(c["epoch"]) + 1))
                    c["value"].append(float(value))
    return curves or None


def train_summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``train/results.jsonl`` (one per training run) reduced to what a reader compares."""
    keys = ("time", "model", "device", "epochs", "steps", "samples", "global_batch", "final_loss", "samples_per_s",
            "wall_s", "launcher", "skipped")
    return [{k: r.get(k) for k in keys} for r in runs]

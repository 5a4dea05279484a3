"""Stage statistics: every input row is kept or dropped with a reason, and the sums must add up.

Each stage returns a :class:`StageStats` (and writes it as ``_stats.json`` beside its output), so the
funnel in ``reports/stats.json`` is computed from files, not from logs.
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

from pipeline.core.storage import Folder

STATS_FILE = "_stats.json"


@dataclasses.dataclass
class StageStats:
    """Counts for one stage run.

    ``inputs`` rows came in; each was either kept or dropped with exactly one reason.
    ``extra`` holds stage-specific figures (bytes read, files skipped, timings).
    """

    stage: str
    inputs: int = 0
    kept: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def merge(self, other: "StageStats") -> "StageStats":
        self.inputs += other.inputs
        self.kept += other.kept
        self.dropped.update(other.dropped)
        for k, v in other.extra.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.extra[k] = self.extra.get(k, 0) + v
        return self

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def accounted(self) -> bool:
        """True when every input row is either kept or dropped with a reason."""
        return self.inputs == self.kept + self.n_dropped

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "inputs": self.inputs,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "n_dropped": self.n_dropped,
            "accounted": self.accounted(),
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageStats":
        return cls(stage=d["stage"], inputs=d["inputs"], kept=d["kept"],
                   dropped=Counter(d.get("dropped", {})), extra=dict(d.get("extra", {})))

    def write(self, folder: "str | os.PathLike[str] | Folder") -> str:
        """Write ``_stats.json`` into ``folder`` (a local path or a :class:`Folder`, also on a store)."""
        folder = Folder(folder)
        folder.write_json(STATS_FILE, self.to_dict())
        return folder.loc(STATS_FILE)

    @classmethod
    def read(cls, folder: "str | os.PathLike[str] | Folder") -> "StageStats":
        return cls.from_dict(Folder(folder).read_json(STATS_FILE))

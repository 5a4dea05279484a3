"""Streaming aggregation over parquet parts: memory bounded whatever the number of rows.

Parts are local files or objects on a store (a build on ``s3://``): read one record batch at a time
(:func:`batches`, by ranges on a store, never fetched whole); shard tars are streamed (:func:`open_tar`).
Numbers go into fixed-bin histograms
(:class:`Histogram`), values into bounded counters (:class:`TopCounter`, Misra-Gries: exact while fewer
than ``capacity`` distinct values were seen, else each count is low by at most ``error``), and example
rows are the first few of each value (:func:`first_rows`), so a scan can stop as soon as it has them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import tarfile
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import WitError
from pipeline.core.io import REMOTE_BLOCK, Part, is_part_name, one_line, open_parquet, remote_errors
from pipeline.core.storage import Folder

BATCH_ROWS = 65_536


def parts(folder: Folder, pattern: str = "*.parquet") -> list[Part]:
    """The parquet parts of ``folder`` in name order (sidecars starting with ``_`` or ``.`` left out)."""
    return [folder.part(name) for name in folder.names("", pattern) if is_part_name(name)]


def batches(paths: Iterable[Part], columns: Iterable[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` (those a part has) from each part in turn."""
    wanted = list(columns)
    for path in paths:
        with open_parquet(path) as pf:
            cols = [c for c in wanted if c in pf.schema_arrow.names]
            if cols:
                yield from pf.iter_batches(batch_size=batch_rows, columns=cols)


@contextlib.contextmanager
def open_tar(folder: Folder, name: str) -> Iterator[tarfile.TarFile]:
    """The tar ``name`` of ``folder``: a local one opened as a file (headers reached by seeking), one on a store
    streamed from its start (``r|*``, read-ahead :data:`~pipeline.core.io.REMOTE_BLOCK`): a reader that stops
    early fetches only the start of the object. Iterate its members once, in order."""
    if not folder.remote:
        with tarfile.open(folder.loc(name)) as tf:
            yield tf
        return
    part = folder.part(name)
    try:
        raw = part.fs.open(part.path, "rb", block_size=REMOTE_BLOCK)  # type: ignore[union-attr]
    except FileNotFoundError:
        raise WitError(f"{part}: not found") from None
    except remote_errors() as exc:
        raise WitError(f"{part}: cannot read ({one_line(exc)})") from None
    with raw, tarfile.open(fileobj=raw, mode="r|*") as tf:
        yield tf


def column(batch: pa.RecordBatch, name: str) -> pa.Array | None:
    index = batch.schema.get_field_index(name)
    return None if index < 0 else batch.column(index)


def numbers(values: pa.Array | None) -> np.ndarray:
    """The non-null values as float64."""
    if values is None:
        return np.empty(0)
    return pc.drop_null(values).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


@dataclasses.dataclass
class Histogram:
    """Counts over fixed bin ``edges``; values outside go into the first or last bin (``under``/``over``
    say how many), so every value is counted."""

    edges: np.ndarray
    counts: np.ndarray = None  # type: ignore[assignment]
    n: int = 0
    total: float = 0.0
    under: int = 0
    over: int = 0

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        if self.counts is None:
            self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    @classmethod
    def linear(cls, lo: float, hi: float, bins: int) -> "Histogram":
        return cls(np.linspace(lo, hi, bins + 1))

    @classmethod
    def log(cls, lo: float, hi: float, bins: int) -> "Histogram":
        return cls(np.geomspace(lo, hi, bins + 1))

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)]
        if not len(values):
            return
        self.n += len(values)
        self.total += float(values.sum())
        self.under += int((values < self.edges[0]).sum())
        self.over += int((values > self.edges[-1]).sum())
        clipped = np.clip(values, self.edges[0], self.edges[-1])
        self.counts += np.histogram(clipped, self.edges)[0]

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    def quantile(self, q: float) -> float | None:
        """Approximate quantile: the upper edge of the bin where the cumulative count reaches ``q``."""
        if not self.n:
            return None
        return float(self.edges[1:][np.searchsorted(np.cumsum(self.counts), q * self.n)])


class TopCounter:
    """Counts of values with bounded memory (Misra-Gries with batch updates).

    While at most ``capacity`` distinct values were seen the counts are exact (``error == 0``). Past that,
    the smallest counts are cut: each reported count is low by at most ``error``, and every value more
    frequent than ``n / capacity`` is kept.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self.counts: dict[Any, int] = {}
        self.n = 0
        self.error = 0

    def add_counts(self, values: Iterable[Any], counts: Iterable[int]) -> None:
        for value, count in zip(values, counts):
            self.counts[value] = self.counts.get(value, 0) + int(count)
            self.n += int(count)
        if len(self.counts) > self.capacity:
            self._cut()

    def add(self, values: pa.Array) -> None:
        """Count the non-null values of an Arrow array (one ``value_counts`` per batch)."""
        vc = pc.value_counts(pc.drop_null(values))
        self.add_counts(vc.field("values").to_pylist(), vc.field("counts").to_pylist())

    def _cut(self) -> None:
        kth = sorted(self.counts.values(), reverse=True)[self.capacity]
        self.error += kth
        self.counts = {v: c - kth for v, c in self.counts.items() if c > kth}

    def most_common(self, k: int) -> list[tuple[Any, int]]:
        return sorted(self.counts.items(), key=lambda vc: (-vc[1], str(vc[0])))[:k]


def first_rows(paths: Iterable[Part], key: str, wanted: Iterable[str], columns: list[str],
               k: int) -> dict[str, list[dict[str, Any]]]:
    """The first ``k`` rows (``columns``) of each value of ``key`` in ``wanted``, in file order; the scan
    stops once every wanted value has ``k`` rows."""
    out: dict[str, list[dict[str, Any]]] = {w: [] for w in wanted}
    read = list(dict.fromkeys([key, *columns]))
    for batch in batches(paths, read):
        if all(len(rows) >= k for rows in out.values()):
            break
        values = column(batch, key)
        if values is None:
            return out
        for value, rows in out.items():
            if len(rows) < k:
                mask = pc.fill_null(pc.equal(values, value), False)
                rows += batch.filter(mask).slice(0, k - len(rows)).select(
                    [c for c in columns if c in batch.schema.names]).to_pylist()
    return out

"""Exact duplicate detection over inputs larger than memory: a hash-partitioned shuffle through a shared folder.

Every row has a global position (the parts in order, rows in file order; each part's first position comes from
the parquet footers, read on the driver: :func:`plan_shuffle`) and a 128-bit key of its (url, caption) pair
(:func:`pipeline.filter.rules.pair_keys`). The work folder of a :class:`ShufflePlan` (a local path or an fsspec
URL: on a cluster the one storage the nodes share) holds the intermediate files:

* **map** (:func:`map_part`, one task per part): the ``(key, position)`` records of the part's rows, batch by
  batch, to one file per bucket the keys fall in, ``map-<part>/bucket-<B>.bin`` (B = key mod N, N = rows /
  ``bucket_rows``, so a bucket fits in memory);
* **reduce** (:func:`reduce_bucket`, one task per bucket): that bucket's files of every map, sorted by (key,
  position): every record after the first of its key is a repeat. Its repeat positions, sorted, go to one file
  per group of consecutive parts (a group holds at most ``bucket_rows`` rows, or one bigger part),
  ``repeats/group-<G>/bucket-<B>.npy``, written only for the groups some part still to filter is in;
* :func:`part_repeats` reads the repeat files of a part's group, one at a time, and marks the part's rows.

The driver (:class:`Shuffle`) only keeps which map wrote which bucket and which reducer wrote which group (a
bit each), so each task reads exactly the files that exist. Peak memory of a task is about 100 bytes x
``bucket_rows`` (a reducer's bucket) or a batch of a part; the folder holds 24 bytes per row while it runs.
Tasks write into a node-local staging folder published when they finish (:meth:`Folder.staging`).

The first occurrence (lowest position) is kept, so the result is deterministic and does not depend on the
number of buckets, the order tasks finish in, or where they run.
"""
from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from pipeline.core.errors import WitError
from pipeline.core.io import Part, open_parquet
from pipeline.core.storage import Folder
from pipeline.filter.rules import caption_column, pair_keys, url_column

RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("pos", "<u8")])


def row_counts(files: list[Part]) -> list[int]:
    """Rows of each parquet file, from its footer."""
    return [_num_rows(f) for f in files]


def _num_rows(part: Part) -> int:
    with open_parquet(part) as reader:
        return reader.metadata.num_rows


def file_keys(path: Part, batch_rows: int) -> Iterator[np.ndarray]:
    """``(n, 2)`` uint64 pair keys of a parquet file's rows, one array per record batch."""
    with open_parquet(path) as reader:
        for batch in reader.iter_batches(batch_size=batch_rows, columns=["url", "caption"]):
            yield pair_keys(url_column(batch.column("url")), caption_column(batch.column("caption")))


@dataclasses.dataclass(frozen=True)
class ShufflePlan:
    """Where the shuffle's files go and how rows map to positions, buckets and groups (sent to every task)."""

    work: str                      # the work folder: a local path or an fsspec URL
    starts: tuple[int, ...]        # global position of each part's first row
    counts: tuple[int, ...]        # rows of each part
    groups: tuple[int, ...]        # repeats group of each part
    buckets: int
    wanted: frozenset[int]         # groups whose repeats are read (those of the parts to filter)
    batch_rows: int = 65_536
    flush_rows: int = 2_000_000    # records a map buffers before appending them to its bucket files

    @property
    def rows(self) -> int:
        return sum(self.counts)

    @property
    def n_groups(self) -> int:
        return self.groups[-1] + 1 if self.groups else 0

    def group_starts(self) -> np.ndarray:
        """Global position of each group's first row."""
        first = [i for i, g in enumerate(self.groups) if i == 0 or g != self.groups[i - 1]]
        return np.array([self.starts[i] for i in first], dtype=np.uint64)

    @staticmethod
    def map_name(part: int, bucket: int) -> str:
        return f"map-{part:05d}/bucket-{bucket:05d}.bin"

    @staticmethod
    def repeats_name(group: int, bucket: int) -> str:
        return f"repeats/group-{group:05d}/bucket-{bucket:05d}.npy"


def plan_shuffle(parts: list[Part], todo: list[int], work: str, bucket_rows: int = 2_000_000,
                 batch_rows: int = 65_536) -> ShufflePlan:
    """The plan of a shuffle over ``parts`` (every part, in order) for the parts ``todo`` (indexes), its files
    in the folder ``work``; row counts from the parquet footers."""
    counts = row_counts(parts)
    starts = np.cumsum([0] + counts[:-1], dtype=np.int64).tolist() if parts else []
    groups = _groups(counts, bucket_rows)
    return ShufflePlan(str(work), tuple(starts), tuple(counts), tuple(groups),
                       buckets=max(1, math.ceil(sum(counts) / bucket_rows)),
                       wanted=frozenset(groups[i] for i in todo), batch_rows=batch_rows, flush_rows=bucket_rows)


def _groups(counts: list[int], group_rows: int) -> list[int]:
    """Consecutive parts grouped so that a group holds at most ``group_rows`` rows (or one bigger part)."""
    groups, group, rows = [], 0, 0
    for count in counts:
        if rows and rows + count > group_rows:
            group, rows = group + 1, 0
        groups.append(group)
        rows += count
    return groups


class _BucketWriter:
    """Appends key records to ``n`` bucket files in a local folder, buffering about ``flush_rows`` records in
    memory; ``written`` marks the buckets that got records."""

    def __init__(self, folder: Path, n: int, flush_rows: int) -> None:
        self.folder, self.n, self.flush_rows = folder, n, flush_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = np.zeros(n, dtype=bool)
        self._pending: list[np.ndarray] = []
        self._rows = 0

    def path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:05d}.bin"

    def add(self, keys: np.ndarray, first_pos: int) -> None:
        records = np.empty(len(keys), dtype=RECORD)
        records["hi"], records["lo"] = keys[:, 0], keys[:, 1]
        records["pos"] = np.arange(first_pos, first_pos + len(keys), dtype=np.uint64)
        self._pending.append(records)
        self._rows += len(records)
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        records = np.concatenate(self._pending)
        self._pending, self._rows = [], 0
        buckets = (records["hi"] % np.uint64(self.n)).astype(np.int64)
        order = np.argsort(buckets, kind="stable")
        records, buckets = records[order], buckets[order]
        bounds = np.searchsorted(buckets, np.arange(self.n + 1))
        for bucket in np.flatnonzero(np.diff(bounds)):
            with open(self.path(int(bucket)), "ab") as fh:
                records[bounds[bucket]:bounds[bucket + 1]].tofile(fh)
            self.written[bucket] = True


def map_part(job: tuple[int, Part], plan: ShufflePlan) -> np.ndarray:
    """Map task: the records of part number ``job[0]`` (``job[1]``) into its bucket files; returns which
    buckets it wrote (a bool per bucket)."""
    index, part = job
    start, count = plan.starts[index], plan.counts[index]
    with Folder(plan.work).staging() as tmp:
        writer = _BucketWriter(tmp / Path(plan.map_name(index, 0)).parent, plan.buckets, plan.flush_rows)
        position = start
        for keys in file_keys(part, plan.batch_rows):
            writer.add(keys, position)
            position += len(keys)
        writer.flush()
        if position - start != count:
            raise WitError(f"{part}: {position - start} rows, its footer said {count} (changed during the run?)")
    return writer.written


def record_repeats(records: np.ndarray) -> np.ndarray:
    """Sorted positions of the ``RECORD``s whose key occurred at a lower position.

    An unstable sort of the high key words alone (several times faster than a stable three-key sort)
    finds the records whose high word occurs more than once; only those are sorted exactly by
    (hi, lo, position), so a shared high word with different low words is never taken for a repeat.
    """
    if len(records) < 2:
        return np.zeros(0, dtype=np.uint64)
    order = np.argsort(records["hi"])
    hi = records["hi"][order]
    tie = hi[1:] == hi[:-1]
    if not tie.any():
        return np.zeros(0, dtype=np.uint64)
    shared = np.zeros(len(records), dtype=bool)
    shared[1:] |= tie
    shared[:-1] |= tie
    records = records[order[shared]]
    records = records[np.lexsort((records["pos"], records["lo"], records["hi"]))]
    same = (records["hi"][1:] == records["hi"][:-1]) & (records["lo"][1:] == records["lo"][:-1])
    return np.sort(records["pos"][1:][same])


def reduce_bucket(job: tuple[int, list[int]], plan: ShufflePlan) -> tuple[np.ndarray, int]:
    """Reduce task: the repeats of bucket ``job[0]``, from the files the maps ``job[1]`` wrote for it, to one
    file per wanted group they fall in; returns the groups written and the number of repeats (all groups)."""
    bucket, maps = job
    folder = Folder(plan.work)
    chunks = [np.frombuffer(folder.read_bytes(plan.map_name(i, bucket)), dtype=RECORD) for i in maps]
    positions = record_repeats(np.concatenate(chunks) if chunks else np.zeros(0, dtype=RECORD))
    del chunks
    written = []
    with folder.staging() as tmp:
        cuts = np.searchsorted(positions, plan.group_starts()[1:])
        for group, chunk in enumerate(np.split(positions, cuts)):
            if len(chunk) and group in plan.wanted:
                path = tmp / plan.repeats_name(group, bucket)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, chunk)
                written.append(group)
    return np.array(written, dtype=np.int64), len(positions)


def part_repeats(plan: ShufflePlan, index: int, buckets: list[int]) -> np.ndarray:
    """Boolean mask over the rows of part number ``index``: True where the row repeats an earlier pair, read
    from the repeat files of its group that the reducers of ``buckets`` wrote (one file in memory at a time)."""
    folder = Folder(plan.work)
    group, start, count = plan.groups[index], plan.starts[index], plan.counts[index]
    mask = np.zeros(count, dtype=bool)
    for bucket in buckets:
        positions = np.load(io.BytesIO(folder.read_bytes(plan.repeats_name(group, bucket))))
        lo, hi = np.searchsorted(positions, [start, start + count])
        mask[(positions[lo:hi] - np.uint64(start)).astype(np.int64)] = True
    return mask


class Shuffle:
    """The driver's side of a shuffle: which files the tasks wrote (a bit per map and bucket, per group and
    bucket), so that each reducer and each part reads exactly the files there are."""

    def __init__(self, plan: ShufflePlan) -> None:
        self.plan = plan
        self.mapped = np.zeros((len(plan.counts), plan.buckets), dtype=bool)
        self.reduced = np.zeros((plan.n_groups, plan.buckets), dtype=bool)
        self.repeat_rows = 0

    def add_map(self, index: int, written: np.ndarray) -> None:
        self.mapped[index] = written

    def reduce_jobs(self) -> list[tuple[int, list[int]]]:
        """``(bucket, maps that wrote it)`` for every bucket."""
        return [(b, np.flatnonzero(self.mapped[:, b]).tolist()) for b in range(self.plan.buckets)]

    def add_reduce(self, bucket: int, groups: np.ndarray, repeats: int) -> None:
        self.reduced[groups, bucket] = True
        self.repeat_rows += repeats

    def repeat_buckets(self, index: int) -> list[int]:
        """The buckets whose reducers wrote repeats for the group of part number ``index``."""
        return np.flatnonzero(self.reduced[self.plan.groups[index]]).tolist()

    def stats(self) -> dict[str, int]:
        return {"dedup_rows": self.plan.rows, "dedup_buckets": self.plan.buckets, "dedup_repeats": self.repeat_rows}

"""Exact duplicate detection over inputs larger than memory: hash-partitioned buckets on disk.

:func:`build_repeat_index` gives every row a global position (the ``seed`` files first, then the
``parts`` in order, rows in file order) and a 128-bit key of its (url, caption) pair
(:func:`pipeline.filter.rules.pair_keys`), and appends ``(key, position)`` records to one of N bucket
files chosen by the key (N = rows / ``bucket_rows``, so a bucket fits in memory). Each bucket is then
sorted by (key, position) on its own: every record after the first of its key is a repeat. Repeat
positions go to one file per group of consecutive parts (again at most ``bucket_rows`` rows a group),
so :meth:`RepeatIndex.repeats` reads one small file to mark the repeats of a part. Peak memory is
about 100 bytes x ``bucket_rows`` whatever the input size; disk use is 24 bytes per row, in ``work_dir``.

The first occurrence (lowest position) is kept, so the result is deterministic; rows of ``seed``
files (pairs already kept by an earlier run) are never marked, only used to mark later copies.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from pipeline.core.io import Part, open_parquet
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


class _BucketWriter:
    """Appends key records to ``n`` bucket files, buffering about ``flush_rows`` records in memory."""

    def __init__(self, folder: Path, n: int, flush_rows: int) -> None:
        self.folder, self.n, self.flush_rows = folder, n, flush_rows
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


def bucket_repeats(path: Path) -> np.ndarray:
    """Sorted positions of the records of one bucket file whose key occurred at a lower position.

    An unstable sort of the high key words alone (several times faster than a stable three-key sort)
    finds the records whose high word occurs more than once; only those are sorted exactly by
    (hi, lo, position), so a shared high word with different low words is never taken for a repeat.
    """
    records = np.fromfile(path, dtype=RECORD)
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


@dataclasses.dataclass
class RepeatIndex:
    """Which rows of each part repeat an earlier pair; :meth:`repeats` marks one part's rows."""

    folder: Path
    starts: list[int]          # global position of each part's first row
    counts: list[int]          # rows of each part
    groups: list[int]          # group file of each part
    buckets: int = 0
    rows: int = 0
    repeat_rows: int = 0
    _cache: tuple[int, np.ndarray] | None = None

    def group_path(self, group: int) -> Path:
        return self.folder / f"repeats-{group:05d}.bin"

    def repeats(self, part: int) -> np.ndarray:
        """Boolean mask over the rows of part number ``part``: True where the row is a repeat."""
        group = self.groups[part]
        if self._cache is None or self._cache[0] != group:
            path = self.group_path(group)
            positions = np.fromfile(path, dtype=np.uint64) if path.is_file() else np.zeros(0, np.uint64)
            self._cache = (group, np.sort(positions))
        positions = self._cache[1]
        start, count = self.starts[part], self.counts[part]
        lo, hi = np.searchsorted(positions, [start, start + count])
        mask = np.zeros(count, dtype=bool)
        mask[(positions[lo:hi] - np.uint64(start)).astype(np.int64)] = True
        return mask


def _groups(counts: list[int], group_rows: int) -> list[int]:
    """Consecutive parts grouped so that a group holds at most ``group_rows`` rows (or one bigger part)."""
    groups, group, rows = [], 0, 0
    for count in counts:
        if rows and rows + count > group_rows:
            group, rows = group + 1, 0
        groups.append(group)
        rows += count
    return groups


def build_repeat_index(seed: list[Part], parts: list[Part], work_dir: Path, bucket_rows: int = 2_000_000,
                       batch_rows: int = 65_536) -> RepeatIndex:
    """Index the repeats of ``parts`` (in order, after every pair of ``seed``) in ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    seed_rows, counts = sum(row_counts(seed)), row_counts(parts)
    total = seed_rows + sum(counts)
    starts = list(np.cumsum([seed_rows] + counts[:-1], dtype=np.int64).tolist()) if parts else []
    index = RepeatIndex(work_dir, starts, counts, _groups(counts, bucket_rows),
                        buckets=max(1, math.ceil(total / bucket_rows)), rows=total)
    writer = _BucketWriter(work_dir, index.buckets, bucket_rows)
    position = 0
    for path in list(seed) + list(parts):
        for keys in file_keys(path, batch_rows):
            writer.add(keys, position)
            position += len(keys)
    writer.flush()
    _split_repeats(index, writer, seed_rows)
    return index


def _split_repeats(index: RepeatIndex, writer: _BucketWriter, seed_rows: int) -> None:
    """Find each bucket's repeats and append them to the group file of the part they fall in."""
    first = [i for i, g in enumerate(index.groups) if i == 0 or g != index.groups[i - 1]]
    group_starts = np.array([index.starts[i] for i in first], dtype=np.uint64)
    for bucket in range(index.buckets):
        path = writer.path(bucket)
        if not path.is_file():
            continue
        positions = bucket_repeats(path)
        path.unlink()
        positions = positions[positions >= np.uint64(seed_rows)]
        index.repeat_rows += len(positions)
        if not len(positions):
            continue
        cuts = np.searchsorted(positions, group_starts[1:])
        for group, chunk in enumerate(np.split(positions, cuts)):
            if len(chunk):
                with open(index.group_path(group), "ab") as fh:
                    chunk.tofile(fh)

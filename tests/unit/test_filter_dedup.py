"""The exact duplicate shuffle of the filter stage (``pipeline.filter.exact_dedup``): map tasks per part, reduce
tasks per bucket, repeat masks per part, checked against a brute-force reference on real captions."""
from __future__ import annotations

import csv
import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.filter.rules.duplicate as duplicate_rules
from pipeline.core.errors import WitError
from pipeline.filter.exact_dedup import (RECORD, Shuffle, ShufflePlan, map_part, part_repeats, plan_shuffle,
                                         record_repeats, reduce_bucket)
from pipeline.filter.stage import WORK_DIR, FilterConfig, run_filter

CC3M = Path("fixtures") / "captions" / "dev" / "cc3m" / "Validation_GCC-1.1.0-Validation.tsv"
Pair = tuple[str, str]


@pytest.fixture(scope="module")
def real_pairs(shared_dir: Path) -> list[Pair]:
    """2,000 (url, caption) pairs of Conceptual Captions' validation set (real captions and image URLs)."""
    path = shared_dir / CC3M
    if not path.is_file():
        pytest.skip(f"caption fixture not found at {path} (set WIT_SHARED_DIR)")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(url, caption) for caption, url in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return rows[:2000]


def planted_parts(pairs: list[Pair], seed: int = 0) -> list[list[Pair]]:
    """Six parts of real pairs (one empty, one of a single row) into which copies of earlier rows are planted,
    within a part and across parts, beside near misses (same URL or same caption only) that are no repeats and
    a copy with white space around its caption, which is one (the filter trims captions)."""
    rng = np.random.default_rng(seed)
    sizes = [700, 1, 0, 150, 600, 549]
    parts, start = [], 0
    for size in sizes:
        parts.append(list(pairs[start:start + size]))
        start += size
    for n, part in enumerate(parts):
        if not part:
            continue
        earlier = [p for q in parts[:n + 1] for p in q]
        for _ in range(len(part) // 4):
            part.insert(int(rng.integers(0, len(part) + 1)), earlier[int(rng.integers(0, len(earlier)))])
        url, caption = earlier[int(rng.integers(0, len(earlier)))]
        part.extend([(url, caption + " too"), (url + "?", caption), (url, f" {caption}\t")])
    return parts


def write_parts(folder: Path, parts: list[list[Pair]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, rows in enumerate(parts):
        paths.append(folder / f"part-{n}.parquet")
        table = pa.table({"url": pa.array([u for u, _ in rows], pa.string()),
                          "caption": pa.array([c for _, c in rows], pa.string())})
        pq.write_table(table, paths[-1], row_group_size=97)
    return paths


def reference(parts: list[list[Pair]]) -> list[list[bool]]:
    """Brute force: a row is a repeat when the same pair (caption trimmed) came earlier (parts in order, rows in
    file order)."""
    seen: set[Pair] = set()
    masks = []
    for rows in parts:
        masks.append([])
        for url, caption in rows:
            masks[-1].append((url, caption.strip()) in seen)
            seen.add((url, caption.strip()))
    return masks


def shuffle_here(paths: list[Path], work: Path, bucket_rows: int, batch_rows: int = 128,
                 todo: list[int] | None = None, reverse: bool = False) -> Shuffle:
    """The map tasks, then the reduce tasks, one after the other (``reverse``: in the opposite order, as Ray
    may finish them)."""
    todo = list(range(len(paths))) if todo is None else todo
    shuffle = Shuffle(plan_shuffle(paths, todo, str(work), bucket_rows, batch_rows))
    order = -1 if reverse else 1
    for job in list(enumerate(paths))[::order]:
        shuffle.add_map(job[0], map_part(job, shuffle.plan))
    for job in shuffle.reduce_jobs()[::order]:
        shuffle.add_reduce(job[0], *reduce_bucket(job, shuffle.plan))
    return shuffle


def masks(shuffle: Shuffle, todo: list[int]) -> list[list[bool]]:
    return [part_repeats(shuffle.plan, i, shuffle.repeat_buckets(i)).tolist() for i in todo]


@pytest.mark.parametrize("bucket_rows", [97, 600, 100_000])
def test_repeats_equal_a_brute_force_reference(real_pairs: list[Pair], bucket_rows: int, tmp_path: Path) -> None:
    parts = planted_parts(real_pairs)
    paths = write_parts(tmp_path / "in", parts)
    shuffle = shuffle_here(paths, tmp_path / "work", bucket_rows)
    expected = reference(parts)
    rows = sum(map(len, parts))
    assert shuffle.plan.buckets == -(-rows // bucket_rows) and shuffle.plan.rows == rows
    assert masks(shuffle, list(range(len(parts)))) == expected
    assert shuffle.repeat_rows == sum(map(sum, expected)) > 400
    across = [(u, c.strip()) for u, c in parts[0]]
    assert not expected[2] and any(dup and pair in across for pair, dup in zip(parts[4], expected[4]))


def test_shuffle_files_and_bounded_groups(real_pairs: list[Pair], tmp_path: Path) -> None:
    parts = planted_parts(real_pairs)
    paths = write_parts(tmp_path / "in", parts)
    shuffle = shuffle_here(paths, tmp_path / "work", bucket_rows=600)
    plan = shuffle.plan
    assert plan.buckets == 5 and plan.groups == (0, 1, 1, 1, 2, 3)  # small parts share a group, none over 600 rows
    work = tmp_path / "work"
    maps = sorted(str(p.relative_to(work)) for p in work.glob("map-*/*"))
    assert maps == [plan.map_name(i, b) for i in range(len(parts)) for b in range(plan.buckets)
                    if shuffle.mapped[i, b]]
    assert not shuffle.mapped[2].any() and 0 < shuffle.mapped[1].sum() <= len(parts[1])  # the empty part
    for i, path in enumerate(paths):  # every row of a part in exactly one of its bucket files, at its position
        records = np.concatenate([np.fromfile(work / plan.map_name(i, b), RECORD)
                                  for b in np.flatnonzero(shuffle.mapped[i])]) if shuffle.mapped[i].any() else []
        assert sorted(int(r["pos"]) for r in records) == list(range(plan.starts[i], plan.starts[i] + plan.counts[i]))
        assert all(int(r["hi"]) % plan.buckets == b for b in np.flatnonzero(shuffle.mapped[i])
                   for r in np.fromfile(work / plan.map_name(i, b), RECORD))
    for path in work.glob("repeats/*/*.npy"):
        positions = np.load(path)
        assert positions.tolist() == sorted(set(positions.tolist())) and len(positions)
    assert not list(work.rglob(".tmp-*")), "staging folders are gone once published"


def test_reduce_and_map_order_does_not_matter(real_pairs: list[Pair], tmp_path: Path) -> None:
    parts = planted_parts(real_pairs, seed=3)
    paths = write_parts(tmp_path / "in", parts)
    forward = masks(shuffle_here(paths, tmp_path / "a", 300), list(range(len(parts))))
    backward = masks(shuffle_here(paths, tmp_path / "b", 300, batch_rows=50, reverse=True), list(range(len(parts))))
    assert forward == backward == reference(parts)


def test_only_the_groups_of_parts_to_do_get_repeat_files(real_pairs: list[Pair], tmp_path: Path) -> None:
    parts = planted_parts(real_pairs)
    paths = write_parts(tmp_path / "in", parts)
    shuffle = shuffle_here(paths, tmp_path / "work", bucket_rows=600, todo=[5])
    groups = {p.parent.name for p in (tmp_path / "work").glob("repeats/*/*.npy")}
    assert groups == {"group-00003"} and shuffle.plan.wanted == {3}
    assert masks(shuffle, [5]) == reference(parts)[5:]  # repeats of rows of parts not redone still count
    assert shuffle.repeat_rows == sum(map(sum, reference(parts)))


@pytest.mark.parametrize("digest", ["xxh3", "blake2b"])
def test_repeats_with_either_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digest: str) -> None:
    if digest == "blake2b":  # the fallback when xxhash is not installed
        monkeypatch.setattr(duplicate_rules, "DIGEST_128", duplicate_rules._blake2b_128)
    pairs = [(f"http://x.test/{i % 7}.jpg", f"caption {i % 11}") for i in range(300)]
    paths = write_parts(tmp_path / "in", [pairs[:120], pairs[120:]])
    shuffle = shuffle_here(paths, tmp_path / "work", bucket_rows=50, batch_rows=64)
    assert masks(shuffle, [0, 1]) == reference([pairs[:120], pairs[120:]])


def test_record_repeats_when_high_key_words_collide() -> None:
    """Records sharing the high 64 bits but not the low ones are not repeats of each other."""
    rng = np.random.default_rng(1)
    hi = rng.integers(0, 4, 2000).astype(np.uint64)  # few high words: many collisions
    lo = rng.integers(0, 40, 2000).astype(np.uint64)
    records = np.empty(2000, dtype=RECORD)
    records["hi"], records["lo"], records["pos"] = hi, lo, np.arange(2000, dtype=np.uint64) * 3
    seen: set[tuple[int, int]] = set()
    expected = []
    for h, l, pos in zip(hi.tolist(), lo.tolist(), records["pos"].tolist()):
        if (h, l) in seen:
            expected.append(pos)
        seen.add((h, l))
    assert record_repeats(records[rng.permutation(2000)]).tolist() == expected
    assert record_repeats(records[:1]).tolist() == []


def test_plan_pickles_and_names_files() -> None:
    plan = ShufflePlan("s3://b/out/_work/k", (0, 5), (5, 7), (0, 0), 3, frozenset({0}))
    assert pickle.loads(pickle.dumps(plan)) == plan and plan.rows == 12 and plan.n_groups == 1
    assert plan.map_name(1, 2) == "map-00001/bucket-00002.bin"
    assert plan.repeats_name(0, 2) == "repeats/group-00000/bucket-00002.npy"


def test_a_part_that_changes_during_the_run_is_one_line(tmp_path: Path) -> None:
    paths = write_parts(tmp_path / "in", [[("u", "a caption")] * 3])
    plan = plan_shuffle(paths, [0], str(tmp_path / "work"), 10)
    write_parts(tmp_path / "in", [[("u", "a caption")] * 4])
    with pytest.raises(WitError, match=r"part-0.parquet: 4 rows, its footer said 3 \(changed during the run\?\)$"):
        map_part((0, paths[0]), plan)
    assert not list((tmp_path / "work").rglob("*.bin")), "a failed map publishes nothing"


def test_run_filter_clears_a_killed_runs_shuffle_and_keeps_reasons(real_pairs: list[Pair], tmp_path: Path) -> None:
    """The stage in this process (workers=1): repeats marked as the reference says, whatever the bucket size,
    a killed run's ``_work`` removed, and a redone part's reasons those of the clean run."""
    parts = planted_parts(real_pairs[:600], seed=5)
    write_parts(tmp_path / "in", parts)
    leftover = tmp_path / "out" / WORK_DIR / "dedup-old" / "map-00000" / "bucket-00000.bin"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"x" * 24)
    cfg = FilterConfig(rules=("duplicate",), dedup_bucket_rows=101, batch_rows=64, progress=False, workers=1)
    stats = run_filter(tmp_path / "in", tmp_path / "out", cfg)
    assert not (tmp_path / "out" / WORK_DIR).exists()
    expected = reference(parts)
    assert stats.dropped["duplicate"] == stats.extra["dedup_repeats"] == sum(map(sum, expected))
    assert stats.extra["dedup_buckets"] == -(-sum(map(len, parts)) // 101)
    out = tmp_path / "out"
    kept = {f"part-{n}.parquet": pq.read_table(out / "kept" / f"part-{n}.parquet").to_pylist() for n in range(6)}
    for n, rows in enumerate(parts):
        assert [(r["url"], r["caption"]) for r in kept[f"part-{n}.parquet"]] == \
            [(url, caption.strip()) for (url, caption), dup in zip(rows, expected[n]) if not dup]
    (out / "_parts" / "part-4.stats.json").unlink()
    again = run_filter(tmp_path / "in", tmp_path / "out", dataclasses.replace(cfg, dedup_bucket_rows=7))
    assert again.extra["skipped_parts"] == 5 and again.to_dict()["dropped"] == stats.to_dict()["dropped"]
    assert pq.read_table(out / "kept" / "part-4.parquet").to_pylist() == kept["part-4.parquet"]

"""Benchmark: exact Hamming-radius search (:class:`dedup.mih.MultiIndexHash`) against the brute force
(:class:`dedup.search.HashIndex`), in the same run, on one core.

Index: 100,000 eval hashes (the issue's target), and 2,700,000 (a 100,000-image eval set under the 27
variants of :data:`dedup.phash.VARIANTS`). Hashes are uniform random 64-bit values with the top bit set, as
in real pHashes (the DC coefficient is always above the median). Queries:

* ``far``: uniform random hashes (the real case: nearly every training image is far from every eval hash);
* ``near``: half of them planted 0..radius bits from a random eval hash.

Exactness: the multi-index results equal the brute force's on the sample the brute force runs on
(``exact``). Rates are lookups (query hashes) per CPU-second of this process (one thread; on a shared
machine wall-clock rates swing with other load): all queries in one call (the kernel shares bucket
lookups between queries with the same chunk key, so big calls are cheapest), and in calls of
``--batch`` queries (a dedup shard's worth: ~2 lookups per image), checked equal to the single call.
Writes ``benchmarks/results/search.json``.

    .venv/bin/python benchmarks/bench_search.py [--queries 1000000] [--brute-queries 20000] [--batch 20000]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import sys  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dedup import _mih_kernel  # noqa: E402
from dedup.match import MAX_DISTANCE  # noqa: E402
from dedup.mih import MultiIndexHash  # noqa: E402
from dedup.phash import VARIANTS  # noqa: E402
from dedup.search import HashIndex  # noqa: E402
from pipeline.core.io import write_json  # noqa: E402
from benchinfo import machine_info  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "search.json"
TOP_BIT = np.uint64(1 << 63)


def hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, n, dtype=np.uint64) | TOP_BIT


def near(rng: np.random.Generator, index: np.ndarray, n: int, radius: int) -> np.ndarray:
    """``n`` queries, half of them 0..radius bits (below the top bit) from random indexed hashes."""
    out = hashes(rng, n)
    k = n // 2
    flips = np.zeros(k, dtype=np.uint64)
    for i, w in enumerate(rng.integers(0, radius + 1, k)):
        for b in rng.choice(63, size=int(w), replace=False):
            flips[i] |= np.uint64(1) << np.uint64(b)
    out[:k] = index[rng.integers(0, index.size, k)] ^ flips
    return out


def cpu_rate(fn: Callable[[], object], n: int, repeat: int = 3) -> tuple[float, float, object]:
    """``(best lookups per CPU-second, its wall-clock rate, result)`` over ``repeat`` runs."""
    best, wall, result = 0.0, 0.0, None
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        result = fn()
        c1, w1 = time.process_time(), time.perf_counter()
        if n / max(c1 - c0, 1e-9) > best:
            best, wall = n / max(c1 - c0, 1e-9), n / max(w1 - w0, 1e-9)
    return round(best), round(wall), result


def same(a: tuple[np.ndarray, ...], b: object) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, (b.query, b.target, b.distance)))


def in_batches(mih: MultiIndexHash, q: np.ndarray, batch: int) -> tuple[np.ndarray, ...]:
    """``mih.search`` called on ``batch`` queries at a time, the results joined as one call's."""
    parts = [mih.search(q[i:i + batch]) for i in range(0, q.size, batch)]
    return (np.concatenate([p[0] + i for p, i in zip(parts, range(0, q.size, batch))]),
            np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))


def run_case(rng: np.random.Generator, n_index: int, radius: int, n_queries: int, n_brute: int, batch: int) -> dict:
    index = hashes(rng, n_index)
    c0 = time.process_time()
    mih = MultiIndexHash(index, radius)
    build_s = time.process_time() - c0
    numpy_mih = MultiIndexHash(index, radius, chunks=mih.m, use_numba=False)
    brute = HashIndex(index)
    out = {"index_hashes": n_index, "radius": radius, "chunks": mih.m, "build_cpu_s": round(build_s, 3),
           "numba": mih.use_numba}
    if mih.m:
        out |= {"chunk_bits": list(mih.widths), "chunk_probe_radii": mih.radii.tolist()}
    for kind in ("far", "near"):
        q = hashes(rng, n_queries) if kind == "far" else near(rng, index, n_queries, radius)
        mih.search(q[:10])  # compile / warm up
        rate, wall, res = cpu_rate(lambda: mih.search(q), q.size)
        batch_rate, _, batched = cpu_rate(lambda: in_batches(mih, q, batch), q.size)
        sample = q[:n_brute]
        brute_rate, _, ref = cpu_rate(lambda: brute.search(sample, max_distance=radius), sample.size, repeat=1)
        np_rate, _, np_res = cpu_rate(lambda: numpy_mih.search(sample), sample.size, repeat=1)
        exact = same(mih.search(sample), ref) and same(np_res, ref)
        out[kind] = {"queries": int(q.size), "matches_per_query": round(len(res[0]) / q.size, 4),
                     "mih_lookups_per_cpu_s": rate, "mih_lookups_per_wall_s": wall,
                     "batch_queries": batch, "mih_lookups_per_cpu_s_in_batches": batch_rate,
                     "batched_equals_one_call": all(np.array_equal(x, y) for x, y in zip(batched, res)),
                     "mih_numpy_lookups_per_cpu_s": np_rate, "brute_force_lookups_per_cpu_s": brute_rate,
                     "speedup_vs_brute_force": round(rate / max(brute_rate, 1), 1),
                     "exact_vs_brute_force": bool(exact), "checked_queries": int(sample.size),
                     "checked_matches": int(len(ref))}
        print(f"{n_index:>9,} r={radius:2d} {kind:4s}: MIH {rate:>12,}/s  in batches {batch_rate:>10,}/s  "
              f"numpy {np_rate:>10,}/s  brute {brute_rate:>8,}/s  exact={exact}", flush=True)
    return out


def machine() -> dict[str, object]:
    return machine_info(("numba", "numpy"), cores_used=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=1_000_000)
    ap.add_argument("--brute-queries", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = [run_case(rng, 100_000, r, args.queries, args.brute_queries, args.batch) for r in (6, MAX_DISTANCE, 10)]
    big = 100_000 * len(VARIANTS)
    cases += [run_case(rng, big, MAX_DISTANCE, args.queries // 4, args.brute_queries // 10, args.batch)]
    versions = {p: metadata.version(p) for p in ("numpy", "numba") if _installed(p)}
    write_json(args.out, {"benchmark": "exact 64-bit Hamming radius search, one core", "machine": machine(),
                          "versions": versions, "default_radius": MAX_DISTANCE, "numba": _mih_kernel.AVAILABLE,
                          "clock": "process CPU time, best of 3 (brute force and numpy: 1 run on a sample)",
                          "cases": cases})
    print(f"wrote {args.out}")


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()

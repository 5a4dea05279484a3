"""Exact Hamming-radius search over 64-bit hashes by multi-index hashing (Norouzi et al., generalised pigeonhole).

The 64 bits are cut into ``m`` chunks. If two hashes are within ``r`` bits, the chunk distances ``d_j`` sum
to at most ``r``, so for any thresholds ``t_j`` with ``sum(t_j + 1) > r`` some chunk has ``d_j <= t_j``
(pigeonhole). Each chunk has a table (the indexed hashes sorted by that chunk, plus bucket start offsets), and
a query probes, in every chunk ``j``, each key within ``t_j`` bits of its own chunk; every hash found is a
candidate, verified on all 64 bits. The search is therefore exact: no hash within the radius is missed.
A pair that several chunks find is reported once (by the first chunk that can find it).

``m`` is chosen per index size and radius by a cost model (probes cost a cache miss, candidates a popcount);
for small indexes a blocked brute force is cheaper and used instead. The inner loop is compiled with numba
when it is installed (about 10x faster); a vectorised NumPy path gives the same results without it.
See ``benchmarks/bench_search.py`` for measured rates.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from dedup import _mih_kernel

MAX_CHUNK_BITS = 24
PROBE_COST = 15.0  # ns per probe (a bucket lookup: usually a cache miss)
CANDIDATE_COST = 0.7  # ns per candidate (contiguous popcount)
BRUTE_COST = 0.5  # ns per (query, hash) pair of the brute force
BLOCK_ELEMS = 1 << 16


def as_uint64(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Hashes (signed int64 or unsigned ints) as a contiguous uint64 array of the same bits."""
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr).ravel()
    if arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr.astype(np.int64, copy=False).view(np.uint64)).ravel()
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.array([int(v) & 0xFFFFFFFFFFFFFFFF for v in arr.ravel()], dtype=np.uint64)


def chunk_widths(m: int) -> list[int]:
    """64 bits cut into ``m`` chunks as even as possible (wider chunks first)."""
    return [64 // m + (1 if j < 64 % m else 0) for j in range(m)]


def chunk_radii(m: int, radius: int) -> list[int]:
    """Per-chunk probe radii ``t_j`` with ``sum(t_j + 1) = max(m, radius + 1)`` (the pigeonhole condition)."""
    need = max(0, radius + 1 - m)
    return [need // m + (1 if j < need % m else 0) for j in range(m)]


def ball_size(bits: int, t: int) -> int:
    """Number of keys within ``t`` bits of a ``bits``-bit key."""
    return sum(math.comb(bits, k) for k in range(t + 1))


def mih_cost(n: int, m: int, radius: int) -> float:
    """Estimated ns per query of multi-index hashing with ``m`` chunks over ``n`` hashes."""
    return sum(ball_size(b, t) * (PROBE_COST + CANDIDATE_COST * n / 2 ** b)
               for b, t in zip(chunk_widths(m), chunk_radii(m, radius)))


def best_chunks(n: int, radius: int) -> int:
    """The number of chunks with the lowest estimated cost, or 0 when brute force is cheaper."""
    options = [m for m in range(1, min(radius + 1, 16) + 1) if max(chunk_widths(m)) <= MAX_CHUNK_BITS]
    if not options:
        return 0
    m = min(options, key=lambda k: mih_cost(n, k, radius))
    return m if mih_cost(n, m, radius) < BRUTE_COST * n else 0


def _probe_masks(bits: int, t: int) -> np.ndarray:
    """All ``bits``-bit XOR masks of weight <= ``t`` (weight 0 first)."""
    masks = [0] + [sum(1 << b for b in combo)
                   for k in range(1, t + 1) for combo in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.int64)


class MultiIndexHash:
    """The 64-bit hashes of an index, searchable exactly within any radius up to ``max_radius``."""

    def __init__(self, hashes: Sequence[int] | np.ndarray, max_radius: int, chunks: int | None = None,
                 use_numba: bool | None = None) -> None:
        if not 0 <= max_radius <= 64:
            raise ValueError(f"max_radius must be between 0 and 64, got {max_radius}")
        self.hashes = as_uint64(hashes)
        self.max_radius = max_radius
        self.m = best_chunks(self.hashes.size, max_radius) if chunks is None else chunks
        if self.m and not (1 <= self.m <= 64 and max(chunk_widths(self.m)) <= MAX_CHUNK_BITS):
            raise ValueError(f"chunks must give chunks of at most {MAX_CHUNK_BITS} bits, got {self.m}")
        self.use_numba = _mih_kernel.AVAILABLE if use_numba is None else (use_numba and _mih_kernel.AVAILABLE)
        if self.m:
            self._build()

    def __len__(self) -> int:
        return int(self.hashes.size)

    def _build(self) -> None:
        widths, radii = chunk_widths(self.m), chunk_radii(self.m, self.max_radius)
        self.shifts = (64 - np.cumsum(widths)).astype(np.int64)  # chunk 0 holds the top bits
        self.chunk_masks = np.array([(1 << b) - 1 for b in widths], dtype=np.uint64)
        self.radii = np.array(radii, dtype=np.int64)
        probes, orders, sorted_hashes, starts = [], [], [], []
        for shift, mask, b, t in zip(self.shifts, self.chunk_masks, widths, radii):
            keys = ((self.hashes >> np.uint64(shift)) & mask).astype(np.int64)
            order = np.argsort(keys, kind="stable")
            starts.append(np.searchsorted(keys[order], np.arange((1 << b) + 1)).astype(np.int64))
            orders.append(order.astype(np.int64))
            sorted_hashes.append(self.hashes[order])
            probes.append(_probe_masks(b, t))
        self.probes = np.concatenate(probes)
        self.probe_offsets = np.cumsum([0] + [p.size for p in probes]).astype(np.int64)
        self.orders = np.concatenate(orders)
        self.sorted_hashes = np.concatenate(sorted_hashes)
        self.starts = np.concatenate(starts)
        self.start_offsets = np.cumsum([0] + [s.size for s in starts]).astype(np.int64)
        self._chunk_probes = probes

    def search(self, queries: Sequence[int] | np.ndarray, radius: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every (query, indexed) pair within ``radius`` bits: ``(query pos, index pos, distance)`` sorted by
        query then index position."""
        radius = self.max_radius if radius is None else radius
        if radius > self.max_radius:
            raise ValueError(f"radius {radius} is above this index's max_radius {self.max_radius}")
        q = as_uint64(queries)
        if q.size == 0 or self.hashes.size == 0 or radius < 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8)
        if not self.m:
            qi, ti, d = _brute(q, self.hashes, radius)
        elif self.use_numba:
            qi, ti, d = self._search_numba(q, radius)
        else:
            qi, ti, d = self._search_numpy(q, radius)
        order = np.lexsort((ti, qi))
        return qi[order], ti[order], d[order]

    def _search_numba(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        capacity = max(1024, 2 * q.size)
        keys = (q[None, :] >> self.shifts.astype(np.uint64)[:, None]) & self.chunk_masks[:, None]
        order = np.argsort(keys.astype(np.int32), axis=1, kind="stable").astype(np.int64)
        while True:
            out_q, out_t = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
            out_d = np.empty(capacity, np.uint8)
            n = _mih_kernel.search(q, order, self.shifts, self.chunk_masks, self.radii, self.probes, self.probe_offsets,
                                   self.sorted_hashes, self.orders, self.starts, self.start_offsets, radius,
                                   out_q, out_t, out_d)
            if n <= capacity:
                return out_q[:n], out_t[:n], out_d[:n]
            capacity = n

    def _search_numpy(self, q: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        parts = []
        batch = max(1, BLOCK_ELEMS // max(1, int(self.probes.size)))
        for q0 in range(0, q.size, batch):
            for j in range(self.m):
                parts.append(self._numpy_chunk(q[q0:q0 + batch], j, radius, q0))
        qi, ti, d = (np.concatenate(x) for x in zip(*parts))
        return qi, ti, d

    def _numpy_chunk(self, q: np.ndarray, j: int, radius: int, q0: int) -> tuple[np.ndarray, ...]:
        """Matches of a query block found through chunk ``j`` and not through an earlier chunk."""
        n = self.hashes.size
        keys = ((q >> np.uint64(self.shifts[j])) & self.chunk_masks[j]).astype(np.int64)
        probe_keys = keys[:, None] ^ self._chunk_probes[j][None, :]
        starts = self.starts[self.start_offsets[j]:self.start_offsets[j + 1]]
        first, counts = starts[probe_keys], starts[probe_keys + 1] - starts[probe_keys]
        rows, cols = np.nonzero(counts)
        c = counts[rows, cols]
        pos = np.repeat(first[rows, cols] - np.cumsum(c) + c, c) + np.arange(int(c.sum())) + j * n
        qpos = np.repeat(rows, c)
        x = self.sorted_hashes[pos] ^ q[qpos]
        keep = np.bitwise_count(x) <= radius
        for i in range(j):  # reported by an earlier chunk already
            keep &= np.bitwise_count(x & (self.chunk_masks[i] << np.uint64(self.shifts[i]))) > self.radii[i]
        return qpos[keep].astype(np.int64) + q0, self.orders[pos[keep]], np.bitwise_count(x[keep]).astype(np.uint8)


def _brute(q: np.ndarray, hashes: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocked brute force: XOR and popcount every pair, ``BLOCK_ELEMS`` pairs at a time."""
    block = min(hashes.size, BLOCK_ELEMS)
    qblock = max(1, BLOCK_ELEMS // block)
    parts = []
    for q0 in range(0, q.size, qblock):
        for t0 in range(0, hashes.size, block):
            d = np.bitwise_count(q[q0:q0 + qblock, None] ^ hashes[None, t0:t0 + block])
            qi, ti = np.nonzero(d <= radius)
            parts.append((qi.astype(np.int64) + q0, ti.astype(np.int64) + t0, d[qi, ti]))
    qi, ti, d = (np.concatenate(x) for x in zip(*parts))
    return qi, ti, d

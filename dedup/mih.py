"""Exact Hamming-radius search over 64-bit hashes by multi-index hashing (Norouzi et al., generalised pigeonhole).

The 64 bits are cut into ``m`` chunks. If two hashes are within ``r`` bits, the chunk distances ``d_j`` sum
to at most ``r``, so for any thresholds ``t_j`` with ``sum(t_j + 1) > r`` some chunk has ``d_j <= t_j``
(pigeonhole; a chunk left out counts as ``t_j = -1``). Each chunk has a table (the indexed hashes sorted by
that chunk, plus a direct-address array of bucket start offsets), and a query probes, in every chunk ``j``,
each key within ``t_j`` bits of its own chunk; every hash found is a candidate, verified on all 64 bits. The
search is therefore exact: no hash within the radius is missed. A pair that several chunks find is reported
once (by the first chunk that can find it).

The compiled kernel (:mod:`dedup._mih_kernel`) groups the queries by chunk key, so each bucket is looked up
once per distinct key rather than once per query, and tests candidates 16 at a time with AVX-512 popcounts.
Candidates being that cheap, the layout is chosen by a cost model fitted on that kernel (a bucket lookup
costs ~100x a candidate test). Chunk boundaries balance the bits that vary across the index: real pHashes
have a constant top bit (the DC coefficient is always above the median), which would otherwise halve one
chunk's key space and double its buckets. Small indexes are brute-forced. Without numba a vectorised NumPy
path gives the same results, slower. See ``benchmarks/bench_search.py`` for measured rates.
"""
from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

from dedup import _mih_kernel

MAX_CHUNK_BITS = 24
# Cost model of the compiled kernel in ns per query, fitted on one core of the development machine (Xeon,
# 2 MiB L2) over 150 single-chunk runs: 100,000 and 2,700,000 random hashes, chunks of 10-22 bits, probe
# radii 0-2, 20,000-250,000 queries a search (rms error ~35 %; enough to rank layouts, which differ by 2x+).
SORT_COST = 13.0  # grouping one query by its key, per probed chunk
PROBE_COST = 6.5  # one bucket lookup of a group (offsets, loop set-up, a mispredicted loop exit)
MISS_COST = 25.0  # extra per lookup when the bucket offsets outgrow the cache and few keys are shared
MEMORY_LATENCY = 48.0  # per group when the chunk's table outgrows the cache (its lookups overlap)
COPY_COST = 0.3  # copying one candidate into a group's buffer
TEST_COST = 0.12  # testing one candidate against one query (two 512-bit XOR + popcount + compare per 16)
CACHE_BYTES = 2 << 20
BRUTE_COST = 0.5  # one (query, hash) pair of the NumPy brute force
NOMINAL_BATCH = 50_000  # queries per search assumed when choosing the layout (a dedup shard: ~2 per image)
BLOCK_ELEMS = 1 << 16
ALL_BITS = (1 << 64) - 1


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


def chunk_cost(width: int, free: int, t: int, n: int, batch: int = NOMINAL_BATCH) -> float:
    """Estimated ns per query of probing a ``width``-bit chunk (``free`` of its bits vary across the ``n``
    indexed hashes) within ``t`` bits, for searches of ``batch`` queries; 0 when not probed (``t < 0``).

    Queries sharing a key share its bucket lookups and copies, so these are paid per distinct key: about
    ``keys * (1 - exp(-batch / keys))`` of them in a batch. Candidates are tested per query."""
    if t < 0:
        return 0.0
    keys = 2.0 ** free
    candidates = ball_size(free, t) * n / keys
    groups = keys / batch * -math.expm1(-batch / keys)  # distinct keys per query
    lookup = PROBE_COST + (MISS_COST * math.exp(-batch / keys) if 4 << width > CACHE_BYTES else 0.0)
    latency = MEMORY_LATENCY if 8 * n > CACHE_BYTES else 0.0
    per_group = latency + ball_size(width, t) * lookup + candidates * COPY_COST
    return SORT_COST + groups * per_group + candidates * TEST_COST


def probe_radii(widths: Sequence[int], free: Sequence[int], n: int, radius: int, batch: int = NOMINAL_BATCH,
                caps: Sequence[int] | None = None) -> list[int]:
    """Per-chunk probe radii meeting the pigeonhole condition ``sum(t_j + 1) > radius`` at the lowest
    estimated cost (-1: chunk not probed), each at most ``caps[j]`` (default: the chunk's width).

    Greedy: raise the radius whose increment costs least until the condition holds. A radius below the
    number of chunks leaves chunks out (radius 0 needs one chunk)."""
    caps = list(widths) if caps is None else list(caps)
    t = [-1] * len(widths)
    while sum(x + 1 for x in t) <= radius:
        open_ = [j for j in range(len(t)) if t[j] < caps[j]]
        if not open_:
            raise ValueError(f"chunk radii {caps} cannot cover radius {radius}")
        j = min(open_, key=lambda k: chunk_cost(widths[k], free[k], t[k] + 1, n, batch)
                - chunk_cost(widths[k], free[k], t[k], n, batch))
        t[j] += 1
    return t


def varying_bits(hashes: np.ndarray) -> int:
    """Bit mask of the bits that are not the same in every hash."""
    if hashes.size == 0:
        return ALL_BITS
    return int(np.bitwise_or.reduce(hashes)) & ~int(np.bitwise_and.reduce(hashes))


def balanced_widths(m: int, varying: int) -> list[int]:
    """``m`` contiguous chunks (top bits first) holding as even a share of the ``varying`` bits as possible
    (larger shares first); a constant bit joins the chunk above it (the top bit: chunk 0). Plain
    :func:`chunk_widths` when a chunk would get no varying bit or more than ``MAX_CHUNK_BITS`` bits.

    Why: a key bit that never varies halves the chunk's key space and doubles its buckets (candidates)."""
    free = bin(varying).count("1")
    if free < m:
        return chunk_widths(m)
    widths, bit = [], 63
    for j in range(m - 1):
        top, share = bit, free // m + (1 if j < free % m else 0)
        while share:
            share -= (varying >> bit) & 1
            bit -= 1
        while not (varying >> bit) & 1:  # constant bits down to the next varying one
            bit -= 1
        widths.append(top - bit)
    widths.append(bit + 1)
    return widths if max(widths) <= MAX_CHUNK_BITS else chunk_widths(m)


def _free_per_chunk(widths: Sequence[int], varying: int) -> list[int]:
    """How many varying bits each chunk (top bits first) holds."""
    out, top = [], 64
    for b in widths:
        out.append(bin((varying >> (top - b)) & ((1 << b) - 1)).count("1"))
        top -= b
    return out


def plan_layout(m: int, varying: int, n: int, radius: int, batch: int = NOMINAL_BATCH
                ) -> tuple[list[int], list[int], list[int]]:
    """An ``m``-chunk layout for ``n`` hashes: chunk widths, varying bits per chunk and probe radii."""
    widths = balanced_widths(m, varying)
    free = _free_per_chunk(widths, varying)
    return widths, free, probe_radii(widths, free, n, radius, batch)


def layout_cost(widths: Sequence[int], free: Sequence[int], radii: Sequence[int], n: int,
                batch: int = NOMINAL_BATCH) -> float:
    """Estimated ns per query of a layout (see :func:`chunk_cost`)."""
    return sum(chunk_cost(b, f, t, n, batch) for b, f, t in zip(widths, free, radii))


def choose_chunks(n: int, radius: int, varying: int = ALL_BITS) -> int:
    """The number of chunks with the lowest estimated cost, or 0 when brute force is cheaper (a layout that
    enumerates a whole chunk is a brute force in disguise, so it does not count)."""
    costs = {}
    for m in range(1, 17):
        widths, free, radii = plan_layout(m, varying, n, radius)
        if max(widths) <= MAX_CHUNK_BITS and all(t < b for t, b in zip(radii, widths)):
            costs[m] = layout_cost(widths, free, radii, n)
    m = min(costs, key=costs.__getitem__, default=0)
    return m if m and costs[m] < BRUTE_COST * n else 0


def best_chunks(n: int, radius: int) -> int:
    """:func:`choose_chunks` for hashes whose 64 bits all vary."""
    return choose_chunks(n, radius)


def _probe_masks(bits: int, t: int) -> np.ndarray:
    """All ``bits``-bit XOR masks of weight <= ``t``, by increasing weight (weight 0 first), so that the masks
    of any smaller radius are a prefix."""
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
        self.varying = varying_bits(self.hashes)
        self.m = choose_chunks(self.hashes.size, max_radius, self.varying) if chunks is None else chunks
        if self.m and not (1 <= self.m <= 64 and max(chunk_widths(self.m)) <= MAX_CHUNK_BITS):
            raise ValueError(f"chunks must give chunks of at most {MAX_CHUNK_BITS} bits, got {self.m}")
        self.use_numba = _mih_kernel.AVAILABLE if use_numba is None else (use_numba and _mih_kernel.AVAILABLE)
        if self.m:
            self._build()

    def __len__(self) -> int:
        return int(self.hashes.size)

    def _build(self) -> None:
        """Chunk layout, probe masks and one table per chunk (see the module docstring), concatenated for the
        kernel: ``table`` (hashes sorted by chunk key, PAD spare entries at the end), ``positions`` (their
        index positions), ``starts`` (per chunk, 2^bits + 1 direct-address bucket offsets into ``table``)."""
        n = self.hashes.size
        self.widths, self.free, radii = plan_layout(self.m, self.varying, n, self.max_radius)
        self.radii = np.array(radii, dtype=np.int64)
        self.shifts = (64 - np.cumsum(self.widths)).astype(np.int64)  # chunk 0 holds the top bits
        self.chunk_masks = np.array([(1 << b) - 1 for b in self.widths], dtype=np.uint64)
        self._chunk_probes = [_probe_masks(b, max(t, 0)) for b, t in zip(self.widths, radii)]
        self.probes = np.concatenate(self._chunk_probes)
        self.probe_offsets = np.cumsum([0] + [p.size for p in self._chunk_probes]).astype(np.int64)
        index_type = np.int32 if (n + 1) * self.m < 2 ** 31 else np.int64
        orders, starts = zip(*(self._sort_by_chunk(j) for j in range(self.m)))
        self.table = np.concatenate([self.hashes[o] for o in orders] + [np.zeros(_mih_kernel.PAD, np.uint64)])
        self.positions = np.concatenate(orders).astype(index_type)
        self.starts = np.concatenate([s + j * n for j, s in enumerate(starts)]).astype(index_type)
        self.start_offsets = np.cumsum([0] + [s.size for s in starts]).astype(np.int64)
        # the largest candidate buffer a group can fill: its biggest bucket times its number of probes
        self.buf_size = max(int(np.diff(s).max()) * p.size for s, p in zip(starts, self._chunk_probes))

    def _sort_by_chunk(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Index positions sorted by chunk ``j``'s key, and the start of each key's bucket in that order."""
        small = np.uint16 if self.widths[j] <= 16 else np.uint32  # NumPy radix-sorts 16-bit keys
        keys = ((self.hashes >> np.uint64(self.shifts[j])) & self.chunk_masks[j]).astype(small)
        counts = np.bincount(keys, minlength=1 << self.widths[j])
        return np.argsort(keys, kind="stable"), np.concatenate([[0], np.cumsum(counts)])

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
        else:
            tq = np.array(probe_radii(self.widths, self.free, self.hashes.size, radius, max(q.size, 1),
                                      caps=self.radii), dtype=np.int64)
            search = self._search_numba if self.use_numba else self._search_numpy
            qi, ti, d = search(q, radius, tq)
        order = pair_order(qi, ti, self.hashes.size)
        return qi[order], ti[order], d[order]

    def _search_numba(self, q: np.ndarray, radius: int, tq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The compiled kernel; its output buffers are sized for 2 matches per query and grown if it finds more
        (it then runs again: it counts every match even when they do not fit)."""
        nprobes = np.array([ball_size(b, t) if t >= 0 else 0 for b, t in zip(self.widths, tq)], dtype=np.int64)
        widths = np.array(self.widths, np.int64)
        capacity = max(1024, 2 * q.size)
        while True:
            out_q, out_t = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
            out_d = np.empty(capacity, np.uint8)
            n = _mih_kernel.search(q, radius, tq, nprobes, self.shifts, self.chunk_masks, widths, self.probes,
                                   self.probe_offsets, self.starts, self.start_offsets, self.table, self.positions,
                                   self.buf_size, out_q, out_t, out_d)
            if n <= capacity:
                return out_q[:n], out_t[:n], out_d[:n]
            capacity = n

    def _search_numpy(self, q: np.ndarray, radius: int, tq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same search in vectorised NumPy, a block of queries and a chunk at a time."""
        active = [j for j in range(self.m) if tq[j] >= 0]
        nprobes = {j: ball_size(self.widths[j], int(tq[j])) for j in active}
        batch = max(1, BLOCK_ELEMS // max(1, sum(nprobes.values())))
        parts = [self._numpy_chunk(q[q0:q0 + batch], j, nprobes[j], radius, tq, q0)
                 for q0 in range(0, q.size, batch) for j in active]
        qi, ti, d = (np.concatenate(x) for x in zip(*parts))
        return qi, ti, d

    def _numpy_chunk(self, q: np.ndarray, j: int, nprobe: int, radius: int, tq: np.ndarray, q0: int
                     ) -> tuple[np.ndarray, ...]:
        """Matches of a query block found through chunk ``j`` and not through an earlier probed chunk."""
        keys = ((q >> np.uint64(self.shifts[j])) & self.chunk_masks[j]).astype(np.int64)
        probe_keys = keys[:, None] ^ self._chunk_probes[j][None, :nprobe]
        starts = self.starts[self.start_offsets[j]:self.start_offsets[j + 1]]
        first, counts = starts[probe_keys], starts[probe_keys + 1] - starts[probe_keys]
        rows, cols = np.nonzero(counts)
        c = counts[rows, cols]
        pos = np.repeat(first[rows, cols] - np.cumsum(c) + c, c) + np.arange(int(c.sum()))
        qpos = np.repeat(rows, c)
        x = self.table[pos] ^ q[qpos]
        keep = np.bitwise_count(x) <= radius
        for i in range(j):  # reported by an earlier chunk already
            if tq[i] >= 0:
                keep &= np.bitwise_count(x & (self.chunk_masks[i] << np.uint64(self.shifts[i]))) > tq[i]
        return (qpos[keep].astype(np.int64) + q0, self.positions[pos[keep]].astype(np.int64),
                np.bitwise_count(x[keep]).astype(np.uint8))


def pair_order(qi: np.ndarray, ti: np.ndarray, n: int) -> np.ndarray:
    """The order of distinct (query, index position) pairs by query then index position: one argsort of the
    packed key ``qi * n + ti`` (NumPy's SIMD sort, ~8x faster than ``np.lexsort``) when it fits in int64."""
    if qi.size and (int(qi.max()) + 1) * n < 2 ** 63:
        return np.argsort(qi * n + ti)
    return np.lexsort((ti, qi))


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

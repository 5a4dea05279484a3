"""Exact near-duplicate search over 64-bit perceptual hashes by Hamming distance.

:class:`HashIndex` holds the hashes of one eval set and returns, for a batch of query hashes, every
indexed hash within ``max_distance`` bits. It is brute force, but vectorised: blocks of queries are
XOR-ed against blocks of indexed hashes and counted with ``np.bitwise_count``; block sizes bound the
memory (``block_elems`` pairs at a time, ~9 bytes each). Exact: no candidate within the radius is missed.

Why ``DEFAULT_MAX_DISTANCE = 10``: for 64-bit pHash, resizing and JPEG re-encoding move a hash by 0-6
bits and mild crops or colour shifts by up to ~10, while unrelated images sit at 32 +- 4 bits (a
binomial(64, 1/2)); 10 is > 5 sigma below that, so with independent bits a random pair collides with
probability ~1e-8. It is the radius commonly used for pHash near-duplicate detection; lower it for
large corpora of simple graphics (flat images hash alike), raise it to catch heavier edits.
Scaling note: this is O(queries x index), a few thousand lookups/s against 100,000 hashes; the robust
detector (:mod:`dedup.match`) searches with :class:`dedup.mih.MultiIndexHash` instead (exact, 100x+ faster,
see ``benchmarks/results/search.json``), and so should any large index.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

DEFAULT_MAX_DISTANCE = 10
DEFAULT_BLOCK_ELEMS = 1 << 16  # 64k pairs (~0.6 MB of temporaries): cache-resident, fastest measured


def as_hash_array(values: Sequence[int] | np.ndarray) -> np.ndarray:
    """Hashes (signed int64 or unsigned ints) as a contiguous uint64 array of the same bits."""
    arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr.astype(np.int64, copy=False).view(np.uint64))
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    return np.array([int(v) & 0xFFFFFFFFFFFFFFFF for v in arr.ravel()], dtype=np.uint64)


def hamming(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> np.ndarray:
    """Elementwise (broadcasting) Hamming distance between hash arrays, as uint8."""
    return np.bitwise_count(np.bitwise_xor(as_hash_array(a), as_hash_array(b)))


@dataclasses.dataclass(frozen=True)
class Matches:
    """Pairs within the radius, sorted by (query, target): positions into the query and index arrays."""

    query: np.ndarray
    target: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return int(self.query.size)


def _empty_matches() -> Matches:
    return Matches(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint8))


class HashIndex:
    """The hashes of one eval set (with optional ids), searchable by Hamming radius."""

    def __init__(self, hashes: Sequence[int] | np.ndarray, ids: Sequence[str] | None = None,
                 block_elems: int = DEFAULT_BLOCK_ELEMS) -> None:
        self.hashes = as_hash_array(hashes).ravel()
        self.ids = np.asarray(ids, dtype=object) if ids is not None else None
        if self.ids is not None and self.ids.size != self.hashes.size:
            raise ValueError(f"{self.hashes.size} hashes but {self.ids.size} ids")
        self.block_elems = max(1, int(block_elems))

    def __len__(self) -> int:
        return int(self.hashes.size)

    def search(self, phash: Sequence[int] | np.ndarray, phash_flip: Sequence[int] | np.ndarray | None = None,
               max_distance: int = DEFAULT_MAX_DISTANCE) -> Matches:
        """Every (query, indexed) pair with ``min(d(phash), d(phash_flip)) <= max_distance``."""
        queries = as_hash_array(phash).ravel()
        flips = as_hash_array(phash_flip).ravel() if phash_flip is not None else None
        if flips is not None and flips.size != queries.size:
            raise ValueError(f"{queries.size} hashes but {flips.size} flipped hashes")
        if queries.size == 0 or self.hashes.size == 0 or max_distance < 0:
            return _empty_matches()
        eval_block = min(self.hashes.size, self.block_elems)
        query_block = max(1, self.block_elems // eval_block)
        parts = [self._search_block(queries, flips, q0, q0 + query_block, e0, e0 + eval_block, max_distance)
                 for q0 in range(0, queries.size, query_block)
                 for e0 in range(0, self.hashes.size, eval_block)]
        q, t, d = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((t, q))
        return Matches(q[order], t[order], d[order])

    def _search_block(self, queries: np.ndarray, flips: np.ndarray | None, q0: int, q1: int,
                      e0: int, e1: int, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matches of ``queries[q0:q1]`` against ``hashes[e0:e1]`` (positions made absolute)."""
        targets = self.hashes[e0:e1][None, :]
        dist = np.bitwise_count(queries[q0:q1, None] ^ targets)
        if flips is not None:
            np.minimum(dist, np.bitwise_count(flips[q0:q1, None] ^ targets), out=dist)
        qi, ti = np.nonzero(dist <= radius)
        return qi.astype(np.int64) + q0, ti.astype(np.int64) + e0, dist[qi, ti]

    def search_ids(self, phash: Sequence[int] | np.ndarray, phash_flip: Sequence[int] | np.ndarray | None = None,
                   max_distance: int = DEFAULT_MAX_DISTANCE) -> list[tuple[int, str, int]]:
        """Like :meth:`search`, as ``(query position, indexed id, distance)`` tuples."""
        if self.ids is None:
            raise ValueError("this HashIndex has no ids")
        m = self.search(phash, phash_flip, max_distance)
        return [(int(q), str(self.ids[t]), int(d)) for q, t, d in zip(m.query, m.target, m.distance)]

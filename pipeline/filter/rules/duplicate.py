"""Exact (url, caption) repeats: 128-bit pair keys and the rule that drops every copy after the first.

Within ``run_filter`` the repeats come from an exact hash-partitioned shuffle of the whole input
(:mod:`pipeline.filter.exact_dedup`, which uses :func:`pair_keys`); on its own the rule keeps an
in-memory set of the keys it has seen.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filter.rules.base import Batch, Rule


def _blake2b_128(value: bytes) -> bytes:
    """16-byte BLAKE2b digest (the fallback when xxhash is not installed)."""
    return hashlib.blake2b(value, digest_size=16).digest()


def _digest_128() -> Callable[[bytes], bytes]:
    """The 128-bit digest of pair keys: XXH3-128 when the xxhash package is importable (about 6x faster
    than BLAKE2b on short strings), else BLAKE2b. Keys only live within one run (the duplicate index
    and the in-memory seen set), so which one is used never shows in the results."""
    try:
        import xxhash
    except ImportError:
        return _blake2b_128
    return xxhash.xxh3_128_digest


DIGEST_128 = _digest_128()


def pair_keys(urls: pa.Array, captions: pa.Array) -> np.ndarray:
    """128-bit keys of exact (url, caption) pairs as an ``(n, 2)`` uint64 array (digest of url TAB caption).

    ``map`` runs the digest over the joined values at C level (no Python loop body per row).
    """
    joined = pc.binary_join_element_wise(urls, captions, "\t").cast(pa.binary()).to_pylist()
    digests = b"".join(map(DIGEST_128, joined))
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


class DuplicateRule(Rule):
    """Exact (url, caption) repeats across the whole input; the first occurrence is kept.

    ``run_filter`` sets ``batch.repeat`` from an exact, hash-partitioned shuffle of the whole input
    (:mod:`pipeline.filter.exact_dedup`), so memory stays flat at any size. Used on its own (batches with
    no ``repeat``), the rule keeps an in-memory set of the 128-bit keys it has seen (fine for small inputs).
    """

    name = "duplicate"

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def decide(self, batch: Batch) -> np.ndarray:
        if batch.repeat is not None:
            return batch.repeat
        dup = np.zeros(len(batch.captions), dtype=bool)
        rows = np.flatnonzero(batch.alive)
        keys = pair_keys(batch.urls.take(pa.array(rows, pa.int64())), batch.captions.take(pa.array(rows, pa.int64())))
        for i, key in zip(rows, keys):
            k = key.tobytes()
            if k in self.seen:
                dup[i] = True
            else:
                self.seen.add(k)
        return dup

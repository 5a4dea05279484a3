"""The compiled inner loop of :class:`dedup.mih.MultiIndexHash` (numba; ``AVAILABLE`` is False without it).

Compiled on first use (about a second) and cached beside this file when the folder is writable.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic
except ImportError:  # optional: dedup.mih falls back to NumPy
    numba = None

AVAILABLE = numba is not None

if numba is None:
    search = None
else:
    _CACHE = os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK)

    @intrinsic
    def _popcount(typingctx: Any, x: Any) -> Any:
        """LLVM's ctpop on a uint64 (one POPCNT instruction)."""
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
            return builder.call(fn, args)
        return types.uint64(types.uint64), codegen

    @numba.njit(cache=_CACHE, nogil=True)
    def search(q, order, shifts, chunk_masks, radii, probes, probe_offsets, hashes, orders, starts,
               start_offsets, radius, out_q, out_t, out_d):  # pragma: no cover - compiled
        """Fill ``out_*`` with (query, index position, distance) matches; return how many there are (may
        exceed the buffers, then the caller retries with larger ones). ``order[j]`` is the order in which
        queries visit chunk ``j`` (sorted by their key there, so neighbouring queries share buckets in cache)."""
        n = 0
        m = shifts.shape[0]
        nh = hashes.shape[0] // m
        for j in range(m):
            base = start_offsets[j]
            hbase = j * nh
            for ii in range(q.shape[0]):
                i = order[j, ii]
                qi = q[i]
                key = np.int64((qi >> np.uint64(shifts[j])) & chunk_masks[j])
                for p in range(probe_offsets[j], probe_offsets[j + 1]):
                    k = key ^ probes[p]
                    s = starts[base + k]
                    e = starts[base + k + 1]
                    hit = 0
                    for c in range(hbase + s, hbase + e):
                        hit += _popcount(hashes[c] ^ qi) <= radius
                    if hit == 0:
                        continue
                    for c in range(hbase + s, hbase + e):
                        x = hashes[c] ^ qi
                        d = _popcount(x)
                        if d > radius:
                            continue
                        seen = False
                        for jj in range(j):
                            if _popcount(x & (chunk_masks[jj] << np.uint64(shifts[jj]))) <= radii[jj]:
                                seen = True
                                break
                        if seen:
                            continue
                        if n < out_q.shape[0]:
                            out_q[n] = i
                            out_t[n] = orders[c]
                            out_d[n] = d
                        n += 1
        return n

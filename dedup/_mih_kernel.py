"""The compiled search loop of :class:`dedup.mih.MultiIndexHash` (numba; ``AVAILABLE`` is False without it).

One call searches every query (no Python per query). For each chunk ``j`` that the search probes:

1. the queries are grouped by their chunk key (a counting sort on at most ~log2(queries) + 3 of its bits);
2. for a group of queries sharing a key, the buckets of every probe key (the key XOR each mask of weight
   ``<= t_j``) are copied once into one contiguous buffer, which every query of the group then scans; a
   lone query scans the buckets in place instead (a copy would not pay for itself);
3. scanning tests 16 candidates at a time with two 512-bit XOR + popcount + compare steps (``_within8``,
   written as an explicit ``<8 x i64>`` operation because LLVM's auto-vectoriser stops at 256 bits on
   these CPUs, and without AVX-512 LLVM splits it into narrower instructions with the same result). The
   per-block branch is almost never taken on far queries, so the loop runs at ~0.1 ns per candidate.

Why this is fast: the costs of multi-index hashing are bucket lookups (a cache miss and a mispredicted
loop exit each) and candidate tests. Grouping pays each bucket lookup once per distinct key instead of once
per query, and the block test makes candidates nearly free, so the best chunking has fewer, larger buckets.
Compiled on first use (a few seconds) and cached beside this file when the folder is writable.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

try:
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic
except ImportError:  # optional: dedup.mih falls back to NumPy
    numba = None

AVAILABLE = numba is not None
PAD = 16  # candidates per block test; tables and buffers carry PAD spare entries so blocks may overrun
GATHER_MIN = 2  # queries sharing a key from which their buckets are copied into one buffer

if numba is None:
    search = None
else:
    _CACHE = os.access(os.path.dirname(os.path.abspath(__file__)), os.W_OK)
    _V8 = ir.VectorType(ir.IntType(64), 8)

    @intrinsic
    def _popcount(typingctx: Any, x: Any) -> Any:
        """LLVM's ctpop on a uint64 (one POPCNT instruction)."""
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
            return builder.call(fn, args)
        return types.uint64(types.uint64), codegen

    def _splat(builder: Any, value: Any) -> Any:
        """An ``<8 x i64>`` vector holding ``value`` in every lane."""
        vec = builder.insert_element(ir.Constant(_V8, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
        return builder.shuffle_vector(vec, ir.Constant(_V8, ir.Undefined), zeros)

    @intrinsic
    def _within8(typingctx: Any, arr: Any, i: Any, qv: Any, radius: Any) -> Any:
        """Bit ``k`` set when ``popcount(arr[i + k] ^ qv) <= radius``, for ``k < 8``: one unaligned 512-bit
        load, XOR, VPOPCNTQ and compare on AVX-512 (reads 8 entries from ``i``: the caller keeps them in
        bounds). Only for C-contiguous uint64 arrays, whose entries are adjacent in memory."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint64 and arr.layout == "C"):
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            data = context.make_array(signature.args[0])(context, builder, value=args[0]).data
            ptr = builder.bitcast(builder.gep(data, [args[1]]), _V8.as_pointer())
            x = builder.xor(builder.load(ptr, align=8), _splat(builder, args[2]))
            ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V8, [_V8]), "llvm.ctpop.v8i64")
            within = builder.icmp_unsigned("<=", builder.call(ctpop, [x]), _splat(builder, args[3]))
            return builder.zext(builder.bitcast(within, ir.IntType(8)), ir.IntType(64))
        return types.uint64(arr, types.intp, types.uint64, types.uint64), codegen

    @numba.njit(cache=_CACHE, nogil=True)
    def _group_by_key(q, shift, nbits, qs, qi):  # pragma: no cover - compiled
        """Fill ``qs`` with the queries in the order of their chunk key and ``qi`` with their positions: a
        counting sort on the key's top bits, at most ~3 more than log2(queries) so that the histogram stays
        small. Equal keys end up next to each other unless the key is wider than that; then neighbouring
        queries still probe nearby buckets (and a split group is only searched in two parts)."""
        nq = q.shape[0]
        sort_bits = min(nbits, 12)
        while sort_bits < nbits and (1 << sort_bits) < 8 * nq:
            sort_bits += 1
        sh = np.uint64(shift + nbits - sort_bits)
        mask = np.uint64((1 << sort_bits) - 1)
        counts = np.zeros((1 << sort_bits) + 1, np.int64)
        for i in range(nq):
            counts[np.int64((q[i] >> sh) & mask) + 1] += 1
        for k in range(1 << sort_bits):
            counts[k + 1] += counts[k]
        for i in range(nq):
            k = np.int64((q[i] >> sh) & mask)
            p = counts[k]
            counts[k] = p + 1
            qs[p] = q[i]
            qi[p] = i

    @numba.njit(cache=_CACHE, nogil=True, inline="always")
    def _block_mask(cand, c0, end, qv, radius):  # pragma: no cover - compiled
        """Which of ``cand[c0:c0 + PAD]`` (cut at ``end``) are within ``radius`` of ``qv``, as a bit mask."""
        m = _within8(cand, c0, qv, radius) | (_within8(cand, c0 + 8, qv, radius) << np.uint64(8))
        if end - c0 < PAD:
            m &= (np.uint64(1) << np.uint64(end - c0)) - np.uint64(1)
        return m

    @numba.njit(cache=_CACHE, nogil=True)
    def _emit(cand, c0, m, src, seg, nseg, qv, qpos, j, tq, shifts, masks, positions, out_q, out_t, out_d,
              n):  # pragma: no cover - compiled
        """Record the matches flagged in ``m`` (rare: the slow path). ``cand[c]`` for ``seg[p] <= c < seg[p + 1]``
        is the indexed hash at ``positions[src[p] + c - seg[p]]``. A pair that an earlier probed chunk can find
        (its chunk distance within that chunk's probe radius) is left to it, so each pair is reported once."""
        for k in range(PAD):
            if not (m >> np.uint64(k)) & np.uint64(1):
                continue
            c = c0 + k
            x = cand[c] ^ qv
            seen = False
            for jj in range(j):
                if tq[jj] >= 0 and np.int64(_popcount(x & (masks[jj] << np.uint64(shifts[jj])))) <= tq[jj]:
                    seen = True
                    break
            if seen:
                continue
            p = np.searchsorted(seg[:nseg + 1], c, "right") - 1
            if n < out_q.shape[0]:
                out_q[n] = qpos
                out_t[n] = positions[src[p] + c - seg[p]]
                out_d[n] = _popcount(x)
            n += 1
        return n

    @numba.njit(cache=_CACHE, nogil=True, inline="always")
    def _scan(cand, start, end, src, seg, nseg, qv, qpos, radius, j, tq, shifts, masks, positions, out_q, out_t,
              out_d, n):  # pragma: no cover - compiled
        """Test ``cand[start:end]`` against one query, PAD candidates at a time, recording the matches."""
        r = np.uint64(radius)
        for c0 in range(start, end, PAD):
            m = _block_mask(cand, c0, end, qv, r)
            if m:
                n = _emit(cand, c0, m, src, seg, nseg, qv, qpos, j, tq, shifts, masks, positions, out_q, out_t,
                          out_d, n)
        return n

    @numba.njit(cache=_CACHE, nogil=True)
    def _gather(key, probes, p0, nprobe, starts, table, buf, src, seg):  # pragma: no cover - compiled
        """Copy the buckets of every probe key into ``buf``; return the number of candidates."""
        size = 0
        for p in range(nprobe):
            k = key ^ probes[p0 + p]
            s, e = starts[k], starts[k + 1]
            src[p] = s
            seg[p] = size
            dst = buf[size:size + e - s]
            bucket = table[s:e]
            for c in range(bucket.shape[0]):
                dst[c] = bucket[c]
            size += e - s
        seg[nprobe] = size
        return size

    @numba.njit(cache=_CACHE, nogil=True)
    def _search_chunk(j, qs, qi, radius, tq, nprobe, shifts, masks, probes, probe_offsets, starts, table,
                      positions, buf, src, seg, out_q, out_t, out_d, n):  # pragma: no cover - compiled
        """All matches found through chunk ``j`` for the queries ``qs`` (sorted by their key there)."""
        sh, mask, p0 = np.uint64(shifts[j]), masks[j], probe_offsets[j]
        nq = qs.shape[0]
        g0 = 0
        while g0 < nq:
            key = np.int64((qs[g0] >> sh) & mask)
            g1 = g0 + 1
            while g1 < nq and np.int64((qs[g1] >> sh) & mask) == key:
                g1 += 1
            if g1 - g0 >= GATHER_MIN and nprobe > 1:
                size = _gather(key, probes, p0, nprobe, starts, table, buf, src, seg)
                for g in range(g0, g1):
                    n = _scan(buf, 0, size, src, seg, nprobe, qs[g], qi[g], radius, j, tq, shifts, masks, positions,
                              out_q, out_t, out_d, n)
            else:
                for g in range(g0, g1):
                    for p in range(nprobe):
                        k = key ^ probes[p0 + p]
                        src[0] = starts[k]
                        seg[0] = starts[k]
                        seg[1] = starts[k + 1]
                        n = _scan(table, seg[0], seg[1], src, seg, 1, qs[g], qi[g], radius, j, tq, shifts, masks,
                                  positions, out_q, out_t, out_d, n)
            g0 = g1
        return n

    @numba.njit(cache=_CACHE, nogil=True)
    def search(q, radius, tq, nprobes, shifts, masks, widths, probes, probe_offsets, starts, start_offsets, table,
               positions, buf_size, out_q, out_t, out_d):  # pragma: no cover - compiled
        """Fill ``out_*`` with every (query, index position, distance) within ``radius``, in no particular order;
        return how many there are (may exceed the buffers: the caller then retries with larger ones).

        ``tq[j]`` is chunk ``j``'s probe radius for this search (-1: not probed) and ``nprobes[j]`` its number
        of probe masks (the weight-sorted ``probes[probe_offsets[j]:]`` prefix of weight ``<= tq[j]``);
        ``starts[start_offsets[j]:start_offsets[j + 1]]`` holds chunk ``j``'s bucket offsets into ``table``
        (the hashes sorted by each chunk's key, in turn), and ``positions`` the index position of each entry."""
        buf = np.zeros(buf_size + PAD, np.uint64)
        most = max(2, nprobes.max() + 1)
        src = np.empty(most, np.int64)
        seg = np.empty(most, np.int64)
        qs = np.empty(q.shape[0], np.uint64)
        qi = np.empty(q.shape[0], np.int64)
        n = 0
        for j in range(shifts.shape[0]):
            if tq[j] < 0:
                continue
            _group_by_key(q, shifts[j], widths[j], qs, qi)
            chunk_starts = starts[start_offsets[j]:start_offsets[j + 1]]
            n = _search_chunk(j, qs, qi, radius, tq, nprobes[j], shifts, masks, probes, probe_offsets, chunk_starts,
                              table, positions, buf, src, seg, out_q, out_t, out_d, n)
        return n

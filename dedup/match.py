"""The robust near-duplicate detector: candidate search on pHashes, then verification on DCT sign hashes.

A query image (a training sample) is hashed once by :func:`dedup.phash.hash_columns`: its pHash, the pHash
of its mirror, and both again after trimming uniform borders, plus a 256-bit DCT sign hash of the image and
of the trimmed image. An eval image is indexed under every one of :data:`dedup.phash.VARIANTS` (the image,
trimmed, a centre 95% crop, +-4 degree rotations, 95% corner crops, 90% crops on a 4x4 grid of offsets).

1. **candidates**: every (query hash, eval variant) pair within ``max_distance`` bits of pHash, found
   exactly by multi-index hashing (:mod:`dedup.mih`). The trimmed query hashes (looked up only when the
   query has a border) are compared with the ``full`` and ``trim`` variants only.
2. **verification**: a candidate is a match when the 256-bit DCT sign hashes of the same pair (the mirrored
   one when the mirrored pHash matched: a XOR with :data:`dedup.phash.DCT_FLIP_MASK`) differ in at most
   ``max_dct_distance`` bits. Unrelated images differ in about 128 +- 8 of them; the sign hash carries
   frequencies up to twice as high as the pHash, so chance pHash collisions of look-alike photos fail here.
3. per (query, eval image) the best pair is kept: ``distance`` (pHash bits), ``dct_distance``, ``variant``.

Defaults, from ``benchmarks/bench_dedup.py`` (232 real photographs and tiles from scikit-image and
matplotlib, 21 edits; ``benchmarks/README.md`` section "Dedup", ``benchmarks/results/dedup.json``):
``max_distance = 8`` and ``max_dct_distance = 64`` give recall >= 0.97 on every edit in the issue
(re-encoding, resizing, thumbnails, 5-10% crops, letterbox padding, flips, brightness, contrast,
greyscale, +-3-5 degree rotations, watermark text) with no false match in 1.1 M cross pairs (precision
1.0), tiles of the same photo included. 64 is the largest DCT distance without a false match (6 appear
at 76, 136 without verification); radius 8 keeps the exact search fast (radius 10 halves the lookup rate
for +0.01 recall). Lower both for eval sets of flat graphics, raise ``max_distance`` for heavier edits.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dedup.mih import MultiIndexHash, as_uint64
from dedup.phash import DCT_BYTES, DCT_FLIP_MASK, HASH_SCHEMA
from pipeline.core.config import Config, field
from pipeline.core.errors import WitError

MAX_DISTANCE = 8
MAX_DCT_DISTANCE = 64
DCT_WORDS = DCT_BYTES // 8
_FLIP_WORDS = np.frombuffer(DCT_FLIP_MASK, dtype=np.uint64)
TRIM_VARIANTS = ("full", "trim")  # what a trimmed query hash may match

MATCH_SCHEMA = pa.schema([("eval_set", pa.string()), ("eval_id", pa.string()), ("key", pa.string()),
                          ("distance", pa.int32()), ("dct_distance", pa.int32()), ("variant", pa.string())])


@dataclasses.dataclass
class MatchConfig(Config, section="match"):
    """Thresholds of the robust detector (see module doc for how the defaults were chosen); checked when built."""

    max_distance: int = field(MAX_DISTANCE, help="pHash Hamming radius of the candidate search (0-32)",
                              min=0, max=32)
    max_dct_distance: int = field(MAX_DCT_DISTANCE, help="a candidate matches when its 256-bit DCT sign hashes "
                                                         "differ in at most this many bits (256: no verification)",
                                  min=0, max=256)


def dct_words(values: pa.Array | pa.ChunkedArray | Sequence[bytes]) -> np.ndarray:
    """32-byte DCT sign hashes as an ``(n, 4)`` uint64 array (null entries become zeros)."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(list(values), pa.binary(DCT_BYTES))
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.binary(DCT_BYTES))
    if values.type != pa.binary(DCT_BYTES):
        values = values.cast(pa.binary(DCT_BYTES))
    values = values.fill_null(bytes(DCT_BYTES)) if values.null_count else values
    data = values.buffers()[1]
    raw = np.frombuffer(data, dtype=np.uint8, count=len(values) * DCT_BYTES, offset=values.offset * DCT_BYTES)
    return raw.view(np.uint64).reshape(-1, DCT_WORDS).copy()


@dataclasses.dataclass
class QueryHashes:
    """The :data:`dedup.phash.HASH_SCHEMA` columns of n query images, as arrays."""

    phash: np.ndarray
    phash_flip: np.ndarray
    phash_trim: np.ndarray
    phash_trim_flip: np.ndarray
    dct: np.ndarray
    dct_trim: np.ndarray

    def __len__(self) -> int:
        return int(self.phash.size)

    @classmethod
    def from_table(cls, table: pa.Table) -> "QueryHashes":
        """From a table holding the hash columns (rows with a null hash must be filtered out first)."""
        missing = [n for n in HASH_SCHEMA.names if n not in table.column_names]
        if missing:
            raise WitError(f"hash table: missing column(s) {', '.join(missing)}")
        ints = {n: as_uint64(table[n].to_numpy(zero_copy_only=False)) for n in HASH_SCHEMA.names[:4]}
        return cls(**ints, dct=dct_words(table["dct256"]), dct_trim=dct_words(table["dct256_trim"]))

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, int | bytes]]) -> "QueryHashes":
        """From :func:`dedup.phash.hash_columns` results."""
        return cls.from_table(pa.Table.from_pylist(list(rows), schema=HASH_SCHEMA))


@dataclasses.dataclass(frozen=True)
class RobustMatches:
    """Matches sorted by (query, target): positions into the queries and the eval images, and how they matched."""

    query: np.ndarray
    target: np.ndarray
    distance: np.ndarray
    dct_distance: np.ndarray
    variant: np.ndarray

    def __len__(self) -> int:
        return int(self.query.size)


class RobustIndex:
    """An eval set's images under every variant, searchable by the two-stage detector."""

    def __init__(self, eval_ids: Sequence[str], phashes: np.ndarray, dcts: np.ndarray, variants: Sequence[str],
                 max_radius: int = MAX_DISTANCE) -> None:
        self.ids = np.asarray(eval_ids, dtype=object)
        self.variants = tuple(variants)
        n, v = len(self.ids), len(self.variants)
        self.phashes = as_uint64(phashes).reshape(n, v)
        self.dcts = np.asarray(dcts, dtype=np.uint64).reshape(n, v, DCT_WORDS)
        self.trim_ok = np.array([name in TRIM_VARIANTS for name in self.variants])
        self.mih = MultiIndexHash(self.phashes.ravel(), max_radius)

    def __len__(self) -> int:
        return int(self.ids.size)

    def search(self, q: QueryHashes, cfg: MatchConfig | None = None) -> RobustMatches:
        """Every (query image, eval image) pair the detector matches, with its best variant."""
        cfg = cfg or MatchConfig()
        cfg.validate()
        img, row, var, dist, dct_dist = self.candidates(q, cfg.max_distance)
        ok = dct_dist <= cfg.max_dct_distance
        return _best_per_pair(img[ok], row[ok], dist[ok], dct_dist[ok], var[ok], self.variants)

    def candidates(self, q: QueryHashes, max_distance: int) -> tuple[np.ndarray, ...]:
        """Every (query image, eval image, variant) combination within ``max_distance`` pHash bits, with both
        distances: ``(query position, eval position, variant position, distance, dct_distance)``."""
        hashes, image, trimmed, flipped = _lookups(q)
        qi, ti, dist = self.mih.search(hashes, min(max_distance, self.mih.max_radius))
        row, var = ti // len(self.variants), ti % len(self.variants)
        keep = ~trimmed[qi] | self.trim_ok[var]
        qi, row, var, dist = qi[keep], row[keep], var[keep], dist[keep].astype(np.int32)
        img = image[qi]
        query_dct = np.where(trimmed[qi, None], q.dct_trim[img], q.dct[img])
        query_dct ^= np.where(flipped[qi, None], _FLIP_WORDS, np.uint64(0))
        dct_dist = np.bitwise_count(query_dct ^ self.dcts[row, var]).sum(axis=1).astype(np.int32)
        return img, row, var, dist, dct_dist

    def search_ids(self, q: QueryHashes, cfg: MatchConfig | None = None) -> list[tuple[int, str, int]]:
        """Like :meth:`search`, as ``(query position, eval id, distance)`` tuples."""
        m = self.search(q, cfg)
        return [(int(i), str(self.ids[t]), int(d)) for i, t, d in zip(m.query, m.target, m.distance)]


def _lookups(q: QueryHashes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The hashes to look up: plain and mirrored for every query, the trimmed pair only where trimming changed
    the image: ``(hashes, query position, is trimmed, is mirrored)``."""
    n = len(q)
    has_border = np.flatnonzero((q.phash_trim != q.phash) | (q.dct_trim != q.dct).any(axis=1))
    hashes = np.concatenate([q.phash, q.phash_flip, q.phash_trim[has_border], q.phash_trim_flip[has_border]])
    image = np.concatenate([np.arange(n), np.arange(n), has_border, has_border])
    k = has_border.size
    trimmed = np.concatenate([np.zeros(2 * n, bool), np.ones(2 * k, bool)])
    flipped = np.concatenate([np.zeros(n, bool), np.ones(n, bool), np.zeros(k, bool), np.ones(k, bool)])
    return hashes, image, trimmed, flipped


def _best_per_pair(img: np.ndarray, row: np.ndarray, dist: np.ndarray, dct_dist: np.ndarray, var: np.ndarray,
                   variants: tuple[str, ...]) -> RobustMatches:
    """One match per (query, eval image): the smallest pHash distance, then the smallest DCT distance."""
    order = np.lexsort((dct_dist, dist, row, img))
    img, row, dist, dct_dist, var = img[order], row[order], dist[order], dct_dist[order], var[order]
    first = np.ones(img.size, bool)
    first[1:] = (img[1:] != img[:-1]) | (row[1:] != row[:-1])
    names = np.asarray(variants, dtype=object)
    return RobustMatches(img[first].astype(np.int64), row[first].astype(np.int64), dist[first], dct_dist[first],
                         names[var[first]])


def match_table(table: pa.Table, indexes: dict[str, RobustIndex], cfg: MatchConfig | None = None,
                key_column: str = "key") -> pa.Table:
    """Overlap rows (:data:`MATCH_SCHEMA`) of a table of hashed samples (``key_column`` plus the
    :data:`dedup.phash.HASH_SCHEMA` columns; rows with a null ``phash`` are skipped) against every index."""
    hashed = table.filter(pc.is_valid(table["phash"])) if "phash" in table.column_names else table
    cols: dict[str, list] = {n: [] for n in MATCH_SCHEMA.names}
    if hashed.num_rows == 0 or not indexes:
        return pa.table(cols, schema=MATCH_SCHEMA)
    q = QueryHashes.from_table(hashed)
    keys = hashed[key_column].to_pylist()
    for name, index in sorted(indexes.items()):
        m = index.search(q, cfg)
        cols["eval_set"] += [name] * len(m)
        cols["eval_id"] += [str(index.ids[t]) for t in m.target]
        cols["key"] += [keys[i] for i in m.query]
        cols["distance"] += m.distance.tolist()
        cols["dct_distance"] += m.dct_distance.tolist()
        cols["variant"] += list(m.variant)
    return pa.table(cols, schema=MATCH_SCHEMA)

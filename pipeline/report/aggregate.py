"""The dashboard's figures, aggregated from a build's per-row parquet columns one record batch at a time.

Each function reads one stage's output folder of the build (a :class:`~pipeline.core.storage.Folder`: a local
path or a prefix on a store, read in place) and returns plain numbers, histograms and a few rows, or
``None`` when that stage has not written its output yet. Memory is bounded by the bins, the capacity of
the counters and the number of distinct queries (balance's own per-query table), never by the rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.io import Part, read_schema
from pipeline.core.stats import STATS_FILE
from pipeline.core.storage import Folder
from pipeline.report.stream import Histogram, TopCounter, batches, column, first_rows, numbers, open_tar, parts

#: Words left out of the frequent-words table (articles, prepositions, pronouns and the like).
STOPWORDS = frozenset("""a an the and or but of in on at to for with by from into onto over under as is are was
were be been being this that these those it its it's there here his her their our your my we you they he she
them him not no yes do does did has have had will would can could than then so such very also about up down out
off one two all any some each other more most""".split())
WORD_SPLIT = r"[^\pL\pN']+"
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
SAMPLE_ROWS = 5
TAR_IMAGES = 1_000_000  # stored-image bytes and formats: from the first shards holding this many images
#: On a store a tar's headers are only reached by streaming the whole object: the first shards this many at most.
REMOTE_TARS = 8


def stage_extra(folder: Folder) -> dict[str, Any]:
    """The ``extra`` of a stage's ``_stats.json`` (empty when the stage has not finished)."""
    return folder.read_json(STATS_FILE).get("extra", {}) if folder.exists(STATS_FILE) else {}


# ---------------------------------------------------------------- captions (filter)

class CaptionAggregate:
    """Lengths in characters and words, languages, language scores and frequent words of captions."""

    def __init__(self) -> None:
        self.chars = {g: Histogram.linear(0, 200, 40) for g in ("kept", "rejected")}
        self.words = {g: Histogram(np.arange(-0.5, 41)) for g in ("kept", "rejected")}  # one bin per count
        self.scores = {g: Histogram.linear(0, 1, 50) for g in ("kept", "rejected")}
        self.langs = TopCounter(1_000)
        self.frequent = TopCounter(50_000)

    def add(self, group: str, batch: pa.RecordBatch) -> None:
        captions = column(batch, "caption")
        if captions is None:
            return
        self.chars[group].add(numbers(pc.utf8_length(captions)))
        self.words[group].add(numbers(pc.list_value_length(pc.utf8_split_whitespace(captions))))
        self.scores[group].add(numbers(column(batch, "lang_score")))
        if column(batch, "lang") is not None:
            self.langs.add(column(batch, "lang"))
        if group == "kept":
            self.frequent.add(_words(captions))


def _words(captions: pa.Array) -> pa.Array:
    words = pc.list_flatten(pc.split_pattern_regex(pc.utf8_lower(pc.drop_null(captions)), WORD_SPLIT))
    keep = pc.and_(pc.greater_equal(pc.utf8_length(words), 3),
                   pc.invert(pc.is_in(words, value_set=pa.array(sorted(STOPWORDS)))))
    return words.filter(keep)


def caption_stats(build: Folder) -> dict[str, Any] | None:
    """Captions of the filter's kept and rejected pairs (or the crawl's candidates before a filter ran)."""
    groups = {"kept": parts(build / "pairs" / "kept"), "rejected": parts(build / "pairs" / "rejected")}
    source = "pairs"
    if not any(groups.values()):
        groups, source = {"kept": parts(build / "candidates"), "rejected": []}, "candidates"
    if not any(groups.values()):
        return None
    agg = CaptionAggregate()
    for group, paths in groups.items():
        for batch in batches(paths, ["caption", "lang", "lang_score"]):
            agg.add(group, batch)
    return {"source": source, "chars": agg.chars, "words": agg.words, "scores": agg.scores,
            "langs": agg.langs, "frequent": agg.frequent,
            "thresholds": stage_extra(build / "pairs").get("thresholds", {})}


# ---------------------------------------------------------------- WIT balancing

def query_stats(build: Folder, head: int = 15) -> dict[str, Any] | None:
    """Per-query pair counts before and after balancing (matched queries only), head, tail and over ``t``."""
    path = "balanced/_queries/query_counts.parquet"
    if not build.exists(path):
        return None
    names: list[str] = []
    before, after, n_queries = [], [], 0
    for batch in batches([build.part(path)], ["query", "count", "kept"]):
        n_queries += batch.num_rows
        matched = batch.filter(pc.greater(column(batch, "count"), 0))
        names += matched.column(matched.schema.get_field_index("query")).to_pylist()
        before.append(numbers(column(matched, "count")))
        kept = column(matched, "kept")
        after.append(numbers(kept) if kept is not None else np.full(matched.num_rows, np.nan))
    b, a = np.concatenate(before or [np.empty(0)]), np.concatenate(after or [np.empty(0)])
    extra = stage_extra(build / "balanced")
    t = extra.get("t")
    order = np.argsort(-b, kind="stable")
    rows = [{"query": names[i], "before": int(b[i]), "after": None if np.isnan(a[i]) else int(a[i])} for i in order]
    over = [r for r in rows if t is not None and r["before"] > t]
    return {"t": t, "queries": n_queries, "matched": len(rows), "before": b[order], "after": np.sort(a)[::-1],
            "head": rows[:head], "tail": rows[-head:][::-1] if len(rows) > head else [],
            "over_t": over[:50], "n_over_t": len(over),
            "n_over_t_after": int((a > t).sum()) if t is not None else None}


# ---------------------------------------------------------------- images (shards)

def shard_parts(build: Folder) -> list[Part]:
    return parts(build / "shards", "[0-9]*.parquet")


def image_stats(build: Folder, max_tar_images: int = TAR_IMAGES) -> dict[str, Any] | None:
    """Sizes and aspect ratios of the downloaded originals (all shard rows); bytes and formats of the
    stored samples from tar member headers (no image is decoded) of the first shards, until ``max_tar_images``
    images were seen (walking every header of a 100M-sample build would take hours), and of at most
    :data:`REMOTE_TARS` shards on a store."""
    paths = shard_parts(build)
    if not paths:
        return None
    hist = {"width": Histogram.log(8, 8192, 30), "height": Histogram.log(8, 8192, 30),
            "aspect": Histogram.log(1 / 8, 8, 30), "bytes": Histogram.log(64, 16 * 2**20, 36)}
    for batch in batches(paths, ["status", "original_width", "original_height"]):
        ok = batch.filter(pc.fill_null(pc.equal(column(batch, "status"), "success"), False))
        w, h = numbers(column(ok, "original_width")), numbers(column(ok, "original_height"))
        hist["width"].add(w)
        hist["height"].add(h)
        if len(w) == len(h):
            hist["aspect"].add(w[h > 0] / h[h > 0])
    formats, tars = TopCounter(100), build.names("shards", "[0-9]*.tar")
    read = 0
    for tar in tars:
        if hist["bytes"].n >= max_tar_images or (build.remote and read >= REMOTE_TARS):
            break
        sizes, exts = _image_members(build / "shards", tar)
        hist["bytes"].add(np.asarray(sizes, dtype=np.float64))
        formats.add_counts(exts.keys(), exts.values())
        read += 1
    return {**hist, "formats": formats, "tars_read": read, "tars": len(tars)}


def _image_members(shards: Folder, tar: str) -> tuple[list[int], dict[str, int]]:
    sizes: list[int] = []
    exts: dict[str, int] = {}
    with open_tar(shards, tar) as tf:
        for member in tf:
            ext = member.name.rpartition(".")[2].lower()
            if member.isfile() and ext in IMAGE_EXTS:
                sizes.append(member.size)
                exts[ext] = exts.get(ext, 0) + 1
    return sizes, exts


# ---------------------------------------------------------------- download

_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^/:?#]+)"


def download_stats(build: Folder, top: int = 15) -> dict[str, Any] | None:
    """Hosts with their success rate (shard rows) and per-shard timings and attempts (shard stats)."""
    paths = shard_parts(build)
    if not paths:
        return None
    total, success = TopCounter(100_000), TopCounter(100_000)
    for batch in batches(paths, ["url", "status"]):
        host = pc.struct_field(pc.extract_regex(pc.utf8_lower(column(batch, "url")), _HOST), [0])
        total.add(host)
        success.add(host.filter(pc.fill_null(pc.equal(column(batch, "status"), "success"), False)))
    hosts = [{"host": h, "urls": n, "success": success.counts.get(h, 0),
              "rate": success.counts.get(h, 0) / n if n else None} for h, n in total.most_common(top)]
    shards = [_shard_row(build / "shards", name) for name in build.names("shards", "[0-9]*_stats.json")]
    return {"hosts": hosts, "distinct_hosts": len(total.counts), "hosts_error": total.error, "shards": shards}


def _shard_row(shards: Folder, name: str) -> dict[str, Any]:
    s = shards.read_json(name)
    count, duration = s.get("count", 0), s.get("duration") or 0.0
    return {"shard": name.removesuffix("_stats.json"), "urls": count, "success": s.get("successes", 0),
            "attempts": s.get("attempts", count), "retried": s.get("retried", 0), "seconds": duration,
            "urls_per_s": count / duration if duration else None}


def drop_samples(build: Folder, stages: dict[str, dict[str, Any]], k: int = SAMPLE_ROWS) -> dict[str, dict]:
    """The first ``k`` rows of each drop reason of the stages that keep their dropped rows."""
    where = {"filter": (parts(build / "pairs" / "rejected"), ["caption", "url", "lang", "lang_score"]),
             "balance": (parts(build / "balanced" / "_rejected"), ["caption", "url"]),
             "download": (shard_parts(build), ["url", "caption", "error_message"])}
    out = {}
    for stage, (paths, columns) in where.items():
        reasons = [r for r, n in (stages.get(stage) or {}).get("dropped", {}).items() if n]
        if paths and reasons:
            out[stage] = first_rows(paths, "reason", reasons, columns, k)
    return out


# ---------------------------------------------------------------- eval dedup

def _thresholds(build: Folder, part: Part) -> dict[str, int]:
    """The matcher's distance thresholds: from the overlap file, ``wit dedup``'s or the download's stats."""
    meta = {k.decode(): v.decode() for k, v in (read_schema(part).metadata or {}).items()}
    for extra in (meta, stage_extra(build / "overlap"), stage_extra(build / "shards")):
        if "max_distance" in extra:
            return {k: int(extra[k]) for k in ("max_distance", "max_dct_distance") if k in extra}
    return {}


def overlap_stats(build: Folder, pairs_per_set: int = 12) -> dict[str, Any] | None:
    """Near-duplicate matches per eval set, distance histograms, match variants and the first pairs."""
    if not build.exists("overlap/overlap.parquet"):
        return None
    path = build.part("overlap/overlap.parquet")
    per_set: dict[str, dict[str, set]] = {}
    dist, dct = Histogram(np.arange(-0.5, 65)), Histogram(np.arange(-0.5, 257, 4))
    variants = TopCounter(1_000)
    for batch in batches([path], ["eval_set", "eval_id", "key", "distance", "dct_distance", "variant"]):
        dist.add(numbers(column(batch, "distance")))
        dct.add(numbers(column(batch, "dct_distance")))
        if column(batch, "variant") is not None:
            variants.add(column(batch, "variant"))
        for name, eval_id, key in zip(*(column(batch, c).to_pylist() for c in ("eval_set", "eval_id", "key"))):
            s = per_set.setdefault(name, {"eval_ids": set(), "keys": set()})
            s["eval_ids"].add(eval_id)
            s["keys"].add(key)
    sets = {name: {"eval_images": len(s["eval_ids"]), "web_samples": len(s["keys"]),
                   "eval_size": _eval_size(build, name)} for name, s in sorted(per_set.items())}
    pairs = first_rows([path], "eval_set", list(sets), ["eval_set", "eval_id", "key", "distance", "dct_distance",
                                                         "variant", "url"], pairs_per_set)
    return {"sets": sets, "distance": dist, "dct_distance": dct, "variants": variants,
            "thresholds": _thresholds(build, path), "pairs": [r for rows in pairs.values() for r in rows]}


def _eval_size(build: Folder, name: str) -> int | None:
    path = f"eval/{name}/{STATS_FILE}"
    return build.read_json(path).get("kept") if build.exists(path) else None

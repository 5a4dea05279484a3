"""The dashboard's sections: each reads what it needs of a build and returns ``(html, has data)``; a stage
that has not written its output yet shows as "not run". The build is a :class:`~pipeline.core.storage.Folder`
(a local path or a prefix on a store, read in place)."""
from __future__ import annotations

import base64
from typing import Any, Callable

import pipeline.report.aggregate as agg
import pipeline.report.charts as charts
import pipeline.report.thumbs as thumbs
import pipeline.report.trainlog as trainlog
from pipeline.core.storage import Folder
from pipeline.report.funnel import STAGE_DIRS, overlap_table
from pipeline.report.page import chart, esc, fmt, grid, grid3, not_run, num, pct, rows_table, table, tiles

Section = tuple[str, bool]
STAGE_ORDER = tuple(STAGE_DIRS)  # crawl, filter, balance, download
ASPECT_TICKS = [(0.25, "1:4"), (0.5, "1:2"), (1.0, "1:1"), (2.0, "2:1"), (4.0, "4:1")]
STAGE_TITLES = {"crawl": "crawl (<img> tags → candidates)", "filter": "filter (captions)",
                "balance": "balance (WIT queries)", "download": "download (images)"}


def anchor(stage: str, reason: str) -> str:
    return f"drop-{stage}-{reason}"


# ---------------------------------------------------------------- overview and funnel

def overview(build: Folder, report: dict[str, Any]) -> Section:
    f = report["funnel"]
    items = [("<img> tags seen", num(f["img_tags_seen"], "funnel.img_tags_seen")),
             ("candidates", num(f["candidates"], "funnel.candidates")),
             ("kept by the filter", num(f["kept"], "funnel.kept")),
             ("balanced", num(f["balanced"], "funnel.balanced")),
             ("downloaded", num(f["downloaded"], "funnel.downloaded")),
             ("samples in shards", num(f["samples"], "funnel.samples")),
             ("shards", num(f["shards"], "funnel.shards"))]
    items += [(f"eval near-duplicates ({k})", num(v, f"funnel.eval_duplicates.{k}"))
              for k, v in f["eval_duplicates"].items()]
    if report["train"]:
        items.append(("final training loss", num(report["train"][-1].get("final_loss"), None, 3)))
    checks = "".join(f"<li>{esc(k)}: <span class={'ok' if ok else 'bad'}>{'ok' if ok else 'MISMATCH'}</span></li>"
                     for k, ok in report["checks"].items())
    body = tiles(items) + (f"<h3>Checks</h3><ul class=checks>{checks}</ul>" if checks else "")
    return body, any(v is not None for v in (f["candidates"], f["kept"], f["downloaded"]))


def _reason_cell(stage: str, reason: str, n: int, samples: dict[str, Any]) -> str:
    label = esc(reason)
    if samples.get(stage, {}).get(reason):
        label = f"<a href='#{anchor(stage, reason)}'>{label}</a>"
    return f"{label} {num(n, f'stages.{stage}.dropped.{reason}')}"


def _stage_row(stage: str, stats: dict[str, Any] | None, samples: dict[str, Any]) -> list[str]:
    if stats is None:
        return [esc(STAGE_TITLES[stage]), "–", "–", "–", "<span class=note>not run</span>"]
    reasons = ", ".join(_reason_cell(stage, r, n, samples) for r, n in sorted(stats["dropped"].items(),
                                                                               key=lambda rn: -rn[1]))
    return [esc(STAGE_TITLES[stage]), num(stats["inputs"], f"stages.{stage}.inputs"),
            num(stats["kept"], f"stages.{stage}.kept"), num(stats["n_dropped"], f"stages.{stage}.n_dropped"),
            reasons or "<span class=note>none</span>"]


def _sample_rows(samples: dict[str, dict[str, list[dict]]]) -> str:
    blocks = []
    for stage in STAGE_ORDER:
        for reason, rows in samples.get(stage, {}).items():
            if rows:
                cols = list(rows[0])
                blocks.append(f"<details id='{anchor(stage, reason)}'><summary>{esc(stage)}: {esc(reason)} "
                              f"(first {len(rows)} rows)</summary>{rows_table(rows, cols)}</details>")
    return "<h3>Sample rows per drop reason</h3>" + "".join(blocks) if blocks else ""


def funnel(build: Folder, report: dict[str, Any]) -> Section:
    stages = report["stages"]
    if not stages:
        return not_run("no stage has finished yet", "Each stage appears here when its _stats.json is written."), False
    samples = agg.drop_samples(build, stages)
    bars = [(s, stages[s]["kept"], stages[s]["dropped"]) for s in STAGE_ORDER if s in stages]
    rows = [_stage_row(s, stages.get(s), samples) for s in STAGE_ORDER]
    body = (chart(charts.funnel("funnel", bars), "Each bar is one stage's input rows: kept, then dropped by reason.")
            + table(["stage", "in", "kept", "dropped", "dropped by reason (click for sample rows)"], rows, (1, 2, 3))
            + "<p class=note>The crawl keeps no rows of the &lt;img&gt; tags it drops; the other stages' reasons link "
              "to their first rows.</p>" + _sample_rows(samples))
    return body, True


# ---------------------------------------------------------------- captions

def _marks(th: dict[str, Any], *keys: str) -> list[tuple[float, str]]:
    return [(th[k], f"{k} {th[k]}") for k in keys if th.get(k)]


def captions(build: Folder, report: dict[str, Any]) -> Section:
    c = agg.caption_stats(build)
    if c is None:
        return not_run("crawl/filter", "No candidate or filtered pairs yet."), False
    th = c["thresholds"]
    langs = c["langs"].most_common(12)
    words = c["frequent"].most_common(20)
    score_marks = [(th["min_lang_score"], f"min_lang_score {th['min_lang_score']}")] if "min_lang_score" in th else []
    items = [
        chart(charts.hist("cap-chars", c["chars"], "Caption length", "characters (last bin: 200 and more)",
                          marks=_marks(th, "min_chars")), f"mean {fmt(c['chars']['kept'].mean, 1)} characters (kept)"),
        chart(charts.hist("cap-words", c["words"], "Caption length", "words (last bin: 40 and more)",
                          marks=_marks(th, "min_words")), f"mean {fmt(c['words']['kept'].mean, 1)} words (kept)"),
        chart(charts.hist("cap-lang-score", c["scores"], "Language-ID score", "language score (allowed languages; see min_lang_score)",
                          marks=score_marks),
              "Kept rows score at least the threshold; rejected rows here are mostly other languages."
              if score_marks else "threshold not recorded by this filter run"),
    ]
    if langs:
        items.append(chart(charts.bars("cap-langs", [l for l, _ in langs], [n for _, n in langs],
                                       "Languages (kept + rejected)", "captions"), _approx(c["langs"])))
    if words:
        items.append(chart(charts.bars("cap-words-top", [w for w, _ in words], [n for _, n in words],
                                       "Frequent words in kept captions", "occurrences"),
                           "Stop words and words under 3 letters left out. " + _approx(c["frequent"])))
    note = "" if c["source"] == "pairs" else "<p class=note>The filter has not run: these are the crawl's candidates.</p>"
    return note + grid(*items), True


def _approx(counter: Any) -> str:
    return "Exact counts." if not counter.error else f"Counts low by at most {counter.error:,} (bounded counter)."


# ---------------------------------------------------------------- balancing

def balance(build: Folder, report: dict[str, Any]) -> Section:
    q = agg.query_stats(build)
    if q is None:
        return not_run("balance", "balanced/_queries/query_counts.parquet is written by the balance stage."), False
    t = q["t"]
    figures = tiles([("queries in the list", num(q["queries"])), ("queries matched", num(q["matched"])),
                     ("t (pairs per query)", num(t)), ("queries over t, before", num(q["n_over_t"])),
                     ("queries over t, after", num(q["n_over_t_after"]))])
    over = (rows_table(q["over_t"], ["query", "before", "after"]) if q["over_t"]
            else f"<p class=note>No query matched more than t = {fmt(t)} pairs: balancing kept every matched pair.</p>")
    body = figures + grid3(
        chart(charts.rank("queries-rank", q["before"], q["after"], t),
              "A head query above t is cut down to about t; the tail is kept whole."),
        "<div><h3>Head: most matched</h3>" + rows_table(q["head"], ["query", "before", "after"]) + "</div>",
        "<div><h3>Tail: least matched</h3>" + rows_table(q["tail"], ["query", "before", "after"]) + "</div>")
    body += f"<h3>Queries over t = {esc(fmt(t))}</h3>{over}"
    return body, True


# ---------------------------------------------------------------- images and download

def images(build: Folder, report: dict[str, Any]) -> Section:
    s = agg.image_stats(build)
    if s is None:
        return not_run("download", "No shards yet."), False
    fmts = s["formats"].most_common(10)
    coverage = f"from the tars of {s['tars_read']:,} of {s['tars']:,} shards"
    items = [chart(charts.hist("img-size", {"width": s["width"], "height": s["height"]}, "Original image size",
                               "pixels", logx=True), f"median width ≈ {fmt(s['width'].quantile(0.5), 0)} px"),
             chart(charts.hist("img-aspect", {"width / height": s["aspect"]}, "Aspect ratio", "width / height",
                               marks=[(1.0, "square")], logx=True, xticks=ASPECT_TICKS)),
             chart(charts.hist("img-bytes", {"stored samples": s["bytes"]}, "Bytes per stored image", "bytes",
                               logx=True), f"mean {fmt(s['bytes'].mean, 0)} bytes (after resizing); {coverage}")]
    if fmts:
        items.append(chart(charts.bars("img-formats", [f for f, _ in fmts], [n for _, n in fmts],
                                       "Formats of stored images", "samples"), coverage))
    return grid(*items), True


def download(build: Folder, report: dict[str, Any]) -> Section:
    d, stats = agg.download_stats(build), report["stages"].get("download")
    if d is None or stats is None:
        return not_run("download", "No shards yet."), False
    status = [("success", stats["kept"])] + sorted(stats["dropped"].items(), key=lambda rn: -rn[1])
    colors = [charts.KEPT] + [charts.DROPPED] * (len(status) - 1)
    hosts = [{**h, "success rate": pct(h.pop("rate"))} for h in (dict(h) for h in d["hosts"])]
    shards = d["shards"]
    attempts, urls = sum(s["attempts"] for s in shards), sum(s["urls"] for s in shards)
    figures = tiles([("URLs", num(stats["inputs"], "stages.download.inputs")),
                     ("downloaded", num(stats["kept"], "stages.download.kept")),
                     ("distinct hosts", num(d["distinct_hosts"])), ("fetch attempts", num(attempts)),
                     ("retries", num(attempts - urls)),
                     ("shard seconds (sum)", num(round(sum(s["seconds"] for s in shards), 1)))])
    slow = sorted(shards, key=lambda s: -(s["seconds"] or 0))[:20]
    body = figures + grid(
        chart(charts.bars("dl-status", [s for s, _ in status], [n for _, n in status], "Status by reason", "URLs",
                          colors)),
        f"<div><h3>Top hosts</h3>{rows_table(hosts, ['host', 'urls', 'success', 'success rate'])}</div>")
    body += (f"<h3>Shards (slowest {len(slow)} of {len(shards)})</h3>"
             + rows_table(slow, ["shard", "urls", "success", "attempts", "retried", "seconds", "urls_per_s"])
             + "<p class=note>The download records time and attempts per shard, not per URL.</p>")
    return body, True


# ---------------------------------------------------------------- eval dedup

def _pair(build: Folder, row: dict[str, Any], web: dict[str, Any]) -> str:
    def img(uri: str | None, alt: str) -> str:
        return f"<img src='{uri}' alt='{esc(alt)}'>" if uri else "<span class=missing>n/a</span>"

    ev = thumbs.eval_thumbnail(build, row["eval_set"], row["eval_id"])
    w = web.get(row["key"], {})
    return (f"<div class=pair><div class=imgs><div>{img(ev, row['eval_id'])}eval</div>"
            f"<div>{img(w.get('uri'), row['key'])}web</div></div>{esc(row['eval_set'])}: {esc(row['eval_id'])} ↔ "
            f"{esc(row['key'])}<br>pHash {fmt(row.get('distance'))}, DCT {fmt(row.get('dct_distance'))}, "
            f"{esc(row.get('variant'))}"
            f"<br><span class=note>{esc(w.get('caption', ''))}</span></div>")


def dedup(build: Folder, report: dict[str, Any]) -> Section:
    o = agg.overlap_stats(build)
    if o is None:
        return not_run("eval dedup", "overlap/overlap.parquet is written by the download (or `wit dedup`)."), False
    th = o["thresholds"]
    rows = [[esc(name), num(s["eval_images"]), num(s["eval_size"]), pct(s["eval_images"] / s["eval_size"])
             if s["eval_size"] else "–", num(s["web_samples"], f"funnel.eval_duplicates.{name}")]
            for name, s in o["sets"].items()]
    dist_marks = [(th["max_distance"], f"max_distance {th['max_distance']}")] if "max_distance" in th else []
    dct_marks = [(th["max_dct_distance"], f"max_dct_distance {th['max_dct_distance']}")] if "max_dct_distance" in th else []
    variants = o["variants"].most_common(10)
    web = thumbs.shard_thumbnails(build / "shards", [r["key"] for r in o["pairs"]])
    body = (table(["eval set", "eval images matched", "eval set size", "share", "web samples matched"], rows,
                  (1, 2, 3, 4))
            + grid(chart(charts.hist("dd-phash", {"matches": o["distance"]}, "pHash distance of matches", "bits",
                                     marks=dist_marks)),
                   chart(charts.hist("dd-dct", {"matches": o["dct_distance"]}, "DCT-sign distance of matches",
                                     "bits of 256", marks=dct_marks)),
                   chart(charts.bars("dd-variants", [v for v, _ in variants], [n for _, n in variants],
                                     "Matched eval variant", "matches")) if variants else "")
            + f"<h3>Matched pairs (first {len(o['pairs'])})</h3><div class=pairs>"
            + "".join(_pair(build, r, web) for r in o["pairs"]) + "</div>")
    return body, True


def gallery(build: Folder, report: dict[str, Any]) -> Section:
    items = thumbs.gallery(build / "shards")
    if not items:
        return not_run("download", "No samples in shards yet."), False
    figs = "".join(f"<figure><img src='{i['uri']}' alt='{esc(i['key'])}'><figcaption>{esc(i['caption'])}"
                   f"</figcaption></figure>" for i in items)
    return f"<p class=note>The first samples of the shards, as stored (96 px thumbnails).</p><div class=gallery>{figs}</div>", True


# ---------------------------------------------------------------- training and overlap analysis

def _overlap_figure(build: Folder) -> str:
    if not build.exists("reports/overlap.png"):
        return ""
    uri = "data:image/png;base64," + base64.b64encode(build.read_bytes("reports/overlap.png")).decode("ascii")
    return f"<figure class=chart><img class=wide src='{uri}' alt='overlap analysis'><figcaption>reports/overlap.png" \
           f"</figcaption></figure>"


def training(build: Folder, report: dict[str, Any]) -> Section:
    loss, zs = trainlog.loss_curve(build), trainlog.zeroshot_curves(build)
    if loss is None and not report["train"] and not report["overlap"]:
        return not_run("train", "No open_clip log in train/ yet."), False
    items = []
    if loss:
        items.append(chart(charts.lines("train-loss", {"loss": (loss["epoch"], loss["loss"]),
                                                       "running mean": (loss["epoch"], loss["smoothed"])},
                                        "Training loss", "epoch", "contrastive loss"), "from train/*/out.log"))
    if zs:
        items.append(chart(charts.lines("train-zeroshot", {k: (v["epoch"], v["value"]) for k, v in zs.items()},
                                        "Zero-shot accuracy", "epoch", "accuracy")))
    else:
        items.append("<p class=note>open_clip ran no zero-shot evaluation during training (no results.jsonl).</p>")
    body = grid(*items)
    if report["train"]:
        body += "<h3>Training runs (train/results.jsonl)</h3>" + rows_table(
            trainlog.train_summary(report["train"]), ["time", "model", "device", "epochs", "steps", "samples",
                                                      "global_batch", "final_loss", "samples_per_s", "wall_s"])
    if report["overlap"]:
        cols = ["eval_set", "n_all", "n_overlap", "overlap_pct", "acc_all", "acc_clean", "acc_overlap", "delta",
                "p_value", "ci_low", "ci_high"]
        body += ("<h3>Overlap analysis (CLIP section 5; accuracies in %)</h3>"
                 + rows_table(overlap_table(report["overlap"]), cols) + _overlap_figure(build))
    else:
        body += not_run("overlap analysis", "reports/overlap.json is written by the overlap stage.")
    return body, True


SECTIONS: list[tuple[str, str, Callable[[Folder, dict[str, Any]], Section]]] = [
    ("overview", "Overview", overview), ("funnel", "Funnel", funnel), ("captions", "Captions", captions),
    ("balance", "WIT balancing", balance), ("images", "Images", images), ("download", "Download", download),
    ("dedup", "Eval dedup", dedup), ("gallery", "Sample gallery", gallery), ("training", "Training", training),
]

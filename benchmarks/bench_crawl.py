"""Benchmark: crawl throughput (MB/s of uncompressed archive per core) on a generated WARC and WAT,
against a straightforward warcio + json + html.parser baseline, measured in the same run.

Generated into a temporary folder (``--tmp``, default /tmp), not the repository, with Common Crawl's
layout: every record its own gzip member (level 6). The WARC holds request/response/metadata triplets
like CC's; responses are HTML pages of ~45 KB (doctype, head with metas, links, a style block and
scripts, navigation, paragraphs of wordfreq English, 10-50 ``<img>`` with relative/absolute/``//``
``src``, ``srcset``, lazy ``data-src``, empty and file-name alts), with 5% images/PDFs and 5% redirects
and 404s. The WAT holds, per page, the request, response and metadata JSON records of CC's WAT format
(Envelope, WARC-Header-Metadata, HTTP-Response-Metadata, HTML-Metadata with Head and ~150 Links).

Compared, on one pinned core, each run timed by CPU time and wall clock (best of ``--repeat``):
- ``crawl``: ``pipeline.crawl.stage.crawl_file`` (the stage, parquet part written);
- ``warcio_selectolax``: the same extraction and output fed by warcio's ArchiveIterator (the previous crawl);
- ``baseline``: warcio ArchiveIterator + ``json.loads`` + ``html.parser.HTMLParser`` + ``urljoin``,
  the same rows written with one ``pyarrow.parquet.write_table``.
Writes ``benchmarks/results/crawl.json`` (figures, ratios, profile of the hot path, machine).

    .venv/bin/python benchmarks/bench_crawl.py [--mb 220] [--repeat 3]
"""
from __future__ import annotations

import argparse
import cProfile
import gzip
import hashlib
import io
import json
import os
import pstats
import random
import resource
import sys
import tempfile
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pipeline.crawl.archive as archive  # noqa: E402
import pipeline.crawl.stage as crawl  # noqa: E402
from pipeline.core.io import write_json  # noqa: E402
from benchinfo import machine_info  # noqa: E402

RESULT = REPO / "benchmarks" / "results" / "crawl.json"
EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif")


# ---------------------------------------------------------------- generated archives

class Corpus:
    """Random but realistic page material: wordfreq English, domains, paths and alt texts."""

    def __init__(self, seed: int) -> None:
        from wordfreq import top_n_list

        self.rng = random.Random(seed)
        self.words = top_n_list("en", 8000)
        self.domains = [f"{self.word()}{self.word()}.{self.rng.choice(('com', 'org', 'net', 'co.uk', 'de'))}"
                        for _ in range(400)]

    def word(self) -> str:
        return self.words[min(int(self.rng.paretovariate(0.9)) - 1, len(self.words) - 1)]

    def text(self, lo: int, hi: int) -> str:
        return " ".join(self.word() for _ in range(self.rng.randint(lo, hi)))

    def sentence(self) -> str:
        return self.text(6, 25).capitalize() + "."

    def path(self) -> str:
        return "/" + "/".join(self.word() for _ in range(self.rng.randint(1, 4)))

    def alt(self) -> str:
        r = self.rng.random()
        if r < 0.25:
            return ""
        if r < 0.33:
            return f"IMG_{self.rng.randint(1000, 9999)}.JPG"
        return self.text(2, 14).capitalize()

    def img_src(self, page: str) -> tuple[str, str]:
        name = f"{self.word()}-{self.rng.randint(1, 9999)}{self.rng.choice(EXTS)}"
        kind = self.rng.random()
        if kind < 0.35:
            return "src", f"/wp-content/uploads/{self.rng.randint(2015, 2024)}/{self.rng.randint(1, 12):02d}/{name}"
        if kind < 0.55:
            return "src", f"https://cdn.{self.rng.choice(self.domains)}/images/{name}"
        if kind < 0.7:
            return "src", f"//static.{page}/img/{name}"
        if kind < 0.85:
            return "srcset", ", ".join(f"/img/{w}/{name} {w}w" for w in (320, 640, 1024))
        return "data-src", f"images/{name}"


def html_page(c: Corpus, domain: str) -> str:
    rng = c.rng
    imgs = []
    for _ in range(rng.randint(10, 50)):
        attr, value = c.img_src(domain)
        extra = ' src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"' \
            if attr == "data-src" else ""
        imgs.append(f'<figure class="wp-block-image"><img {attr}="{value}"{extra} alt="{c.alt()}" '
                    f'width="{rng.randint(100, 1200)}" height="{rng.randint(100, 900)}" loading="lazy" '
                    f'class="attachment-{c.word()} size-{c.word()}"><figcaption>{c.text(3, 12)}</figcaption></figure>')
    paras = [f"<p>{c.sentence()} {c.sentence()} <a href=\"{c.path()}\">{c.text(1, 4)}</a> {c.sentence()}</p>"
             for _ in range(rng.randint(15, 40))]
    body = []
    for i, para in enumerate(paras):
        body.append(para)
        body.extend(imgs[i::len(paras)])
    nav = "".join(f'<li class="menu-item"><a href="{c.path()}">{c.text(1, 3)}</a></li>' for _ in range(rng.randint(20, 60)))
    css = "".join(f".{c.word()}-{c.word()}{{margin:{rng.randint(0, 40)}px;color:#{rng.getrandbits(24):06x};"
                  f"font-size:{rng.randint(10, 30)}px}}" for _ in range(rng.randint(60, 160)))
    js = ";".join(f"var {c.word()}_{i}=document.querySelector('.{c.word()}');if({c.word()}_{i}){{"
                  f"{c.word()}_{i}.addEventListener('click',function(e){{e.preventDefault()}})}}"
                  for i in range(rng.randint(40, 120)))
    metas = "".join(f'<meta property="og:{c.word()}" content="{c.text(2, 8)}">' for _ in range(rng.randint(5, 15)))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{c.text(3, 9)}</title>{metas}'
            f'<link rel="stylesheet" href="/wp-content/themes/{c.word()}/style.css"><style>{css}</style>'
            f'<script>{js}</script></head><body><header><nav><ul>{nav}</ul></nav></header>'
            f'<main><article><h1>{c.text(3, 10)}</h1>{"".join(body)}</article></main>'
            f'<footer><p>&copy; 2024 {c.text(1, 3)}</p><script src="/js/{c.word()}.js"></script></footer></body></html>')


def warc_record(rec_type: str, url: str, block: bytes, content_type: str) -> tuple[bytes, int]:
    """One gzip member holding one WARC record, and the record's uncompressed size."""
    head = (f"WARC/1.0\r\nWARC-Type: {rec_type}\r\nWARC-Date: 2024-05-18T12:00:00Z\r\n"
            f"WARC-Record-ID: <urn:uuid:{uuid.uuid4()}>\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(block)}\r\n\r\n").encode()
    return gzip.compress(head + block + b"\r\n\r\n", 6), len(head) + len(block) + 4


def http_response(body: bytes, ctype: str, status: str = "200 OK") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nServer: nginx\r\nCache-Control: max-age=600\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def wat_json(c: Corpus, url: str, kind: str) -> bytes:
    rng = c.rng
    envelope: dict[str, Any] = {
        "Format": "WARC", "WARC-Header-Length": str(rng.randint(400, 700)), "Block-Digest": f"sha1:{uuid.uuid4().hex}",
        "Actual-Content-Length": str(rng.randint(1000, 90000)),
        "WARC-Header-Metadata": {"WARC-Type": kind, "WARC-Date": "2024-05-18T12:00:00Z", "WARC-Target-URI": url,
                                 "WARC-Record-ID": f"<urn:uuid:{uuid.uuid4()}>", "WARC-IP-Address": "192.0.2.1",
                                 "Content-Type": "application/http; msgtype=" + kind},
    }
    if kind == "response":
        domain = url.split("/")[2]
        links = [{"path": "A@/href", "url": c.path(), "text": c.text(1, 5)} for _ in range(rng.randint(60, 200))]
        links += [{"path": "IMG@/src", "url": c.img_src(domain)[1], **({"alt": a} if (a := c.alt()) else {})}
                  for _ in range(rng.randint(10, 50))]
        rng.shuffle(links)
        envelope["Payload-Metadata"] = {"Actual-Content-Type": "application/http; msgtype=response",
                                        "HTTP-Response-Metadata": {
                                            "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
                                            "Headers": {"Content-Type": "text/html; charset=UTF-8", "Server": "nginx"},
                                            "HTML-Metadata": {"Head": {"Title": c.text(3, 9), "Metas": [
                                                {"property": f"og:{c.word()}", "content": c.text(2, 8)}
                                                for _ in range(rng.randint(5, 15))],
                                                "Link": [{"path": "LINK@/href", "url": c.path(), "rel": "stylesheet"}]},
                                                "Links": links}}}
    return json.dumps({"Container": {"Filename": "CC-MAIN-bench.warc.gz", "Compressed": True,
                                     "Offset": str(rng.randint(0, 10 ** 9))}, "Envelope": envelope},
                      separators=(",", ":")).encode()  # compact, as Common Crawl writes WAT JSON


def generate(folder: Path, mb: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write ``bench.warc.gz`` and ``bench.wat.gz`` of at least ``mb`` MB uncompressed each."""
    c = Corpus(seed)
    sizes = {}
    for name in ("bench.warc.gz", "bench.wat.gz"):
        raw, records, pages = 0, 0, 0
        with open(folder / name, "wb") as fh:
            while raw < mb * 1_000_000:
                domain = c.rng.choice(c.domains)
                url = f"https://www.{domain}{c.path()}/"
                blocks = _warc_blocks(c, url, domain) if name.startswith("bench.warc") else _wat_blocks(c, url)
                for rec_type, block, ctype in blocks:
                    member, size = warc_record(rec_type, url, block, ctype)
                    fh.write(member)
                    raw += size
                    records += 1
                pages += 1
        sizes[name] = {"compressed_bytes": (folder / name).stat().st_size, "uncompressed_bytes": _gunzipped(folder / name),
                       "records": records, "pages": pages}
    return sizes


def _warc_blocks(c: Corpus, url: str, domain: str) -> list[tuple[str, bytes, str]]:
    request = f"GET / HTTP/1.1\r\nHost: www.{domain}\r\nUser-Agent: CCBot/2.0\r\nAccept: text/html\r\n\r\n".encode()
    r = c.rng.random()
    if r < 0.05:
        response = http_response(os.urandom(c.rng.randint(20_000, 200_000)), c.rng.choice(("image/jpeg", "application/pdf")))
    elif r < 0.10:
        response = http_response(b"<html><body>Moved</body></html>", "text/html", c.rng.choice(("301 Moved", "404 Not Found")))
    else:
        response = http_response(html_page(c, domain).encode(), "text/html; charset=UTF-8")
    meta = f"fetchTimeMs: {c.rng.randint(50, 900)}\r\ncharset-detected: UTF-8\r\nlanguages-cld2: {{\"en\"}}\r\n".encode()
    return [("request", request, "application/http; msgtype=request"),
            ("response", response, "application/http; msgtype=response"),
            ("metadata", meta, "application/warc-fields")]


def _wat_blocks(c: Corpus, url: str) -> list[tuple[str, bytes, str]]:
    return [("metadata", wat_json(c, url, kind), "application/json") for kind in ("request", "response", "metadata")]


def _gunzipped(path: Path) -> int:
    total = 0
    with gzip.open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            total += len(chunk)
    return total


# ---------------------------------------------------------------- the three implementations

class _ImgParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))


def baseline(path: Path, out: Path) -> int:
    """warcio + json + html.parser + urljoin: the straightforward crawl, writing the same columns (uid too)."""
    from warcio.archiveiterator import ArchiveIterator

    rows: dict[str, list[str]] = {k: [] for k in ("uid", "url", "caption", "page_url", "source", "caption_attr")}
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            page = record.rec_headers.get_header("WARC-Target-URI") or ""
            if record.rec_type == "metadata" and (record.rec_headers.get_header("Content-Type") or "").startswith(
                    "application/json"):
                doc = json.loads(record.content_stream().read())
                meta = doc.get("Envelope", {}).get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {})
                for link in meta.get("HTML-Metadata", {}).get("Links", []):
                    if link.get("path") == "IMG@/src" and link.get("alt"):
                        _add(rows, urljoin(page, link["url"]), link["alt"], page, str(path))
            elif record.rec_type == "response" and record.http_headers and \
                    record.http_headers.get_statuscode().startswith("2") and \
                    "text/html" in (record.http_headers.get_header("Content-Type") or ""):
                parser = _ImgParser()
                parser.feed(record.content_stream().read().decode("utf-8", "replace"))
                for img in parser.images:
                    src = img.get("data-src") or img.get("src")
                    if img.get("srcset"):
                        src = img["srcset"].split(",")[-1].split()[0]
                    if img.get("alt") and src and not src.startswith("data:"):
                        _add(rows, urljoin(page, src), img["alt"], page, str(path))
    pq.write_table(pa.table(rows), out)
    return len(rows["url"])


def _add(rows: dict[str, list[str]], url: str, caption: str, page: str, source: str) -> None:
    caption = " ".join(caption.split())
    rows["uid"].append(hashlib.blake2b(f"{url}\t{caption}".encode(), digest_size=16).hexdigest())
    rows["url"].append(url)
    rows["caption"].append(caption)
    rows["page_url"].append(page)
    rows["source"].append(source)
    rows["caption_attr"].append("alt")


def ours(path: Path, out: Path) -> int:
    return crawl.crawl_file(str(path), out, crawl.CrawlConfig(progress=False)).kept


def warcio_selectolax(path: Path, out: Path) -> int:
    """The stage's extraction and output fed by warcio (what the crawl did before its own reader)."""
    original = archive._warc_records

    def not_warc(stream: Any, source: str, cfg: Any) -> Any:
        raise archive._NotWarc(source)

    archive._warc_records = not_warc  # type: ignore[assignment]
    try:
        return ours(path, out)
    finally:
        archive._warc_records = original  # type: ignore[assignment]


def measure(fn: Callable[[Path, Path], int], path: Path, tmp: Path) -> dict[str, float]:
    out = tmp / "out.parquet"
    wall, cpu = time.perf_counter(), time.process_time()
    rows = fn(path, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out.unlink(missing_ok=True)
    return {"rows": rows, "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}


def profile(path: Path, tmp: Path, top: int = 12) -> list[str]:
    prof = cProfile.Profile()
    prof.runcall(ours, path, tmp / "prof.parquet")
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
    lines = [ln.rstrip() for ln in stream.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return lines[start:start + top + 1]


def machine() -> dict[str, Any]:
    return machine_info(("warcio", "selectolax", "msgspec", "isal", "pyarrow"), cores_used=1,
                        inflate=archive._inflate.__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=220, help="uncompressed MB of each generated archive")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each implementation (best is reported)")
    parser.add_argument("--tmp", default="/tmp", help="where the archives are generated")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    result: dict[str, Any] = {"benchmark": "crawl throughput, MB/s of uncompressed archive per core",
                              "machine": machine(), "target_ratio": 3.0, "archives": {}}
    with tempfile.TemporaryDirectory(prefix="bench-crawl-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        t = time.perf_counter()
        sizes = generate(tmp, args.mb)
        result["generate_seconds"] = round(time.perf_counter() - t, 1)
        impls = {"crawl": ours, "warcio_selectolax": warcio_selectolax, "baseline": baseline}
        for name, size in sizes.items():
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in impls}
            for _ in range(args.repeat):  # interleaved, so load changes hit every implementation alike
                for impl, fn in impls.items():
                    runs[impl].append(measure(fn, tmp / name, tmp))
                    print(name, impl, runs[impl][-1], file=sys.stderr)
            result["archives"][name] = _summary(size, runs) | {"profile_of_crawl": profile(tmp / name, tmp)}
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    ratios = [a["ratio_cpu_vs_baseline"] for a in result["archives"].values()]
    result["meets_target"] = min(ratios) >= result["target_ratio"]
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


def _summary(size: dict[str, int], runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    mb = size["uncompressed_bytes"] / 1e6
    best = {impl: min(r, key=lambda x: x["cpu_seconds"]) for impl, r in runs.items()}
    out: dict[str, Any] = {**size, "uncompressed_mb": round(mb, 1)}
    for impl, b in best.items():
        out[impl] = {"rows": b["rows"], "mb_per_cpu_s": round(mb / b["cpu_seconds"], 1),
                     "mb_per_s_wall": round(mb / min(x["seconds"] for x in runs[impl]), 1),
                     "runs_cpu_seconds": [x["cpu_seconds"] for x in runs[impl]]}
    out["ratio_cpu_vs_baseline"] = round(best["baseline"]["cpu_seconds"] / best["crawl"]["cpu_seconds"], 2)
    out["ratio_cpu_vs_warcio_selectolax"] = round(best["warcio_selectolax"]["cpu_seconds"] / best["crawl"]["cpu_seconds"], 2)
    return out


if __name__ == "__main__":
    main()

"""Unit tests of the crawl stage on small WARC/WAT files written with warcio, and on a real Common Crawl WARC."""
from __future__ import annotations

import contextlib
import functools
import gzip as gzip_lib
import http.server
import io
import json
import os
import threading
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

import pipeline.crawl.archive as archive_mod
import pipeline.crawl.stage as crawl_mod
from pipeline.crawl.stage import CrawlConfig, crawl_file, run_crawl
from pipeline.core.errors import WitError
from pipeline.crawl.body import dechunk
from pipeline.crawl.columns import decode_wat, normalise_captions, resolve_urls, wat_columns
from pipeline.crawl.extract import (CorruptRecord, best_srcset, decode_html, html_images, make_uid, normalise_caption,
                                    parse_wat, resolve_url, wat_images)
from pipeline.crawl.inputs import expand_inputs, part_name, read_listing
from pipeline.core.stats import StageStats

PAGE = "https://example.org/dir/page.html"
COLUMNS = ["uid", "url", "caption", "page_url", "source", "caption_attr"]


def _fixture() -> Path:
    shared = os.environ.get("WIT_SHARED_DIR")
    root = Path(shared) if shared else Path(__file__).resolve().parents[2].parent / "shared"
    return root / "fixtures" / "commoncrawl" / "whirlwind.warc.gz"


def _html_record(writer: WARCWriter, url: str, body: bytes, ctype: str = "text/html; charset=utf-8",
                 status: str = "200 OK") -> None:
    http = StatusAndHeaders(status, [("Content-Type", ctype)] if ctype else [], protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))


def _metadata_record(writer: WARCWriter, url: str, body: bytes, ctype: str = "application/json") -> None:
    writer.write_record(writer.create_warc_record(url, "metadata", payload=io.BytesIO(body), warc_content_type=ctype))


def _warc(path: Path, pages: list[tuple[str, bytes]], gzip: bool = True, **kw: str) -> Path:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip)
        for url, body in pages:
            _html_record(writer, url, body, **kw)
    return path


def _wat_doc(page: str, links: list[dict], base: str | None = None) -> bytes:
    head = {"Base": base} if base else {}
    return json.dumps({"Envelope": {
        "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page},
        "Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Head": head, "Links": links}}},
    }}).encode()


def _rows(out: Path) -> list[dict]:
    return [row for p in sorted(out.glob("*.parquet")) for row in pq.read_table(p).to_pylist()]


def _refs(html: str, page: str = PAGE) -> list[tuple[str | None, str, str, str]]:
    return [(r.drop, r.url, r.caption, r.caption_attr) for r in html_images(html, page)]


def test_resolve_relative_root_and_protocol_relative_urls() -> None:
    assert resolve_url("img/a.png", PAGE) == ("https://example.org/dir/img/a.png", None)
    assert resolve_url("../a.png", PAGE) == ("https://example.org/a.png", None)
    assert resolve_url("/static/a.png", PAGE) == ("https://example.org/static/a.png", None)
    assert resolve_url("//cdn.example.net/a.png", PAGE) == ("https://cdn.example.net/a.png", None)
    assert resolve_url(" http://other.test/a b.png#frag ", PAGE) == ("http://other.test/a b.png", None)
    for bad in ("data:image/gif;base64,R0lGOD", "javascript:void(0)", "ftp://x.test/a.png", "mailto:a@b.c"):
        assert resolve_url(bad, PAGE) == ("", "bad_scheme"), bad
    assert resolve_url("  ", PAGE) == ("", "no_src")


def test_srcset_picks_largest_candidate() -> None:
    assert best_srcset("a.png 1x, b.png 2x, c.png 1.5x") == "b.png"
    assert best_srcset("s.jpg 320w, l.jpg 1024w, m.jpg 640w") == "l.jpg"
    assert best_srcset("only.jpg") == "only.jpg"
    assert best_srcset("https://cdn.test/w_100,h_50/a.jpg 100w, https://cdn.test/w_400,h_200/a.jpg 400w") == \
        "https://cdn.test/w_400,h_200/a.jpg"
    assert best_srcset("") is None


def test_html_images_attributes_and_drops() -> None:
    html = """<html><head><base href="https://static.example.org/assets/"></head><body>
      <img src="cat.jpg" alt="  A   cat\n on a\tmat ">
      <img src="data:image/gif;base64,R0lGOD" data-src="/lazy/dog.jpg" alt="A lazy dog">
      <img src="small.jpg" srcset="med.jpg 2x, big.jpg 3x" alt="Big picture">
      <img src="t.jpg" title="Title only caption">
      <img src="x.jpg" alt="">
      <img alt="No source at all">
      <img src="data:image/png;base64,AAAA" alt="Inline image">
      <img src="javascript:alert(1)" alt="Script">
      <img src="//cdn.example.net/p.png" alt="Caf&eacute; &amp; bar">
    </body></html>"""
    assert _refs(html) == [
        (None, "https://static.example.org/assets/cat.jpg", "A cat on a mat", "alt"),
        (None, "https://static.example.org/lazy/dog.jpg", "A lazy dog", "alt"),
        (None, "https://static.example.org/assets/big.jpg", "Big picture", "alt"),
        (None, "https://static.example.org/assets/t.jpg", "Title only caption", "title"),
        ("no_caption", "", "", ""),
        ("no_src", "", "", ""),
        ("bad_scheme", "", "", ""),
        ("bad_scheme", "", "", ""),
        (None, "https://cdn.example.net/p.png", "Café & bar", "alt"),
    ]


def test_decode_non_utf8_html() -> None:
    latin = "<p><img src=a.jpg alt='Crème brûlée'></p>".encode("latin-1")
    assert "Crème brûlée" in decode_html(latin, "text/html; charset=ISO-8859-1")
    meta = b'<html><head><meta charset="windows-1252"></head>' + "<img alt='Señor €'>".encode("cp1252")
    assert "Señor €" in decode_html(meta, "text/html")
    http_equiv = b'<meta http-equiv="Content-Type" content="text/html; charset=shift_jis">' + "猫".encode("shift_jis")
    assert "猫" in decode_html(http_equiv, None)
    assert "café" in decode_html(b"<img alt='caf\xe9'>", "text/html; charset=bogus-charset")  # ignored, as browsers do
    assert "€5 café" in decode_html(b"<img alt='\x805 caf\xe9'>", "text/html; charset=iso-8859-1")  # as windows-1252
    assert "naïve" in decode_html('<meta charset="utf-16"><b>naïve</b>'.encode(), None)


def test_crawl_warc_non_utf8_and_relative(tmp_path: Path) -> None:
    pages = [
        ("http://a.test/x/p1.html", "<img src='../i/1.jpg' alt='Crème brûlée on a plate'>".encode("latin-1")),
        ("http://a.test/p2.html", b"<img src='//cdn.a.test/2.jpg' alt='A \xe9t\xe9 garden'>"),
    ]
    warc = _warc(tmp_path / "a.warc.gz", pages, ctype="text/html; charset=iso-8859-1")
    stats = run_crawl([str(warc)], tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert [(r["url"], r["caption"]) for r in rows] == [
        ("http://a.test/i/1.jpg", "Crème brûlée on a plate"), ("http://cdn.a.test/2.jpg", "A été garden")]
    assert rows[0]["page_url"] == "http://a.test/x/p1.html" and rows[0]["source"] == str(warc)
    assert rows[0]["uid"] == make_uid(rows[0]["url"], rows[0]["caption"]) and len(rows[0]["uid"]) == 32
    assert stats.kept == 2 and stats.extra["pages"] == 2 and stats.accounted()


def test_crawl_counts_binary_html_and_skips_non_html(tmp_path: Path) -> None:
    path = tmp_path / "m.warc"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=False)
        _html_record(writer, "http://a.test/bin", b"\x00\x01\x02\x00" * 100)
        _html_record(writer, "http://a.test/img.png", b"\x89PNG...", ctype="image/png")
        _html_record(writer, "http://a.test/404", b"<img src=a.jpg alt='Not found page'>", status="404 Not Found")
        _html_record(writer, "http://a.test/ok", b"<img src=a.jpg alt='A fine page'>")
    stats = run_crawl([str(path)], tmp_path / "out")
    assert stats.extra["corrupt_records"] == 1 and stats.extra["skipped_records"] == 2
    assert stats.kept == 1 and stats.inputs == 1


def test_crawl_wat_links_and_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "x.wat.gz"
    links = [{"path": "IMG@/src", "url": "/img/a.jpg", "alt": " A red bicycle "},
             {"path": "IMG@/src", "url": "//cdn.b.test/b.jpg", "title": "Mountain lake"},
             {"path": "IMG@/src", "url": "c.jpg"},
             {"path": "IMG@/src", "url": "data:image/png;base64,xx", "alt": "inline"},
             {"path": "A@/href", "url": "/other.html", "text": "a link"}]
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _metadata_record(writer, "http://b.test/p", _wat_doc("http://b.test/dir/p", links))
        _metadata_record(writer, "http://b.test/q", b'{"Envelope": {broken json')
        _metadata_record(writer, "http://b.test/r", b"fetchTimeMs: 12\r\n", ctype="application/warc-fields")
        _metadata_record(writer, "http://b.test/s", _wat_doc("http://b.test/s", [
            {"path": "IMG@/src", "url": "d.jpg", "alt": "Base resolved"}], base="http://base.test/x/"))
    stats = run_crawl([str(path)], tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert [(r["url"], r["caption"], r["caption_attr"], r["page_url"]) for r in rows] == [
        ("http://b.test/img/a.jpg", "A red bicycle", "alt", "http://b.test/dir/p"),
        ("http://cdn.b.test/b.jpg", "Mountain lake", "title", "http://b.test/dir/p"),
        ("http://base.test/x/d.jpg", "Base resolved", "alt", "http://b.test/s")]
    assert stats.extra["corrupt_records"] == 1 and stats.extra["skipped_records"] == 1
    assert stats.inputs == 5 and dict(stats.dropped) == {"no_caption": 1, "bad_scheme": 1} and stats.accounted()


def test_truncated_gzip_writes_no_part_and_goes_on(tmp_path: Path) -> None:
    pages = [(f"http://a.test/{i}", f"<img src='{i}.jpg' alt='Picture number {i}'>".encode() * 50) for i in range(30)]
    good = _warc(tmp_path / "good.warc.gz", pages)
    data = _warc(tmp_path / "tmp.warc.gz", pages).read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "tail.warc.gz").write_bytes(data[:-4])
    broken = bytearray(data)
    broken[len(data) // 2: len(data) // 2 + 32] = b"\x00" * 32
    (tmp_path / "bad.warc.gz").write_bytes(bytes(broken))
    inputs = [str(good)] + [str(tmp_path / f"{n}.warc.gz") for n in ("cut", "tail", "bad")]
    stats = run_crawl(inputs, tmp_path / "out", CrawlConfig(workers=1))
    assert len(stats.extra["failed_files"]) == 3
    assert all("\n" not in m and "warc.gz" in m for m in stats.extra["failed_files"])
    assert [p.name for p in (tmp_path / "out").glob("*.parquet")] == [part_name(good)]
    assert stats.kept == 30 * 50 and stats.accounted()
    with pytest.raises(WitError, match=r"cut\.warc\.gz: corrupt or truncated archive"):
        run_crawl([inputs[1]], tmp_path / "out2")
    assert not list((tmp_path / "out2").glob("*.parquet"))


def test_truncated_plain_warc_fails(tmp_path: Path) -> None:
    pages = [(f"http://a.test/{i}", f"<img src='{i}.jpg' alt='Picture number {i}'>".encode()) for i in range(5)]
    data = _warc(tmp_path / "a.warc", pages, gzip=False).read_bytes()
    for i, cut in enumerate((len(data) // 2, data.rindex(b"WARC-Date"), len(data) - 40)):
        (tmp_path / f"c{i}.warc").write_bytes(data[:cut])
        with pytest.raises(WitError, match="truncated"):
            run_crawl([str(tmp_path / f"c{i}.warc")], tmp_path / f"out{i}")
    (tmp_path / "text.warc").write_text("hello, this is not an archive\n")
    with pytest.raises(WitError, match="not a WARC"):
        run_crawl([str(tmp_path / "text.warc")], tmp_path / "out9")


def test_missing_inputs_and_globs(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="nope.warc.gz: input archive not found"):
        run_crawl([str(tmp_path / "nope.warc.gz")], tmp_path / "out")
    with pytest.raises(WitError, match="no files match"):
        run_crawl([str(tmp_path / "*.warc.gz")], tmp_path / "out")
    (tmp_path / "in").mkdir()
    for n in range(3):
        _warc(tmp_path / "in" / f"c{n}.warc.gz", [(f"http://a.test/{n}", b"<img src=a.jpg alt='Two words'>")])
    stats = run_crawl([str(tmp_path / "in" / "*.warc.gz"), str(tmp_path / "in" / "c0.warc.gz")], tmp_path / "out")
    assert stats.extra["files"] == 3 and stats.kept == 3
    assert run_crawl([str(tmp_path / "in")], tmp_path / "out").extra["skipped_files"] == 3


def test_resume_skips_finished_files_and_reports_whole_crawl(tmp_path: Path) -> None:
    a = _warc(tmp_path / "a.warc.gz", [("http://a.test/", b"<img src=1.jpg alt='One dog'><img src=2.jpg>")])
    b = _warc(tmp_path / "b.warc.gz", [("http://b.test/", b"<img src=3.jpg alt='Three cats'>")])
    out = tmp_path / "out"
    first = run_crawl([str(a)], out, CrawlConfig(batch_rows=1))
    part_a = out / part_name(a)
    mtime = part_a.stat().st_mtime_ns
    second = run_crawl([str(a), str(b)], out)
    assert part_a.stat().st_mtime_ns == mtime
    assert second.extra["skipped_files"] == 1 and second.extra["files"] == 2
    assert (first.inputs, second.inputs, second.kept, dict(second.dropped)) == (2, 3, 2, {"no_caption": 1})
    assert StageStats.read(out).to_dict() == second.to_dict()
    assert part_name(a) == part_name(Path(os.path.relpath(a))) and part_name(a) != part_name(b)


def test_part_is_streamed_in_row_groups(tmp_path: Path) -> None:
    html = "".join(f"<img src='{i}.jpg' alt='Image caption {i}'>" for i in range(25)).encode()
    warc = _warc(tmp_path / "a.warc", [("http://a.test/", html)], gzip=False)
    out = tmp_path / "out"
    stats = crawl_file(warc, out / "p.parquet", CrawlConfig(batch_rows=10))
    meta = pq.ParquetFile(out / "p.parquet").metadata
    assert meta.num_rows == 25 == stats.kept and meta.num_row_groups == 3
    assert pq.read_schema(out / "p.parquet").names == COLUMNS


@pytest.mark.skipif(not _fixture().is_file(), reason=f"Common Crawl fixture not found at {_fixture()} "
                    "(set WIT_SHARED_DIR to the folder holding fixtures/commoncrawl/)")
def test_whirlwind_common_crawl_fixture(tmp_path: Path) -> None:
    stats = run_crawl([str(_fixture())], tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert stats.extra["records"] == 4 and stats.extra["pages"] == 1 and stats.accounted()
    assert stats.inputs == 13 and stats.kept == len(rows) == 7 and dict(stats.dropped) == {"no_caption": 6}
    assert all(r["url"].startswith("https://") and r["page_url"] == "https://an.wikipedia.org/wiki/Escopete"
               for r in rows)
    by_caption = {r["caption"]: r["url"] for r in rows}
    assert by_caption["Escopete ubicada en Castiella-La Mancha"] == (
        "https://upload.wikimedia.org/wikipedia/commons/thumb/9/9c/Castilla-La_Mancha-loc.svg/"
        "500px-Castilla-La_Mancha-loc.svg.png")
    assert by_caption["Escudo d'armas"].startswith("https://upload.wikimedia.org/") and \
        "140px-Escudo" in by_caption["Escudo d'armas"]
    assert by_caption["Wikimedia Foundation"] == "https://an.wikipedia.org/static/images/footer/wikimedia-button-2x.png"
    assert by_caption["Biquipedia"] == \
        "https://an.wikipedia.org/static/images/mobile/copyright/wikipedia-wordmark-an.svg"


# ---------------------------------------------------------------- streaming reader edge cases

def _mixed_archive(tmp_path: Path) -> list[tuple[str, bytes]]:
    pages = [(f"http://m.test/{i}", "".join(f"<img src='{i}-{j}.jpg' alt='Caption {i} {j} {'x' * (i % 7)}'>"
                                             for j in range(i % 4)).encode() + b" " * (i * 37 % 500))
             for i in range(60)]
    return pages


def _crawled(paths: list[Path], out: Path, **kw) -> list[tuple[str, str, str]]:
    run_crawl([str(p) for p in paths], out, CrawlConfig(workers=1, **kw))
    return sorted((r["url"], r["caption"], r["page_url"]) for r in _rows(out))


def test_reader_is_independent_of_chunk_and_member_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = _mixed_archive(tmp_path)
    per_record = _warc(tmp_path / "r.warc.gz", pages)
    plain = _warc(tmp_path / "p.warc", pages, gzip=False)
    one_member = tmp_path / "one.warc.gz"
    one_member.write_bytes(gzip_lib.compress(plain.read_bytes()))
    expected = _crawled([per_record], tmp_path / "ref")
    assert len(expected) == sum(i % 4 for i in range(60))
    monkeypatch.setattr(archive_mod, "_CHUNK", 7)
    monkeypatch.setattr(archive_mod, "_MAX_INFLATE", 13)
    for n, path in enumerate((per_record, plain, one_member)):
        assert _crawled([path], tmp_path / f"o{n}") == expected, path.name


def _http_response(writer: WARCWriter, url: str, body: bytes, headers: list[tuple[str, str]]) -> None:
    http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")] + headers, protocol="HTTP/1.1")
    writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http,
                                                  length=len(body)))


def test_chunked_and_compressed_http_bodies(tmp_path: Path) -> None:
    html = b"<img src=a.jpg alt='A compressed page'>"
    deflate = zlib.compressobj(wbits=-15)
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (html[:10], html[10:])) + b"0\r\n\r\n"
    path = tmp_path / "enc.warc.gz"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _http_response(writer, "http://e.test/gz", gzip_lib.compress(html), [("Content-Encoding", "gzip")])
        _http_response(writer, "http://e.test/deflate", deflate.compress(html) + deflate.flush(),
                       [("Content-Encoding", "deflate")])
        _http_response(writer, "http://e.test/chunked", chunked, [("Transfer-Encoding", "chunked")])
        _http_response(writer, "http://e.test/bad", b"not gzip at all", [("Content-Encoding", "gzip")])
        _http_response(writer, "http://e.test/zstd", b"??", [("Content-Encoding", "zstd")])
    stats = run_crawl([str(path)], tmp_path / "out", CrawlConfig(workers=1))
    assert sorted(r["page_url"] for r in _rows(tmp_path / "out")) == [
        "http://e.test/chunked", "http://e.test/deflate", "http://e.test/gz"]
    assert stats.extra["corrupt_records"] == 0 and stats.kept == 3  # "bad" and "zstd" are read as stored
    assert stats.extra["encoding_mismatch"] + stats.extra["encoding_unsupported"] == 2
    assert dechunk(b"not chunked") == b"not chunked"


def test_wat_record_with_a_lone_surrogate_escape(tmp_path: Path) -> None:
    links = [{"path": "IMG@/src", "url": "/a.jpg", "alt": "broken \ud800 text"},
             {"path": "IMG@/src", "url": "/b.jpg", "alt": "emoji \U0001F600 text"}]
    path = tmp_path / "s.wat.gz"
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _metadata_record(writer, "http://b.test/p", _wat_doc("http://b.test/p", links))
    stats = run_crawl([str(path)], tmp_path / "out", CrawlConfig(workers=1))
    assert [r["caption"] for r in _rows(tmp_path / "out")] == ["broken ? text", "emoji \U0001F600 text"]
    assert stats.kept == 2 and stats.extra["corrupt_records"] == 0


def test_huge_alt_text_and_oversized_wat_record_are_counted(tmp_path: Path) -> None:
    huge = "word " * 200_000  # a 1 MB alt text
    page = f"<img src=a.jpg alt='{huge}'><img src=b.jpg alt='A normal caption'>".encode()
    warc = _warc(tmp_path / "a.warc.gz", [("http://h.test/", page)])
    stats = run_crawl([str(warc)], tmp_path / "out", CrawlConfig(workers=1))
    assert [r["caption"] for r in _rows(tmp_path / "out")] == ["A normal caption"]
    assert dict(stats.dropped) == {"caption_too_long": 1} and stats.accounted()
    links = [{"path": "IMG@/src", "url": f"/{i}.jpg", "alt": f"Picture {i}"} for i in range(2000)]
    wat = tmp_path / "big.wat.gz"
    with open(wat, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _metadata_record(writer, "http://b.test/big", _wat_doc("http://b.test/big", links))
        _metadata_record(writer, "http://b.test/ok", _wat_doc("http://b.test/ok", links[:1]))
    stats = run_crawl([str(wat)], tmp_path / "out2", CrawlConfig(workers=1, max_record_bytes=50_000))
    assert stats.extra["corrupt_records"] == 1 and stats.kept == 1


def test_entities_left_in_alt_text_are_unescaped(tmp_path: Path) -> None:
    page = b"<img src=a.jpg alt='Tom &amp;amp; Jerry &amp;#39;s house'><img src=b.jpg alt='AT&amp;T store'>"
    warc = _warc(tmp_path / "a.warc", [("http://h.test/", page)], gzip=False)
    run_crawl([str(warc)], tmp_path / "out", CrawlConfig(workers=1))
    assert [r["caption"] for r in _rows(tmp_path / "out")] == ["Tom & Jerry 's house", "AT&T store"]


# ---------------------------------------------------------------- fsspec URLs and path listings

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _site(tmp_path: Path) -> Path:
    seg = tmp_path / "site" / "crawl-data" / "CC-TEST" / "segments" / "1"
    seg.mkdir(parents=True)
    for n in range(2):
        _warc(seg / f"f{n}.warc.gz", [(f"http://s.test/{n}", f"<img src=x.jpg alt='Served image {n}'>".encode())])
    return tmp_path / "site"


def test_file_url_and_local_listing(tmp_path: Path) -> None:
    site = _site(tmp_path)
    files = sorted(site.rglob("*.warc.gz"))
    url = files[0].as_uri()
    stats = run_crawl([url], tmp_path / "out", CrawlConfig(workers=1))
    rows = _rows(tmp_path / "out")
    assert stats.kept == 1 and rows[0]["source"] == url and rows[0]["caption"] == "Served image 0"
    listing = tmp_path / "warc.paths.gz"
    listing.write_bytes(gzip_lib.compress("\n".join(str(f.relative_to(site)) for f in files).encode() + b"\n"))
    assert read_listing(str(listing), str(site)) == [str(f) for f in files]
    stats = run_crawl([str(listing)], tmp_path / "out2", CrawlConfig(workers=1, paths_prefix=str(site)))
    assert stats.kept == 2 and stats.extra["files"] == 2
    assert run_crawl([str(listing)], tmp_path / "out3", CrawlConfig(workers=1, paths_prefix=str(site),
                                                                    max_inputs=1)).extra["files"] == 1
    assert expand_inputs([str(listing)])[0].startswith("https://data.commoncrawl.org/crawl-data/CC-TEST/")
    (tmp_path / "empty.paths").write_text("\n")
    with pytest.raises(WitError, match="empty.paths: path listing is empty"):
        run_crawl([str(tmp_path / "empty.paths")], tmp_path / "out4")
    with pytest.raises(WitError, match="nope.warc.gz: input archive not found"):
        run_crawl([(tmp_path / "nope.warc.gz").as_uri()], tmp_path / "out5")


@pytest.mark.slow
def test_http_url_and_http_listing(tmp_path: Path) -> None:
    site = _site(tmp_path)
    files = sorted(site.rglob("*.warc.gz"))
    lines = [str(f.relative_to(site)) for f in files] + ["crawl-data/CC-TEST/segments/1/missing.warc.gz"]
    (site / "warc.paths.gz").write_bytes(gzip_lib.compress("\n".join(lines).encode()))
    with _serve(site) as base:
        url = f"{base}/{lines[0]}"
        stats = run_crawl([url], tmp_path / "out", CrawlConfig(workers=1))
        assert stats.kept == 1 and _rows(tmp_path / "out")[0]["source"] == url
        with pytest.raises(WitError, match="missing.warc.gz: input archive not found"):
            run_crawl([f"{base}/{lines[2]}"], tmp_path / "outx")
        cfg = CrawlConfig(workers=1, paths_prefix=base + "/")
        stats = run_crawl([f"{base}/warc.paths.gz"], tmp_path / "out2", cfg)
        assert stats.kept == 2 and stats.extra["files"] == 3
        assert len(stats.extra["failed_files"]) == 1 and "missing.warc.gz" in stats.extra["failed_files"][0]
        again = run_crawl([f"{base}/warc.paths.gz"], tmp_path / "out2", cfg)
        assert again.extra["skipped_files"] == 2 and again.kept == 2


# ---------------------------------------------------------------- Ray

@pytest.mark.slow
def test_crawl_on_ray_matches_in_process(tmp_path: Path) -> None:
    paths = [_warc(tmp_path / f"r{n}.warc.gz", [(f"http://r.test/{n}/{i}", f"<img src=a.jpg alt='Ray page {n} {i}'>"
                                                   .encode()) for i in range(20)]) for n in range(4)]
    (tmp_path / "broken.warc.gz").write_bytes(paths[0].read_bytes()[:-100])
    inputs = [str(p) for p in paths] + [str(tmp_path / "broken.warc.gz")]
    local = run_crawl(inputs, tmp_path / "local", CrawlConfig(workers=1))
    on_ray = run_crawl(inputs, tmp_path / "ray", CrawlConfig(workers=2, ray_min_files=2))
    assert sorted(p.name for p in (tmp_path / "ray").glob("*.parquet")) == \
        sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    assert sorted(map(str, _rows(tmp_path / "ray"))) == sorted(map(str, _rows(tmp_path / "local")))
    assert on_ray.kept == local.kept == 80 and len(on_ray.extra["failed_files"]) == 1 and on_ray.accounted()


def test_columnar_wat_extraction_matches_record_by_record() -> None:
    import random

    rng = random.Random(1)
    srcs = ["a.jpg", "/x/b.png", "//cdn.t/c.gif", "http://o.t/d.jpg#f", "HTTPS://U.T/E.JPG", "../up.png", "?q=1",
            "data:image/png;base64,xx", "javascript:void(0)", "ftp://x/a.png", "  sp ace.png  ", "tab\tbed.png", "",
            "/", "//", "///x", "ümlaut.png", "http:foo.png", "a:b.png", "img/a.png?w=1", "\x1fctrl.png", "/a/./b.png"]
    alts = ["A red car", "  spaced   out  ", "Café au lait", "Tom &amp; Jerry", "AT&T", "", None, "\xa0nbsp\xa0",
            "tab\there", "e\u0301 combining", "日本語"]
    docs, fallbacks = [], []
    for _ in range(150):
        links = [{"path": rng.choice(["IMG@/src", "A@/href", "img@/src", "IMG@/data/src", "IMG@/srcset"]),
                  "url": rng.choice(srcs), **({"alt": a} if (a := rng.choice(alts)) is not None else {}),
                  **({"title": t} if (t := rng.choice(alts)) is not None else {})} for _ in range(rng.randint(0, 6))]
        head = rng.choice([{}, {"Base": "https://base.t/dir/"}, {"Base": "javascript:x"}])
        env: dict = {"WARC-Header-Metadata": {"WARC-Target-URI": rng.choice(["http://p.t/a/b.html", "https://q.t", ""])}}
        if rng.random() < 0.8:
            env["Payload-Metadata"] = {"HTTP-Response-Metadata": {"HTML-Metadata": {"Head": head, "Links": links}}}
        docs.append(json.dumps({"Envelope": env}, ensure_ascii=rng.random() < 0.5).encode())
        fallbacks.append(rng.choice(["http://s.t/dir/", "ftp://bad/x"]))
    decoded = [decode_wat(doc) for doc in docs]
    assert all(doc is not None for doc in decoded)  # plain records: all on the columnar path
    for use_title in (True, False):
        page_urls, has_html, cols = wat_columns(decoded, fallbacks, use_title)
        rows, drops, images = [], {}, 0
        for doc, fallback in zip(docs, fallbacks):
            page, refs = wat_images(parse_wat(doc), fallback, use_title)
            for ref in refs or []:
                images += 1
                if ref.drop:
                    drops[ref.drop] = drops.get(ref.drop, 0) + 1
                else:
                    rows.append((page, ref.url, ref.caption, ref.caption_attr))
        assert [(page_urls[p], u, c, a) for p, u, c, a in zip(cols.page, cols.url.to_pylist(), cols.caption.to_pylist(),
                                                              cols.caption_attr.to_pylist())] == rows
        assert (cols.images, dict(cols.drops)) == (images, drops) and has_html.sum() < len(docs)
    # what the columnar path cannot read plainly is left to the record-by-record path
    assert decode_wat(b'{"Envelope": {broken') is None
    assert decode_wat(b'{"a": "lone \\ud800 surrogate"}') is None
    assert decode_wat(b'{"Envelope": {"Payload-Metadata": 5}}') is None


# ---------------------------------------------------------------- msgspec WAT path, columnar URL and caption rules

def _weird_wat_docs() -> list[bytes]:
    """WAT payloads off the plain path: types msgspec rejects, duplicate keys, odd paths, broken JSON."""
    env = {"WARC-Header-Metadata": {"WARC-Target-URI": "http://w.t/p"}}

    def doc(html_meta: object, envelope: object = None) -> bytes:
        e = dict(env, **{"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": html_meta}}})
        return json.dumps({"Envelope": e if envelope is None else envelope}).encode()

    img = {"path": "IMG@/src", "url": "/i.png", "alt": "Plain image"}
    return [
        doc({"Links": [img, {"path": "IMG@/src", "url": 5, "alt": "Number url"}]}),  # non-string url
        doc({"Links": [img, "not a link", None]}),
        doc({"Links": {}}), doc({"Links": False}), doc({"Links": None}), doc({"Links": "text"}),
        doc({"Links": [img], "Head": {"Base": 7}}), doc("html"), doc(None, envelope="envelope"),
        doc({"Links": [{"path": "img@/SRC", "url": "a.png", "alt": "Lower case"},
                       {"path": "IMG@/data/src", "url": "b.png", "alt": "Prefixed"},
                       {"path": "\u0131mg@/src", "url": "c.png", "alt": "Dotless i"},
                       {"path": "IMG@/srcset", "url": "d.png", "alt": "Srcset"}]}),
        b'{"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": ['
        b'{"path": "A@/href", "url": "/dup.png", "path": "IMG@/src", "alt": "Duplicate key"}]}}}}}',
        b'{"Envelope": {"Payload-Metadata": {"HTTP-Response-Metadata": {"HTML-Metadata": {"Links": ['
        b'{"path": "I\\u004dG@/src", "url": "/escaped.png", "alt": "Escaped path"}]}}}}, "x": NaN}',
        doc({"Links": [dict(img, alt="lone \ud800 surrogate")]}),
        b'{"Envelope": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"Envelope": {broken', b"[1, 2]", b"",
    ]


def test_decoded_wat_extraction_matches_record_by_record() -> None:
    """msgspec's columnar path gives what wat_images gives, and leaves every record it cannot read plainly to it."""
    docs = [_wat_doc("http://p.t/a/b.html", [{"path": "IMG@/src", "url": u, "alt": a} for u in
                                             ("x.png", "/y.png", "//c.t/z.png", "../up.png", "data:x", "")
                                             for a in ("An image", "", " Two  spaces ", "Café &amp; co")])]
    docs += _weird_wat_docs()
    decoded = [(d, decode_wat(d)) for d in docs]
    plain = [(d, doc) for d, doc in decoded if doc is not None]
    assert [doc is None for _, doc in decoded] == [False, True, True, True, True, False, True, True, True, True,
                                                  False, False, True, True, True, True, True, True]
    for use_title in (True, False):
        page_urls, has_html, cols = wat_columns([doc for _, doc in plain], ["http://f.t/"] * len(plain), use_title)
        rows, drops, pages = [], {}, 0
        for i, (payload, _) in enumerate(plain):
            page, refs = wat_images(parse_wat(payload), "http://f.t/", use_title)
            pages += refs is not None
            for ref in refs or []:
                if ref.drop:
                    drops[ref.drop] = drops.get(ref.drop, 0) + 1
                else:
                    rows.append((i, page, ref.url, ref.caption, ref.caption_attr))
        assert [(p, page_urls[p], u, c, a) for p, u, c, a in zip(cols.page, cols.url.to_pylist(),
                                                                 cols.caption.to_pylist(),
                                                                 cols.caption_attr.to_pylist())] == rows
        assert dict(cols.drops) == drops and int(has_html.sum()) == pages
    with pytest.raises(CorruptRecord, match="nested too deeply"):  # the standard library's RecursionError
        parse_wat(docs[-4])


def test_parse_wat_replaces_lone_surrogates() -> None:
    """Escaped, UTF-8-encoded or UTF-16 lone surrogates become "?" (parts cannot hold them); pairs are kept."""
    for payload in (b'{"a": "x\\ud800y"}', b'{"a": "x\xed\xa0\x80y"}', '{"a": "x\\udc00y"}'.encode("utf-16")):
        assert parse_wat(payload) == {"a": "x?y"}, payload
    assert parse_wat(b'{"a": "\\ud83d\\ude00", "b": "\xf0\x9f\x98\x80"}') == {"a": "\U0001f600", "b": "\U0001f600"}


def _crawl_rows_and_stats(path: Path, out: Path) -> tuple[list[tuple], dict]:
    stats = run_crawl([str(path)], out, CrawlConfig(workers=1))
    rows = [(r["uid"], r["url"], r["caption"], r["page_url"], r["caption_attr"]) for r in _rows(out)]
    return rows, {k: v for k, v in stats.to_dict().items() if k != "seconds"}


def test_wat_crawl_is_the_same_on_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows (in order) and counts of a WAT file mixing plain and odd records: msgspec's columnar path, and
    record by record."""
    path = tmp_path / "mix.wat.gz"
    plain = [_wat_doc(f"http://m.t/{i}/", [{"path": "IMG@/src", "url": f"{i}.png", "alt": f"Mixed {i}"},
                                          {"path": "A@/href", "url": "/a"}]) for i in range(6)]
    payloads = [p for pair in zip(plain, _weird_wat_docs()) for p in pair] + _weird_wat_docs()[6:]
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i, payload in enumerate(payloads):
            _metadata_record(writer, f"http://m.t/r{i}", payload)
    fast = _crawl_rows_and_stats(path, tmp_path / "fast")
    assert fast[1]["extra"]["corrupt_records"] == 5 and len(fast[0]) == 14
    monkeypatch.setattr(crawl_mod, "decode_wat", lambda payload: None)  # every record one by one
    assert _crawl_rows_and_stats(path, tmp_path / "python") == fast


def test_columnar_urls_and_captions_match_python_rules() -> None:
    """resolve_urls / normalise_captions (byte-level NumPy classification) against resolve_url / normalise_caption,
    on random URLs and texts built of the characters their rules turn on, in sliced arrays too."""
    import random

    import numpy as np
    import pyarrow as pa

    rng = random.Random(7)
    pieces = ["http://", "HTTPS://", "hTTp:", "//", "/", ".", "./", "../", "a", "b.png", ":", "?", "#", " ", "\t",
              "\x0b", "\x1f", "\x7f", "é", "mailto:", "data:", "%20", "&", "\n", "@", "ftp://"]
    bases = ["http://p.t/a/b.html", "https://q.t", "https://Q.T:8080/dir/", "ftp://bad/x", "http://h.t/x?y#z"]
    texts = ["a", "B", " ", "  ", "\t", "\n", "\x1c", "\x01", "&amp;", "&", "é", "\xa0", "日本", "e\u0301"]
    for _ in range(200):
        raws = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 6))) if rng.random() > 0.05 else None
                for _ in range(rng.randint(0, 40))]
        page = np.array([rng.randrange(3) for _ in raws], dtype=np.int64)
        page_bases = [rng.choice(bases) for _ in range(3)]
        column = pa.array(["pad"] + raws, pa.string()).slice(1) if rng.random() < 0.5 else pa.array(raws, pa.string())
        urls, failed = resolve_urls(column, page, page_bases)
        for i, (raw, p) in enumerate(zip(raws, page)):
            assert (("", failed[i]) if i in failed else (urls[i].as_py(), None)) == resolve_url(raw, page_bases[p])
        captions = ["".join(rng.choice(texts) for _ in range(rng.randint(0, 6))) if rng.random() > 0.1 else None
                    for _ in range(rng.randint(0, 30))]
        column = pa.array(["pad"] + captions, pa.string()).slice(1) if rng.random() < 0.5 else \
            pa.array(captions, pa.string())
        assert normalise_captions(column).to_pylist() == [normalise_caption(c) for c in captions]


def test_invalid_utf8_in_wat_records(tmp_path: Path) -> None:
    """Invalid UTF-8 in a field the crawl reads makes a corrupt record; in a field it skips, msgspec does not
    check it, so the record still counts."""
    links = [{"path": "IMG@/src", "url": "/a.jpg", "alt": "Still read"}]
    skipped = _wat_doc("http://b.test/p", links)[:-1] + b', "X": "\xff"}'
    read = _wat_doc("http://b.test/q", [dict(links[0], alt="Bad \xff")]).replace(b"Bad \\u00ff", b"Bad \xff")
    for name, payload, expected in (("skipped", skipped, ["Still read"]), ("read", read, [])):
        path = tmp_path / f"{name}.wat.gz"
        with open(path, "wb") as fh:
            _metadata_record(WARCWriter(fh, gzip=True), "http://b.test/p", payload)
        rows, stats = _crawl_rows_and_stats(path, tmp_path / name)
        assert [r[2] for r in rows] == expected and stats["extra"]["corrupt_records"] == (not expected)

"""The crawl stage on the real archives of ``fixtures/commoncrawl`` and ``fixtures/warc``, against an
independent extraction written here.

The reference shares no code with the stage: warcio reads the records (it de-chunks bodies and inflates
gzip/deflate ones, keeping the stored bytes when they do not inflate), ``html.parser`` finds the ``<meta>``
charset and the images, ``urljoin`` resolves their URLs; WAT records are read with ``json``. The rules are the
stage's, written simply: charset from the HTTP header, else a ``<meta>``, else strict UTF-8, else windows-1252;
caption = alt, else title, whitespace collapsed; URL = the widest ``srcset`` candidate, else the first lazy-load
attribute, else ``src``, made absolute against ``<base href>`` or the page, http(s) only. Pairs are compared
per page, as ``(page URL, image URL, caption)``. The quirks of real archives (WARC/0.18 and 1.1, plain and
gzipped; bodies chunked, compressed or stored decoded under a Content-Encoding; bare-LF HTTP headers; pages
without a charset) are also written by hand into a small archive and checked the same way.

Fixture tests are skipped when the shared folder (``WIT_SHARED_DIR``, by default ``../shared`` beside the
clone) or a file is absent.
"""
from __future__ import annotations

import codecs
import gzip
import json
import re
import sys
import unicodedata
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urljoin

import pyarrow.parquet as pq
import pytest
from warcio.archiveiterator import ArchiveIterator

import pipeline.crawl.body as body_mod
from pipeline.crawl.stage import CrawlConfig, run_crawl
from pipeline.crawl.extract import decode_html

CC_2014 = "commoncrawl/CC-MAIN-20140820021334-00006-ip-10-180-136-8.ec2.internal.warc"
#: fixture -> (records whose stored body does not match their Content-Encoding, candidate rows of the stage)
ARCHIVES = {
    "commoncrawl/whirlwind.warc.gz": (0, 7),
    "commoncrawl/whirlwind.warc.wat.gz": (0, 0),
    CC_2014: (1, 861),
    CC_2014 + ".wat": (0, 4),
    "warc/resiliparse-warcfile.warc.gz": (0, 32),
    "warc/resiliparse-clueweb-quirk.warc.gz": (29, 556),  # Content-Encoding: gzip on bodies stored decoded
}
MIN_PAIRS = 20          # recall and precision are asserted from this many reference pairs; fewer must be equal
MIN_SCORE = 0.97
HTML_TYPES = ("text/html", "application/xhtml+xml")
URL_ATTRS = ("srcset", "data-srcset", "data-src", "data-lazy-src", "data-original", "src")
LABELS = {"iso-8859-1": "cp1252", "latin1": "cp1252", "ascii": "cp1252", "us-ascii": "cp1252",
          "gb2312": "gb18030", "gbk": "gb18030"}  # labels browsers read as a wider encoding


def _archive(shared_dir: Path, name: str) -> Path:
    path = shared_dir / "fixtures" / name
    if not path.is_file():
        pytest.skip(f"fixture {path} not found (set WIT_SHARED_DIR to the folder holding fixtures/)")
    return path


# ---------------------------------------------------------------- the reference extraction

def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    try:
        return LABELS.get(label) or codecs.lookup(label).name
    except LookupError:
        return None


class _MetaCharset(HTMLParser):
    """The charset a ``<meta charset>`` or ``<meta http-equiv=content-type content=...>`` declares."""

    def __init__(self) -> None:
        super().__init__()
        self.charset: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag != "meta" or self.charset:
            return
        if values.get("charset"):
            self.charset = values["charset"]
        elif values.get("http-equiv", "").lower() == "content-type" and "charset=" in values.get("content", "").lower():
            self.charset = values["content"].lower().split("charset=", 1)[1].split(";")[0]


def _meta_charset(body: bytes) -> str | None:
    parser = _MetaCharset()
    parser.feed(body[:4096].decode("latin-1"))
    return parser.charset


def _decode(body: bytes, content_type: str) -> str:
    if body.startswith(codecs.BOM_UTF8):
        return body[3:].decode("utf-8", "replace")
    header = content_type.lower().split("charset=", 1)[1].split(";")[0] if "charset=" in content_type.lower() else None
    charset = _codec(header) or _codec(_meta_charset(body))
    if charset and charset.startswith("utf-16"):  # a <meta> cannot declare UTF-16 in an ASCII-compatible page
        charset = "utf-8"
    if charset:
        return body.decode(charset, "replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body.decode("cp1252", "replace")


def _caption(text: str | None) -> str:
    return " ".join(unicodedata.normalize("NFC", text or "").split())


def _widest(srcset: str) -> str:
    best, best_key = "", (-1, -1.0)
    for candidate in srcset.split(","):
        parts = candidate.split()
        if not parts:
            continue
        size = parts[1] if len(parts) > 1 else "1x"
        try:
            key = (int(size[-1:].lower() == "w"), float(size[:-1]))
        except ValueError:
            key = (0, 1.0)
        if key > best_key:
            best, best_key = parts[0], key
    return best


def _absolute(raw: str, base: str) -> str | None:
    url = urljoin(base, re.sub(r"[\t\n\r]", "", raw).strip()).partition("#")[0]
    return url if re.match(r"https?://[^/?#\s]", url, re.I) else None


class _Images(HTMLParser):
    """``(url, caption)`` of every ``<img>`` with a caption and an http(s) URL."""

    def __init__(self, page_url: str) -> None:
        super().__init__()
        self.base: str | None = None
        self.page_url = page_url
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "base" and values.get("href") and self.base is None:
            self.base = _absolute(values["href"], self.page_url) or self.page_url
        elif tag == "img":
            self.images.append(values)

    def pairs(self) -> Iterator[tuple[str, str]]:
        base = self.base or self.page_url
        for img in self.images:
            caption = _caption(img.get("alt")) or _caption(img.get("title"))
            raws = [_widest(img[a]) if "srcset" in a else img[a] for a in URL_ATTRS if img.get(a, "").strip()]
            urls = [u for u in (_absolute(r, base) for r in raws if r) if u]
            if caption and urls:
                yield urls[0], caption


def _html_pairs(record: Any) -> Iterator[tuple[str, str]]:
    url = record.rec_headers.get_header("WARC-Target-URI", "")
    if record.rec_type == "response" and record.http_headers is not None:
        status = record.http_headers.get_statuscode() or ""
        content_type = record.http_headers.get_header("Content-Type", "")
    elif record.rec_type == "resource":
        status, content_type = "200", record.rec_headers.get_header("Content-Type", "")
    else:
        return
    if not status.startswith("2") or content_type.split(";")[0].strip().lower() not in HTML_TYPES:
        return
    parser = _Images(url)
    parser.feed(_decode(record.content_stream().read(), content_type))
    parser.close()
    yield from parser.pairs()


def _wat_pairs(record: Any) -> Iterator[tuple[str, str]]:
    envelope = json.loads(record.content_stream().read())["Envelope"]
    page_url = envelope["WARC-Header-Metadata"].get("WARC-Target-URI", "")
    html = envelope.get("Payload-Metadata", {}).get("HTTP-Response-Metadata", {}).get("HTML-Metadata", {})
    base = _absolute(html.get("Head", {}).get("Base") or "", page_url) or page_url
    for link in html.get("Links", []):
        caption = _caption(link.get("alt")) or _caption(link.get("title"))
        url = _absolute(link.get("url", ""), base) if link.get("path") == "IMG@/src" else None
        if caption and url:
            yield url, caption


def reference_pairs(path: Path) -> dict[str, set[tuple[str, str]]]:
    """``{page URL: {(image URL, caption)}}`` of an archive, by the reference extraction."""
    pages: dict[str, set[tuple[str, str]]] = {}
    with open(path, "rb") as fh:
        for record in ArchiveIterator(fh):
            wat = record.rec_type == "metadata" and \
                (record.rec_headers.get_header("Content-Type") or "").startswith("application/json")
            pairs = set(_wat_pairs(record) if wat else _html_pairs(record))
            if pairs:
                pages.setdefault(record.rec_headers.get_header("WARC-Target-URI", ""), set()).update(pairs)
    return pages


# ---------------------------------------------------------------- the stage against it

def _crawl(path: Path, out: Path) -> tuple[Any, dict[str, set[tuple[str, str]]]]:
    stats = run_crawl([str(path)], out, CrawlConfig(workers=1, progress=False))
    pages: dict[str, set[tuple[str, str]]] = {}
    for row in pq.read_table(out).to_pylist():
        pages.setdefault(row["page_url"], set()).add((row["url"], row["caption"]))
    return stats, pages


def _triples(pages: dict[str, set[tuple[str, str]]]) -> set[tuple[str, str, str]]:
    """``(page URL, image URL, caption)`` of every pair (the same pair on two pages counts twice)."""
    return {(page, url, caption) for page, pairs in pages.items() for url, caption in pairs}


def scores(stage: set[Any], reference: set[Any]) -> tuple[float, float]:
    """``(recall, precision)`` of the stage's pairs against the reference's (1.0 for an empty set)."""
    common = len(stage & reference)
    return (common / len(reference) if reference else 1.0, common / len(stage) if stage else 1.0)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_real_archive_matches_reference(name: str, shared_dir: Path, tmp_path: Path) -> None:
    path = _archive(shared_dir, name)
    mismatches, kept = ARCHIVES[name]
    stats, stage = _crawl(path, tmp_path / "out")
    reference = _triples(reference_pairs(path))
    assert stats.accounted() and stats.extra["failed_files"] == []
    assert stats.extra["corrupt_records"] == 0 and stats.extra["encoding_mismatch"] == mismatches
    assert stats.kept == kept
    recall, precision = scores(_triples(stage), reference)
    if len(reference) >= MIN_PAIRS:
        assert recall >= MIN_SCORE and precision >= MIN_SCORE, (len(reference), stats.kept, recall, precision)
    else:
        assert _triples(stage) == reference


def test_wat_matches_the_warc_of_its_crawl(shared_dir: Path, tmp_path: Path) -> None:
    """The 2014 WAT was made from the first records of the WARC beside it: its pages have the WARC's images."""
    _, wat = _crawl(_archive(shared_dir, CC_2014 + ".wat"), tmp_path / "wat")
    _, warc = _crawl(_archive(shared_dir, CC_2014), tmp_path / "warc")
    assert wat and set(wat) <= set(warc)
    for page, pairs in wat.items():
        assert pairs == warc[page]


# ---------------------------------------------------------------- the quirks of real archives, written by hand

def _http(body: bytes, headers: list[tuple[str, str]], eol: bytes = b"\r\n", ctype: str = "text/html") -> bytes:
    lines = [b"HTTP/1.1 200 OK"] + [f"{k}: {v}".encode() for k, v in [("Content-Type", ctype)] + headers]
    return eol.join(lines) + eol + eol + body


def _record(version: str, url: str, block: bytes) -> bytes:
    head = (f"WARC/{version}\r\nWARC-Type: response\r\nWARC-Target-URI: {url}\r\n"
            f"Content-Type: application/http;msgtype=response\r\nContent-Length: {len(block)}\r\n\r\n")
    return head.encode() + block + b"\r\n\r\n"


def _archive_file(path: Path, records: list[bytes], gzip_members: bool) -> Path:
    path.write_bytes(b"".join(gzip.compress(r) for r in records) if gzip_members else b"".join(records))
    return path


def _chunked(data: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[:7], data[7:])) + b"0\r\n\r\n"


def _quirks() -> list[tuple[str, bytes]]:
    """``(url, HTTP block)`` of pages stored the ways real crawlers store them."""
    page = b"<p><img src='img/%d.jpg' alt='Picture %d'></p>"
    deflate = zlib.compressobj(wbits=-15)
    return [
        ("http://q.test/gzip", _http(gzip.compress(page % (1, 1)), [("Content-Encoding", "gzip")])),
        ("http://q.test/zlib", _http(zlib.compress(page % (2, 2)), [("Content-Encoding", "deflate")])),
        ("http://q.test/raw-deflate", _http(deflate.compress(page % (3, 3)) + deflate.flush(),
                                            [("Content-Encoding", "deflate")])),
        ("http://q.test/decoded", _http(page % (4, 4), [("Content-Encoding", "gzip")])),       # ClueWeb09, CC 2014
        ("http://q.test/chunked-gzip", _http(_chunked(gzip.compress(page % (5, 5))),
                                             [("Transfer-Encoding", "chunked"), ("Content-Encoding", "gzip")])),
        ("http://q.test/dechunked", _http(page % (6, 6), [("Transfer-Encoding", "chunked")])),
        ("http://q.test/bogus", _http(page % (7, 7), [("Content-Encoding", "utf-8")])),
        ("http://q.test/lf", _http(page % (8, 8) + b"\r\n\r\n<img src=x.jpg alt='Later'>", [], eol=b"\n")),
        ("http://q.test/latin1", _http("<img src=l.jpg alt='Crème brûlée'>".encode("cp1252"), [])),
        ("http://q.test/utf8", _http("<img src=u.jpg alt='Crème brûlée ☕'>".encode(), [])),
        ("http://q.test/garbage", _http(bytes(range(1, 256)) + b"\x00" * 8, [("Content-Encoding", "gzip")])),
    ]


@pytest.mark.parametrize("version", ["0.18", "1.0", "1.1"])
@pytest.mark.parametrize("gzip_members", [False, True])
def test_quirky_archive_matches_reference(version: str, gzip_members: bool, tmp_path: Path) -> None:
    suffix = ".warc.gz" if gzip_members else ".warc"
    path = _archive_file(tmp_path / f"q{suffix}", [_record(version, u, b) for u, b in _quirks()], gzip_members)
    stats, stage = _crawl(path, tmp_path / "out")
    assert _triples(stage) == _triples(reference_pairs(path))
    assert len(_triples(stage)) == 11 and ("http://q.test/l.jpg", "Crème brûlée") in stage["http://q.test/latin1"]
    assert (stats.extra["encoding_mismatch"], stats.extra["encoding_unsupported"]) == (1, 1)
    assert stats.extra["corrupt_records"] == 1 and stats.extra["pages"] == 10  # the garbage "gzip" body


def test_undeclared_charset_is_utf8_when_valid_else_windows_1252() -> None:
    assert decode_html("Crème ☕".encode()) == "Crème ☕"
    assert decode_html("Crème ☕".encode()[:-1], cut=True) == "Crème "  # a sequence cut by the read limit
    cut = "Crème ☕".encode()[:-1]
    assert decode_html(cut) == cut.decode("cp1252")  # a whole page ending so is not UTF-8
    assert decode_html("Crème brûlée".encode("cp1252")) == "Crème brûlée"
    assert decode_html(b"\x80 \x81\x9d") == "€ \x81\x9d"  # undefined in windows-1252: C1 controls, as browsers
    assert decode_html(b"<meta charset=gb2312>\xa1\xa4") == "<meta charset=gb2312>·"  # read as GB18030
    assert decode_html(b"caf\xe9", "text/html; charset=no-such-charset") == "café"


def test_optional_decoders_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without brotli or zstandard a br/zstd body is read as stored: plain HTML keeps its images."""
    for name in ("brotli", "zstandard"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
    body_mod._optional_module.cache_clear()
    page = b"<img src=b.jpg alt='Stored decoded'>"
    blocks = [_record("1.0", f"http://o.test/{c}", _http(page, [("Content-Encoding", c)])) for c in ("br", "zstd")]
    try:
        stats, stage = _crawl(_archive_file(tmp_path / "o.warc", blocks, False), tmp_path / "out")
    finally:
        body_mod._optional_module.cache_clear()
    assert stats.extra["encoding_unsupported"] == 2 and stats.kept == 2 and stats.extra["corrupt_records"] == 0


@pytest.mark.parametrize("coding", ["br", "zstd"])
def test_optional_decoders(coding: str, tmp_path: Path) -> None:
    page = b"<img src=c.jpg alt='Compressed page'>"
    if coding == "br":
        body = pytest.importorskip("brotli").compress(page)
    else:
        body = pytest.importorskip("zstandard").ZstdCompressor().compress(page)
    blocks = [_record("1.0", "http://c.test/ok", _http(body, [("Content-Encoding", coding)])),
              _record("1.0", "http://c.test/plain", _http(page, [("Content-Encoding", coding)]))]
    stats, stage = _crawl(_archive_file(tmp_path / "c.warc", blocks, False), tmp_path / "out")
    assert stats.kept == 2 and stats.extra["encoding_mismatch"] == 1 and stats.extra["encoding_unsupported"] == 0

"""Image/alt-text extraction from one HTML page or one WAT record: pure functions, no I/O.

:func:`html_images` (selectolax) and :func:`wat_images` yield one :class:`ImageRef` per ``<img>``,
a candidate or the reason it is not one, so the crawl counts every image it saw. The URL, caption
and charset rules live here; :mod:`pipeline.crawl.columns` applies them to many WAT records at once.
"""
from __future__ import annotations

import codecs
import functools
import hashlib
import html as html_lib
import json
import re
import unicodedata
from typing import Any, Iterator, NamedTuple
from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser

#: ``<img>`` attributes holding the image, best first (lazy-loading attributes before the placeholder ``src``).
SRC_ATTRS = ("srcset", "data-srcset", "data-src", "data-lazy-src", "data-original", "src")
_SRCSET_ATTRS = {"srcset", "data-srcset"}
_CHARSET_HEAD_RE = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_CHARSET_CT_RE = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:\-]+)", re.I)
_DESCRIPTOR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([wx])\s*$", re.I)
_URL_STRIP_RE = re.compile(r"[\t\n\r]")
#: Python codecs of labels that browsers (the WHATWG encoding standard) decode with a superset
_WHATWG_CODECS = {"iso8859-1": "cp1252", "ascii": "cp1252", "iso8859-9": "cp1254", "iso8859-11": "cp874",
                  "tis-620": "cp874", "gb2312": "gb18030", "gbk": "gb18030", "euc_kr": "cp949",
                  "shift_jis": "cp932", "big5": "big5hkscs"}
_HTTP_URL_RE = re.compile(r"^(https?)://([^/?#\s]+)", re.I)
_ENTITY_RE = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")  # U+D800-U+DFFF, escaped or in UTF-8


class CorruptRecord(ValueError):
    """One archive record cannot be read (bad WAT JSON, binary HTML); it is counted and skipped."""


class ImageRef(NamedTuple):
    """One image seen on a page: a candidate pair, or the reason it is not one."""

    url: str = ""
    caption: str = ""
    caption_attr: str = ""
    drop: str | None = None


def make_uid(url: str, caption: str) -> str:
    """Stable 128-bit hex id of an (url, caption) pair."""
    return hashlib.blake2b(f"{url}\t{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def normalise_caption(text: str | None) -> str:
    """Unescape HTML character references left in the text (double-escaped alt text: ``&amp;amp;``),
    NFC-normalise and collapse every run of (Unicode) whitespace to one space."""
    if not text:
        return ""
    if "&" in text and _ENTITY_RE.search(text):
        text = html_lib.unescape(text)
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def resolve_url(raw: str | None, base: str) -> tuple[str, str | None]:
    """Make ``raw`` absolute against ``base``; return ``(url, None)`` or ``("", reason)``.

    Relative, root-relative (``/a.png``) and protocol-relative (``//host/a.png``) URLs resolve;
    ``data:``, ``javascript:`` and every other non-http(s) scheme is ``bad_scheme``; the fragment is dropped.
    """
    if raw and ("\t" in raw or "\n" in raw or "\r" in raw):
        raw = _URL_STRIP_RE.sub("", raw)
    raw = raw.strip() if raw else ""
    if not raw:
        return "", "no_src"
    if _HTTP_URL_RE.match(raw):
        return raw.partition("#")[0], None
    origin = url_origin(base)
    if origin and "/." not in raw and "./" not in raw:
        if raw[0] == "/" and raw[1:2] != "/":
            return origin + raw.partition("#")[0], None
        if raw[0] not in "/?#" and ":" not in raw.partition("/")[0]:  # "img/a.png": beside the page
            return base_dir(base) + raw.partition("#")[0], None
    try:
        url = _join(base, raw, origin).partition("#")[0]
    except ValueError:  # e.g. an invalid IPv6 host
        return "", "bad_url"
    if _HTTP_URL_RE.match(url):
        return url, None
    return "", ("bad_url" if url.lower().startswith(("http:", "https:")) else "bad_scheme")


def _join(base: str, raw: str, origin: str) -> str:
    """``urljoin(base, raw)`` with a fast path for protocol-relative ``//host/path``."""
    if origin and raw.startswith("//"):
        return origin[: origin.index(":")] + ":" + raw
    return urljoin(base, raw)


@functools.lru_cache(maxsize=64)
def base_dir(base: str) -> str:
    """The folder of an http(s) base URL (query and fragment dropped), with its trailing slash."""
    path_start = base.find("/", base.index("//") + 2)
    if path_start < 0:
        return base.partition("?")[0].partition("#")[0] + "/"
    url = base.partition("#")[0].partition("?")[0]
    return url[: url.rindex("/") + 1]


@functools.lru_cache(maxsize=64)
def url_origin(base: str) -> str:
    """``scheme://host`` of an http(s) base URL (scheme lower-cased), else ``""``."""
    match = _HTTP_URL_RE.match(base)
    return f"{match.group(1).lower()}://{match.group(2)}" if match else ""


def _split_srcset(srcset: str) -> Iterator[tuple[str, str]]:
    """Yield ``(url, descriptor)`` pairs of a srcset (commas inside URLs are kept, as in the HTML spec)."""
    pos, n = 0, len(srcset)
    while pos < n:
        while pos < n and (srcset[pos].isspace() or srcset[pos] == ","):
            pos += 1
        start = pos
        while pos < n and not srcset[pos].isspace():
            pos += 1
        url = srcset[start:pos]
        if url.endswith(","):
            yield url.rstrip(","), ""
            continue
        end = srcset.find(",", pos)
        end = n if end < 0 else end
        if url:
            yield url, srcset[pos:end]
        pos = end + 1


def best_srcset(srcset: str | None) -> str | None:
    """The srcset candidate with the largest width (``w``) or, failing that, density (``x``)."""
    best, best_key = None, (-1, -1.0)
    for url, descriptor in _split_srcset(srcset or ""):
        m = _DESCRIPTOR_RE.match(descriptor)
        unit, value = (m.group(2).lower(), float(m.group(1))) if m else ("x", 1.0)
        key = (1 if unit == "w" else 0, value)
        if key > best_key:
            best, best_key = url, key
    return best


def pick_url(values: list[tuple[str, str | None]], base: str) -> tuple[str, str | None]:
    """First http(s) URL among ``(attr, value)`` pairs in priority order, else the first drop reason."""
    reasons: list[str] = []
    for attr, value in values:
        raw = best_srcset(value) if attr in _SRCSET_ATTRS else value
        if not raw or not raw.strip():
            continue
        url, reason = resolve_url(raw, base)
        if reason is None:
            return url, None
        reasons.append(reason)
    return "", (reasons[0] if reasons else "no_src")


def make_ref(values: list[tuple[str, str | None]], alt: str | None, title: str | None,
             base: str, use_title: bool = True) -> ImageRef:
    """Turn one image's attributes into a candidate or a drop (``no_caption`` first, then the URL)."""
    caption, attr = normalise_caption(alt), "alt"
    if not caption and use_title:
        caption, attr = normalise_caption(title), "title"
    if not caption:
        return ImageRef(drop="no_caption")
    url, reason = pick_url(values, base)
    if reason:
        return ImageRef(drop=reason)
    return ImageRef(url=url, caption=caption, caption_attr=attr)


def detect_charset(body: bytes, content_type: str | None) -> str | None:
    """Charset from the HTTP ``Content-Type`` header, else from a ``<meta>`` in the first 4 KiB.

    As in the WHATWG encoding standard, labels decode with the codec browsers use (latin-1/ASCII as
    windows-1252, GB2312 as GB18030, Shift_JIS as windows-31J...) and a ``<meta>`` claiming UTF-16
    (impossible in an ASCII-compatible document) as UTF-8.
    """
    header = _CHARSET_CT_RE.search(content_type or "")
    meta = _CHARSET_HEAD_RE.search(body[:4096])
    for match, from_meta in ((header, False), (meta, True)):
        if match is None:
            continue
        name = match.group(1)
        try:
            codec = codecs.lookup(name.decode("ascii", "replace") if isinstance(name, bytes) else name).name
        except LookupError:
            continue
        if from_meta and codec.startswith("utf-16"):
            return "utf-8"
        return _WHATWG_CODECS.get(codec, codec)
    return None


def decode_html(body: bytes, content_type: str | None = None, cut: bool = False) -> str:
    """Decode an HTML body as a browser does: BOM, else the header or ``<meta>`` charset (bad bytes replaced),
    else UTF-8 when the page is valid UTF-8, else windows-1252. ``cut``: the body is the start of a longer page.

    Raises :class:`CorruptRecord` for binary content (NUL characters after decoding).
    """
    text = _decoded(body, content_type, cut)
    if "\x00" in text[:4096]:
        raise CorruptRecord("binary content in an HTML record")
    return text


def _decoded(body: bytes, content_type: str | None, cut: bool) -> str:
    """The text of an HTML body (see :func:`decode_html`)."""
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8):].decode("utf-8", errors="replace")
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return body.decode("utf-16", errors="replace")
    charset = detect_charset(body, content_type)
    if charset is None:
        return decode_undeclared(body, cut)
    return body.decode(charset, errors=_WINDOWS_1252_ERRORS if charset == "cp1252" else "replace")


def decode_undeclared(body: bytes, cut: bool = False) -> str:
    """A page without a charset: UTF-8 when it is valid UTF-8 (when ``cut``, a sequence cut at the end counts
    as valid), else windows-1252, what browsers fall back to (not UTF-8 with replacement characters)."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(body, final=not cut)
    except UnicodeDecodeError:
        return body.decode("cp1252", errors=_WINDOWS_1252_ERRORS)


def _c1_controls(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: the 5 bytes windows-1252 leaves undefined decode to the C1 controls, as in browsers."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start:exc.end].decode("latin-1"), exc.end


_WINDOWS_1252_ERRORS = "wit-windows-1252"
codecs.register_error(_WINDOWS_1252_ERRORS, _c1_controls)


def html_images(html: str, page_url: str, use_title: bool = True) -> Iterator[ImageRef]:
    """Yield one :class:`ImageRef` per ``<img>`` of a page, URLs resolved against ``<base href>``."""
    tree = LexborHTMLParser(html)
    base = page_url
    base_node = tree.css_first("base[href]")
    if base_node is not None:
        resolved, reason = resolve_url(base_node.attributes.get("href"), page_url)
        base = resolved if reason is None else page_url
    for node in tree.css("img"):
        attrs = node.attributes
        values = [(a, attrs.get(a)) for a in SRC_ATTRS if attrs.get(a)]
        yield make_ref(values, attrs.get("alt"), attrs.get("title"), base, use_title)


def _dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...`` or None when a level is missing or not a mapping."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def parse_wat(payload: bytes) -> dict[str, Any]:
    """The JSON object of a WAT record (lone surrogates replaced); :class:`CorruptRecord` when it is not one."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptRecord(f"invalid WAT JSON ({exc})") from None
    except RecursionError:  # thousands of nested arrays: a broken record, not a broken crawl
        raise CorruptRecord("WAT JSON nested too deeply") from None
    if _SURROGATE.search(payload) or not json.detect_encoding(payload).startswith("utf-8"):
        # json lets lone surrogates through (escaped, UTF-8-encoded, in UTF-16/32): not writable as UTF-8
        doc = json.loads(json.dumps(doc, ensure_ascii=False).encode("utf-8", "replace"))
    if not isinstance(doc, dict):
        raise CorruptRecord("WAT payload is not a JSON object")
    return doc


def wat_images(doc: dict[str, Any], fallback_url: str = "",
               use_title: bool = True) -> tuple[str, list[ImageRef] | None]:
    """``(page_url, refs)`` of a parsed WAT record; refs is None when it holds no HTML metadata."""
    envelope = doc.get("Envelope")
    page_url = _str(_dig(envelope, "WARC-Header-Metadata", "WARC-Target-URI")) or fallback_url
    html_meta = _dig(envelope, "Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata")
    if not isinstance(html_meta, dict):
        return page_url, None
    links = html_meta.get("Links") or []
    if not isinstance(links, list):
        raise CorruptRecord("WAT 'Links' is not a list")
    base, reason = resolve_url(_str(_dig(html_meta, "Head", "Base")), page_url)
    base = base if reason is None else page_url
    refs = [_wat_ref(link, base, use_title) for link in links
            if type(link) is dict and ((path := link.get("path")) == "IMG@/src" or
                                       (type(path) is str and path[:1] in ("I", "i") and is_img_path(path)))]
    return page_url, refs


def _wat_ref(link: dict[str, Any], base: str, use_title: bool) -> ImageRef:
    """:func:`make_ref` of one WAT ``IMG@/src`` link (values that are not strings count as missing)."""
    alt, title, src = link.get("alt"), link.get("title"), link.get("url")
    caption, attr = normalise_caption(alt if type(alt) is str else None), "alt"
    if not caption and use_title:
        caption, attr = normalise_caption(title if type(title) is str else None), "title"
    if not caption:
        return ImageRef(drop="no_caption")
    url, reason = resolve_url(src if type(src) is str else None, base)
    if reason:
        return ImageRef(drop=reason)
    return ImageRef(url, caption, attr)


def _str(value: Any) -> str | None:
    """``value`` when it is a string, else None (WAT JSON is not trusted to hold strings)."""
    return value if isinstance(value, str) else None


def is_img_path(path: Any) -> bool:
    """True for WAT link paths of ``<img src>`` written otherwise than ``IMG@/src`` (case, prefixes)."""
    return isinstance(path, str) and path[:4].upper() == "IMG@" and path[-4:].lower() == "/src"

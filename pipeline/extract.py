"""Image/alt-text extraction from one HTML page or one Common Crawl WAT record.

Pure functions, no I/O: :func:`html_images` parses a decoded HTML page with selectolax (lexbor),
:func:`wat_images` reads the JSON payload of a WAT ``metadata`` record. Both yield one
:class:`ImageRef` per ``<img>`` seen, either a candidate (``drop is None``) or a drop reason,
so the crawl can count every image it saw.
"""
from __future__ import annotations

import codecs
import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser

#: ``<img>`` attributes holding the image, best first (lazy-loading attributes before the placeholder ``src``).
SRC_ATTRS = ("srcset", "data-srcset", "data-src", "data-lazy-src", "data-original", "src")
_SRCSET_ATTRS = {"srcset", "data-srcset"}
_CHARSET_HEAD_RE = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.I)
_CHARSET_CT_RE = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:\-]+)", re.I)
_DESCRIPTOR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([wx])\s*$", re.I)
_URL_STRIP_RE = re.compile(r"[\t\n\r]")
_WINDOWS_1252_ALIASES = {"iso8859-1": "cp1252", "ascii": "cp1252"}
_HTTP_URL_RE = re.compile(r"^(https?)://([^/?#\s]+)", re.I)


class CorruptRecord(ValueError):
    """One archive record cannot be read (bad WAT JSON, binary HTML); it is counted and skipped."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """One image seen on a page: a candidate pair, or the reason it is not one."""

    url: str = ""
    caption: str = ""
    caption_attr: str = ""
    drop: str | None = None


def make_uid(url: str, caption: str) -> str:
    """Stable 128-bit hex id of an (url, caption) pair."""
    return hashlib.blake2b(f"{url}\t{caption}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def normalise_caption(text: str | None) -> str:
    """NFC-normalise and collapse every run of (Unicode) whitespace to one space."""
    if not text:
        return ""
    return " ".join(unicodedata.normalize("NFC", text).split())


def resolve_url(raw: str | None, base: str) -> tuple[str, str | None]:
    """Make ``raw`` absolute against ``base``; return ``(url, None)`` or ``("", reason)``.

    Relative, root-relative (``/a.png``) and protocol-relative (``//host/a.png``) URLs resolve;
    ``data:``, ``javascript:`` and every other non-http(s) scheme is ``bad_scheme``; the fragment is dropped.
    """
    raw = _URL_STRIP_RE.sub("", raw or "").strip()
    if not raw:
        return "", "no_src"
    try:
        url = _join(base, raw).partition("#")[0]
    except ValueError:  # e.g. an invalid IPv6 host
        return "", "bad_url"
    if _HTTP_URL_RE.match(url):
        return url, None
    return "", ("bad_url" if url.lower().startswith(("http:", "https:")) else "bad_scheme")


def _join(base: str, raw: str) -> str:
    """``urljoin(base, raw)`` with fast paths for the common absolute, ``//`` and ``/`` forms."""
    if _HTTP_URL_RE.match(raw):
        return raw
    origin = _origin(base)
    if origin and raw.startswith("//"):
        return origin[: origin.index(":")] + ":" + raw
    if origin and raw.startswith("/") and "/." not in raw:
        return origin + raw
    return urljoin(base, raw)


@functools.lru_cache(maxsize=64)
def _origin(base: str) -> str:
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

    As in the WHATWG encoding standard, latin-1/ASCII labels decode as windows-1252 and a ``<meta>``
    claiming UTF-16 (impossible in an ASCII-compatible document) as UTF-8.
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
        return _WINDOWS_1252_ALIASES.get(codec, codec)
    return None


def decode_html(body: bytes, content_type: str | None = None) -> str:
    """Decode an HTML body (BOM, header or meta charset, else UTF-8) with replacement of bad bytes.

    Raises :class:`CorruptRecord` for binary content (NUL characters after decoding).
    """
    if body.startswith(codecs.BOM_UTF8):
        charset, body = "utf-8", body[len(codecs.BOM_UTF8):]
    elif body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        charset = "utf-16"
    else:
        charset = detect_charset(body, content_type) or "utf-8"
    text = body.decode(charset, errors="replace")
    if "\x00" in text[:4096]:
        raise CorruptRecord("binary content in an HTML record")
    return text


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
    """The JSON object of a WAT record; :class:`CorruptRecord` when it is not one."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CorruptRecord(f"invalid WAT JSON ({exc})") from None
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
    refs = [make_ref([("src", _str(link.get("url")))], _str(link.get("alt")), _str(link.get("title")),
                     base, use_title)
            for link in links if isinstance(link, dict) and _is_img_link(link)]
    return page_url, refs


def _str(value: Any) -> str | None:
    """``value`` when it is a string, else None (WAT JSON is not trusted to hold strings)."""
    return value if isinstance(value, str) else None


def _is_img_link(link: dict[str, Any]) -> bool:
    """True for WAT link entries of ``<img src>`` (path ``IMG@/src``)."""
    path = link.get("path")
    return isinstance(path, str) and path.upper().startswith("IMG@") and path.lower().endswith("/src")

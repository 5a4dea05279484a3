"""Image/alt-text extraction from one HTML page or Common Crawl WAT records.

Pure functions, no I/O: :func:`html_images` parses a decoded HTML page with selectolax (lexbor),
:func:`wat_images` reads the JSON payload of a WAT ``metadata`` record. Both yield one
:class:`ImageRef` per ``<img>`` seen, either a candidate (``drop is None``) or a drop reason,
so the crawl can count every image it saw. :func:`wat_columns` does what :func:`wat_images` does for
many WAT records at once, as columns: records decoded by msgspec (:func:`decode_wat`, only the fields
used), URLs and captions resolved with NumPy tests on the Arrow buffers and Arrow compute, Python only
for the rare rows off the fast path; that is most of the crawl's speed on WAT files. Without msgspec,
:func:`wat_batch` reads the records with Arrow's JSON reader instead.
"""
from __future__ import annotations

import codecs
import dataclasses
import functools
import hashlib
import html as html_lib
import json
import re
import unicodedata
from collections import Counter
from typing import Any, Iterator, NamedTuple
from urllib.parse import urljoin

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from selectolax.lexbor import LexborHTMLParser

try:  # orjson parses WAT JSON about 3x faster than the standard library; optional
    import orjson

    _json_loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

try:  # msgspec decodes the few WAT fields the crawl reads ~2x faster than Arrow's JSON reader; optional
    import msgspec
except ImportError:  # pragma: no cover - depends on the environment
    msgspec = None

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
    origin = _origin(base)
    if origin and "/." not in raw and "./" not in raw:
        if raw[0] == "/" and raw[1:2] != "/":
            return origin + raw.partition("#")[0], None
        if raw[0] not in "/?#" and ":" not in raw.partition("/")[0]:  # "img/a.png": beside the page
            return _base_dir(base) + raw.partition("#")[0], None
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
def _base_dir(base: str) -> str:
    """The folder of an http(s) base URL (query and fragment dropped), with its trailing slash."""
    path_start = base.find("/", base.index("//") + 2)
    if path_start < 0:
        return base.partition("?")[0].partition("#")[0] + "/"
    url = base.partition("#")[0].partition("?")[0]
    return url[: url.rindex("/") + 1]


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
    """The JSON object of a WAT record; :class:`CorruptRecord` when it is not one."""
    try:
        doc = _json_loads(payload)
    except ValueError:  # orjson is stricter (lone surrogate escapes): the standard library decides
        try:
            doc = json.loads(payload)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise CorruptRecord(f"invalid WAT JSON ({exc})") from None
        except RecursionError:  # thousands of nested arrays: a broken record, not a broken crawl
            raise CorruptRecord("WAT JSON nested too deeply") from None
        # lone surrogates cannot be written as UTF-8: replace them
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
                                       (type(path) is str and path[:1] in ("I", "i") and _is_img_path(path)))]
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


def _is_img_path(path: Any) -> bool:
    """True for WAT link paths of ``<img src>`` written otherwise than ``IMG@/src`` (case, prefixes)."""
    return isinstance(path, str) and path[:4].upper() == "IMG@" and path[-4:].lower() == "/src"


# ---------------------------------------------------------------- many WAT records at once, as columns

_WAT_LINK = pa.struct([("path", pa.string()), ("url", pa.string()), ("alt", pa.string()), ("title", pa.string())])
#: The few fields of a WAT record the crawl reads; Arrow's JSON reader skips the rest without building objects.
WAT_SCHEMA = pa.schema([("Envelope", pa.struct([
    ("WARC-Header-Metadata", pa.struct([("WARC-Target-URI", pa.string())])),
    ("Payload-Metadata", pa.struct([("HTTP-Response-Metadata", pa.struct([("HTML-Metadata", pa.struct([
        ("Head", pa.struct([("Base", pa.string())])), ("Links", pa.list_(_WAT_LINK))]))]))]))]))])
_PY_SPACE = r"[\t\n\x0b\x0c\r\x1c-\x1f ]+"  # what str.split() splits ASCII text on


@dataclasses.dataclass
class ImageColumns:
    """The images of several pages as columns: ``url``/``caption``/``caption_attr`` of the candidates
    (``page`` indexes the page list), and the drop reason of the others."""

    page: np.ndarray
    url: pa.Array
    caption: pa.Array
    caption_attr: pa.Array
    drops: Counter
    images: int


def wat_batch(payloads: list[bytes], fallback_urls: list[str],
              use_title: bool = True) -> tuple[list[str], np.ndarray, ImageColumns] | None:
    """``(page_urls, has_html, images)`` of many WAT records, parsed at once by Arrow's JSON reader.

    Gives what :func:`wat_images` gives record by record (``has_html`` False where it returns None),
    or None when a record does not fit the columnar path (invalid JSON, unexpected types, lone
    surrogate escapes, which Arrow rejects): the caller then reads the records one by one, so each
    broken record is counted.
    """
    table = _read_wat_json(payloads)
    if table is None:
        return None
    env = table.column("Envelope").combine_chunks()
    targets = pc.struct_field(env, ["WARC-Header-Metadata", "WARC-Target-URI"]).to_pylist()
    page_urls = [t or fb for t, fb in zip(targets, fallback_urls)]
    meta = pc.struct_field(env, ["Payload-Metadata", "HTTP-Response-Metadata", "HTML-Metadata"])
    has_html = np.asarray(meta.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    heads = pc.struct_field(meta, ["Head", "Base"]).to_pylist()
    bases = [_page_base(head, url) for head, url in zip(heads, page_urls)]
    links = pc.struct_field(meta, ["Links"])
    flat, parent = pc.list_flatten(links), pc.list_parent_indices(links)
    paths = pc.fill_null(pc.struct_field(flat, "path"), "")
    is_img = pc.or_(pc.equal(paths, "IMG@/src"), pc.and_(pc.starts_with(pc.ascii_upper(paths), "IMG@"),
                                                          pc.ends_with(pc.ascii_lower(paths), "/src")))
    imgs, page = flat.filter(is_img), parent.filter(is_img).to_numpy(zero_copy_only=False)
    fields = [pc.struct_field(imgs, f) for f in ("url", "alt", "title")]
    return page_urls, has_html, image_columns(page, bases, *fields, use_title=use_title)


def _read_wat_json(payloads: list[bytes]) -> pa.Table | None:
    """The WAT fields of ``payloads`` (one row each), or None when any of them does not parse."""
    if any(not p or p.isspace() for p in payloads):
        return None
    data = b"\n".join([p.replace(b"\n", b" ") if b"\n" in p else p for p in payloads])
    try:
        table = pa_json.read_json(pa.py_buffer(data), read_options=pa_json.ReadOptions(use_threads=False,
                                                                                       block_size=len(data) + 1),
                                  parse_options=pa_json.ParseOptions(explicit_schema=WAT_SCHEMA,
                                                                     unexpected_field_behavior="ignore"))
        table.validate(full=True)  # the reader lets invalid UTF-8 through
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError):
        return None
    return table if table.num_rows == len(payloads) else None


# ---------------------------------------------------------------- many WAT records decoded by msgspec

if msgspec is not None:
    # Only the fields the crawl reads: msgspec validates the whole record but skips the rest without building
    # objects. Not tracked by the garbage collector (they hold no cycles): the ~150 links of a page would
    # otherwise set off collections that cost as much as the decoding.
    class _Link(msgspec.Struct, gc=False):
        path: str | None = None
        url: str | None = None
        alt: str | None = None
        title: str | None = None

    class _Head(msgspec.Struct, gc=False):
        base: str | None = msgspec.field(default=None, name="Base")

    class _HtmlMeta(msgspec.Struct, gc=False):
        head: _Head | None = msgspec.field(default=None, name="Head")
        links: list[_Link] | None = msgspec.field(default=None, name="Links")

    class _Response(msgspec.Struct, gc=False):
        html: _HtmlMeta | None = msgspec.field(default=None, name="HTML-Metadata")

    class _PayloadMeta(msgspec.Struct, gc=False):
        response: _Response | None = msgspec.field(default=None, name="HTTP-Response-Metadata")

    class _WarcHeader(msgspec.Struct, gc=False):
        target: str | None = msgspec.field(default=None, name="WARC-Target-URI")

    class _Envelope(msgspec.Struct, gc=False):
        header: _WarcHeader | None = msgspec.field(default=None, name="WARC-Header-Metadata")
        payload: _PayloadMeta | None = msgspec.field(default=None, name="Payload-Metadata")

    class WatDoc(msgspec.Struct, gc=False):
        """The fields of a WAT record the crawl reads."""

        envelope: _Envelope | None = msgspec.field(default=None, name="Envelope")

    _WAT_DECODER: Any = msgspec.json.Decoder(WatDoc)
else:  # pragma: no cover - depends on the environment
    _WAT_DECODER = None
#: True when :func:`decode_wat` can decode (msgspec installed); else the crawl uses :func:`wat_batch`.
WAT_DECODER_AVAILABLE = _WAT_DECODER is not None


def decode_wat(payload: bytes) -> Any:
    """The fields the crawl reads of one WAT record (a ``WatDoc``), decoded by msgspec; None without msgspec,
    or when the record is not plain JSON of the expected types (invalid JSON, lone surrogate escapes, a number
    where a string belongs, NaN...): :func:`parse_wat` and :func:`wat_images` then decide, as for any record.

    Where it decodes, :func:`wat_columns` gives what :func:`wat_images` gives (the standard library accepts
    everything msgspec does, with the same values), except that invalid UTF-8 in a field the crawl does not
    read is let through, as Arrow's JSON reader does.
    """
    if _WAT_DECODER is None:
        return None
    try:
        return _WAT_DECODER.decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError):  # ValidationError is a DecodeError
        return None


def wat_columns(docs: list[Any], fallback_urls: list[str],
                use_title: bool = True) -> tuple[list[str], np.ndarray, ImageColumns]:
    """:func:`wat_batch` of records decoded by :func:`decode_wat`: ``(page_urls, has_html, images)``."""
    page_urls, bases, has_html = [], [], np.zeros(len(docs), dtype=bool)
    page: list[int] = []
    links: list[Any] = []
    for i, (doc, fallback) in enumerate(zip(docs, fallback_urls)):
        page_url, meta = _doc_meta(doc, fallback)
        page_urls.append(page_url)
        if meta is None:
            bases.append(page_url)
            continue
        has_html[i] = True
        bases.append(_page_base(meta.head.base if meta.head is not None else None, page_url))
        # "A@/href" first: most links are <a href>, and every test below costs
        imgs = [link for link in meta.links or () if (path := link.path) == "IMG@/src" or
                (path != "A@/href" and path is not None and path[:1] in ("I", "i") and _is_img_path(path))]
        page.extend([i] * len(imgs))
        links.extend(imgs)
    src, alt, title = ([link.url for link in links], [link.alt for link in links], [link.title for link in links])
    return page_urls, has_html, image_columns(np.array(page, dtype=np.int64), bases, pa.array(src, pa.string()),
                                              pa.array(alt, pa.string()), pa.array(title, pa.string()), use_title)


def _doc_meta(doc: Any, fallback_url: str) -> tuple[str, Any]:
    """``(page_url, HTML metadata or None)`` of a ``WatDoc``, as :func:`wat_images` reads them."""
    env = doc.envelope
    if env is None:
        return fallback_url, None
    page_url = (env.header.target if env.header is not None else None) or fallback_url
    response = env.payload.response if env.payload is not None else None
    return page_url, (response.html if response is not None else None)


def _page_base(base: str | None, page_url: str) -> str:
    """The page's ``<base href>`` made absolute, or the page URL itself."""
    resolved, reason = resolve_url(base, page_url)
    return resolved if reason is None else page_url


def image_columns(page: np.ndarray, bases: list[str], src: pa.Array, alt: pa.Array, title: pa.Array,
                  use_title: bool = True) -> ImageColumns:
    """:func:`make_ref` over columns: captions from alt (else title), URLs resolved against each page's base."""
    alt_n = normalise_captions(alt)
    no_alt = pc.equal(alt_n, "")
    caption = pc.if_else(no_alt, normalise_captions(title), alt_n) if use_title else alt_n
    has_caption = np.asarray(pc.not_equal(caption, "").to_numpy(zero_copy_only=False), dtype=bool)
    urls, failed = resolve_urls(src, page, bases)
    keep = has_caption.copy()
    drops = Counter({"no_caption": int(len(page) - has_caption.sum())})
    for row, reason in failed.items():
        if keep[row]:
            keep[row] = False
            drops[reason] += 1
    mask = pa.array(keep)
    attr = pc.if_else(no_alt.filter(mask), "title", "alt")
    return ImageColumns(page[keep], urls.filter(mask), caption.filter(mask), attr,
                        Counter({k: n for k, n in sorted(drops.items()) if n}), len(page))


def _string_bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a string array without nulls as NumPy arrays: row i is ``data[offsets[i]:offsets[i+1]]``
    and ``data`` holds nothing else (a sliced array's buffers hold more)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if not len(arr):
        return np.zeros(1, dtype=np.int32), np.zeros(0, dtype=np.uint8)
    _, offsets, data = arr.buffers()
    offsets_np = np.frombuffer(offsets, dtype=np.int32)[arr.offset:arr.offset + len(arr) + 1]
    start, end = int(offsets_np[0]), int(offsets_np[-1])
    data_np = np.frombuffer(data, dtype=np.uint8)[start:end] if end > start else np.zeros(0, dtype=np.uint8)
    return offsets_np - start, data_np


def _rows_with(offsets: np.ndarray, hits: np.ndarray) -> np.ndarray:
    """Rows holding at least one byte flagged in ``hits`` (a bool per byte of the data buffer; flags are rare)."""
    rows = np.zeros(len(offsets) - 1, dtype=bool)
    rows[np.searchsorted(offsets, np.flatnonzero(hits), side="right") - 1] = True
    return rows


def _is_any(values: np.ndarray, codes: bytes) -> np.ndarray:
    """``values`` (bytes) equal to one of ``codes``."""
    hit = values == codes[0]
    for code in codes[1:]:
        hit |= values == code
    return hit


_NOT_HOST_START = b"/?#\x0b\x0c "  # what may not follow "http://" or "//" in a URL resolved by Arrow
_LOWER = np.uint64(0x2020202020202020)  # lower-cases ASCII letters (and maps only controls onto ':' and '/')
_HTTPS = np.frombuffer(b"https://", np.uint64)[0]
_HTTP = np.frombuffer(b"http://\x00", np.uint64)[0]
_FIRST_7 = np.frombuffer(b"\xff" * 7 + b"\x00", np.uint64)[0]


def normalise_captions(texts: pa.Array) -> pa.Array:
    """:func:`normalise_caption` over a column: vectorised for plain ASCII, in Python for the rest."""
    texts = pc.fill_null(texts, "")
    offsets, data = _string_bytes(texts)
    # controls (a superset of the spaces str.split() splits on) and double spaces: the regex below is
    # what normalise_caption does to any ASCII text, so flagging more rows than needed only costs time
    hits = data < 32
    hits[:-1] |= (data[:-1] == 32) & (data[1:] == 32)
    spaced = _rows_with(offsets, hits) | _edge_byte(offsets, data, 32)
    out = _replace_where(texts, spaced, lambda t: pc.utf8_trim(pc.replace_substring_regex(t, _PY_SPACE, " "), " "))
    hard = _rows_with(offsets, (data >= 0x80) | (data == ord("&")))
    return _replace_where(out, hard, lambda t: pa.array([normalise_caption(x) for x in t.to_pylist()], pa.string()),
                          source=texts)


def _edge_byte(offsets: np.ndarray, data: np.ndarray, byte: int) -> np.ndarray:
    """Rows that start or end with ``byte``."""
    filled = offsets[1:] > offsets[:-1]
    padded = np.concatenate((data, np.zeros(1, np.uint8)))
    return filled & ((padded[offsets[:-1]] == byte) | (padded[offsets[1:] - 1] == byte))


def _replace_where(values: pa.Array, mask: np.ndarray, fix: Any, source: pa.Array | None = None) -> pa.Array:
    """``values`` with the rows under ``mask`` replaced by ``fix(rows of source)`` (source defaults to values)."""
    rows = np.flatnonzero(mask)
    if not len(rows):
        return values
    fixed = fix((values if source is None else source).take(pa.array(rows, pa.int64())))
    return pc.replace_with_mask(values, pa.array(mask), fixed)


def resolve_urls(raw: pa.Array, page: np.ndarray, bases: list[str]) -> tuple[pa.Array, dict[int, str]]:
    """:func:`resolve_url` over a column (``bases[page[i]]`` is row i's base): the URLs, and the drop reason of
    each row that does not resolve. Absolute, root-relative, protocol-relative and plain relative ASCII URLs
    are built with Arrow; the rest (other schemes, dot segments, queries, fragments, controls, non-ASCII)
    go through Python."""
    raw = pc.fill_null(raw, "")
    clean = pc.utf8_trim(raw, " ")
    kind = _url_kinds(raw, clean)
    info = [(_origin(b), _base_dir(b) if _origin(b) else "") for b in bases]
    has_origin = np.array([bool(o) for o, _ in info], dtype=bool)
    fast = (kind >= 0) & has_origin[page]
    # prefix of each row: "" for absolute URLs, else its page's scheme, origin or folder (kinds 1, 2, 3)
    prefixes = pa.array([""] + [part for o, d in info for part in (o.partition(":")[0] + ":", o, d)], pa.string())
    index = np.where(kind > 0, 3 * page.astype(np.int64) + kind, 0)
    url = pc.binary_join_element_wise(prefixes.take(pa.array(index, pa.int64())), clean, "")
    slow = np.flatnonzero(~fast)
    failed: dict[int, str] = {}
    if len(slow):
        done = [resolve_url(r, bases[p]) for r, p in zip(raw.take(pa.array(slow)).to_pylist(), page[slow])]
        failed = {int(row): reason for row, (_, reason) in zip(slow, done) if reason}
        url = pc.replace_with_mask(url, pa.array(~fast), pa.array([u for u, _ in done], pa.string()))
    return url, failed


def _url_kinds(raw: pa.Array, clean: pa.Array) -> np.ndarray:
    """Per URL: 0 absolute http(s), 1 protocol-relative, 2 root-relative, 3 relative (beside the page), or -1
    when Python must resolve it (empty, not ASCII, controls, ``#``, dot segments, other schemes, odd hosts)."""
    offsets, data = _string_bytes(raw)
    hits = (data < 0x20) | (data >= 0x7f) | (data == ord("#"))
    hits[:-1] |= ((data[:-1] == 47) & (data[1:] == 46)) | ((data[:-1] == 46) & (data[1:] == 47))  # "/." or "./"
    odd = _rows_with(offsets, hits)  # a dot segment across two rows only sends a row to Python
    offsets, data = _string_bytes(clean)
    length = offsets[1:] - offsets[:-1]
    padded = np.concatenate((data, np.zeros(9, np.uint8)))
    first8 = padded[offsets[:-1, None] + np.arange(8)].view(np.uint64)[:, 0] | _LOWER
    http = ((first8 & _FIRST_7) == _HTTP) & (length > 7) & ~_is_any(padded[offsets[:-1] + 7], _NOT_HOST_START)
    https = (first8 == _HTTPS) & (length > 8) & ~_is_any(padded[offsets[:-1] + 8], _NOT_HOST_START)
    c0, c1 = padded[offsets[:-1]], padded[offsets[:-1] + 1]
    protocol = (c0 == 47) & (c1 == 47) & (length > 2) & ~_is_any(padded[offsets[:-1] + 2], _NOT_HOST_START)
    root = (c0 == 47) & (c1 != 47) & (length > 1)
    relative = ~_is_any(c0, b"/?#") & ~_scheme_like(offsets, data, clean) & (length > 0)
    kind = np.select([http | https, protocol, root, relative], [0, 1, 2, 3], -1)
    return np.where(odd, -1, kind)


def _scheme_like(offsets: np.ndarray, data: np.ndarray, clean: pa.Array) -> np.ndarray:
    """Rows with a ``:`` before their first ``/`` (a scheme, as in ``mailto:x`` or ``a:b.png``)."""
    colons = np.flatnonzero(data == ord(":"))
    rows = np.searchsorted(offsets, colons, side="right") - 1
    rows, first = np.unique(rows, return_index=True)  # the first colon of each row holding one
    slash = pc.find_substring(clean.take(pa.array(rows, pa.int64())), "/").to_numpy(zero_copy_only=False)
    out = np.zeros(len(offsets) - 1, dtype=bool)
    out[rows] = (slash < 0) | (colons[first] - offsets[rows] < slash)
    return out

"""Many WAT records at once, as Arrow columns: what :mod:`pipeline.crawl.extract` gives record by record.

Records are decoded by msgspec (:func:`decode_wat`, only the fields used); URLs and captions are resolved
with NumPy tests on the Arrow buffers and Arrow compute, Python only for the rare rows off the fast path.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.crawl.extract import base_dir, is_img_path, normalise_caption, resolve_url, url_origin

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


_WAT_DECODER = msgspec.json.Decoder(WatDoc)


def decode_wat(payload: bytes) -> WatDoc | None:
    """The fields the crawl reads of one WAT record, decoded by msgspec; None when the record is not plain JSON
    of the expected types (invalid JSON, lone surrogate escapes, a number where a string belongs, NaN...):
    :func:`~pipeline.crawl.extract.parse_wat` and :func:`~pipeline.crawl.extract.wat_images` then decide.

    Where it decodes, :func:`wat_columns` gives what ``wat_images`` gives (the standard library accepts
    everything msgspec does, with the same values), except that invalid UTF-8 in a field the crawl does not
    read is let through.
    """
    try:
        return _WAT_DECODER.decode(payload)
    except (msgspec.DecodeError, ValueError, RecursionError):  # ValidationError is a DecodeError
        return None


def wat_columns(docs: list[Any], fallback_urls: list[str],
                use_title: bool = True) -> tuple[list[str], np.ndarray, ImageColumns]:
    """``(page_urls, has_html, images)`` of records decoded by :func:`decode_wat`: what ``wat_images`` gives
    record by record (``has_html`` False where it returns None), as columns."""
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
                (path != "A@/href" and path is not None and path[:1] in ("I", "i") and is_img_path(path))]
        page.extend([i] * len(imgs))
        links.extend(imgs)
    src, alt, title = ([link.url for link in links], [link.alt for link in links], [link.title for link in links])
    return page_urls, has_html, image_columns(np.array(page, dtype=np.int64), bases, pa.array(src, pa.string()),
                                              pa.array(alt, pa.string()), pa.array(title, pa.string()), use_title)


def _doc_meta(doc: Any, fallback_url: str) -> tuple[str, Any]:
    """``(page_url, HTML metadata or None)`` of a ``WatDoc``, as ``wat_images`` reads them."""
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
    """``make_ref`` over columns: captions from alt (else title), URLs resolved against each page's base."""
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
    info = [(url_origin(b), base_dir(b) if url_origin(b) else "") for b in bases]
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

"""The generated "mini-web": a small, reproducible stand-in for the web that tests and the demo crawl.

Entry point: ``generate_miniweb(root, base_url, n_pairs, seed)`` writes ``root/web/`` (served by
``serve_miniweb``), WARC/WAT archives, an ImageFolder eval set and ``root/manifest.json`` (the ground truth).
Layout, manifest fields and kinds: docs/miniweb.md."""
from __future__ import annotations

import argparse
import hashlib
import html
import io
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import imagehash
import numpy as np
from PIL import Image
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from dedup.match import QueryHashes, RobustIndex, dct_words
from dedup.phash import VARIANTS, eval_variants, hash_columns, hash_view
from pipeline.core.errors import WitError
from pipeline.core.io import atomic_dir, atomic_path, read_json, write_json
from pipeline.miniweb.render import (EVAL_CLASSES, FOREIGN_LANGS, NEAR_DUP_EDITS, Scene, class_name,
                                     corrupt_body, english_caption, filename_caption, foreign_caption,
                                     html_body, jpeg_bytes, near_duplicate, render_scene, sample_objects,
                                     sample_scene)
from pipeline.miniweb.server import SLOW_PREFIX, MiniWebServer, serve_forever, serve_miniweb, start_server

__all__ = ["MiniWeb", "generate_miniweb", "serve_miniweb", "serve_forever", "start_server", "MiniWebServer",
           "KIND_SHARES", "KINDS", "kind_counts"]

KIND_SHARES: dict[str, float] = {
    "filename_caption": 0.08, "non_english": 0.08, "duplicate": 0.03, "dead": 0.03,
    "slow": 0.02, "corrupt": 0.02, "html": 0.02, "eval_near_duplicate": 0.04,
}
KINDS = ("good", *KIND_SHARES)
WEB_EVAL_MIN_DISTANCE = 16  # phash bits between any web image (or its mirror image) and any eval image
WEB_EVAL_MIN_DISTANCE_CROPPED = 13  # the same for its centre square crop (img2dataset center_crop)
EVAL_MIN_DISTANCE = 12  # phash bits between two eval images
NEAR_DUP_MAX_DISTANCE = 6  # phash bits between a planted near-duplicate and its eval source
# No web image may be a candidate of the robust detector (dedup.match: crop, rotation and trim variants of
# every eval image) within these margins above its defaults (pHash radius 8, DCT verification 64 bits).
GUARD_DISTANCE, GUARD_DCT_DISTANCE = 10, 80
EVAL_SIZE = (160, 256)  # eval images are square, so a resized near-duplicate stays >= 96 px
WARC_NAME, WAT_NAME = "pages.warc.gz", "pages.wat.gz"
CRAWL_DATE = datetime(2024, 5, 18, 12, 0, 0, tzinfo=timezone.utc)
_IMAGE_DIRS = ("img", "images/uploads", "media/2021/05", "static/photos")
_SRC_STYLES = ("absolute", "root_relative", "relative", "protocol_relative")
_DECOYS = ("no_alt", "empty_alt", "data_uri", "javascript")
_SPACER_GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


@dataclass
class MiniWeb:
    """What :func:`generate_miniweb` wrote (paths) and how much of each kind."""

    root: Path
    base_url: str
    n_pairs: int
    seed: int
    counts: dict[str, int]
    n_pages: dict[str, int]
    n_non_candidates: int
    eval_classes: list[str]
    n_eval_images: int

    @property
    def web_dir(self) -> Path:
        return self.root / "web"

    @property
    def archives_dir(self) -> Path:
        return self.root / "archives"

    @property
    def warc_path(self) -> Path:
        return self.archives_dir / WARC_NAME

    @property
    def wat_path(self) -> Path:
        return self.archives_dir / WAT_NAME

    @property
    def archives(self) -> list[Path]:
        return [self.warc_path, self.wat_path]

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def manifest(self) -> dict[str, Any]:
        return read_json(self.manifest_path)

    def __str__(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return (f"{self.n_pairs} pairs on {sum(self.n_pages.values())} pages at {self.base_url} ({kinds}); "
                f"eval {self.n_eval_images} images in {len(self.eval_classes)} classes")


@dataclass
class _EvalImage:
    eval_id: str
    scene: Scene
    jpeg: bytes
    image: Image.Image
    phash: np.ndarray


@dataclass
class _Pair:
    index: int
    kind: str
    caption: str = ""
    path: str = ""  # web-relative path of the image
    body: bytes | None = None  # None: not served (dead link)
    lang: str | None = "en"
    scene: dict | None = None
    eval_id: str | None = None
    near_dup: dict | None = None
    duplicate_of: int | None = None
    page: int = -1
    src: str = ""


@dataclass
class _Page:
    number: int
    archive: str
    pairs: list[int] = field(default_factory=list)
    decoys: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"p{self.number:04d}"


@dataclass
class _Site:
    """URL pieces derived from ``base_url``."""

    base: str
    netloc: str
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> "_Site":
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise WitError(f"base_url {base_url!r}: expected http(s)://host[:port]")
        return cls(base_url.rstrip("/"), parts.netloc, parts.path.rstrip("/"))

    def url(self, path: str) -> str:
        return f"{self.base}/{path}"

    def page_url(self, page: _Page) -> str:
        return self.url(f"pages/{page.name}.html")

    def src(self, path: str, style: str) -> str:
        """How a page at ``pages/`` refers to ``path`` in the given style."""
        return {"absolute": self.url(path), "root_relative": f"{self.prefix}/{path}", "relative": f"../{path}",
                "protocol_relative": f"//{self.netloc}{self.prefix}/{path}"}[style]


# ---- plan: how many of each kind ----------------------------------------------------------------

def kind_counts(n_pairs: int, n_eval_images: int = 200) -> dict[str, int]:
    """Pairs per kind for ``n_pairs`` (shares of ``KIND_SHARES``, every kind at least once from 25 pairs)."""
    if n_pairs < 1:
        raise WitError(f"n_pairs={n_pairs}: need at least 1 pair")
    counts = {k: int(round(share * n_pairs)) for k, share in KIND_SHARES.items()}
    if n_pairs >= 25:
        counts = {k: max(1, v) for k, v in counts.items()}
    counts["eval_near_duplicate"] = min(counts["eval_near_duplicate"], n_eval_images)
    good = n_pairs - sum(counts.values())
    counts["duplicate"] = min(counts["duplicate"], good // 2)
    return {"good": n_pairs - sum(counts.values()), **counts}


def _hash_of(img: Image.Image) -> np.ndarray:
    """The 64 pHash bits of an image (``imagehash.phash``, as the pipeline computes it)."""
    return imagehash.phash(img).hash.flatten()


_DCT8 = np.array([[2 * np.cos(np.pi * k * (2 * n + 1) / 64) for n in range(32)] for k in range(8)])


def _thumb_hashes(thumb: Image.Image) -> np.ndarray:
    """pHash bits of a 32x32 greyscale thumbnail and of its mirror image (the DCT of ``imagehash.phash``)."""
    pixels = np.asarray(thumb, dtype=np.float64)
    out = []
    for view in (pixels, pixels[:, ::-1]):
        low = _DCT8 @ view @ _DCT8.T
        out.append((low > np.median(low)).flatten())
    return np.array(out)


def _variant_hashes(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """pHash bits of an image as a downloader may see it: (as is + mirrored, centre square crop + mirrored)."""
    w, h = img.size
    s = min(w, h)
    square = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return tuple(_thumb_hashes(v.convert("L").resize((32, 32), Image.LANCZOS)) for v in (img, square))  # type: ignore[return-value]


def _decode(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    img.load()
    return img


def _min_distance(h: np.ndarray, others: np.ndarray | list) -> int:
    if len(others) == 0:
        return 64
    return int((np.asarray(others) != h).sum(axis=1).min())


# ---- eval set ------------------------------------------------------------------------------------

def _eval_image(seed: int, ci: int, j: int, taken: list[np.ndarray]) -> _EvalImage:
    """Eval image ``j`` of class ``ci``, re-drawn until it is apart from the images taken so far."""
    color, shape = EVAL_CLASSES[ci]
    for attempt in range(40):
        rng = np.random.default_rng([seed, 1, ci, j, attempt])
        scene = sample_scene(rng, [(color, shape)], EVAL_SIZE, square=True)
        jpeg = jpeg_bytes(render_scene(scene), 92)
        img = _decode(jpeg)
        h = _hash_of(img)
        if _min_distance(h, taken) >= EVAL_MIN_DISTANCE:
            break
    return _EvalImage(f"{class_name(color, shape)}/{j:03d}.jpg", scene, jpeg, img, h)


def _build_eval_set(seed: int, per_class: int) -> list[_EvalImage]:
    images: list[_EvalImage] = []
    for ci in range(len(EVAL_CLASSES)):
        for j in range(per_class):
            images.append(_eval_image(seed, ci, j, [e.phash for e in images]))
    return images


# ---- pairs ---------------------------------------------------------------------------------------

class _EvalGuard:
    """Tells whether a web image is far from every eval image, for the plain pHash (own and mirror image,
    centre crop) and for the robust detector's variants. On flat synthetic scenes the crop variants find
    accidental look-alikes (about 1 web image in 100); such a scene is re-drawn, so the manifest's ground
    truth (only the planted near-duplicates are near-duplicates) holds for the detector the build uses."""

    def __init__(self, evals: list[_EvalImage]) -> None:
        self.hashes = np.array([e.phash for e in evals])
        self.index: RobustIndex | None = None
        if not evals:
            return
        variants = [eval_variants(e.image) for e in evals]
        phashes = np.array([v[0] for v in variants], dtype=np.int64).reshape(len(evals), len(VARIANTS))
        dcts = dct_words([d for v in variants for d in v[1]]).reshape(len(evals), len(VARIANTS), -1)
        self.index = RobustIndex([e.eval_id for e in evals], phashes, dcts, VARIANTS, GUARD_DISTANCE)

    def far(self, img: Image.Image) -> bool:
        plain, cropped = _variant_hashes(img)
        return (min(_min_distance(h, self.hashes) for h in plain) >= WEB_EVAL_MIN_DISTANCE
                and min(_min_distance(h, self.hashes) for h in cropped) >= WEB_EVAL_MIN_DISTANCE_CROPPED
                and self._robust_far(img))

    def _robust_far(self, img: Image.Image) -> bool:
        if self.index is None:
            return True
        query = QueryHashes.from_rows([hash_columns(hash_view(img))])
        dct_distance = self.index.candidates(query, GUARD_DISTANCE)[4]
        return not (dct_distance <= GUARD_DCT_DISTANCE).any()


def _web_scene(seed: int, index: int, kind: str, guard: _EvalGuard) -> tuple[Scene, bytes, np.random.Generator]:
    """A web scene for pair ``index`` whose image is not a near-duplicate of any eval image."""
    for attempt in range(40):
        rng = np.random.default_rng([seed, 2, index, attempt])
        n_objects = 1 if kind == "non_english" or rng.random() < 0.7 else 2
        scene = sample_scene(rng, sample_objects(rng, n_objects))
        img = render_scene(scene)
        if guard.far(img):
            break
    return scene, jpeg_bytes(img, int(rng.integers(70, 93))), rng


def _image_path(seed: int, index: int, kind: str, rng: np.random.Generator) -> str:
    name = hashlib.sha1(f"miniweb-{seed}-{index}".encode()).hexdigest()[:12]
    folder = SLOW_PREFIX.rstrip("/") if kind == "slow" else _IMAGE_DIRS[int(rng.integers(len(_IMAGE_DIRS)))]
    return f"{folder}/{name}.jpg"


def _scene_pair(seed: int, index: int, kind: str, nth: int, guard: _EvalGuard) -> _Pair:
    """A pair whose image is a fresh scene: good, slow, dead, corrupt, html, filename or non-English."""
    scene, jpeg, rng = _web_scene(seed, index, kind, guard)
    pair = _Pair(index, kind, path=_image_path(seed, index, kind, rng), body=jpeg, scene=scene.describe())
    pair.caption = english_caption(scene, rng, detailed=kind != "good")  # planted kinds must pass the filter
    if kind == "filename_caption":
        pair.caption, pair.lang = filename_caption(rng), None
    elif kind == "non_english":
        pair.lang = FOREIGN_LANGS[nth % len(FOREIGN_LANGS)]
        pair.caption = foreign_caption(scene, pair.lang, rng)
    elif kind == "dead":
        pair.body = None
    elif kind == "corrupt":
        pair.body = corrupt_body(jpeg, rng, nth)
    elif kind == "html":
        pair.body = html_body(pair.caption)
    return pair


def _near_dup_pair(seed: int, index: int, nth: int, source: _EvalImage) -> _Pair:
    """An eval image, edited (cycling through ``NEAR_DUP_EDITS``), with an English caption of it."""
    edit = NEAR_DUP_EDITS[nth % len(NEAR_DUP_EDITS)]
    target = source.image.transpose(Image.FLIP_LEFT_RIGHT) if edit == "hflip" else source.image
    target_hash = _hash_of(target)
    for attempt in range(20):
        rng = np.random.default_rng([seed, 3, index, attempt])
        jpeg, params = near_duplicate(source.image, edit, rng, strength=1.0 - 0.045 * attempt)
        distance = _min_distance(_hash_of(_decode(jpeg)), [target_hash])
        if distance <= NEAR_DUP_MAX_DISTANCE:
            break
    params["phash_distance"] = distance
    return _Pair(index, "eval_near_duplicate", caption=english_caption(source.scene, rng, detailed=True),
                 path=_image_path(seed, index, "eval_near_duplicate", rng), body=jpeg,
                 scene=source.scene.describe(), eval_id=source.eval_id, near_dup=params)


def _plan_kinds(n_pairs: int, counts: dict[str, int], rng: np.random.Generator) -> list[str]:
    kinds = [k for k, n in counts.items() for _ in range(n)]
    return [kinds[i] for i in rng.permutation(n_pairs)]


def _make_pairs(seed: int, n_pairs: int, counts: dict[str, int], evals: list[_EvalImage],
                rng: np.random.Generator) -> list[_Pair]:
    """All pairs, in index order; duplicates copy the caption and URL of a distinct good pair."""
    kinds = _plan_kinds(n_pairs, counts, rng)
    guard = _EvalGuard(evals)
    sources = iter(rng.choice(len(evals), counts["eval_near_duplicate"], replace=False)) if evals else iter(())
    seen: dict[str, int] = {}
    pairs: list[_Pair] = []
    for index, kind in enumerate(kinds):
        nth = seen[kind] = seen.get(kind, -1) + 1
        if kind == "eval_near_duplicate":
            pairs.append(_near_dup_pair(seed, index, nth, evals[int(next(sources))]))
        elif kind == "duplicate":
            pairs.append(_Pair(index, kind))
        else:
            pairs.append(_scene_pair(seed, index, kind, nth, guard))
    _fill_duplicates(pairs, rng)
    return pairs


def _fill_duplicates(pairs: list[_Pair], rng: np.random.Generator) -> None:
    dups = [p for p in pairs if p.kind == "duplicate"]
    good = [p.index for p in pairs if p.kind == "good" and len(p.caption.split()) >= 5]  # clearly English
    good = good if len(good) >= len(dups) else [p.index for p in pairs if p.kind == "good"]
    for dup, original in zip(dups, rng.choice(good, len(dups), replace=False) if dups else []):
        src = pairs[int(original)]
        dup.caption, dup.path, dup.lang, dup.scene, dup.duplicate_of = (src.caption, src.path, src.lang,
                                                                         src.scene, src.index)


# ---- pages ---------------------------------------------------------------------------------------

def _new_page(pages: list[_Page], pair_ids: list[int]) -> _Page:
    """Append a page; even pages go to the WARC, odd ones to the WAT."""
    page = _Page(len(pages), WARC_NAME if len(pages) % 2 == 0 else WAT_NAME, pair_ids)
    pages.append(page)
    return page


def _place_duplicates(pairs: list[_Pair], pages: list[_Page], rng: np.random.Generator) -> None:
    """Put each duplicate on a page other than its original's."""
    for dup in (p for p in pairs if p.kind == "duplicate"):
        others = [pg for pg in pages if pg.number != pairs[dup.duplicate_of].page] or [_new_page(pages, [])]
        page = others[int(rng.integers(len(others)))]
        page.pairs.insert(int(rng.integers(len(page.pairs) + 1)), dup.index)
        dup.page = page.number


def _make_pages(pairs: list[_Pair], site: _Site, rng: np.random.Generator) -> list[_Page]:
    """Group pairs into pages of 1-4 images (with 0-2 decoy images each) and choose each src style."""
    order = [p.index for p in pairs if p.kind != "duplicate"]
    order = [order[i] for i in rng.permutation(len(order))]
    pages: list[_Page] = []
    while order:
        k = int(rng.integers(1, 5))
        for i in _new_page(pages, order[:k]).pairs:
            pairs[i].page = len(pages) - 1
        order = order[k:]
    _place_duplicates(pairs, pages, rng)
    for page in pages:
        page.decoys = [str(rng.choice(_DECOYS)) for _ in range(int(rng.integers(0, 3)))]
    for p in pairs:
        p.src = site.src(p.path, _SRC_STYLES[int(rng.integers(len(_SRC_STYLES)))])
    return pages


def _decoy_attrs(kind: str, k: int) -> dict[str, str | None]:
    """src/alt of an <img> that is not a candidate (alt None: no alt attribute)."""
    return {"no_alt": {"src": "/img/spacer.gif", "alt": None},
            "empty_alt": {"src": "/img/logo.png", "alt": "" if k % 3 else "  "},
            "data_uri": {"src": "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
                         "alt": "loading"},
            "javascript": {"src": "javascript:void(0)", "alt": "placeholder image"}}[kind]


def _img_tag(src: str, alt: str | None, alt_first: bool = False) -> str:
    s = f'src="{html.escape(src)}"'
    if alt is None:
        return f"<img {s} width=\"1\" height=\"1\">"
    a = f'alt="{html.escape(alt)}"'
    return f"<img {a} {s} loading=\"lazy\">" if alt_first else f"<img {s} {a}>"


def _page_title(page: _Page) -> str:
    return f"Shapes and colours gallery, page {page.number + 1}"


def _page_html(page: _Page, pairs: list[_Pair]) -> str:
    """The HTML of a page: figures with the candidate images, decoy images in between."""
    items = [f"<figure>{_img_tag(pairs[i].src, pairs[i].caption, i % 4 == 0)}"
             f"<figcaption>Picture {n + 1}</figcaption></figure>" for n, i in enumerate(page.pairs)]
    for k, decoy in enumerate(page.decoys):
        a = _decoy_attrs(decoy, page.number + k)
        items.insert(k % (len(items) + 1), _img_tag(str(a["src"]), a["alt"]))
    title = html.escape(_page_title(page))
    nav = f'<a href="../index.html">Home</a> <a href="p{page.number + 1:04d}.html">Next page</a>'
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n</head>\n<body>\n<header><nav>{nav}</nav></header>\n<main>\n<h1>{title}</h1>\n"
            + "\n".join(items) + "\n<p>All pictures are drawn by our readers.</p>\n</main>\n</body>\n</html>\n")


def _wat_links(page: _Page, pairs: list[_Pair]) -> list[dict[str, str]]:
    """The WAT ``Links`` of a page: its images (raw src, as Common Crawl writes them) and anchors."""
    links = [{"path": "A@/href", "url": "../index.html", "text": "Home"},
             {"path": "A@/href", "url": f"p{page.number + 1:04d}.html", "text": "Next page"}]
    links += [{"path": "IMG@/src", "url": pairs[i].src, "alt": pairs[i].caption} for i in page.pairs]
    for k, decoy in enumerate(page.decoys):
        a = _decoy_attrs(decoy, page.number + k)
        links.insert(2 + k % (len(page.pairs) + 1), {"path": "IMG@/src", "url": str(a["src"]),
                                                     **({} if a["alt"] is None else {"alt": a["alt"]})})
    return links


# ---- archives ------------------------------------------------------------------------------------

def _record_id(*parts: object) -> str:
    digest = hashlib.sha1("/".join(map(str, parts)).encode()).digest()[:16]
    return f"<urn:uuid:{uuid.UUID(bytes=digest, version=4)}>"


def _warc_date(page: _Page | None, offset_s: int = 0) -> str:
    number = page.number if page else 0
    return (CRAWL_DATE + timedelta(seconds=2 * number + offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _warcinfo(writer: WARCWriter, name: str, seed: int, fmt: str) -> None:
    payload = (f"software: wit-builder miniweb\r\nformat: {fmt}\r\nisPartOf: miniweb-seed-{seed}\r\n"
               f"description: generated mini-web for tests and the demo\r\n").encode()
    writer.write_record(writer.create_warc_record(
        "", "warcinfo", payload=io.BytesIO(payload), length=len(payload), warc_content_type="application/warc-fields",
        warc_headers_dict={"WARC-Record-ID": _record_id(name, seed, "info"), "WARC-Date": _warc_date(None),
                           "WARC-Filename": name}))


def _http_response(body: bytes, content_type: str) -> StatusAndHeaders:
    return StatusAndHeaders("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                       ("Server", "wit-miniweb/1.0")], protocol="HTTP/1.1")


def _write_warc(path: Path, pages: list[_Page], bodies: dict[int, bytes], site: _Site, seed: int) -> None:
    """request + response records of the WARC pages, after a robots.txt response (not HTML)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _warcinfo(writer, WARC_NAME, seed, "WARC File Format 1.0")
        robots = b"User-agent: *\nAllow: /\n"
        _write_exchange(writer, site.url("robots.txt"), robots, "text/plain", None, seed)
        for page in pages:
            _write_exchange(writer, site.page_url(page), bodies[page.number], "text/html; charset=utf-8", page, seed)


def _write_exchange(writer: WARCWriter, url: str, body: bytes, ctype: str, page: _Page | None, seed: int) -> None:
    date = _warc_date(page)
    parts = urlsplit(url)
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: wit-miniweb-crawler\r\n\r\n".encode()
    writer.write_record(writer.create_warc_record(
        url, "request", payload=io.BytesIO(request), length=len(request),
        warc_headers_dict={"WARC-Record-ID": _record_id(url, seed, "request"), "WARC-Date": date}))
    writer.write_record(writer.create_warc_record(
        url, "response", payload=io.BytesIO(body), length=len(body), http_headers=_http_response(body, ctype),
        warc_headers_dict={"WARC-Record-ID": _record_id(url, seed, "response"), "WARC-Date": date,
                           "WARC-IP-Address": "127.0.0.1"}))


def _wat_envelope(url: str, page: _Page, body_len: int, seed: int, links: list | None) -> dict[str, Any]:
    """The JSON of a Common Crawl WAT record (``links`` None: the request record's metadata)."""
    kind = "request" if links is None else "response"
    header = {"WARC-Type": kind, "WARC-Target-URI": url, "WARC-Date": _warc_date(page),
              "WARC-Record-ID": _record_id(url, seed, kind),
              "Content-Type": f"application/http; msgtype={kind}"}
    if links is None:
        payload = {"Actual-Content-Type": "application/http; msgtype=request",
                   "HTTP-Request-Metadata": {"Request-Message": {"Method": "GET", "Path": urlsplit(url).path,
                                                                 "Version": "HTTP/1.1"},
                                             "Headers": {"Host": urlsplit(url).netloc}}}
    else:
        payload = {"Actual-Content-Type": "application/http; msgtype=response",
                   "HTTP-Response-Metadata": {
                       "Response-Message": {"Version": "HTTP/1.1", "Status": "200", "Reason": "OK"},
                       "Headers": {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(body_len)},
                       "Entity-Length": str(body_len),
                       "HTML-Metadata": {"Head": {"Title": _page_title(page)}, "Links": links}}}
    return {"Container": {"Filename": "miniweb-wat-source.warc.gz", "Compressed": True},
            "Envelope": {"Format": "WARC", "WARC-Header-Metadata": header, "Payload-Metadata": payload}}


def _write_wat(path: Path, pages: list[_Page], pairs: list[_Pair], bodies: dict[int, bytes], site: _Site,
               seed: int) -> None:
    """Two WAT metadata records per page (request, then response with HTML-Metadata Links)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        _warcinfo(writer, WAT_NAME, seed, "WAT")
        for page in pages:
            url = site.page_url(page)
            for links in (None, _wat_links(page, pairs)):
                data = json.dumps(_wat_envelope(url, page, len(bodies[page.number]), seed, links)).encode()
                kind = "request" if links is None else "response"
                writer.write_record(writer.create_warc_record(
                    url, "metadata", payload=io.BytesIO(data), length=len(data), warc_content_type="application/json",
                    warc_headers_dict={"WARC-Record-ID": _record_id(url, seed, "wat", kind),
                                       "WARC-Date": _warc_date(page, 1),
                                       "WARC-Refers-To": _record_id(url, seed, kind)}))


# ---- files and manifest --------------------------------------------------------------------------

def _write_web(web: Path, pairs: list[_Pair], pages: list[_Page], bodies: dict[int, bytes]) -> None:
    for p in pairs:
        if p.body is not None and p.kind != "duplicate":
            (web / p.path).parent.mkdir(parents=True, exist_ok=True)
            (web / p.path).write_bytes(p.body)
    (web / "pages").mkdir(parents=True, exist_ok=True)
    for page in pages:
        (web / "pages" / f"{page.name}.html").write_bytes(bodies[page.number])
    (web / "img").mkdir(exist_ok=True)
    (web / "img" / "spacer.gif").write_bytes(_SPACER_GIF)
    (web / "img" / "logo.png").write_bytes(_logo_png())
    links = "\n".join(f'<li><a href="pages/{p.name}.html">{html.escape(_page_title(p))}</a></li>' for p in pages)
    (web / "index.html").write_text("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                                    f"<title>Mini-web</title></head><body><ul>\n{links}\n</ul></body></html>\n")


def _logo_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 16), (40, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


def _write_eval(eval_dir: Path, evals: list[_EvalImage]) -> None:
    for e in evals:
        (eval_dir / e.eval_id).parent.mkdir(parents=True, exist_ok=True)
        (eval_dir / e.eval_id).write_bytes(e.jpeg)


def _served(p: _Pair) -> dict[str, Any]:
    """What the server answers for a pair's URL."""
    if p.body is None:
        return {"status": 404, "content_type": None, "delay_s": 0.0}
    ctype = "text/html; charset=utf-8" if p.kind == "html" else "image/jpeg"
    return {"status": 200, "content_type": ctype, "delay_s": 1.0 if p.kind == "slow" else 0.0}


def _pair_entry(p: _Pair, pages: list[_Page], site: _Site) -> dict[str, Any]:
    entry: dict[str, Any] = {"index": p.index, "kind": p.kind, "url": site.url(p.path), "caption": p.caption,
                             "page_url": site.page_url(pages[p.page]), "archive": pages[p.page].archive,
                             "src": p.src, "lang": p.lang, "scene": p.scene}
    if p.eval_id is not None:
        entry.update(eval_id=p.eval_id, near_duplicate=p.near_dup)
    if p.duplicate_of is not None:
        entry["duplicate_of"] = p.duplicate_of
    return entry


def _url_entries(pairs: list[_Pair], site: _Site) -> dict[str, dict[str, Any]]:
    urls: dict[str, dict[str, Any]] = {}
    for p in (p for p in pairs if p.kind != "duplicate"):
        entry = {"kind": p.kind, "path": p.path, "duplicates": 0, **_served(p)}
        if p.eval_id is not None:
            entry.update(eval_id=p.eval_id, edit=p.near_dup["edit"] if p.near_dup else None)
        urls[site.url(p.path)] = entry
    for p in (p for p in pairs if p.kind == "duplicate"):
        urls[site.url(p.path)]["duplicates"] += 1
    return urls


def _manifest(site: _Site, seed: int, pairs: list[_Pair], pages: list[_Page], evals: list[_EvalImage],
              counts: dict[str, int]) -> dict[str, Any]:
    decoys = {k: sum(pg.decoys.count(k) for pg in pages) for k in _DECOYS}
    near = [p.near_dup["phash_distance"] for p in pairs if p.near_dup]
    return {
        "version": 1, "seed": seed, "base_url": site.base, "n_pairs": len(pairs), "counts": counts,
        "n_urls": len({p.path for p in pairs}),
        "archives": {name: {"pages": sum(pg.archive == name for pg in pages),
                            "pairs": sum(len(pg.pairs) for pg in pages if pg.archive == name)}
                     for name in (WARC_NAME, WAT_NAME)},
        "non_candidates": {**decoys, "total": sum(decoys.values())},
        "eval": {"root": "eval", "classes": sorted({e.eval_id.split("/")[0] for e in evals}),
                 "n_images": len(evals), "prompt": "a photo of a {}."},
        "phash": {"web_eval_min_distance": WEB_EVAL_MIN_DISTANCE, "near_duplicate_max_distance": max(near, default=0)},
        "pairs": [_pair_entry(p, pages, site) for p in pairs],
        "urls": _url_entries(pairs, site),
    }


def generate_miniweb(root: str | Path, base_url: str, n_pairs: int = 1000, seed: int = 0,
                     eval_per_class: int = 25) -> MiniWeb:
    """Write the mini-web under ``root`` (replacing a previous one) for a server at ``base_url``.

    The eval set (``eval_per_class`` images of each of the 8 classes) depends only on ``seed``.
    """
    root, site = Path(root), _Site.parse(base_url)
    evals = _build_eval_set(seed, eval_per_class)
    counts = kind_counts(n_pairs, len(evals))
    rng = np.random.default_rng([seed, 0])
    pairs = _make_pairs(seed, n_pairs, counts, evals, rng)
    pages = _make_pages(pairs, site, rng)
    bodies = {pg.number: _page_html(pg, pairs).encode() for pg in pages}
    with atomic_dir(root / "eval") as tmp:
        _write_eval(tmp, evals)
    with atomic_dir(root / "web") as tmp:
        _write_web(tmp, pairs, pages, bodies)
    (root / "archives").mkdir(parents=True, exist_ok=True)
    _write_warc(root / "archives" / WARC_NAME, [p for p in pages if p.archive == WARC_NAME], bodies, site, seed)
    _write_wat(root / "archives" / WAT_NAME, [p for p in pages if p.archive == WAT_NAME], pairs, bodies, site, seed)
    manifest = _manifest(site, seed, pairs, pages, evals, counts)
    write_json(root / "manifest.json", manifest)
    return MiniWeb(root, site.base, n_pairs, seed, counts,
                   {name: v["pages"] for name, v in manifest["archives"].items()},
                   manifest["non_candidates"]["total"], manifest["eval"]["classes"], len(evals))


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.miniweb.generate {generate ROOT --base-url URL | serve ROOT}``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.miniweb.generate", description=__doc__.split("\n")[0])
    subs = parser.add_subparsers(dest="cmd", required=True)
    gen = subs.add_parser("generate")
    gen.add_argument("root")
    gen.add_argument("--base-url", required=True)
    gen.add_argument("--pairs", type=int, default=1000)
    gen.add_argument("--seed", type=int, default=0)
    srv = subs.add_parser("serve")
    srv.add_argument("root")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        print(generate_miniweb(args.root, args.base_url, n_pairs=args.pairs, seed=args.seed))
    else:
        serve_forever(args.root, host=args.host, port=args.port)


if __name__ == "__main__":
    main()

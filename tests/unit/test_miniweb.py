"""The generated mini-web: counts, archives, eval set, perceptual-hash separation and the HTTP server."""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import urljoin

import imagehash
import numpy as np
import pytest
from PIL import Image
from selectolax.lexbor import LexborHTMLParser
from warcio.archiveiterator import ArchiveIterator

from pipeline.core.errors import WitError
from pipeline.miniweb.generate import KIND_SHARES, KINDS, generate_miniweb, kind_counts, serve_miniweb

BASE = "http://127.0.0.1:8765"
FILENAME_RE = re.compile(r"^(IMG|DSC|DSCN|P\d|\d{8}_|image\d|Screenshot|photo_|[0-9a-f]{32})", re.I)



pytestmark = pytest.mark.slow  # generates the 1k-pair mini-web and starts its HTTP server

@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory):
    """The full 1000-pair mini-web (no server needed for the files)."""
    return generate_miniweb(tmp_path_factory.mktemp("mw") / "site", BASE, n_pairs=1000, seed=0)


@pytest.fixture(scope="module")
def manifest(web) -> dict:
    return web.manifest()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A small mini-web behind a real server, generated after the server started (the intended use)."""
    root = tmp_path_factory.mktemp("served")
    with serve_miniweb(root, port=0) as server:
        mw = generate_miniweb(root, server.base_url, n_pairs=60, seed=1)
        yield server, mw.manifest()


def _crawl(archive: Path) -> tuple[list[tuple[str, str, str]], int]:
    """A minimal crawler: (url, alt, page_url) of <img> with non-empty alt and http(s) URL; and dropped imgs."""
    pairs: list[tuple[str, str, str]] = []
    dropped = 0
    with open(archive, "rb") as fh:
        for rec in ArchiveIterator(fh):
            page = rec.rec_headers.get_header("WARC-Target-URI")
            if rec.rec_type == "response" and "html" in (rec.http_headers.get_header("Content-Type") or ""):
                imgs = [(i.attributes.get("src") or "", i.attributes.get("alt"))
                        for i in LexborHTMLParser(rec.content_stream().read().decode()).css("img")]
            elif rec.rec_type == "metadata":
                meta = json.loads(rec.content_stream().read())["Envelope"]["Payload-Metadata"]
                html_meta = meta.get("HTTP-Response-Metadata", {}).get("HTML-Metadata")
                links = html_meta["Links"] if html_meta else []
                imgs = [(lk["url"], lk.get("alt")) for lk in links if lk["path"] == "IMG@/src"]
            else:
                continue
            for src, alt in imgs:
                url = urljoin(page, src)
                if (alt or "").strip() and url.startswith(("http://", "https://")):
                    pairs.append((url, alt.strip(), page))
                else:
                    dropped += 1
    return pairs, dropped


def _get(url: str, timeout: float = 10) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def _phash_bits(img: Image.Image) -> np.ndarray:
    return imagehash.phash(img).hash.flatten()


# ---- counts and determinism ----------------------------------------------------------------------

def test_kind_counts_follow_the_shares() -> None:
    counts = kind_counts(1000)
    assert sum(counts.values()) == 1000 and set(counts) == set(KINDS)
    assert all(counts[k] == round(share * 1000) for k, share in KIND_SHARES.items())
    small = kind_counts(60)
    assert sum(small.values()) == 60 and min(small.values()) >= 1
    assert sum(kind_counts(3).values()) == 3
    with pytest.raises(WitError):
        kind_counts(0)


def test_manifest_counts(web, manifest: dict) -> None:
    assert manifest["n_pairs"] == web.n_pairs == len(manifest["pairs"]) == 1000
    assert Counter(p["kind"] for p in manifest["pairs"]) == Counter(manifest["counts"]) == Counter(web.counts)
    assert manifest["counts"] == kind_counts(1000)
    assert [p["index"] for p in manifest["pairs"]] == list(range(1000))
    assert manifest["non_candidates"]["total"] == web.n_non_candidates > 0
    assert set(manifest["archives"]) == {web.warc_path.name, web.wat_path.name}
    assert all(v["pages"] > 100 and v["pairs"] > 300 for v in manifest["archives"].values())


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = generate_miniweb(tmp_path / "a", BASE, n_pairs=80, seed=7)
    b = generate_miniweb(tmp_path / "b", BASE, n_pairs=80, seed=7)
    c = generate_miniweb(tmp_path / "c", BASE, n_pairs=80, seed=8)
    assert a.manifest() == b.manifest()
    assert a.counts == c.counts and a.manifest()["pairs"] != c.manifest()["pairs"]

    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    assert digest(a.root) == digest(b.root)  # images, pages, eval set, archives, manifest: byte-identical


def test_bad_base_url_is_a_clean_error(tmp_path: Path) -> None:
    for bad in ("127.0.0.1:8000", "ftp://127.0.0.1/", ""):
        with pytest.raises(WitError, match="base_url"):
            generate_miniweb(tmp_path, bad, n_pairs=5)


# ---- archives ------------------------------------------------------------------------------------

def test_archives_hold_exactly_the_candidates(web, manifest: dict) -> None:
    warc_pairs, warc_dropped = _crawl(web.warc_path)
    wat_pairs, wat_dropped = _crawl(web.wat_path)
    found = warc_pairs + wat_pairs
    assert len(found) == len(set(found)) == web.n_pairs
    assert set(found) == {(p["url"], p["caption"], p["page_url"]) for p in manifest["pairs"]}
    assert warc_dropped + wat_dropped == manifest["non_candidates"]["total"]
    by_archive = Counter(p["archive"] for p in manifest["pairs"])
    assert by_archive == {web.warc_path.name: len(warc_pairs), web.wat_path.name: len(wat_pairs)}


def test_archives_are_realistic(web, manifest: dict) -> None:
    with open(web.warc_path, "rb") as fh:
        types = Counter(rec.rec_type for rec in ArchiveIterator(fh))
    assert types["warcinfo"] == 1 and types["request"] == types["response"] > 100
    srcs = [p["src"] for p in manifest["pairs"]]
    assert any(s.startswith("http://") for s in srcs) and any(s.startswith("../") for s in srcs)
    assert any(s.startswith("//") for s in srcs) and any(re.match(r"^/[a-z]", s) for s in srcs)
    assert {"no_alt", "empty_alt", "data_uri", "javascript"} <= set(manifest["non_candidates"])
    page = (web.web_dir / "pages" / "p0000.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<img" in page


# ---- planted kinds -------------------------------------------------------------------------------

def test_planted_kinds(web, manifest: dict) -> None:
    pairs = manifest["pairs"]
    by_kind: dict[str, list[dict]] = {k: [p for p in pairs if p["kind"] == k] for k in KINDS}
    assert all(FILENAME_RE.match(p["caption"]) for p in by_kind["filename_caption"])
    assert not any(FILENAME_RE.match(p["caption"]) for p in by_kind["good"])
    assert {p["lang"] for p in by_kind["non_english"]} == {"fr", "de", "es", "it", "pt", "nl"}
    for dup in by_kind["duplicate"]:
        original = pairs[dup["duplicate_of"]]
        assert original["kind"] == "good"
        assert (dup["url"], dup["caption"]) == (original["url"], original["caption"])
        assert dup["page_url"] != original["page_url"]
    for p in by_kind["eval_near_duplicate"]:
        assert (web.eval_dir / p["eval_id"]).is_file()
        assert p["near_duplicate"]["edit"] in {"jpeg_quality", "resize", "crop", "hflip"}
    assert len({p["eval_id"] for p in by_kind["eval_near_duplicate"]}) == manifest["counts"]["eval_near_duplicate"]


def test_good_captions_name_what_is_drawn(manifest: dict) -> None:
    for p in manifest["pairs"]:
        if p["kind"] in ("good", "eval_near_duplicate"):
            caption = p["caption"].lower()
            assert all(o["color"] in caption and o["shape"] in caption for o in p["scene"]["objects"]), p


def test_web_files_match_their_kind(web, manifest: dict) -> None:
    for url, entry in manifest["urls"].items():
        path = web.web_dir / entry["path"]
        assert url.endswith(entry["path"])
        if entry["kind"] == "dead":
            assert not path.exists() and entry["status"] == 404
            continue
        body = path.read_bytes()
        if entry["kind"] == "html":
            assert body.startswith(b"<!DOCTYPE html>")
        elif entry["kind"] == "corrupt":
            with pytest.raises(OSError):
                Image.open(io.BytesIO(body)).load()
        else:
            img = Image.open(io.BytesIO(body))
            img.load()
            assert img.format == "JPEG" and 96 <= min(img.size) and max(img.size) <= 320


# ---- eval set and perceptual hashes --------------------------------------------------------------

def test_eval_imagefolder(web, manifest: dict) -> None:
    classes = sorted(p.name for p in web.eval_dir.iterdir() if p.is_dir())
    assert classes == manifest["eval"]["classes"] == sorted(web.eval_classes) and len(classes) == 8
    assert all(re.fullmatch(r"[a-z]+_[a-z]+", c) for c in classes)
    colors = [c.split("_")[0] for c in classes]
    shapes = [c.split("_")[1] for c in classes]
    assert len(set(colors)) == len(set(shapes)) == 8  # colour alone (or shape alone) tells the class
    prompts = [manifest["eval"]["prompt"].format(c.replace("_", " ")) for c in classes]
    assert "a photo of a red circle." in prompts
    for c in classes:
        files = sorted((web.eval_dir / c).glob("*.jpg"))
        assert [f.name for f in files] == [f"{i:03d}.jpg" for i in range(25)]
        img = Image.open(files[0])
        assert img.size[0] == img.size[1] >= 96


def test_phash_separates_web_from_eval_and_finds_near_duplicates(web, manifest: dict) -> None:
    evals = {str(p.relative_to(web.eval_dir)): Image.open(p).convert("RGB") for p in web.eval_dir.glob("*/*.jpg")}
    eval_bits = {k: _phash_bits(v) for k, v in evals.items()}
    eval_matrix = np.array(list(eval_bits.values()))
    good = [e for e in manifest["urls"].values() if e["kind"] == "good"]
    assert len(good) > 600
    for entry in good:
        bits = _phash_bits(Image.open(web.web_dir / entry["path"]))
        assert (eval_matrix != bits).sum(axis=1).min() > 10, entry
    near = [p for p in manifest["pairs"] if p["kind"] == "eval_near_duplicate"]
    for p in near:
        source = evals[p["eval_id"]]
        if p["near_duplicate"]["edit"] == "hflip":
            source = source.transpose(Image.FLIP_LEFT_RIGHT)
        path = web.web_dir / manifest["urls"][p["url"]]["path"]
        distance = int((_phash_bits(source) != _phash_bits(Image.open(path))).sum())
        assert distance <= 10 and distance == p["near_duplicate"]["phash_distance"], p


# ---- the HTTP server -----------------------------------------------------------------------------

def _entry(manifest: dict, kind: str) -> tuple[str, dict]:
    return next((url, e) for url, e in manifest["urls"].items() if e["kind"] == kind)


def test_server_serves_each_kind(served) -> None:
    server, manifest = served
    assert server.base_url == f"http://127.0.0.1:{server.port}" and server.port > 0
    status, ctype, body = _get(_entry(manifest, "good")[0])
    assert status == 200 and ctype == "image/jpeg" and body.startswith(b"\xff\xd8")
    assert _get(_entry(manifest, "dead")[0])[0] == 404
    status, ctype, body = _get(_entry(manifest, "html")[0])
    assert status == 200 and ctype.startswith("text/html") and b"<html" in body
    status, ctype, _ = _get(_entry(manifest, "corrupt")[0])
    assert status == 200 and ctype == "image/jpeg"
    status, ctype, _ = _get(manifest["pairs"][0]["page_url"])
    assert status == 200 and ctype.startswith("text/html")
    assert _get(f"{server.base_url}/../manifest.json")[0] == 404


def test_server_slow_images_are_slow(served) -> None:
    _, manifest = served
    url, _ = _entry(manifest, "slow")
    start = time.monotonic()
    status, ctype, _ = _get(url)
    assert status == 200 and ctype == "image/jpeg" and time.monotonic() - start >= 0.9


def test_server_handles_many_concurrent_requests(served) -> None:
    _, manifest = served
    urls = [u for u, e in manifest["urls"].items() if e["kind"] in ("good", "slow")] * 3
    with concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool:
        start = time.monotonic()
        results = list(pool.map(lambda u: _get(u)[0], urls))
    assert results == [200] * len(urls)
    assert time.monotonic() - start < 8  # slow ones overlap instead of queueing


def test_server_stops_cleanly(tmp_path: Path) -> None:
    with serve_miniweb(tmp_path, port=0) as server:
        (tmp_path / "web" / "hello.txt").write_text("hi")
        assert _get(f"{server.base_url}/hello.txt")[:2] == (200, "text/plain; charset=utf-8")
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.base_url}/hello.txt", timeout=2)


def test_serve_forever_cli_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "index.html").write_text("<!DOCTYPE html><html><body>hi</body></html>")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.miniweb.generate", "serve", str(tmp_path), "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        line = proc.stdout.readline()
        base_url = re.search(r"at (http://\S+)", line).group(1)
        assert _get(base_url + "/")[:2] == (200, "text/html; charset=utf-8")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()

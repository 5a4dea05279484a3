"""The img2dataset engine (`wit download --engine img2dataset`): Download stage against a real HTTP server on 127.0.0.1, with a real local Ray and img2dataset."""
from __future__ import annotations

import dataclasses
import io
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from dedup.index import build_eval_index
from pipeline import netguard_urllib as netguard
from pipeline.download_img2dataset import Img2datasetConfig as DownloadConfig, error_reason
from pipeline.download_img2dataset import run_img2dataset_download as run_download
from pipeline.errors import WitError
from pipeline.io import read_json
from pipeline.stats import StageStats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

N_INPUTS = 14  # 13 http rows + 1 file:// row


def smooth_image(seed: int, size: tuple[int, int] = (200, 150)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_site(eval_root: Path) -> dict[str, tuple[int, str, bytes]]:
    """Eval ImageFolder on disk, and the served routes: path -> (status, content type, body)."""
    for label, seeds in {"a": [100, 101, 102], "b": [103, 104, 105]}.items():
        (eval_root / label).mkdir(parents=True)
        for s in seeds:
            smooth_image(s).save(eval_root / label / f"{s}.jpg", quality=92)
    routes = {
        "/dup_resized.jpg": (200, "image/jpeg", jpeg(smooth_image(100).resize((400, 300)), 70)),
        "/dup_flip.jpg": (200, "image/jpeg", jpeg(ImageOps.mirror(smooth_image(103)).resize((180, 135)), 80)),
        "/dup_reencoded.jpg": (200, "image/jpeg", jpeg(smooth_image(101), 35)),
        "/missing.jpg": (404, "text/plain", b"not found"),
        "/corrupt.jpg": (200, "image/jpeg", np.random.default_rng(1).bytes(3000)),
        "/page.html": (200, "text/html", b"<html><body>not an image</body></html>"),
    }
    for s in range(200, 207):
        routes[f"/img{s}.jpg"] = (200, "image/jpeg", jpeg(smooth_image(s, (320, 240))))
    return routes


@dataclasses.dataclass
class Site:
    base_url: str
    root: Path
    input_dir: Path
    eval_indexes: dict[str, Path]
    captions: dict[str, str]


def serve(routes: dict[str, tuple[int, str, bytes]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status, ctype, body = routes.get(self.path, (404, "text/plain", b"no such route"))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("download")
    routes = make_site(root / "eval_images")
    server = serve(routes)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [base + p for p in sorted(routes)] + ["file:///etc/passwd"]
    captions = {u: f"caption {i}" for i, u in enumerate(urls)}
    (root / "kept").mkdir()
    for part, chunk in enumerate((urls[:7], urls[7:])):
        pq.write_table(pa.table({"uid": [f"u{urls.index(u)}" for u in chunk], "url": chunk,
                                 "caption": [captions[u] for u in chunk], "lang": ["en"] * len(chunk)}),
                       root / "kept" / f"part-{part:05d}.parquet")
    build_eval_index("toy", root / "eval_images", root / "eval")
    try:
        yield Site(base, root, root / "kept", {"toy": root / "eval" / "toy"}, captions)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", autouse=True)
def tidy_ray() -> Iterator[None]:
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def small_config(**kw: object) -> DownloadConfig:
    return dataclasses.replace(DownloadConfig(number_sample_per_shard=5, processes_count=2, thread_count=8,
                                              timeout=5), **kw)


@pytest.fixture(scope="module")
def downloaded(site: Site) -> tuple[Site, StageStats]:
    stats = run_download(site.input_dir, site.root / "shards", small_config(allow_private_networks=True),
                         site.eval_indexes, site.root / "overlap")
    return site, stats


# ---------------------------------------------------------------- fast checks (no Ray)

def test_private_hosts_refused_without_flag(site: Site) -> None:
    shards = site.root / "refused_shards"
    stats = run_download(site.input_dir, shards, small_config(), site.eval_indexes, site.root / "refused_overlap")
    assert (stats.inputs, stats.kept) == (N_INPUTS, 0)
    assert dict(stats.dropped) == {"private_address": 13, "bad_url": 1}
    refused = pq.read_table(shards / "_refused.parquet")
    assert refused.num_rows == N_INPUTS and set(refused["status"].to_pylist()) == {"refused"}
    assert list(shards.glob("*.tar")) == [] and read_json(shards / "sizes.json") == {}
    assert pq.read_table(site.root / "refused_overlap" / "overlap.parquet").num_rows == 0


def test_screen_urls_reasons() -> None:
    urls = ["http://127.0.0.1/a.jpg", "http://localhost:8080/x", "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/x", "http://[::1]/x", "http://[::ffff:192.168.0.1]/x", "http://2130706433/x",
            "https://8.8.8.8/x.jpg", "ftp://8.8.8.8/x", "file:///etc/passwd", "not a url", None,
            "http://no-such-host.invalid/x.jpg"]
    assert netguard.screen_urls(urls) == ["private_address"] * 7 + [None] + ["bad_url"] * 4 + [None]
    assert netguard.screen_urls(urls[:3], allow_private_networks=True) == [None] * 3


def test_connection_guard_blocks_loopback(site: Site) -> None:
    url = site.base_url + "/img200.jpg"
    try:
        netguard.set_guard(True)
        with pytest.raises(urllib.error.URLError, match="private address refused"):
            urllib.request.urlopen(url, timeout=5)
    finally:
        netguard.set_guard(False)
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200


def test_error_reasons() -> None:
    assert error_reason("failed_to_download", "HTTP Error 404: Not Found") == "http_404"
    assert error_reason("failed_to_download", "HTTP Error 503: Service Unavailable") == "http_5xx"
    assert error_reason("failed_to_download", "<urlopen error timed out>") == "timeout"
    assert error_reason("failed_to_download", "The read operation timed out") == "timeout"
    assert error_reason("failed_to_download", "<urlopen error [Errno -2] Name or service not known>") == "dns_error"
    assert error_reason("failed_to_download", "<urlopen error [Errno 111] Connection refused>") == "connection_error"
    assert error_reason("failed_to_resize", "Image decoding error") == "decode_error"
    assert error_reason("failed_to_download", "<urlopen error private address refused: a -> 10.0.0.1>") \
        == "private_address"
    assert error_reason("failed_to_resize", "something new") == "resize_error"


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="no parquet parts"):
        run_download(tmp_path / "nothing", tmp_path / "s1")
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"link": ["http://x/y.jpg"]}), tmp_path / "in" / "part-00000.parquet")
    with pytest.raises(WitError, match="no 'url' column"):
        run_download(tmp_path / "in", tmp_path / "s2")
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), tmp_path / "in" / "part-00000.parquet")
    with pytest.raises(WitError, match="no rows"):
        run_download(tmp_path / "in", tmp_path / "s3")


# ---------------------------------------------------------------- the real download

def test_stats_account_for_every_url(downloaded: tuple[Site, StageStats]) -> None:
    site, stats = downloaded
    assert (stats.inputs, stats.kept) == (N_INPUTS, 10)
    assert dict(stats.dropped) == {"http_404": 1, "decode_error": 2, "bad_url": 1}
    assert stats.accounted() and stats.extra["shards"] == 3 and stats.extra["failed_shards"] == 0
    assert stats.extra["eval_duplicates"] == {"toy": 3} and stats.extra["bytes"] > 0
    assert StageStats.read(site.root / "shards").to_dict()["kept"] == 10
    shards = site.root / "shards"
    tables = [pq.read_table(p) for p in sorted(shards.glob("0*.parquet"))]
    statuses = [s for t in tables for s in t["status"].to_pylist()]
    statuses += pq.read_table(shards / "_refused.parquet")["status"].to_pylist()
    assert len(statuses) == N_INPUTS
    assert {s: statuses.count(s) for s in set(statuses)} == \
        {"success": 10, "failed_to_download": 1, "failed_to_resize": 2, "refused": 1}
    urls = [u for t in tables for u in t["url"].to_pylist()] + \
        pq.read_table(shards / "_refused.parquet")["url"].to_pylist()
    assert sorted(urls) == sorted(site.captions)


def test_shards_read_back_with_webdataset(downloaded: tuple[Site, StageStats]) -> None:
    import webdataset as wds

    site, _ = downloaded
    shards = site.root / "shards"
    sizes = read_json(shards / "sizes.json")
    assert sorted(sizes) == ["00000.tar", "00001.tar", "00002.tar"] and sum(sizes.values()) == 10
    samples = list(wds.WebDataset([str(p) for p in sorted(shards.glob("*.tar"))], shardshuffle=False).decode("pil"))
    assert len(samples) == 10
    for s in samples:
        meta = s["json"]
        assert s["txt"] == site.captions[meta["url"]] and meta["uid"].startswith("u")
        assert min(s["jpg"].size) == 256  # keep_ratio: shorter side resized, no padding


def test_phash_column(downloaded: tuple[Site, StageStats]) -> None:
    site, _ = downloaded
    for p in sorted((site.root / "shards").glob("0*.parquet")):
        t = pq.read_table(p)
        assert t.schema.field("phash").type == pa.int64() and "phash_flip" in t.column_names
        for status, h in zip(t["status"].to_pylist(), t["phash"].to_pylist()):
            assert (h is not None) == (status == "success")


def test_overlap_finds_near_duplicates_only(downloaded: tuple[Site, StageStats]) -> None:
    site, _ = downloaded
    overlap = pq.read_table(site.root / "overlap" / "overlap.parquet")
    assert overlap.column_names[:4] == ["eval_set", "eval_id", "key", "distance"]
    found = {(r["eval_id"], r["url"].rsplit("/", 1)[1]) for r in overlap.to_pylist()}
    assert found == {("a/100.jpg", "dup_resized.jpg"), ("b/103.jpg", "dup_flip.jpg"),
                     ("a/101.jpg", "dup_reencoded.jpg")}
    assert max(overlap["distance"].to_pylist()) <= DownloadConfig().max_distance


def test_rerun_is_a_noop(downloaded: tuple[Site, StageStats]) -> None:
    site, first = downloaded
    shards = site.root / "shards"

    def snapshot() -> dict[str, tuple[int, int]]:
        return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in shards.rglob("*")
                if p.is_file() and p.name not in ("sizes.json", "_stats.json")}

    before = snapshot()
    overlap_before = pq.read_table(site.root / "overlap" / "overlap.parquet")
    again = run_download(site.input_dir, shards, small_config(allow_private_networks=True),
                         site.eval_indexes, site.root / "overlap")
    assert snapshot() == before
    assert (again.inputs, again.kept, again.dropped) == (first.inputs, first.kept, first.dropped)
    assert again.extra["hashed_shards"] == 0 and first.extra["hashed_shards"] == 3
    assert pq.read_table(site.root / "overlap" / "overlap.parquet").equals(overlap_before)
    keys = [k for p in sorted(shards.glob("0*.parquet")) for k in pq.read_table(p)["key"].to_pylist()]
    assert len(keys) == len(set(keys)) == 13
    with pytest.raises(WitError, match="other input or options"):
        run_download(site.input_dir, shards, small_config(allow_private_networks=True, image_size=128))


def test_guard_in_ray_workers_blocks_what_screening_missed(site: Site, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that passes the screen but connects to a private address (DNS rebinding, a redirect)
    is refused by the connection guard inside img2dataset's Ray tasks."""
    monkeypatch.setattr(netguard, "screen_urls", lambda urls, *a, **k: [None for _ in urls])
    urls = [site.base_url + "/img200.jpg", site.base_url + "/img201.jpg"]
    pq.write_table(pa.table({"url": urls, "caption": ["x", "y"]}), tmp_path / "part-00000.parquet")
    stats = run_download(tmp_path / "part-00000.parquet", tmp_path / "shards", small_config(), None,
                         tmp_path / "overlap")
    assert (stats.inputs, stats.kept, dict(stats.dropped)) == (2, 0, {"private_address": 2})
    messages = pq.read_table(tmp_path / "shards" / "00000.parquet")["error_message"].to_pylist()
    assert all("private address refused" in m for m in messages)



def test_engine_option_runs_img2dataset_through_run_download(site: Site, tmp_path: Path) -> None:
    """`wit download --engine img2dataset` goes through the public entry point with the shared options."""
    from pipeline.download import run_download as public_run_download
    from pipeline.download_config import DownloadConfig as PublicConfig

    cfg = PublicConfig(engine="img2dataset", allow_private_networks=True, number_sample_per_shard=5,
                       processes_count=2, thread_count=8, timeout=5)
    stats = public_run_download(site.input_dir, tmp_path / "shards", cfg, site.eval_indexes, tmp_path / "overlap")
    assert stats.stage == "download" and stats.accounted() and stats.kept >= 1
    assert (tmp_path / "shards" / "sizes.json").is_file() and (tmp_path / "overlap" / "overlap.parquet").is_file()

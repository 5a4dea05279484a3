"""The download tests' fixture site: a toy eval ImageFolder and a plain HTTP server on 127.0.0.1 serving
near-duplicates of it, ordinary images and failures; input parquet parts listing its URLs.

Shared by the tests of both download engines (``tests/integration/test_download*.py``). Import the fixtures
into a test module to use them there (``from downloadsite import local_ray, site``): each stays
module-scoped, so every importing module gets its own site and, with ``local_ray``, its own local Ray;
``downloaded = downloaded_fixture(run_download, small_config)`` binds the site to one engine. The
``check_*`` helpers hold the checks both engines must pass.
"""
from __future__ import annotations

import dataclasses
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faultserver import jpeg_bytes as jpeg
from faultserver import smooth_image as _smooth_image
from PIL import Image, ImageOps

from dedup.index import build_eval_index
from pipeline.core.errors import WitError
from pipeline.core.io import read_json
from pipeline.core.stats import StageStats

N_INPUTS = 14  # 13 http rows + 1 file:// row
# the near-duplicates the site serves: (eval id, served file)
SITE_DUPLICATES = {("a/100.jpg", "dup_resized.jpg"), ("b/103.jpg", "dup_flip.jpg"), ("a/101.jpg", "dup_reencoded.jpg")}
# URLs that either engine's address guard screens, and the reason it must give each (None: may be fetched)
SCREEN_URLS = ["http://127.0.0.1/a.jpg", "http://localhost:8080/x", "http://169.254.169.254/latest/meta-data/",
               "http://10.1.2.3/x", "http://[::1]/x", "http://[::ffff:192.168.0.1]/x", "http://2130706433/x",
               "https://8.8.8.8/x.jpg", "ftp://8.8.8.8/x", "file:///etc/passwd", "not a url", None,
               "http://no-such-host.invalid/x.jpg"]
SCREEN_REASONS = ["private_address"] * 7 + [None] + ["bad_url"] * 4 + [None]
SITE_IMAGE_SIZE = (200, 150)  # the eval images' size
SMALL_RUN: dict[str, Any] = {"number_sample_per_shard": 5, "processes_count": 2, "thread_count": 8, "timeout": 5}
RAY_TEST_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0"}

Routes = dict[str, tuple[int, str, bytes]]


def smooth_image(seed: int, size: tuple[int, int] = SITE_IMAGE_SIZE) -> Image.Image:
    """:func:`faultserver.smooth_image`, by default at the size of the site's eval images."""
    return _smooth_image(seed, size)


def make_site(eval_root: Path) -> Routes:
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

    def download(self, run_download: Callable[..., StageStats], cfg: Any) -> StageStats:
        """``run_download`` (either engine's) of the whole input into ``shards/``, ``overlap/`` under ``root``."""
        return run_download(self.input_dir, self.root / "shards", cfg, self.eval_indexes, self.root / "overlap")


def serve(routes: Routes) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) answering ``routes``, 404 elsewhere."""
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


def write_parts(folder: Path, urls: list[str], captions: dict[str, str]) -> None:
    """The URLs as two input parquet parts (``uid``, ``url``, ``caption``, ``lang``)."""
    folder.mkdir()
    for part, chunk in enumerate((urls[:7], urls[7:])):
        pq.write_table(pa.table({"uid": [f"u{urls.index(u)}" for u in chunk], "url": chunk,
                                 "caption": [captions[u] for u in chunk], "lang": ["en"] * len(chunk)}),
                       folder / f"part-{part:05d}.parquet")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("download")
    routes = make_site(root / "eval_images")
    server = serve(routes)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [base + p for p in sorted(routes)] + ["file:///etc/passwd"]
    captions = {u: f"caption {i}" for i, u in enumerate(urls)}
    write_parts(root / "kept", urls, captions)
    build_eval_index("toy", root / "eval_images", root / "eval")
    try:
        yield Site(base, root, root / "kept", {"toy": root / "eval" / "toy"}, captions)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local Ray for the module (run_download uses an initialised Ray as it is)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": dict(RAY_TEST_ENV)})
    yield
    ray.shutdown()


def downloaded_fixture(run_download: Callable[..., StageStats], small_config: Callable[..., Any]) -> Any:
    """A module-scoped ``downloaded`` fixture for one engine: ``(site, stats)`` of the site downloaded with
    ``small_config(allow_private_networks=True)`` into ``shards/`` and ``overlap/``."""
    @pytest.fixture(scope="module")
    def downloaded(site: Site) -> tuple[Site, StageStats]:
        return site, site.download(run_download, small_config(allow_private_networks=True))

    return downloaded


# ---------------------------------------------------------------- checks both engines must pass

def check_bad_inputs(run_download: Callable[..., StageStats], tmp_path: Path) -> None:
    """``run_download`` refuses a missing input, a part without ``url`` and parts without rows."""
    with pytest.raises(WitError, match="nothing: not found"):
        run_download(tmp_path / "nothing", tmp_path / "s1")
    (tmp_path / "in").mkdir()
    with pytest.raises(WitError, match="no parquet parts"):
        run_download(tmp_path / "in", tmp_path / "s1")
    pq.write_table(pa.table({"link": ["http://x/y.jpg"]}), tmp_path / "in" / "part-00000.parquet")
    with pytest.raises(WitError, match="no 'url' column"):
        run_download(tmp_path / "in", tmp_path / "s2")
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), tmp_path / "in" / "part-00000.parquet")
    with pytest.raises(WitError, match="no rows"):
        run_download(tmp_path / "in", tmp_path / "s3")


def download_refused(site: Site, run_download: Callable[..., StageStats], cfg: Any) -> Path:
    """The site downloaded with the address guard on into ``refused_shards/``: every URL refused, nothing
    kept, no overlap. Returns the shards folder."""
    shards = site.root / "refused_shards"
    stats = run_download(site.input_dir, shards, cfg, site.eval_indexes, site.root / "refused_overlap")
    assert (stats.inputs, stats.kept) == (N_INPUTS, 0), (stats.inputs, stats.kept)
    assert dict(stats.dropped) == {"private_address": 13, "bad_url": 1}, stats.dropped
    assert pq.read_table(site.root / "refused_overlap" / "overlap.parquet").num_rows == 0
    return shards


def check_site_stats(site: Site, stats: StageStats) -> None:
    """The run totals of the site downloaded into ``shards/`` (drop reasons aside: they differ by engine)."""
    assert (stats.inputs, stats.kept) == (N_INPUTS, 10), (stats.inputs, stats.kept)
    assert stats.accounted() and stats.extra["shards"] == 3 and stats.extra["failed_shards"] == 0, stats.extra
    assert stats.extra["eval_duplicates"] == {"toy": 3} and stats.extra["bytes"] > 0, stats.extra
    assert StageStats.read(site.root / "shards").to_dict()["kept"] == 10


def check_shards_read_back(site: Site) -> None:
    """The site's 10 images read back from ``shards/`` with webdataset, captions and uids kept, 256 px."""
    import webdataset as wds

    shards = site.root / "shards"
    sizes = read_json(shards / "sizes.json")
    assert sorted(sizes) == ["00000.tar", "00001.tar", "00002.tar"] and sum(sizes.values()) == 10, sizes
    samples = list(wds.WebDataset([str(p) for p in sorted(shards.glob("*.tar"))], shardshuffle=False).decode("pil"))
    assert len(samples) == 10, len(samples)
    for s in samples:
        meta = s["json"]
        assert s["txt"] == site.captions[meta["url"]] and meta["uid"].startswith("u"), meta
        assert min(s["jpg"].size) == 256, s["jpg"].size  # keep_ratio: shorter side resized, no padding


def check_overlap(site: Site, max_distance: int) -> None:
    """``overlap/overlap.parquet`` lists the site's near-duplicates and nothing else."""
    overlap = pq.read_table(site.root / "overlap" / "overlap.parquet")
    assert overlap.column_names[:4] == ["eval_set", "eval_id", "key", "distance"], overlap.column_names
    found = {(r["eval_id"], r["url"].rsplit("/", 1)[1]) for r in overlap.to_pylist()}
    assert found == SITE_DUPLICATES, found
    assert max(overlap["distance"].to_pylist()) <= max_distance


def files_snapshot(shards: Path) -> dict[str, tuple[int, int]]:
    """``name -> (mtime_ns, size)`` of every file in ``shards`` but the run totals."""
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in shards.rglob("*")
            if p.is_file() and p.name not in ("sizes.json", "_stats.json", ".wit.lock")}


def rerun_changes_nothing(site: Site, first: StageStats, run_download: Callable[..., StageStats],
                          cfg: Any) -> StageStats:
    """Download the finished site again: its shard files, totals and overlap stay as ``first`` left them.
    Returns the re-run's stats."""
    shards = site.root / "shards"
    before = files_snapshot(shards)
    overlap_before = pq.read_table(site.root / "overlap" / "overlap.parquet")
    again = site.download(run_download, cfg)
    assert files_snapshot(shards) == before
    assert (again.inputs, again.kept, again.dropped) == (first.inputs, first.kept, first.dropped)
    assert pq.read_table(site.root / "overlap" / "overlap.parquet").equals(overlap_before)
    return again

"""Download stage against a real HTTP server on 127.0.0.1, with a real local Ray (one per module)."""
from __future__ import annotations

import shutil
import dataclasses
import io
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from downloadsite import (N_INPUTS, SCREEN_REASONS, SCREEN_URLS, SMALL_RUN, Site, check_bad_inputs, check_overlap,
                          check_shards_read_back, check_site_stats, download_refused, downloaded_fixture, jpeg,
                          make_site, rerun_changes_nothing, serve, smooth_image)
from downloadsite import local_ray, site  # noqa: F401  (fixtures: this module's local Ray and site)
from PIL import Image

from dedup.index import build_eval_index
from dedup.phash import bytes_hashes
from pipeline.download import netguard
from pipeline.download.stage import DownloadConfig, error_reason, run_download
from pipeline.core.errors import WitError
from pipeline.core.io import read_json
from pipeline.core.stats import StageStats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def small_config(**kw: object) -> DownloadConfig:
    return DownloadConfig(**{**SMALL_RUN, **kw})


downloaded = downloaded_fixture(run_download, small_config)


# ---------------------------------------------------------------- guard and reasons

def test_private_hosts_refused_without_flag(site: Site) -> None:
    """Refused URLs get their row in their shard's parquet, like every other URL."""
    shards = download_refused(site, run_download, small_config())
    rows = [r for p in sorted(shards.glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    assert sorted(r["url"] for r in rows) == sorted(site.captions)
    assert {r["status"] for r in rows} == {"failed_to_download"}
    assert all(r["error_message"].startswith("refused (") for r in rows)
    assert sum(read_json(shards / "sizes.json").values()) == 0


def test_screen_urls_reasons() -> None:
    assert netguard.screen_urls(SCREEN_URLS) == SCREEN_REASONS
    assert netguard.screen_urls(SCREEN_URLS[:3], allow_private_networks=True) == [None] * 3
    assert netguard.screen_urls(SCREEN_URLS[:4], allowed_networks=("127.0.0.0/8",)) == \
        [None, "private_address", "private_address", "private_address"]  # localhost is also ::1


def test_connection_guard_blocks_loopback(site: Site) -> None:
    """The pools' connections check the peer they reached, whatever the URL screening said."""
    url = site.base_url + "/img200.jpg"
    guarded = netguard.pool_manager(netguard.AddressPolicy(), retries=False)
    with pytest.raises(Exception, match="private address refused"):
        guarded.request("GET", url, timeout=5)
    allowed = netguard.pool_manager(netguard.AddressPolicy(allowed_networks=("127.0.0.1/32",)), retries=False)
    assert allowed.request("GET", url, timeout=5).status == 200
    with urllib.request.urlopen(url, timeout=5) as r:  # nothing global was changed
        assert r.status == 200


def test_error_reasons() -> None:
    assert error_reason("failed_to_download", "HTTP Error 404: Not Found") == "http_404"
    assert error_reason("failed_to_download", "HTTP Error 503: Service Unavailable") == "http_5xx"
    assert error_reason("failed_to_download", "Connection to x timed out. (connect timeout=1)") == "timeout"
    assert error_reason("failed_to_download", "Read timed out. (read timeout=1)") == "timeout"
    assert error_reason("failed_to_download", "Failed to resolve 'x' ([Errno -2] Name or service not known)") \
        == "dns_error"
    assert error_reason("failed_to_download", "Failed to establish a new connection: [Errno 111] Connection "
                                              "refused") == "connection_error"
    assert error_reason("failed_to_download", "('Connection broken: IncompleteRead(10 bytes read, 20 more "
                                              "expected)', IncompleteRead(10 bytes read))") == "truncated"
    assert error_reason("failed_to_download", "private address refused: a -> 10.0.0.1") == "private_address"
    assert error_reason("failed_to_resize", "something new") == "resize_error"


def test_bad_inputs(tmp_path: Path) -> None:
    check_bad_inputs(run_download, tmp_path)


# ---------------------------------------------------------------- the real download

def test_stats_account_for_every_url(downloaded: tuple[Site, StageStats]) -> None:
    site, stats = downloaded
    check_site_stats(site, stats)
    assert dict(stats.dropped) == {"http_404": 1, "not_image": 2, "bad_url": 1}
    shards = site.root / "shards"
    tables = [pq.read_table(p) for p in sorted(shards.glob("0*.parquet"))]
    statuses = [s for t in tables for s in t["status"].to_pylist()]
    assert len(statuses) == N_INPUTS
    assert {s: statuses.count(s) for s in set(statuses)} == \
        {"success": 10, "failed_to_download": 2, "failed_to_resize": 2}
    urls = [u for t in tables for u in t["url"].to_pylist()]
    assert sorted(urls) == sorted(site.captions)
    for path, t in zip(sorted(shards.glob("0*.parquet")), tables):
        assert all((r["reason"] is None) == (r["status"] == "success") for r in t.to_pylist())
        shard_stats = read_json(shards / f"{path.stem}_stats.json")
        assert shard_stats["count"] == t.num_rows and shard_stats["successes"] == statuses_of(t).count("success")


def test_shards_read_back_with_webdataset(downloaded: tuple[Site, StageStats]) -> None:
    check_shards_read_back(downloaded[0])


def statuses_of(table: pa.Table) -> list[str]:
    return table["status"].to_pylist()


def hamming(a: int, b: int) -> int:
    return bin((a ^ b) & (2**64 - 1)).count("1")


def test_phash_of_the_original_image(downloaded: tuple[Site, StageStats]) -> None:
    """pHash is taken on the downloaded image before resizing, stored in the parquet and the sample json."""
    import webdataset as wds

    site, _ = downloaded
    routes = make_site(site.root / "eval_again")
    rows = [r for p in sorted((site.root / "shards").glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    from dedup.phash import HASH_SCHEMA

    schema = pq.read_schema(site.root / "shards" / "00000.parquet")
    assert all(schema.field(f.name).type == f.type for f in HASH_SCHEMA)  # what `wit dedup` reuses
    for row in rows:
        assert (row["phash"] is not None) == (row["status"] == "success")
        path = "/" + row["url"].rsplit("/", 1)[-1]
        if row["status"] == "success" and path.startswith("/img"):
            original = bytes_hashes(routes[path][2])
            assert hamming(row["phash"], original[0]) <= 2 and hamming(row["phash_flip"], original[1]) <= 2
    samples = wds.WebDataset([str(p) for p in sorted((site.root / "shards").glob("*.tar"))], shardshuffle=False)
    by_key = {r["key"]: r for r in rows}
    for s in samples.decode():
        assert s["json"]["phash"] == by_key[s["__key__"]]["phash"] and s["json"]["sha256"]


@pytest.mark.parametrize("mode", ["border", "center_crop"])
def test_phash_is_taken_before_letterbox_or_crop(mode: str) -> None:
    from pipeline.download.image import ImageProcessor

    data = jpeg(smooth_image(11, (600, 200)))
    got = ImageProcessor(DownloadConfig(resize_mode=mode))(data)
    assert (got.width, got.height) == (256, 256)
    assert hamming(got.hashes["phash"], bytes_hashes(data)[0]) <= 2  # the whole original frame
    assert hamming(got.hashes["phash"], bytes_hashes(got.data)[0]) > 10  # not the letterboxed/cropped output


def test_overlap_finds_near_duplicates_only(downloaded: tuple[Site, StageStats]) -> None:
    check_overlap(downloaded[0], DownloadConfig().max_distance)


def test_rerun_is_a_noop(downloaded: tuple[Site, StageStats], tmp_path: Path) -> None:
    """A re-run with the same options does nothing; with another output option the shards are rebuilt."""
    site, first = downloaded
    shards = site.root / "shards"
    again = rerun_changes_nothing(site, first, run_download, small_config(allow_private_networks=True))
    assert again.extra["downloaded_shards"] == 0 and first.extra["downloaded_shards"] == 3
    keys = [k for p in sorted(shards.glob("0*.parquet")) for k in pq.read_table(p)["key"].to_pylist()]
    assert len(keys) == len(set(keys)) == N_INPUTS
    copy = tmp_path / "shards-copy"  # the fixture's shards stay as they are for the other tests
    shutil.copytree(shards, copy)
    rebuilt = run_download(site.input_dir, copy, small_config(allow_private_networks=True, image_size=128))
    assert rebuilt.extra["downloaded_shards"] == 3 and rebuilt.inputs == first.inputs and rebuilt.accounted()


# ---------------------------------------------------------------- decode once, same pixels as img2dataset

def _img2dataset_resizer_module() -> object:
    """img2dataset's resizer.py alone (its package import pulls in torch and wandb)."""
    import importlib.util

    import img2dataset

    path = Path(img2dataset.__spec__.submodule_search_locations[0]) / "resizer.py"
    spec = importlib.util.spec_from_file_location("img2dataset_resizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_images() -> dict[str, bytes]:
    rgba = smooth_image(7, (200, 120)).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (120, 1))))
    png = io.BytesIO()
    rgba.save(png, "PNG")
    gray = io.BytesIO()
    smooth_image(8, (640, 480)).convert("L").save(gray, "JPEG", quality=90)
    return {"wide": jpeg(smooth_image(1, (500, 300))), "tall": jpeg(smooth_image(2, (300, 500))),
            "small": jpeg(smooth_image(3, (100, 80))), "rgba": png.getvalue(), "gray": gray.getvalue()}


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest", "no"])
def test_resize_matches_img2dataset_pixel_for_pixel(mode: str) -> None:
    import cv2

    from pipeline.download.image import ImageProcessor

    reference = _img2dataset_resizer_module().Resizer(image_size=256, resize_mode=mode, resize_only_if_bigger=False)
    ours = ImageProcessor(DownloadConfig(resize_mode=mode, fast_decode=False))
    for name, data in _test_images().items():
        ref_bytes, width, height, original_width, original_height, err = reference(io.BytesIO(data))
        assert err is None
        got = ours(data)
        assert (got.width, got.height, got.original_width, got.original_height) == \
            (width, height, original_width, original_height), name
        decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED) for b in (ref_bytes, got.data)]
        assert np.array_equal(*decoded), name


def test_fast_decode_same_size_nearly_same_pixels() -> None:
    import cv2

    from pipeline.download.image import ImageProcessor

    data = jpeg(smooth_image(5, (1200, 900)))
    full, fast = (ImageProcessor(DownloadConfig(fast_decode=f))(data) for f in (False, True))
    assert (fast.width, fast.height, fast.original_width) == (full.width, full.height, 1200)
    a, b = (cv2.imdecode(np.frombuffer(p.data, np.uint8), cv2.IMREAD_COLOR).astype(int) for p in (full, fast))
    assert np.abs(a - b).mean() < 1.0
    assert bin((full.hashes["phash"] ^ fast.hashes["phash"]) & (2 ** 64 - 1)).count("1") <= 2


# ---------------------------------------------------------------- eval duplicates

def test_drop_eval_duplicates_in_the_workers(site: Site, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    stats = run_download(site.input_dir, shards, small_config(allow_private_networks=True, drop_eval_duplicates=True),
                         site.eval_indexes, tmp_path / "overlap")
    assert stats.kept == 7 and stats.dropped["eval_duplicate"] == 3 and stats.accounted()
    rows = [r for p in sorted(shards.glob("0*.parquet")) for r in pq.read_table(p).to_pylist()]
    dropped = sorted(r["url"].rsplit("/", 1)[1] for r in rows if r["status"] == "filtered")
    assert dropped == ["dup_flip.jpg", "dup_reencoded.jpg", "dup_resized.jpg"]
    assert all("eval near-duplicate of toy/" in r["error_message"] for r in rows if r["status"] == "filtered")
    assert sum(read_json(shards / "sizes.json").values()) == 7
    assert pq.read_table(tmp_path / "overlap" / "overlap.parquet").num_rows == 0  # none left in the shards


def test_new_eval_index_is_matched_from_stored_hashes(downloaded: tuple[Site, StageStats], tmp_path: Path) -> None:
    """A finished folder re-run against other eval indexes re-matches its stored hashes; nothing is fetched."""
    import shutil

    site, _ = downloaded
    shutil.copytree(site.root / "shards", tmp_path / "shards")
    only_a = tmp_path / "eval_a"
    shutil.copytree(site.root / "eval_images" / "a", only_a / "a")
    build_eval_index("only_a", only_a, tmp_path / "eval")
    stats = run_download(site.input_dir, tmp_path / "shards", small_config(allow_private_networks=True),
                         {"only_a": tmp_path / "eval" / "only_a"}, tmp_path / "overlap")
    assert stats.extra["rematched_shards"] == 3 and stats.extra["downloaded_shards"] == 0
    found = {(r["eval_id"], r["url"].rsplit("/", 1)[1]) for r in
             pq.read_table(tmp_path / "overlap" / "overlap.parquet").to_pylist()}
    assert found == {("a/100.jpg", "dup_resized.jpg"), ("a/101.jpg", "dup_reencoded.jpg")}


def test_cli_options() -> None:
    import argparse

    from pipeline.core.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, DownloadConfig)
    cfg = config_from_args(DownloadConfig, parser.parse_args(
        ["--retry-failed", "--max-per-host", "4", "--allowed-networks", "10.0.0.0/8", "--timeout", "2.5"]))
    assert (cfg.retry_failed, cfg.max_per_host, cfg.allowed_networks, cfg.timeout) == (True, 4, ("10.0.0.0/8",), 2.5)
    assert "wit-builder" in cfg.user_agent and "opted" not in cfg.disallowed_header_directives
    with pytest.raises(WitError, match="allowed_networks"):
        dataclasses.replace(cfg, allowed_networks=("nonsense",)).validate()


def letterbox(img: Image.Image, side: int = 260) -> Image.Image:
    canvas = Image.new("RGB", (side, side), "black")
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


def test_workers_catch_crops_padding_and_rotations(site: Site, tmp_path: Path) -> None:
    """A 10 % crop and a letterbox (22 and 32 pHash bits from their originals: plain pHash misses them) and a
    small rotation are found by the robust detector in the workers; an unrelated image is not."""
    w, h = smooth_image(102).size
    routes = {
        "/crop10.jpg": (200, "image/jpeg", jpeg(smooth_image(102).crop((w // 10, h // 10, w, h)))),
        "/letterbox.jpg": (200, "image/jpeg", jpeg(letterbox(smooth_image(104)))),
        "/rotate4.jpg": (200, "image/jpeg", jpeg(smooth_image(105).rotate(4, resample=Image.BICUBIC))),
        "/other.jpg": (200, "image/jpeg", jpeg(smooth_image(300))),
    }
    server = serve(routes)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [base + p for p in sorted(routes)]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"uid": urls, "url": urls}), tmp_path / "in" / "part-00000.parquet")
    try:
        stats = run_download(tmp_path / "in", tmp_path / "shards", small_config(allow_private_networks=True),
                             site.eval_indexes, tmp_path / "overlap")
    finally:
        server.shutdown()
        server.server_close()
    overlap = pq.read_table(tmp_path / "overlap" / "overlap.parquet").to_pylist()
    found = {r["url"].rsplit("/", 1)[1]: (r["eval_id"], r["variant"]) for r in overlap}
    assert {name: eid for name, (eid, _) in found.items()} == {
        "crop10.jpg": "a/102.jpg", "letterbox.jpg": "b/104.jpg", "rotate4.jpg": "b/105.jpg"}, found
    assert found["crop10.jpg"][1].startswith("crop") and stats.extra["max_dct_distance"] == 64
    assert all(r["dct_distance"] <= 64 for r in overlap)

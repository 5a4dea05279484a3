"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``, ``make browser``) driven by
Playwright, on a page made from a real build of the mini-web.

The build is the ``build-wit`` flow on a 300-pair mini-web with two epochs of CPU training, so every
section has data and the flow's report artifacts can be read back. The page must open from its file with
no console error and no request but the file itself, draw every chart, show the numbers of
``reports/stats.json`` and load every image.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest
from prefectapi import read_artifacts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("WIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (skips when it or Playwright is missing: never downloads a browser)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make browser` (apt-get install chromium) or set WIT_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def build(chromium: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from flows.build_wit import build_wit
    from flows.demo import demo_config
    from pipeline.miniweb.generate import generate_miniweb, serve_miniweb

    out = tmp_path_factory.mktemp("dashboard")
    web_root = out / "web"
    with serve_miniweb(web_root, port=0) as server:
        generate_miniweb(web_root, server.base_url, n_pairs=300, seed=3)
        config = demo_config(out, sorted((web_root / "archives").glob("*.gz")), web_root / "eval")
        config["train"] = {"epochs": 2}
        results = build_wit(config=config)
    return {"out": out, "results": results, "stats": json.loads((out / "reports" / "stats.json").read_text())}


@pytest.fixture(scope="module")
def page(chromium: Any, build: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The page opened from its file, with what it logged and requested on the way."""
    path = build["out"] / "reports" / "dashboard.html"
    tab = chromium.new_page(viewport={"width": 1280, "height": 900})
    seen: dict[str, list] = {"console": [], "errors": [], "requests": []}
    tab.on("console", lambda m: seen["console"].append((m.type, m.text)))
    tab.on("pageerror", lambda e: seen["errors"].append(str(e)))
    tab.on("request", lambda r: seen["requests"].append(r.url))
    tab.goto(path.resolve().as_uri(), wait_until="load")
    yield {"tab": tab, "url": path.resolve().as_uri(), **seen}
    tab.close()


def test_no_console_error_and_no_request_but_the_file(page: dict[str, Any]) -> None:
    assert page["errors"] == []
    assert [m for m in page["console"] if m[0] in ("error", "warning")] == []
    assert [u for u in page["requests"] if not u.startswith("data:")] == [page["url"]]


def test_every_chart_renders(page: dict[str, Any]) -> None:
    charts = page["tab"].eval_on_selector_all(
        "figure.chart svg", "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {w: r.width, h: r.height, shapes: e.querySelectorAll('path, rect, line, use').length,"
        " section: e.closest('section').id}; })")
    assert len(charts) >= 12, charts
    assert all(c["w"] > 200 and c["h"] > 80 and c["shapes"] > 10 for c in charts), charts
    sections = {c["section"] for c in charts}
    assert {"funnel", "captions", "balance", "images", "download", "dedup", "training"} <= sections


def test_numbers_shown_equal_stats_json(page: dict[str, Any], build: dict[str, Any]) -> None:
    shown = page["tab"].eval_on_selector_all("[data-stat]", "els => els.map(e => [e.dataset.stat, e.innerText])")
    assert len(shown) >= 20
    for path, text in shown:
        value: Any = build["stats"]
        for part in path.split("."):
            value = value[part]
        assert text == ("–" if value is None else f"{value:,}"), path
    for stage, folder in (("crawl", "candidates"), ("filter", "pairs"), ("balance", "balanced"),
                          ("download", "shards")):
        on_disk = json.loads((build["out"] / folder / "_stats.json").read_text())
        assert build["stats"]["stages"][stage] == on_disk


def test_every_image_loads(page: dict[str, Any]) -> None:
    images = page["tab"].eval_on_selector_all(
        "img", "els => els.map(e => ({ok: e.complete && e.naturalWidth > 0, alt: e.alt, src: e.src.slice(0, 22),"
        " gallery: !!e.closest('.gallery'), pair: !!e.closest('.pair')}))")
    assert images and all(i["ok"] for i in images), [i for i in images if not i["ok"]]
    assert all(i["src"].startswith("data:image/") for i in images)
    assert sum(i["gallery"] for i in images) >= 12
    assert sum(i["pair"] for i in images) >= 2  # eval image beside the web image


def test_a_drop_reason_opens_its_sample_rows(page: dict[str, Any]) -> None:
    tab = page["tab"]
    link = tab.locator("#funnel a[href^='#drop-filter-']").first
    target = link.get_attribute("href")[1:]
    assert not tab.locator(f"details#{target}").evaluate("d => d.open")
    link.click()
    assert tab.locator(f"details#{target}").evaluate("d => d.open")
    assert tab.locator(f"details#{target} tbody tr").count() >= 1


def test_screenshot(page: dict[str, Any], tmp_path: Path) -> None:
    path = Path(os.environ.get("WIT_DASHBOARD_SCREENSHOT", tmp_path / "dashboard.png"))
    page["tab"].screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_build_wit_attaches_report_artifacts(build: dict[str, Any]) -> None:
    keys = build["results"]["report_artifacts"]
    assert keys == ["build-wit-report", "build-wit-funnel", "build-wit-overlap", "build-wit-dashboard"]
    artifacts = read_artifacts(keys)
    assert artifacts["build-wit-funnel"]["type"] == "table" and "candidates" in artifacts["build-wit-funnel"]["data"]
    assert artifacts["build-wit-overlap"]["type"] == "table" and "acc_clean" in artifacts["build-wit-overlap"]["data"]
    page = (build["out"] / "reports" / "dashboard.html").resolve().as_uri()
    assert page in artifacts["build-wit-dashboard"]["data"]

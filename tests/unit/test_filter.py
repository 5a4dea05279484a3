"""Unit tests of the filter stage: each rule alone, the funnel, resume and bad input."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.filter.rules import (EXPOSURE_TOKEN, FILENAME_PATTERNS, Batch, ControlCharsRule, DuplicateRule,
                                    FilenameRule, HtmlMarkupRule, LanguageRule, MojibakeRule, TooFewWordsRule,
                                    TooLongRule, TooManyWordsRule, TooShortRule, default_lid_model, load_lid_model,
                                    word_counts)
from pipeline.filter.rules.language import lid_text, load_vocabulary, word_shares
from pipeline.core.errors import WitError
from pipeline.crawl.extract import make_uid
from pipeline.filter.stage import FilterConfig, build_rules, run_filter
from pipeline.core.stats import StageStats

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
    "Photo 12-03-2019", "Photo 12-03-2019, 10 32 45", "shutterstock_123456789", "iStock-1234567",
    "gettyimages-1234567-612x612", "52301234567_9f8e7d6c5b_k", "8713928394_a1b2c3d4e5_o.jpg",
    "FB_IMG_1612345678901", "received_1234567890123", "Bildschirmfoto 2021-03-04 um 10.11.12",
    "Capture d’écran 2021-03-04 à 10.11.12", "red-leather-handbag-for-women", "IMG_1234 copy", "DSC_0123-Edit",
    "20160716_113957(0).jpg", "Pasted image 20230101123456", "signal-2021-03-04-101112", "ISO 100 f/8 1/500",
    "image-asset.jpeg", "JPG file", "IMGP1234", "GX010123.MP4.jpg",
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
    "Red leather handbag for women", "MG 1100 saloon", "Photo booth at the 2019 wedding", "Received with thanks",
    "Signal box at the station", "Shot at f/2.8 for a soft background", "Image 1 of 12: the living room",
    "Screenshot of the new dashboard", "iStock photo of a busy market", "Map of the 2016 election results",
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


def test_length_rules_by_chars_and_words() -> None:
    assert _rejected(TooShortRule(5), ["cat", "Escopete", "a dog", "   ab   ", "", "red car"]) == \
        [True, False, False, True, True, False]
    assert _rejected(TooFewWordsRule(2), ["cat", "Escopete", "a dog", "  ab  ", "", "red\tcar"]) == \
        [True, True, False, True, True, False]
    assert _rejected(TooLongRule(30), ["x" * 31, "y" * 30, "é" * 30]) == [True, False, False]
    assert _rejected(TooManyWordsRule(4), ["a b c d", "a b c d e", "a  b   c\n d"]) == [False, True, False]
    assert _rejected(TooLongRule(0), ["word " * 1000]) == [False]
    assert _rejected(TooManyWordsRule(0), ["word " * 1000]) == [False]


def test_word_counts_match_python_split() -> None:
    texts = ["", "a", " a ", "a  b", "ab\tcd\ne", "x", "  ", "日本語 テキスト", "Ünïcödé  wörds here", "z" * 70]
    batch = _batch(texts)
    assert word_counts(batch).tolist() == [len(t.split()) for t in texts]
    sliced = Batch(pa.array(["zz a b", "c d e", "f"]).slice(1), pa.array(["u", "v"]), np.ones(2, bool),
                   np.full(2, None, dtype=object))
    assert word_counts(sliced).tolist() == [3, 1]


def test_control_chars_mojibake_and_html_markup() -> None:
    assert _rejected(ControlCharsRule(), ["A dog\x00 on a mat", "Bell \x07 ring", "C1 \x85 next line", "Tab\tand newline\n ok",
                                          "Plain caption"]) == [True, True, True, False, False]
    assert _rejected(MojibakeRule(), ["CafÃ© de Flore", "Itâ€™s a dog", "Broken \ufffd text", "SÃO PAULO skyline",
                                      "Café de Flore", "Â© 2020 Acme", "Crème brûlée"]) == \
        [True, True, True, False, False, True, False]


def test_html_markup_is_repaired_not_rejected() -> None:
    texts = ["Tom &amp; Jerry", "A <b>bold</b> dog", "Line<br/>break", "Caf&#233;", "Tom & Jerry", "AT&T store",
             "3 < 4 > 2", "Q&A session", "&nbsp;", "Be a &#039;major&#039; win", "&amp;lt;i&amp;gt;x&amp;lt;/i&amp;gt; y",
             "  <p>Two</p><p>lines</p>  ", "Ben &notes", "IMG_2034.JPG"]
    stats = StageStats("t")
    batch = _batch(texts)
    HtmlMarkupRule().apply(batch, stats)
    assert batch.alive.all() and stats.n_dropped == 0
    assert batch.captions.to_pylist() == ["Tom & Jerry", "A bold dog", "Line break", "Café", "Tom & Jerry",
                                          "AT&T store", "3 < 4 > 2", "Q&A session", "", "Be a 'major' win", "x y",
                                          "Two lines", "Ben &notes", "IMG_2034.JPG"]
    assert batch.cleaned.tolist() == [True] * 4 + [False] * 4 + [True] * 4 + [False] * 2
    assert stats.extra == {"cleaned_html_markup": 8}


def _full_pass(captions: pa.Array, regex: str) -> np.ndarray:
    """A regex over every row, without the shared screen (the reference the screened rules must match)."""
    return np.asarray(pc.match_substring_regex(captions, regex, ignore_case=True).to_numpy(zero_copy_only=False))


def _filename_reference(captions: pa.Array,
                        patterns: dict[str, tuple[str, ...]] = FILENAME_PATTERNS) -> list[str | None]:
    """The filename rule's score column computed pattern by pattern over every row."""
    which: list[str | None] = [None] * len(captions)
    for name, regexes in patterns.items():
        match = np.logical_and.reduce([_full_pass(captions, regex) for regex in regexes])
        which = [w if w is not None or not m else name for w, m in zip(which, match)]
    tokens = pc.count_substring_regex(captions, EXPOSURE_TOKEN, ignore_case=True).to_pylist()
    return [w if w is not None or t < 2 else "exposure" for w, t in zip(which, tokens)]


LABELLED = Path(__file__).resolve().parents[1] / "data" / "captions_labelled.jsonl"
JUNK = ["A dog\x00 on a mat", "C1 \x85 next line", "CafÃ© de Flore", "Itâ€™s a dog", "Broken \ufffd text",
        "Tom &amp; Jerry", "A <b>bold</b> dog", "Shot at f/2.8 1/250s", "&nbsp;", "1/125 sec at f/5.6 <br>"]


def test_screened_rules_match_full_regex_passes() -> None:
    """One shared RE2 screen, then each rule's regexes on the screened rows: same columns as full passes."""
    labelled = [json.loads(line)["caption"] for line in LABELLED.read_text(encoding="utf-8").splitlines() if line]
    texts = FILENAMES + CAPTIONS + ENGLISH + list(FOREIGN.values()) + JUNK + labelled
    texts += [t.upper() for t in texts] + [f"{t} {u}" for t, u in zip(texts, reversed(texts))]
    batch = _batch(texts)
    for rule in (FilenameRule(), ControlCharsRule(), MojibakeRule()):
        rule.score(batch)
    assert batch.columns["filename_pattern"].tolist() == _filename_reference(batch.captions)
    for rule in (ControlCharsRule(), MojibakeRule()):
        assert (batch.columns[f"has_{rule.name}"] == _full_pass(batch.captions, rule.regex)).all(), rule.name
    custom = {"camera": FILENAME_PATTERNS["camera"], "numeric": FILENAME_PATTERNS["numeric"]}
    alone = _batch(texts)  # custom patterns use their own screen
    FilenameRule(custom).score(alone)
    assert alone.columns["filename_pattern"].tolist() == _filename_reference(alone.captions, custom)


def _reference_language(rule: LanguageRule, text: str) -> tuple[str, float]:
    """The language rule's (lang, lang_score) for one caption, line by line: fastText's one-line ``predict``
    (``k`` labels) on the normalised text, the allowed labels' probability and the common-word share
    (weighed by fastText's doubt when its top label is not allowed)."""
    model = load_lid_model(str(default_lid_model())).model
    norm = lid_text(pa.array([text.strip()[:rule.max_chars]]))[0].as_py()
    pairs = [(label.removeprefix("__label__"), min(prob, 1.0)) for prob, label in
             model.f.predict(norm.replace("\r", " ").replace("\n", " ") + "\n", rule.k, 0.0, "strict")]
    mass = sum(prob for label, prob in pairs if label in rule.languages)
    words = [w for w in norm.split(" ") if len(w.encode()) >= 2]
    vocabulary = set(load_vocabulary(rule.languages).to_pylist())
    share = sum(w in vocabulary for w in words) / len(words) if words else 0.0
    doubt = 1.0 if pairs[0][0] in rule.languages else 1.0 - pairs[0][1]
    score = (1 - rule.word_weight) * mass + rule.word_weight * share * doubt
    allowed = [label for label, _ in pairs if label in rule.languages] + [rule.languages[0]]
    kept_on_other = score >= rule.min_score and pairs[0][0] not in rule.languages
    return (allowed[0] if kept_on_other else pairs[0][0]), score


@pytest.mark.parametrize("languages", [("en",), ("en", "de")])
@pytest.mark.parametrize("min_score", [0.0, 0.15])
def test_language_scores_match_a_line_by_line_reference(languages: tuple[str, ...], min_score: float) -> None:
    """The batched path (normalising, dedup, clipping, multilinePredict with k=1 then k where needed, label
    table, vectorised word shares) gives what the line-by-line reference gives on each caption: the same
    score when it can reach ``min_score`` (always when that is 0), else a lower one, and the same decision."""
    texts = ENGLISH + list(FOREIGN.values()) + ["A dog\non the\r\nbeach", "Ünïcödé wörds " * 60, ENGLISH[0], "cat",
                                                 "日本語のテキスト" * 80, "Bump Baby Boutique", "Cute yellow chick napkin",
                                                 "pink lace halter top", "NW Dell Vostro 15-3546 US English Keyboard",
                                                 "12345 678", "x"]
    batch = _batch(texts)
    batch.alive[-1] = False
    rule = LanguageRule(languages, min_score, max_chars=500)
    rule.score(batch)
    for text, lang, score, alive in zip(texts, batch.columns["lang"].to_pylist(),
                                        batch.columns["lang_score"].to_pylist(), batch.alive):
        if not alive:
            assert lang is None and score is None
            continue
        want_lang, want_score = _reference_language(rule, text)
        assert lang == want_lang and (score >= min_score) == (want_score >= min_score), text
        assert score == pytest.approx(want_score, abs=1e-6) or score < want_score < min_score, text


def test_lid_text_and_word_shares() -> None:
    texts = pa.array(["Cute Yellow Chick NAPKIN", "NW Dell Vostro 15-3546 Latitude", "see https://x.test/a?b=1 or www.x.test",
                      "Jasper pendant, 'Bohemian Elegance' - Red", "don't stop", "Top10 Berlin 2019-20 4k", "",
                      "日本語のテキスト 12", "Über Café – naïve"])
    norm = lid_text(texts)
    assert [" ".join(t.split()) for t in norm.to_pylist()] == [
        "cute yellow chick napkin", "nw dell vostro latitude", "see or", "jasper pendant bohemian elegance red",
        "don't stop", "berlin", "", "日本語のテキスト", "über café naïve"]
    shares = word_shares(norm, pa.array(["cute", "yellow", "napkin", "dell", "see", "or", "stop", "berlin"]))
    assert shares.round(3).tolist() == [0.75, 0.25, 1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 0.0]


def test_language_rule_keeps_short_title_case_english_and_names_its_language() -> None:
    english = ["Cute yellow chick napkin", "pink lace halter top", "Danny Stowell & Kate Moore at UK Open 2009",
               "Popsicle molds", "Rainbow Baby", "Westgate Hotel", "Custom Flower Arrangements"]
    foreign = ["Kostenloser Versand ab 50 Euro", "Seorang pria berkaos merah sedang duduk di tepi jalan.",
               "Sichere Bezahlung", "5 estrellas"]
    batch = _batch(english + foreign)
    LanguageRule(("en",), FilterConfig().min_lang_score).apply(batch, StageStats("t"))
    assert batch.alive.tolist() == [True] * len(english) + [False] * len(foreign)
    assert batch.columns["lang"].to_pylist()[:len(english)] == ["en"] * len(english), "kept rows name an allowed language"


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
    rule = DuplicateRule()
    stats = StageStats("t")
    b1 = _batch(["a red car", "a blue car", "a red car"], ["u1", "u2", "u1"])
    rule.apply(b1, stats)
    b2 = _batch(["a red car", "a red car", "a blue car"], ["u1", "u3", "u2"])
    rule.apply(b2, stats)
    assert list(b1.alive) == [True, True, False]
    assert list(b2.alive) == [False, True, False]
    assert stats.dropped == {"duplicate": 3}


def test_duplicate_rule_uses_the_precomputed_repeat_mask() -> None:
    batch = _batch(["a red car", "a red car", "a blue car"], ["u1", "u1", "u2"])
    batch.repeat = np.array([True, False, True])
    DuplicateRule().apply(batch, StageStats("t"))
    assert list(batch.alive) == [False, True, False]


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
    with pytest.raises(WitError, match="nope: not found"):
        run_filter(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WitError, match="no parquet parts"):
        run_filter(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.parquet").write_bytes(b"not parquet")
    with pytest.raises(WitError, match="x.parquet: not a readable parquet file"):
        run_filter(tmp_path / "bad", tmp_path / "out")


def test_run_filter_exact_duplicates_with_tiny_buckets(tmp_path: Path) -> None:
    good = [(f"http://x.test/{i}.jpg", f"A photo of a red bicycle number {i}") for i in range(40)]
    for n in range(5):  # every part repeats some pairs of the others, in a different order
        _write_part(tmp_path / "in" / f"part-{n}.parquet", good[n * 5: n * 5 + 20][::-1 if n % 2 else 1])
    stats = run_filter(tmp_path / "in", tmp_path / "out", FilterConfig(dedup_bucket_rows=7, batch_rows=6))
    kept = _read(tmp_path / "out" / "kept")
    assert stats.inputs == 100 and stats.kept == 40 == kept.num_rows and dict(stats.dropped) == {"duplicate": 60}
    assert sorted(kept.column("url").to_pylist()) == sorted(u for u, _ in good)
    assert stats.extra["dedup_buckets"] == 15 and stats.extra["dedup_repeats"] == 60
    first = pq.read_table(tmp_path / "out" / "kept" / "part-0.parquet").column("url").to_pylist()
    assert first == [u for u, _ in good[:20]], "the first occurrence (first part by name, then row order) is kept"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith((".tmp-", "_work"))], \
        "the shuffle's files are removed"


def test_rejected_rows_are_not_language_scored(tmp_path: Path) -> None:
    _write_part(tmp_path / "in" / "part-a.parquet", PART0)
    run_filter(tmp_path / "in", tmp_path / "out")
    rejected = _read(tmp_path / "out" / "rejected").to_pylist()
    by_reason = {r["reason"]: r for r in rejected}
    assert by_reason["filename"]["lang"] is None and by_reason["filename"]["lang_score"] is None
    assert by_reason["language"]["lang"] == "de" and by_reason["language"]["lang_score"] < FilterConfig().min_lang_score


def test_run_filter_stores_repaired_captions(tmp_path: Path) -> None:
    rows = [("http://x.test/1.jpg", "Danny Stowell &amp; Kate Moore at the <b>UK Open</b> 2009"),
            ("http://x.test/2.jpg", "A black dog running on the beach at sunset"),
            ("http://x.test/3.jpg", "&nbsp;")]
    _write_part(tmp_path / "in" / "part-a.parquet", rows)
    stats = run_filter(tmp_path / "in", tmp_path / "out")
    kept = _read(tmp_path / "out" / "kept")
    assert kept.column("caption").to_pylist() == ["Danny Stowell & Kate Moore at the UK Open 2009", rows[1][1]]
    assert kept.column("uid").to_pylist() == [make_uid(u, c) for u, c in rows[:2]], "uids stay those of the input"
    assert dict(stats.dropped) == {"too_short": 1} and stats.extra["cleaned_html_markup"] == 2


def test_config_validation_and_pickling() -> None:
    with pytest.raises(WitError, match=r"filter.rules\[1\]: expected one of .*, got 'nsfw'"):
        FilterConfig(rules=("filename", "nsfw"))
    with pytest.raises(WitError, match="min_lang_score"):
        FilterConfig(min_lang_score=2.0)
    rules = build_rules(FilterConfig())
    assert [r.name for r in rules] == ["bad_type", "html_markup", "filename", "control_chars", "mojibake", "too_short",
                                       "too_few_words", "too_long", "too_many_words", "duplicate", "language"]
    rules[-1].apply(_batch(ENGLISH), StageStats("t"))  # loads the model (cached per process, not on the rule)
    assert [r.name for r in pickle.loads(pickle.dumps(rules))] == [r.name for r in rules]

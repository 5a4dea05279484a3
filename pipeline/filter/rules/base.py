"""The rule machinery: a :class:`Batch` under evaluation and the base :class:`Rule`.

A rule only decides: it may add score columns (``score``) and returns a mask of the rows it rejects
(``decide``), or repairs captions (``clean``); :meth:`Rule.apply` does the bookkeeping (only rows still
alive can be rejected, the first rule that rejects a row is its ``reason``, counts go into the stats).
Regex rules share one RE2 screening pass per batch (:class:`ScreenedRule`, :func:`screened`) and run
their own regexes on its hits only.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.stats import StageStats


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


def utf8_buffers(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (from 0) and bytes of a string array, as NumPy views (no copy)."""
    n = len(strings)
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=strings.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8)[offsets[0]:offsets[-1]] if data_buf else np.zeros(0, np.uint8)
    return offsets - offsets[0], data


@dataclasses.dataclass
class Batch:
    """One record batch under evaluation: trimmed captions, urls, the rows alive, and added columns.

    ``repeat`` (when known) marks rows whose (url, caption) pair occurred earlier in the input;
    ``cleaned`` (once a rule rewrote a caption) marks the rows whose caption is no longer the input's.
    """

    captions: pa.Array
    urls: pa.Array
    alive: np.ndarray
    reasons: np.ndarray
    columns: dict[str, Any] = dataclasses.field(default_factory=dict)
    repeat: np.ndarray | None = None
    cleaned: np.ndarray | None = None
    missing: np.ndarray | None = None

    @classmethod
    def from_record_batch(cls, batch: pa.RecordBatch) -> "Batch":
        """Wrap a record batch with ``url`` and ``caption`` columns (nulls become empty strings and are
        marked in ``missing``)."""
        n = batch.num_rows
        captions = caption_column(batch.column("caption"))
        urls = url_column(batch.column("url"))
        missing = as_mask(pc.or_(pc.is_null(batch.column("url")), pc.is_null(batch.column("caption"))))
        return cls(captions, urls, np.ones(n, dtype=bool), np.full(n, None, dtype=object), missing=missing)

    def score(self, name: str, compute: Callable[["Batch"], Any]) -> Any:
        """The score column ``name``, computed once per batch and shared by the rules that threshold it."""
        if name not in self.columns:
            self.columns[name] = compute(self)
        return self.columns[name]

    def rewrite(self, rows: np.ndarray, texts: list[str]) -> None:
        """Replace the captions of ``rows`` (ascending) with ``texts``; score columns computed on the old
        captions are dropped."""
        mask = np.zeros(len(self.captions), dtype=bool)
        mask[rows] = True
        self.captions = pc.replace_with_mask(self.captions, pa.array(mask), pa.array(texts, pa.string()))
        self.cleaned = mask if self.cleaned is None else self.cleaned | mask
        self.columns.clear()


class Rule:
    """Base class: subclasses set ``name`` and implement ``decide`` (and optionally ``score``, or ``clean``
    for a rule that repairs captions rather than rejecting them)."""

    name: ClassVar[str] = ""

    def clean(self, batch: Batch) -> tuple[np.ndarray, list[str]]:
        """Rows (ascending) whose caption this rule repairs, and their repaired text; none by default."""
        return np.zeros(0, dtype=np.int64), []

    def score(self, batch: Batch) -> None:
        """Add score columns to ``batch.columns`` (for every row, so thresholds can be re-tuned)."""

    def decide(self, batch: Batch) -> np.ndarray:
        """A boolean mask of the rows this rule rejects (only alive rows count)."""
        raise NotImplementedError

    def apply(self, batch: Batch, stats: StageStats) -> int:
        """Clean, score, decide, mark the newly rejected rows with this rule's name and count them (the
        repaired captions are counted in ``stats.extra["cleaned_<name>"]``)."""
        if not batch.alive.any():
            return 0
        rows, texts = self.clean(batch)
        if len(rows):
            batch.rewrite(rows, texts)
            key = f"cleaned_{self.name}"
            stats.extra[key] = stats.extra.get(key, 0) + len(rows)
        self.score(batch)
        rejected = np.asarray(self.decide(batch), dtype=bool) & batch.alive
        n = int(rejected.sum())
        if n:
            batch.reasons[rejected] = self.name
            batch.alive &= ~rejected
            stats.drop(self.name, n)
        return n


def as_mask(array: pa.Array) -> np.ndarray:
    """A pyarrow boolean array as a numpy mask (nulls are False)."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def regex_mask(captions: pa.Array, regex: str) -> np.ndarray:
    """Rows whose caption matches ``regex`` anywhere (case-insensitive)."""
    return as_mask(pc.match_substring_regex(captions, regex, ignore_case=True))


def regex_on(captions: pa.Array, rows: np.ndarray, regex: str) -> np.ndarray:
    """Which of ``rows`` (indices into ``captions``) match ``regex`` anywhere (case-insensitive)."""
    if not len(rows):
        return np.zeros(0, dtype=bool)
    return regex_mask(captions.take(pa.array(rows, pa.int64())), regex)


@functools.lru_cache(maxsize=16)
def alternation(regexes: tuple[str, ...]) -> str:
    """One RE2 alternation of ``regexes``: it matches a text iff one of them does."""
    return "|".join(f"(?:{regex})" for regex in regexes)


#: The shared screen: every :class:`ScreenedRule` subclass's ``screen`` regexes, in definition order.
SHARED_SCREEN: list[str] = []


class ScreenedRule(Rule):
    """A regex rule that looks only at the rows of the shared screen (:func:`screened`).

    A subclass lists in ``screen`` regexes that every row it can reject matches (one of them); defining
    the class adds them to :data:`SHARED_SCREEN`.
    """

    screen: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SHARED_SCREEN.extend(regex for regex in cls.screen if regex not in SHARED_SCREEN)


def screened(batch: Batch) -> np.ndarray:
    """Rows of ``batch`` that a screened rule could reject: one RE2 pass per batch, shared by those rules.

    Arrow's RE2 costs about 90 ns a row and pass whatever the pattern, so one combined pass and then
    each rule's own regexes on the few screened rows is several times cheaper than a pass per rule.
    """
    return batch.score("regex_screen", lambda b: regex_mask(b.captions, alternation(tuple(SHARED_SCREEN))))


class MissingValueRule(Rule):
    """Rejects rows whose ``url`` or ``caption`` is null (not a string): always applied, first."""

    name = "bad_type"

    def decide(self, batch: Batch) -> np.ndarray:
        return batch.missing if batch.missing is not None else np.zeros(len(batch.alive), dtype=bool)

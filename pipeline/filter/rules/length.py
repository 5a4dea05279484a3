"""Caption length in characters (code points) and words (whitespace-separated, as fastText splits).

Each rule thresholds one shared score column (``n_chars`` or ``n_words``); a limit of 0 turns it off.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow.compute as pc

from pipeline.filter.rules.base import Batch, Rule, utf8_buffers


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

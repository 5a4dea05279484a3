"""The language rule: captions that are not in one of the allowed languages.

Real alt text is short, Title-Case and full of model numbers, where lid.176 alone is unsure (it knows
few words: ``Cute yellow chick napkin`` gets en 0.12). So the rule scores what a reader would go by:
fastText's probability of the ALLOWED languages (their mass among its ``k`` best labels, not the top
label) on a normalised text (:func:`lid_text`: case-folded, URLs and tokens with digits dropped,
punctuation turned into spaces), blended with the share of the caption's words that are common words
of an allowed language (wordfreq's ``small`` lists, :func:`word_shares`) as far as fastText is unsure. It runs last, on the rows
still alive only, each distinct normalised caption of a batch scored once.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import WitError
from pipeline.filter.rules.base import Batch, Rule, utf8_buffers
from pipeline.filter.rules.lid import LidModel, default_lid_model, load_lid_model, predict_top_k

#: What fastText and the word lists do not see: URLs, tokens with a digit (model numbers, SKUs, sizes,
#: years: "a10-7800", "15/", "2019-20"), quotes around words, and every run of characters other than
#: letters, digits, apostrophes and the space (punctuation, symbols, other whitespace), each replaced by
#: a space. Plain spaces are left alone: a replacement per word costs three times the whole pass.
LID_NOISE = r"(?:https?://|www\.)\S*|[\w\-./+#&]*\pN[\w\-./+#&]*|\B'|'\B|[^\pL\pM\pN ']+"


def lid_text(captions: pa.Array) -> pa.Array:
    """Captions as the language rule reads them: lower case, ``LID_NOISE`` replaced by spaces."""
    _, data = utf8_buffers(captions)
    lower = pc.ascii_lower(captions) if not np.any(data >= 0x80) else pc.utf8_lower(captions)
    return pc.replace_substring_regex(lower, LID_NOISE, " ")


def wordlist_dir() -> Path | None:
    """The data folder of the installed wordfreq package (found, not imported: its import costs ~0.1 s)."""
    spec = importlib.util.find_spec("wordfreq")
    return None if spec is None or spec.origin is None else Path(spec.origin).resolve().parent / "data"


@functools.lru_cache(maxsize=4)
def load_vocabulary(languages: tuple[str, ...]) -> pa.Array:
    """The common words of those ``languages`` wordfreq has: its ``small`` lists (frequency at least one
    per million words), read from its wheel's data files; empty when it has none of them."""
    folder = wordlist_dir()
    words: set[str] = set()
    for lang in languages if folder is not None else ():
        path = folder / f"small_{lang}.msgpack.gz"
        if path.is_file():
            words.update(_wordlist(path))
    return pa.array(sorted(words), pa.string())


def _wordlist(path: Path) -> list[str]:
    """The words of one wordfreq list: a gzipped msgpack of a header and one list of words per frequency bin."""
    import msgpack  # a dependency of wordfreq, so present wherever its lists are

    header, *bins = msgpack.unpackb(gzip.decompress(path.read_bytes()), raw=False)
    if header != {"format": "cB", "version": 1}:
        raise WitError(f"{path}: not a wordfreq cB word list (header {header})")
    return [word for words in bins for word in words]


def word_shares(texts: pa.Array, vocabulary: pa.Array) -> np.ndarray:
    """Share of each text's words (space-separated, two bytes or more) found in ``vocabulary``; 0 for a
    text without such words. Vectorised: one split, one hash lookup over all the words."""
    words = pc.split_pattern(texts, " ")
    flat = words.flatten()
    long = np.diff(utf8_buffers(flat)[0]) >= 2
    found = np.asarray(pc.is_in(flat, value_set=vocabulary).to_numpy(zero_copy_only=False)) & long
    bounds = np.asarray(words.offsets) - np.asarray(words.offsets)[0]
    n_long, n_found = (np.diff(np.concatenate(([0], np.cumsum(x)))[bounds]) for x in (long, found))
    return np.divide(n_found, n_long, out=np.zeros(len(texts)), where=n_long > 0)


class LanguageRule(Rule):
    """Captions whose language score is below ``min_score``.

    Score column ``lang_score``: ``(1 - word_weight)`` x fastText's probability of the allowed languages
    (the sum over the allowed labels among its ``k`` best) + ``word_weight`` x the share of common
    allowed-language words x fastText's doubt (1 minus its top probability when the top label is not
    allowed, else 1: the word lists share many words with other languages, "une image avec un anneau
    rouge" is 3/4 English words, so words only count as far as fastText is unsure of another
    language). ``word_weight`` is 0 when wordfreq has none of the languages. Each line gets
    ``k=1`` first; the ``k`` best only where the top label does not settle the allowed probability (it is
    not allowed, or several languages are) and that probability could still lift the score to
    ``min_score``: where fastText is sure of another language, it is taken as 0 (so ``lang_score`` is
    exact at any threshold from ``min_score`` up, and everywhere when ``min_score`` is 0). Column ``lang``:
    fastText's top language, or for a kept caption whose top language is not allowed, its best allowed
    one (the first allowed language when none is among the ``k``: a caption kept on its words).
    fastText reads the first ``max_chars`` characters. Rows not alive get a null ``lang`` and ``lang_score``.
    """

    name = "language"

    def __init__(self, languages: tuple[str, ...], min_score: float, model_path: str = "",
                 max_chars: int = 500, k: int = 3, word_weight: float = 0.4) -> None:
        self.languages, self.min_score = tuple(languages), min_score
        self.model_path = model_path  # loaded lazily, so the rule pickles
        self.max_chars, self.k, self.word_weight = max_chars, k, word_weight

    def score(self, batch: Batch) -> None:
        n, dead = len(batch.captions), ~batch.alive
        alive = np.flatnonzero(batch.alive)
        texts = batch.captions if len(alive) == n else batch.captions.take(pa.array(alive, pa.int64()))
        encoded = pc.dictionary_encode(lid_text(self._clip(texts)))
        lid = load_lid_model(self.model_path or str(default_lid_model()))
        labels, scores = self.score_texts(lid, encoded.dictionary)
        index = encoded.indices.to_numpy(zero_copy_only=False)
        label = np.full(n, lid.no_label, dtype=np.int32)
        score = np.zeros(n, dtype=np.float32)
        label[alive], score[alive] = labels[index], scores[index]
        batch.columns["lang"] = lid.codes.take(pa.array(label, mask=dead))
        batch.columns["lang_score"] = pa.array(score, pa.float32(), mask=dead)

    def score_texts(self, lid: LidModel, texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Label rows (of ``lid.codes``) and scores of normalised texts (:func:`lid_text`)."""
        allowed = self._allowed(lid)
        top, p_top = (a[:, 0] for a in predict_top_k(lid, texts, 1))
        doubt = np.where(allowed[top], 1.0, 1.0 - p_top)  # also the most the allowed labels can have
        weight, shares = self._word_shares(texts)
        words = weight * shares * doubt
        mass, best = self._allowed_mass(lid, texts, allowed, top, p_top, ceiling=(1.0 - weight) * doubt + words)
        scores = (1.0 - weight) * mass + words
        kept_on_other = (scores >= self.min_score) & ~allowed[top]
        return np.where(kept_on_other, best, top).astype(np.int32), scores.astype(np.float32)

    def _word_shares(self, texts: pa.Array) -> tuple[float, np.ndarray]:
        """The word weight (0 without a word list for the languages) and each text's common-word share."""
        vocabulary = load_vocabulary(self.languages)
        if not self.word_weight or not len(vocabulary):
            return 0.0, np.zeros(len(texts))
        return self.word_weight, word_shares(texts, vocabulary)

    def _allowed_mass(self, lid: LidModel, texts: pa.Array, allowed: np.ndarray, top: np.ndarray, p_top: np.ndarray,
                      ceiling: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The allowed labels' probability and the best allowed label row of each text: from the top label
        where that settles it, else from the ``k`` best, unless even the score's ``ceiling`` (with all the
        probability fastText leaves to other labels) is below ``min_score``."""
        mass = np.where(allowed[top], p_top, 0.0)
        best = np.where(allowed[top], top, lid.label_index.get(f"__label__{self.languages[0]}", lid.no_label))
        unsettled = ~allowed[top] | (len(self.languages) > 1)
        redo = np.flatnonzero(unsettled & (ceiling >= self.min_score))
        if len(redo) and self.k > 1:
            mass[redo], best[redo] = self._top_k_mass(lid, texts.take(pa.array(redo, pa.int64())), allowed, best[redo])
        return mass, best

    def _top_k_mass(self, lid: LidModel, texts: pa.Array, allowed: np.ndarray,
                    fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The allowed labels' probability among the ``k`` best of each text, and the best allowed label
        row (``fallback`` where none is among them)."""
        labels, probs = predict_top_k(lid, texts, self.k)
        allowed_probs = probs * allowed[labels]
        best = labels[np.arange(len(labels)), allowed_probs.argmax(axis=1)]
        return allowed_probs.sum(axis=1), np.where(allowed[labels].any(axis=1), best, fallback)

    def _allowed(self, lid: LidModel) -> np.ndarray:
        """Which rows of ``lid.codes`` are allowed languages."""
        return np.asarray(pc.is_in(lid.codes, pa.array(self.languages, pa.string())).to_numpy(zero_copy_only=False))

    def _clip(self, texts: pa.Array) -> pa.Array:
        """The first ``max_chars`` characters of each text (no pass when no text has that many bytes)."""
        offsets, _ = utf8_buffers(texts)
        if not self.max_chars or not len(texts) or int(np.diff(offsets).max()) <= self.max_chars:
            return texts
        return pc.utf8_slice_codeunits(texts, 0, self.max_chars)

    def decide(self, batch: Batch) -> np.ndarray:
        scores = batch.columns["lang_score"].to_numpy(zero_copy_only=False)
        return ~(np.nan_to_num(scores, nan=-1.0) >= self.min_score)

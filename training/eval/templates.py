"""Prompt templates for zero-shot classifiers (CLIP section 3.1.4: prompt engineering and ensembling).

A template is a ``str.format`` string with one ``{}`` for the class name. Sets: ``default`` (4 prompts),
``simple`` (open_clip's 7), ``openai`` (CLIP's 80 ImageNet prompts), or a file: ``.txt`` (one template a
line; blank lines and ``#`` comments skipped) or ``.json`` (a list of strings).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.core.errors import WitError
from pipeline.core.io import parse_json_strings

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.", "a picture of a {}.", "an image of a {}.")
TEMPLATE_SETS = ("default", "simple", "openai")


def _open_clip_set(name: str) -> tuple[str, ...]:
    """open_clip's template lambdas as format strings (each lambda applied to ``{}``)."""
    import open_clip

    lambdas = open_clip.OPENAI_IMAGENET_TEMPLATES if name == "openai" else open_clip.SIMPLE_IMAGENET_TEMPLATES
    return tuple(t("{}") for t in lambdas)


def check_templates(templates: Sequence[str], where: str = "templates") -> tuple[str, ...]:
    """The templates as a tuple, or a one-line error when one is not a format string with one ``{}``."""
    out = tuple(templates)
    if not out:
        raise WitError(f"{where}: no prompt templates")
    for t in out:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise WitError(f"{where}: template {t!r} needs exactly one '{{}}' for the class name")
        try:
            t.format("x")
        except (IndexError, KeyError, ValueError):
            raise WitError(f"{where}: template {t!r} is not a valid format string "
                           "(escape literal braces as {{ }})") from None
    return out


def load_templates_file(path: str | Path) -> tuple[str, ...]:
    """Templates from a ``.txt`` (one a line) or ``.json`` (list of strings) file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return check_templates(parse_json_strings(text, path, "template"), str(path))
    lines = [line.strip() for line in text.splitlines()]
    return check_templates([line for line in lines if line and not line.startswith("#")], str(path))


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A set name (default, simple, openai), a templates file, or a list of templates."""
    if isinstance(templates, (str, Path)):
        name = str(templates)
        if name == "default":
            return DEFAULT_TEMPLATES
        if name in TEMPLATE_SETS:
            return _open_clip_set(name)
        if Path(name).is_file():
            return load_templates_file(name)
        raise WitError(f"templates: {name!r} is neither a set ({', '.join(TEMPLATE_SETS)}) nor a file")
    return check_templates(templates)

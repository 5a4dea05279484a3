"""Typed stage configs: dataclasses that also drive ``wit`` options and ``--config`` files.

Each stage module defines a ``@dataclass`` config whose fields carry ``metadata={"help": ...}``.
``add_config_args`` turns it into argparse options and ``config_from_args`` back into an instance,
so the CLI, the Prefect flow and the tests all build the same typed object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.errors import WitError

C = TypeVar("C")


def field(default: Any, help: str, key: bool = True, **kw: Any) -> Any:
    """A dataclass field with a help text (shown by ``wit <stage> --help``). ``key=False`` marks an option
    that does not change a stage's output (workers, progress, addresses): it is left out of run keys."""
    meta = {"help": help, "key": key}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def output_options(cfg: Any) -> dict[str, Any]:
    """The options of a config that change a stage's output (what run keys hash), JSON-friendly."""
    return {f.name: to_dict(v) if dataclasses.is_dataclass(v := getattr(cfg, f.name)) else v
            for f in dataclasses.fields(cfg) if f.metadata.get("key", True)}


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int, ``tuple[str, ...]`` -> tuple, leaves plain types alone."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return origin or tp


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--option`` per dataclass field (``--no-x`` for booleans that default to true)."""
    hints = _hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        opt = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        if tp is bool:
            group.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif tp in (list, tuple):
            group.add_argument(opt, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text)
        elif tp is dict:
            group.add_argument(opt, dest=f.name, type=json.loads, default=argparse.SUPPRESS, help=help_text + " as JSON")
        else:
            group.add_argument(opt, dest=f.name, type=tp, default=argparse.SUPPRESS, help=help_text)


def config_from_args(cls: type[C], args: argparse.Namespace, base: C | None = None) -> C:
    """Build ``cls`` from parsed args: options given on the command line override ``base``."""
    cfg = base if base is not None else cls()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    return config_from_dict(cls, given, cfg)


def config_from_dict(cls: type[C], data: dict[str, Any] | None, base: C | None = None) -> C:
    """Build ``cls`` from a mapping, recursing into nested dataclass fields; unknown keys are an error."""
    data = dict(data or {})
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise WitError(f"{cls.__name__}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    cfg = base if base is not None else cls()
    updates: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            updates[key] = config_from_dict(type(current), value, current)
        elif _base_type(tp) is tuple and isinstance(value, list):
            updates[key] = tuple(value)
        else:
            updates[key] = value
    return dataclasses.replace(cfg, **updates)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with a one-line error naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise WitError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise WitError(f"{p}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise WitError(f"{p}: expected a mapping of options at the top level")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

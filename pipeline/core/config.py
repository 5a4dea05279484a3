"""The config contract: typed stage configs that are checked when they are built, and drive ``wit`` options
and ``--config`` files.

Every stage config is a ``@dataclass`` deriving from :class:`Config` (build and check order there), its fields
made with :func:`field` and checked by :func:`check_fields` (the type rules); a bad value is a :class:`ConfigError`,
one line naming the key, the value and what was expected: ``download.image_size: expected an integer >= 1, got -5``."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, NoReturn, TypeVar

from pipeline.core.errors import WitError
from pipeline.core.io import is_url
from pipeline.core.storage import Folder

C = TypeVar("C")
BOUNDS = ("min", "max", "gt", "lt", "choices")


# ---------------------------------------------------------------- the contract

class ConfigError(WitError):
    """A config value that breaks the contract: ``[<file>: ]<section>.<key>: <problem>``."""

    def __init__(self, section: str, key: str, problem: str, source: str = "") -> None:
        self.section, self.key, self.problem, self.source = section, key, problem, source
        super().__init__(f"{source}: {self.path}: {problem}" if source else f"{self.path}: {problem}")

    @property
    def path(self) -> str:
        """The dotted key from the top of the config: ``download.image_size``."""
        return f"{self.section}.{self.key}" if self.section else self.key

    def within(self, section: str, name: str) -> "ConfigError":
        """The same error seen from a config whose field ``name`` holds the config that raised it."""
        return ConfigError(section, f"{name}.{self.key}", self.problem, self.source)

    def in_file(self, source: str | os.PathLike) -> "ConfigError":
        return ConfigError(self.section, self.key, self.problem, str(source))


def field(default: Any, help: str, *, min: float | None = None, max: float | None = None,
          gt: float | None = None, lt: float | None = None, choices: typing.Iterable[Any] | None = None,
          key: bool = True, **kw: Any) -> Any:
    """A config field: its default, a help text (``wit <stage> --help``) and optional bounds: ``min``/``max``
    (inclusive), ``gt``/``lt`` (exclusive), ``choices`` (allowed values; of each item for a list field).
    ``key=False`` marks an option that does not change a stage's output (workers, progress, addresses): it is
    left out of run keys (:func:`output_options`)."""
    bounds = {"min": min, "max": max, "gt": gt, "lt": lt, "choices": tuple(choices) if choices is not None else None}
    metadata = {"help": help, "key": key, **{k: v for k, v in bounds.items() if v is not None}}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


class Config:
    """Base of every stage config (a dataclass): checked when built.

    However it is built (keywords, :func:`config_from_dict` from YAML/JSON, :func:`config_from_args` from the
    command line, ``dataclasses.replace``), :func:`check_fields` runs (each value against its type annotation,
    then its bounds) and then the :meth:`check` hook (rules between fields).
    ``class DownloadConfig(Config, section="download")`` names the section its errors start with; override
    :meth:`check` for rules between fields (it may also normalise values) and raise with :meth:`fail`."""

    section: ClassVar[str] = ""

    def __init_subclass__(cls, section: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if section:
            cls.section = section

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules between fields (none by default); called after each field passed :func:`check_fields`."""

    def validate(self: C) -> C:
        """Check again (after fields were assigned in place); return the config."""
        self.__post_init__()  # type: ignore[attr-defined]
        return self

    def fail(self, key: str, problem: str) -> NoReturn:
        """Raise the one-line :class:`ConfigError` of ``key`` in this config's section."""
        raise ConfigError(self.section, key, problem)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def check_fields(cfg: Any) -> None:
    """Check each field of the dataclass ``cfg`` against its type and bounds; store converted values (list ->
    tuple for tuple fields, int -> float, path -> str, mapping -> nested config).

    Types: a ``bool`` is exactly true or false (a string is not), an ``int`` is not a bool, a ``float`` takes an
    int, a ``str`` takes a path; ``tuple[str, ...]``/``list[str]`` take a list or tuple of such items (a plain
    string is refused, never split into letters) and are stored as the annotated container; ``dict``;
    ``X | None``; a nested config takes an instance or a mapping of its options. Bounds and choices apply to the
    items of lists."""
    cls = type(cfg)
    section = getattr(cls, "section", "")
    for f in dataclasses.fields(cfg):
        value, tp = getattr(cfg, f.name), _hints(cls)[f.name]
        if _is_section(tp):
            new = _section_value(cls, f.name, tp, value)
        else:
            try:
                new = _convert(value, tp, f.metadata)
            except _Mismatch as m:
                raise ConfigError(section, f.name + m.where, f"expected {m.expected}, got {m.shown}") from None
        if new is not value:
            object.__setattr__(cfg, f.name, new)


def _section_value(cls: type, name: str, tp: type, value: Any) -> Any:
    """A nested config field: an instance of ``tp``, or built from a mapping of its options (None: defaults)."""
    if isinstance(value, tp):
        return value
    if value is None or isinstance(value, dict):
        return _within(cls, name, lambda: config_from_dict(tp, value))
    raise ConfigError(getattr(cls, "section", ""), name, f"expected a mapping of {name} options, got {_shown(value)}")


def _within(cls: type, name: str, make: Callable[[], C]) -> C:
    """``make()``, with a ConfigError re-keyed under field ``name`` of ``cls``."""
    try:
        return make()
    except ConfigError as exc:
        raise exc.within(getattr(cls, "section", ""), name) from None


# ---------------------------------------------------------------- one value against its type

class _Mismatch(Exception):
    """``value`` is not what was ``expected``; ``where`` locates it inside the field (``[2]``, ``.name``)."""

    def __init__(self, expected: str, value: Any, kind: bool = True) -> None:
        super().__init__(expected)
        self.expected, self.where, self.kind = expected, "", kind
        self.shown = _shown(value) if kind else repr(value)  # the kind only when it is the wrong one

    def inside(self, where: str) -> "_Mismatch":
        self.where = where + self.where
        return self


_KIND_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
               tuple: "a list", dict: "a mapping"}
_TYPE_NAMES = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
               str: ("a string", "strings"), dict: ("a mapping", "mappings")}


def _shown(value: Any) -> str:
    """``'false' (a string)``, ``5 (an integer)``, ``null``."""
    if value is None:
        return "null"
    kind = _KIND_NAMES.get(type(value)) or ("a path" if isinstance(value, os.PathLike) else type(value).__name__)
    return f"{value!r} ({kind})"


def _convert(value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """``value`` if it is a ``tp`` within the bounds of ``meta`` (converted where lossless), else _Mismatch."""
    origin = typing.get_origin(tp) or tp
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, meta)
    if origin in (list, tuple):
        return _convert_items(value, tp, meta)
    if origin is dict:
        return _convert_mapping(value, tp)
    if tp is Any:
        return value
    return _check_bounds(_convert_scalar(value, tp, meta), tp, meta)


def _convert_union(value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    kind = True
    for alt in (a for a in args if a is not type(None)):
        try:
            return _convert(value, alt, meta)
        except _Mismatch as m:
            if m.where:  # the right kind of container, with a bad item: report that item
                raise
            kind = kind and m.kind
    raise _Mismatch(_expected(tp, meta), value, kind)


def _convert_items(value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """A list or tuple (never a string) whose items pass, as the annotated container."""
    container = typing.get_origin(tp) or tp
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(_expected(tp, meta), value)
    item_tp = (typing.get_args(tp) or (Any,))[0]
    items = []
    for i, item in enumerate(value):
        try:
            items.append(_convert(item, item_tp, meta))
        except _Mismatch as m:
            raise m.inside(f"[{i}]") from None
    unchanged = type(value) is container and all(a is b for a, b in zip(items, value))
    return value if unchanged else container(items)


def _convert_mapping(value: Any, tp: Any) -> dict:
    if not isinstance(value, dict):
        raise _Mismatch(_expected(tp, {}), value)
    key_tp, item_tp = typing.get_args(tp) or (Any, Any)
    out = {}
    for key, item in value.items():
        try:
            out[_convert(key, key_tp, {})] = _convert(item, item_tp, {})
        except _Mismatch as m:
            raise m.inside(f".{key}") from None
    return out


def _convert_scalar(value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    """bool exactly; int but not bool; float from int or float (not NaN); str, or a path as str."""
    if tp is bool:
        ok = type(value) is bool
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        value = float(value) if ok and type(value) is not float else value
    elif tp is str:
        ok = isinstance(value, (str, os.PathLike))
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise _Mismatch(_expected(tp, meta), value)
    return value


def _check_bounds(value: Any, tp: Any, meta: typing.Mapping[str, Any]) -> Any:
    choices, lo, hi = meta.get("choices"), meta.get("min"), meta.get("max")
    gt, lt = meta.get("gt"), meta.get("lt")
    ok = ((choices is None or value in choices) and (lo is None or value >= lo) and (hi is None or value <= hi)
          and (gt is None or value > gt) and (lt is None or value < lt))
    if not ok:
        raise _Mismatch(_expected(tp, meta), value, kind=False)
    return value


def _expected(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """What a field of type ``tp`` with bounds ``meta`` takes, in words: ``an integer >= 1``."""
    origin = typing.get_origin(tp) or tp
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        words = [_expected(a, meta) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin in (list, tuple):
        item_tp = (typing.get_args(tp) or (Any,))[0]
        return f"a list of {_TYPE_NAMES.get(item_tp, ('', 'values'))[1]}"
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(str, meta["choices"]))
    name = _TYPE_NAMES.get(origin, (f"a {getattr(origin, '__name__', origin)}",))[0]
    return " ".join([name, *_bound_words(meta)])


def _bound_words(meta: typing.Mapping[str, Any]) -> list[str]:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return [f"between {lo} and {hi}"]
    words = [f"{op} {meta[k]}" for k, op in (("min", ">="), ("gt", ">"), ("max", "<="), ("lt", "<"))
             if meta.get(k) is not None]
    return [" and ".join(words)] if words else []


# ---------------------------------------------------------------- building configs

def config_from_dict(cls: type[C], data: typing.Mapping[str, Any] | None, base: C | None = None) -> C:
    """Build ``cls`` from a mapping (YAML/JSON), over ``base`` when given (a nested section merges over
    ``base``'s); an unknown key is an error naming the nearest option."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise ConfigError(getattr(cls, "section", ""), str(key), _unknown(str(key), names))
    values = {key: _merged(cls, key, value, base) for key, value in data.items()}
    if base is not None:
        return dataclasses.replace(base, **values)
    _require(cls, values)
    return cls(**values)


def _unknown(key: str, names: list[str]) -> str:
    near = difflib.get_close_matches(key, names, n=1)
    return f"unknown option; did you mean {near[0]}?" if near else f"unknown option; known: {', '.join(names)}"


def _merged(cls: type, key: str, value: Any, base: Any) -> Any:
    """A nested section's mapping as that config (over ``base``'s section when given); any other value as given."""
    tp = _hints(cls)[key]
    if not _is_section(tp) or not isinstance(value, dict):
        return value
    return _within(cls, key, lambda: config_from_dict(tp, value, None if base is None else getattr(base, key)))


def _require(cls: type, values: dict[str, Any]) -> None:
    for f in dataclasses.fields(cls):
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and f.name not in values:
            raise ConfigError(getattr(cls, "section", ""), f.name, "missing (this option has no default)")


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


def _help(f: dataclasses.Field, default: Any, expected: str) -> str:
    """Plain text for ``--help``: no reStructuredText literals, ``%`` escaped for argparse."""
    bounds = f"; {expected}" if any(k in f.metadata for k in BOUNDS) else ""
    text = f"{f.metadata.get('help', '')} (default: {default!r}{bounds})"
    return text.replace("``", "").replace("%", "%%")


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--option`` per dataclass field (``--x``/``--no-x`` for booleans)."""
    hints = _hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        opt = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = _help(f, default, _expected(hints[f.name], f.metadata))
        if tp is bool:
            group.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif tp in (list, tuple):
            group.add_argument(opt, dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text)
        elif tp is dict:
            group.add_argument(opt, dest=f.name, type=json.loads, default=argparse.SUPPRESS, help=help_text + " as JSON")
        else:
            group.add_argument(opt, dest=f.name, type=tp, default=argparse.SUPPRESS, help=help_text)


def config_from_args(cls: type[C], args: argparse.Namespace, base: C | None = None) -> C:
    """Build ``cls`` from parsed args: options given on the command line override ``base`` (checked alike)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
             if getattr(args, f.name, None) is not None}
    return config_from_dict(cls, given, base)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file (local or URL) into a dict, with a one-line error naming the file."""
    import yaml

    p = str(path)
    try:
        data = yaml.load(_config_text(p), Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise WitError(f"{p}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise WitError(f"{p}: expected a mapping of options at the top level")
    return data


def _config_text(path: str) -> str:
    """The text of a config file: a local path or a URL (``wit build --config s3://.../build.yaml``)."""
    parent, name = path.rsplit("/", 1) if is_url(path) else (str(Path(path).parent), Path(path).name)
    try:
        return Folder(parent).read_bytes(name).decode()
    except (FileNotFoundError, IsADirectoryError):
        raise WitError(f"{path}: config file not found") from None
    except UnicodeDecodeError:
        raise WitError(f"{path}: not a text file") from None


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's safe loader, also reading ``1e-3`` (no dot) as a float, as YAML 1.2 and JSON do: it would
    otherwise be a string, which a float option refuses."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return Loader


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))

"""The one configuration system: :func:`key` (a default, its help text, its check and how the
command line spells it, in the one place a key is defined), the checks, and the functions that
read, check and describe any dataclass of such keys: :func:`update_settings`,
:func:`check_settings`, :func:`settings_help`.

The run's :class:`manifold_ssl.config.Config` is sections of keys; so are the settings of the
other commands (:class:`manifold_ssl.lm.LMConfig`,
:class:`manifold_ssl.experiments.simulate.SimulateConfig`, ...), which the command line turns
into flags (``--steps 400``, the same as ``--lm.steps=400``). A leaf module, so that a settings
section can be defined beside the package that reads it without that package importing the
run's config."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

import yaml

__all__ = [
    "NULLS",
    "Check",
    "Entries",
    "OneOf",
    "Text",
    "above",
    "at_least",
    "between",
    "check_flag",
    "check_settings",
    "coerce",
    "device_name",
    "dump_yaml",
    "given",
    "key",
    "list_of",
    "load_yaml",
    "non_empty_list_of",
    "one_of",
    "optional",
    "parse_text",
    "positive",
    "read_text",
    "settings_from",
    "settings_help",
    "update_settings",
    "value_text",
]

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what was expected


def key(
    default: Any = None,
    help: str = "",
    check: Check | None = None,
    factory: Any = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A config field: its default, its help text (``--help``), its check, and ``parse``, how
    a value typed on the command line reads (default: as YAML, :func:`parse_text`), all in the
    one place the key is defined."""
    meta = {"help": help, "check": check, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f">= {lo}"


def above(lo: float) -> Check:
    return lambda v: None if v > lo else f"> {lo}"


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def check(v: float) -> str | None:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else text

    return check


class OneOf:
    """The check that a value is one of ``options``: a list, or a function that lists them
    when checked (a registry's names, looked up without importing it at definition).
    ``options`` is what a key allows, for its error and for the tests that try every one."""

    def __init__(
        self,
        options: Iterable[str] | Callable[[], Iterable[str]],
        close: bool = False,
        none: bool = False,
    ) -> None:
        self._options = options
        self._close = close  # suggest the closest name in the error
        self._none = none  # None (not set) is allowed too

    @property
    def options(self) -> list[str]:
        found = self._options() if callable(self._options) else self._options
        return list(found)

    def __call__(self, v: Any) -> str | None:
        names = self.options
        if v in names or (v is None and self._none):
            return None
        close = suggest(v, names) if self._close and isinstance(v, str) else ""
        if v in (None, "null") and "none" in names:  # a string key: its "not set" is a word
            close = " (write none to leave it off: the key is not optional)"
        return f"one of {names}{close}"


def one_of(*options: str) -> Check:
    return OneOf(options)


def non_empty_list_of(item: Check) -> Check:
    def check(values: list[Any]) -> str | None:
        if not values:
            return "a non-empty list"
        bad = [item(v) for v in values]
        return next((f"a list of values {b}" for b in bad if b), None)

    return check


def positive(v: int) -> str | None:
    return None if v >= 1 else "a positive integer"


def given(v: Any) -> str | None:
    return None if v else "given"


def optional(check: Check) -> Check:
    """``check``, or None (the key's "not set"); the options of a :class:`OneOf` are kept."""
    if isinstance(check, OneOf):
        return OneOf(check._options, check._close, none=True)
    return lambda v: None if v is None else check(v)


def device_name(v: str) -> str | None:
    """A torch device as ``train.device`` takes it."""
    ok = v in ("auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", v) is not None
    return None if ok else "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def list_of(item: Check) -> Check:
    return lambda values: non_empty_list_of(item)(values) if values else None


# --------------------------------------------------------------------------- reading settings
def suggest(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _CoreLoader(yaml.SafeLoader):
    """PyYAML's safe loader under YAML 1.2's core schema, the one way keys are read (recipes,
    sweep specs, run configs, ``--key=value``): booleans are ``true``/``false`` only (YAML 1.1,
    PyYAML's default, also reads off/on/yes/no/y/n as booleans: ``train.wandb: off`` was
    False), numbers are decimal (``010`` is ten, ``1e-4`` a number), no dates, no base 60
    (``8:32`` is text)."""

    yaml_implicit_resolvers: typing.ClassVar[dict[Any, list[tuple[str, re.Pattern[str]]]]] = {}


_CORE = (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^(?:<<)$", "<"),
)
for _tag, _pattern, _first in _CORE:
    _CoreLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )


def _core_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


_CoreLoader.add_constructor("tag:yaml.org,2002:int", _core_int)


class _QuotingDumper(yaml.SafeDumper):
    """PyYAML's safe dumper quoting every string that either YAML 1.1 or 1.2 would read as
    something else ('off', '1e-4'), so that any YAML reader gets the string back."""


for _tag, _pattern, _first in _CORE:
    _QuotingDumper.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )

#: The texts an optional key reads as None (not set).
NULLS = ("", "~", "null", "Null", "NULL")


def load_yaml(text: str) -> Any:
    """A YAML document read under YAML 1.2's core schema (:class:`_CoreLoader`)."""
    return yaml.load(text, Loader=_CoreLoader)  # a SafeLoader: no arbitrary objects


def dump_yaml(value: Any, **kwargs: Any) -> str:
    """``value`` as YAML that :func:`load_yaml` and ``yaml.safe_load`` both read back."""
    return yaml.dump(value, Dumper=_QuotingDumper, **kwargs)


def parse_text(text: str) -> Any:
    """A value typed as ``--key=value`` for a key of no string type: a YAML scalar, list or
    mapping (0.1, true, null, [0.01, 0.1], {lambd: 0.1}) under YAML 1.2's core schema; text
    that is not YAML stays text."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


class Text(str):
    """A value as the user typed it (``--key=value``), read by the type of the key it sets
    (:func:`read_text`) once that key is known."""


class Entries(dict[str, Any]):
    """Entries of a mapping key given one by one by dotted paths (``--method.loss.nuclear=
    polar``): they update the key's mapping, keeping its other entries, where a whole mapping
    (``--method.loss='{nuclear: polar}'``, a recipe's) replaces it."""


def _merged(current: dict[str, Any], entries: Entries) -> dict[str, Any]:
    merged = dict(current)
    for name, value in entries.items():
        inner = merged.get(name)
        deeper = isinstance(value, Entries) and isinstance(inner, dict)
        merged[name] = _merged(inner, value) if deeper else value  # type: ignore[arg-type]
    return merged


def _members(tp: Any) -> tuple[Any, ...]:
    """The types an annotation allows: a union's members, else the type itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _unquoted(text: str) -> str:
    """``text``, or the string inside it when it is a YAML-quoted scalar ('null', "off")."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            inner = load_yaml(text)
        except yaml.YAMLError:
            return text
        if isinstance(inner, str):
            return inner
    return text


def read_text(text: str, tp: Any) -> Any:
    """The value of ``text`` typed for a key of type ``tp``, the one rule for text: a string
    key takes the text as typed (``off``, ``no``, ``null``, ``1e-4`` stay text; a YAML-quoted
    text is unquoted); an optional key reads null, ~ and the empty text as None (not set);
    every other type reads the text as YAML (:func:`parse_text`). A string-or-mapping key
    takes a mapping or list when one is typed."""
    allowed = _members(tp)
    if type(None) in allowed and text.strip() in NULLS:
        return None
    if str not in allowed:
        return parse_text(text)
    value = parse_text(text)
    containers = {typing.get_origin(a) or a for a in allowed} & {list, dict}
    if isinstance(value, (list, dict)) and type(value) in containers:
        return value
    return _unquoted(text)


def _resolved(value: Any) -> Any:
    """``value`` with the typed texts inside it read as YAML (the entries of a mapping key
    such as ``method.loss``, whose values have no declared type)."""
    if isinstance(value, Text):
        return parse_text(value)
    if isinstance(value, dict):
        return {k: _resolved(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    """``value`` in an error: null, true and false as YAML writes them, the rest as repr."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against the annotation ``tp`` (an int where a float is expected is
    converted); an error naming the key ``name`` and the type expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, name)
            except ValueError:
                continue
        raise ValueError(f"config key {name!r} expects {tp}, got {_shown(value)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {name!r} expects a list, got {_shown(value)}")
        (arg,) = typing.get_args(tp)
        return [coerce(v, arg, name) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} expects a mapping, got {_shown(value)}")
        return _resolved(dict(value))
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {name!r} expects a number, got {_shown(value)}")
        if not math.isfinite(value):
            raise ValueError(f"config key {name!r} must be finite, got {_shown(value)}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {name!r} expects an integer, got {_shown(value)}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {name!r} expects true or false, got {_shown(value)}")
        return value
    if tp is str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # --model.projector=128 reads as an integer
        if not isinstance(value, str):
            raise ValueError(f"config key {name!r} expects a string, got {_shown(value)}")
        return str(value)  # not a Text: the config holds plain values
    return _resolved(value)


def _value(f: dataclasses.Field[Any], tp: Any, value: Any, name: str) -> Any:
    """``value`` for the key ``f`` of type ``tp``: a string read by the key's ``parse`` when
    it has one (text typed on the command line), then checked against the type."""
    if isinstance(value, Text) or (isinstance(value, str) and f.metadata.get("parse")):
        try:
            value = _from_text(f, tp, value)
        except ValueError as err:
            raise ValueError(f"config key {name!r}: {err}") from None
    return coerce(value, tp, name)


def _from_text(f: dataclasses.Field[Any], tp: Any, text: str) -> Any:
    """Text typed for the key ``f`` of type ``tp``: None for null where the key is optional,
    else read by the key's ``parse`` when it has one (its shorthand, ``16:64``; a YAML list or
    mapping it does not read, the form ``--help`` shows, is read as YAML), or by
    :func:`read_text`."""
    if type(None) in _members(tp) and text.strip() in NULLS:
        return None
    parse = f.metadata.get("parse")
    if parse is None:
        return read_text(text, tp)
    try:
        return parse(str(text))
    except ValueError:
        value = parse_text(text)
        if isinstance(value, (list, dict)):
            return value
        raise


def _fields(cls: Any, values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The fields of ``cls`` named in ``values`` (unknown names are errors), with their types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            full = f"{prefix}.{name}" if prefix else name
            raise ValueError(f"unknown config key {full!r}{suggest(name, fields)}")
    return fields


def update_settings(obj: Any, values: Mapping[str, Any], prefix: str = "") -> None:
    """Set the keys of the dataclass ``obj`` (nested sections too) from ``values``, strict
    about names and types."""
    hints = typing.get_type_hints(type(obj))
    fields = _fields(obj, values, prefix)
    for name, value in values.items():
        full = f"{prefix}.{name}" if prefix else name
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config key {full!r} is a section; got {value!r}")
            update_settings(current, value, full)
        else:
            if isinstance(value, Entries) and isinstance(current, dict):
                value = _merged(current, value)
            setattr(obj, name, _value(fields[name], hints[name], value, full))


def check_settings(obj: Any, prefix: str = "") -> None:
    """Every key of the dataclass ``obj`` (and of its sections) against the check defined
    beside it; the error names the key and what was expected."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        full = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            check_settings(value, full)
            continue
        check = f.metadata.get("check")
        expected = check(value) if check is not None else None
        if expected:
            raise ValueError(f"{full} must be {expected}, got {value!r}")


def settings_from(cls: Callable[..., Any], values: Mapping[str, Any], prefix: str = "") -> Any:
    """The flat settings dataclass ``cls`` made from ``values`` (the rest at their defaults),
    each read and checked; ``prefix`` names the section in errors (``lm.steps must be ...``)."""
    hints = typing.get_type_hints(cls)
    fields = _fields(cls, values, prefix)
    kwargs = {
        name: _value(fields[name], hints[name], value, f"{prefix}.{name}" if prefix else name)
        for name, value in values.items()
    }
    obj = cls(**kwargs)
    check_settings(obj, prefix)
    return obj


def check_flag(cls: Any, name: str, text: str, prefix: str = "") -> Any:
    """The value of key ``name`` of the settings dataclass ``cls`` typed on the command line as
    ``text``, read and checked alone; ValueError("expected ..., got 'text'") otherwise (with
    ``prefix``, the error names the key ``prefix.name``)."""
    f = _fields(cls, {name: text}, prefix)[name]
    try:
        return _flag(f, typing.get_type_hints(cls)[name], name, text)
    except ValueError as err:
        raise ValueError(f"--{prefix}.{name}: {err}" if prefix else str(err)) from None


def _flag(f: dataclasses.Field[Any], tp: Any, name: str, text: str) -> Any:
    try:
        value = coerce(_from_text(f, tp, text), tp, name)
    except ValueError as err:
        if str(err).startswith("expected"):
            raise
        raise ValueError(f"expected {_kind(tp)}, got {text!r}") from None
    check = f.metadata.get("check")
    expected = check(value) if check is not None else None
    if expected:
        raise ValueError(f"expected {expected}, got {text!r}")
    return value


def _kind(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return " or ".join(names.get(a, str(a)) for a in args)


def settings_help(obj: Any, prefix: str = "") -> list[str]:
    """``--prefix.key=default  help`` for every key of the dataclass ``obj``, one line each."""
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        full = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            lines += settings_help(value, full)
            continue
        lines.append(f"  --{full}={value_text(value)}  {f.metadata.get('help', '')}")
    return lines


def value_text(value: Any) -> str:
    """The text that ``--key=TEXT`` reads back as ``value`` (:func:`read_text`): a string as
    it is (``off``), quoted only where it would read as something else (the empty text,
    ``null`` for an optional key); anything else as flow-style YAML."""
    if isinstance(value, str) and value.strip() not in NULLS and _unquoted(value) == value:
        return value
    return (
        dump_yaml(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    )

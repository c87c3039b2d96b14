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
    "Check",
    "above",
    "at_least",
    "between",
    "check_flag",
    "check_settings",
    "coerce",
    "device_name",
    "given",
    "key",
    "list_of",
    "non_empty_list_of",
    "one_of",
    "optional",
    "parse_text",
    "positive",
    "settings_from",
    "settings_help",
    "update_settings",
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


def one_of(*options: str) -> Check:
    return lambda v: None if v in options else f"one of {list(options)}"


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
    """``check``, or None (the key's "not set")."""
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


def parse_text(text: str) -> Any:
    """A value typed as ``--key=value``: a YAML scalar or list (0.1, true, null, [0.01, 0.1],
    cifar10); text that is not YAML stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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
        raise ValueError(f"config key {name!r} expects {tp}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {name!r} expects a list, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [coerce(v, arg, name) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {name!r} expects a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {name!r} expects a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"config key {name!r} must be finite, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {name!r} expects an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {name!r} expects true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # --model.projector=128 reads as an integer
        if not isinstance(value, str):
            raise ValueError(f"config key {name!r} expects a string, got {value!r}")
        return value
    return value


def _value(f: dataclasses.Field[Any], tp: Any, value: Any, name: str) -> Any:
    """``value`` for the key ``f`` of type ``tp``: a string read by the key's ``parse`` when
    it has one (text typed on the command line), then checked against the type."""
    parse = f.metadata.get("parse")
    if parse is not None and isinstance(value, str):
        try:
            value = parse(value)
        except ValueError as err:
            raise ValueError(f"config key {name!r}: {err}") from None
    return coerce(value, tp, name)


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
    parse = f.metadata.get("parse")
    try:
        value = parse(text) if parse is not None else parse_text(text)
        value = coerce(value, tp, name)
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
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
        lines.append(f"  --{full}={shown.strip()}  {f.metadata.get('help', '')}")
    return lines

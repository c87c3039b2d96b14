"""The fields of the configuration: :func:`key` (a default, its help text and its check, in
the one place a key is defined) and the checks. A leaf module, so that a settings section can
be defined beside the package that reads it (:class:`manifold_ssl.evaluation.settings.EvalConfig`)
and assembled into :class:`manifold_ssl.config.Config` without that package importing the
config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

__all__ = [
    "Check",
    "above",
    "at_least",
    "between",
    "key",
    "list_of",
    "non_empty_list_of",
    "one_of",
]

Check = Callable[[Any], "str | None"]  # None when the value is fine, else what was expected


def key(
    default: Any = None, help: str = "", check: Check | None = None, factory: Any = None
) -> Any:
    """A config field: its default, its help text (``pretrain --help``) and its check, all in
    the one place the key is defined."""
    meta = {"help": help, "check": check}
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


def list_of(item: Check) -> Check:
    return lambda values: non_empty_list_of(item)(values) if values else None

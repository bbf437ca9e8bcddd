"""The base of every settings class: ``to_dict`` and ``from_dict`` (unknown fields refused, nested configs read)."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, fields

from embedcache.errors import ConfigError

_KINDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def _fits(kind, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return True


def _describe(kind) -> str:
    """How a field's type reads in a message: ``a whole number``, ``a number or null``, ..."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(kind) is tuple:
        return f"a list of {_describe(args[0]).removeprefix('a ')}s"
    return _KINDS.get(kind, getattr(kind, "__name__", str(kind)))


def type_problem(cls, name: str, value) -> str | None:
    """Why ``value`` cannot be field ``name`` of config class ``cls``, or None when its type fits.

    Checked against the field's annotation before the dataclass sees it, so
    ``epochs: "ten"`` is refused as "must be a whole number, not 'ten'"
    instead of failing later inside a comparison.

    >>> from embedcache.config import FitConfig
    >>> type_problem(FitConfig, "epochs", "ten")
    "must be a whole number, not 'ten'"
    >>> type_problem(FitConfig, "split_seed", None) is None
    True
    """
    kind = typing.get_type_hints(cls)[name]
    if isinstance(kind, type) and issubclass(kind, _Config):
        return None if isinstance(value, (dict, kind)) else f"must be a mapping of settings, not {value!r}"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        ok = any(value is None if a is type(None) else _fits(a, value) for a in args)
    elif origin is tuple:
        ok = isinstance(value, (list, tuple)) and all(_fits(args[0], v) for v in value)
    else:
        ok = _fits(kind, value)
    if ok and isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, not {value!r}"
    if ok:
        return None
    quote = " (quote it: '{}')".format(value) if kind in (str, str | None) and isinstance(value, (int, float)) else ""
    return f"must be {_describe(kind)}, not {value!r}{quote}"


def _at_least(config, minimum: int, *names: str) -> None:
    for name in names:
        if getattr(config, name) < minimum:
            raise ConfigError(f"{name.replace('batch_size', 'batch size')} must be at least {minimum}, "
                              f"got {getattr(config, name)}")


class _Config:
    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field {unknown[0]!r}; known: {', '.join(sorted(known))}")
        d = dict(d)
        for name in d:
            problem = type_problem(cls, name, d[name])
            if problem:
                raise ConfigError(f"{name} {problem}")
        for name, f in known.items():
            sub = f.default_factory
            if isinstance(d.get(name), dict) and isinstance(sub, type) and issubclass(sub, _Config):
                d[name] = sub.from_dict(d[name])
        return cls(**d)


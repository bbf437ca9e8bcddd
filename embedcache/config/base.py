"""The base of every settings class: ``to_dict`` and ``from_dict`` (unknown fields refused, nested configs read)."""

from __future__ import annotations

from dataclasses import asdict, fields

from embedcache.errors import ConfigError


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
        for name, f in known.items():
            sub = f.default_factory
            if isinstance(d.get(name), dict) and isinstance(sub, type) and issubclass(sub, _Config):
                d[name] = sub.from_dict(d[name])
        return cls(**d)


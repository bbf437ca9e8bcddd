"""Which layers a command means: one reading of ``default``, ``all``, ``last``, names and indices.

Extraction reads a spec against an encoder's tappable layers, probes and
retrieval against a store's layers; all go through :func:`select_layers`.

>>> names = ["blocks.0", "blocks.1", "blocks.2"]
>>> select_layers("last", names), select_layers("blocks.2,0", names), select_layers("-2", names)
([2], [0, 2], [1])
"""

from __future__ import annotations

from collections.abc import Sequence

from embedcache.errors import ConfigError


def select_layers(spec, names: Sequence[str], default: Sequence[int] | None = None, where: str = "") -> list[int]:
    """Positions in ``names`` (sorted, each once) of the layers ``spec`` names.

    Parameters
    ----------
    spec : str, int or sequence
        ``default`` (or None, ``""``: ``default``), ``all``, ``last``, or
        comma-separated names or indices (negative counts from the end);
        a list of names or indices.
    names : sequence of str
        The layers to choose from, shallow to deep.
    default : sequence of int, optional
        What ``default`` means; without it ``default`` is refused.
    where : str
        Prefix of error messages (a store's path).

    Raises
    ------
    ConfigError
        An unknown name, an index out of range, or a spec naming nothing.
    """
    prefix = f"{where}: " if where else ""
    if spec in (None, "", "default", ()):
        if default is None:
            raise ConfigError(f"{prefix}'default' names no layer here; use last, all or layer names")
        return sorted(set(int(i) for i in default))
    if spec == "all":
        return list(range(len(names)))
    if spec == "last":
        return [len(names) - 1]
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else (
        [spec] if isinstance(spec, int) else list(spec))
    out = []
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.lstrip("-").isdigit()):
            i = int(item)
            if not -len(names) <= i < len(names):
                raise ConfigError(f"{prefix}layer index {i} out of range: there are {len(names)} layers")
            out.append(i % len(names))
        elif item in names:
            out.append(list(names).index(item))
        else:
            raise ConfigError(f"{prefix}no layer {item!r}; it has {', '.join(names)}")
    if not out:
        raise ConfigError(f"{prefix}no layer named in {spec!r}; use last, all or names such as {names[-1]}")
    return sorted(set(out))

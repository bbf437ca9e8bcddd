"""Create, resume and finish a store; nothing the user has is damaged.

A new store is built under a temporary sibling name (``OUT.partial``) and
renamed to ``OUT`` only when every unit of work is written, so ``OUT``
always holds either nothing, the previous complete store, or a new complete
one. An interrupted run leaves ``OUT.partial``; running the same command
again resumes it, skipping units marked done (a unit is idempotent: it
rewrites whole shards). A store or partial store made with another
configuration is refused, naming the first field that differs.
"""

from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path

import numpy as np

from embedcache.errors import StoreError, StoreMismatchError
from embedcache.store import schema


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def config_difference(old: dict, new: dict) -> str | None:
    """The first field where two store configurations differ, described; None if equal."""
    a, b = dict(_flatten(old)), dict(_flatten(new))
    for key in list(b) + [k for k in a if k not in b]:
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            show = lambda x: (x[:16] + "…") if isinstance(x, str) and len(x) > 20 else x  # noqa: E731
            return f"{key}: store has {show(a.get(key, '<absent>'))!r}, this run has {show(b.get(key, '<absent>'))!r}"
    return None


def read_attrs(path: Path) -> dict | None:
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return None
    return dict(group.attrs).get(schema.ATTRS)


class StoreWriter:
    """Writes units of work into ``OUT.partial`` and renames it on completion.

    Use :meth:`open` rather than the constructor.
    """

    def __init__(self, out: Path, group, config: dict):
        self.out = out
        self.path = partial_path(out)
        self.group = group
        self.config = config
        self.unit_tiles = int(config["unit_tiles"])
        self.n_tiles = int(config["n_tiles"])
        self.n_units = schema.n_units(self.n_tiles, self.unit_tiles)
        self._arrays = {}

    @classmethod
    def open(cls, out, config: dict, provenance: dict, specs: list[schema.ArraySpec],
             extra_attrs: dict | None = None, overwrite: bool = False) -> "StoreWriter | None":
        """Open for writing; returns None when ``out`` is already complete with this config.

        Raises
        ------
        StoreMismatchError
            ``out`` (or its partial) was made with another configuration
            and ``overwrite`` is False.
        """
        import zarr

        out = Path(out)
        done_attrs = read_attrs(out) if out.exists() else None
        if out.exists() and done_attrs is None and any(out.iterdir()):
            raise StoreError(f"{out} exists and is not an embedcache store; choose another --out")
        if done_attrs is not None and not overwrite:
            diff = config_difference(done_attrs.get("config", {}), config)
            if diff:
                raise StoreMismatchError(f"{out} was made with another configuration ({diff}); "
                                         "use --overwrite to replace it, or another --out")
            if done_attrs.get("complete"):
                return None
        part = partial_path(out)
        part_attrs = read_attrs(part) if part.exists() else None
        if part.exists() and part_attrs is not None and not overwrite:
            diff = config_difference(part_attrs.get("config", {}), config)
            if diff:
                raise StoreMismatchError(
                    f"{part} (an interrupted extraction) was made with another configuration ({diff}); "
                    "use --overwrite to start again, or another --out")
            group = zarr.open_group(str(part), mode="r+")
            return cls(out, group, config)
        if part.exists():
            shutil.rmtree(part)
        group = zarr.open_group(str(part), mode="w")
        for s in specs:
            group.create_array(
                s.path, shape=s.shape, dtype=s.dtype, chunks=s.chunks, shards=s.shards,
                compressors=schema.compressors(s.dtype, s.compressed), fill_value=0,
            )
        n_units = schema.n_units(config["n_tiles"], config["unit_tiles"])
        group.create_array(schema.DONE, shape=(n_units,), dtype="uint8", chunks=(1,),
                           compressors=schema.compressors("uint8", "zstd"), fill_value=0)
        attrs = {
            "schema": schema.SCHEMA_VERSION,
            "config": config,
            "provenance": {**provenance, "created": _dt.datetime.now(_dt.timezone.utc).isoformat()},
            "complete": False,
            **(extra_attrs or {}),
        }
        group.attrs[schema.ATTRS] = attrs
        return cls(out, group, config)

    def array(self, path: str):
        if path not in self._arrays:
            self._arrays[path] = self.group[path]
        return self._arrays[path]

    def done_units(self) -> np.ndarray:
        return np.asarray(self.array(schema.DONE)[:]).astype(bool)

    def todo_units(self) -> list[int]:
        return [int(u) for u in np.flatnonzero(~self.done_units())]

    def write_unit(self, unit: int, arrays: dict[str, np.ndarray]):
        """Write every array of one unit, then mark it done (in that order)."""
        start, stop = schema.unit_range(unit, self.n_tiles, self.unit_tiles)
        for path, data in arrays.items():
            if data.shape[0] != stop - start:
                raise StoreError(f"unit {unit}: {path} has {data.shape[0]} tiles, expected {stop - start}")
            self.array(path)[start:stop] = data
        self.array(schema.DONE)[unit] = 1

    def finish(self) -> Path:
        """Mark complete and move ``OUT.partial`` to ``OUT``; returns ``OUT``.

        Refuses while any unit is missing. A previous store at ``OUT`` is
        removed only after the new one is in place.
        """
        missing = int((~self.done_units()).sum())
        if missing:
            raise StoreError(f"{self.path}: {missing} of {self.n_units} units of work are not written yet")
        attrs = dict(self.group.attrs[schema.ATTRS])
        attrs["complete"] = True
        attrs["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        self.group.attrs[schema.ATTRS] = attrs
        old = None
        if self.out.exists():
            old = self.out.with_name(self.out.name + ".replaced")
            if old.exists():
                shutil.rmtree(old)
            self.out.rename(old)
        self.path.rename(self.out)
        if old is not None:
            shutil.rmtree(old)
        return self.out

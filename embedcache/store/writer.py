"""Create, resume and finish a store; nothing the user has is damaged.

A new local store is built under a temporary sibling name (``OUT.partial``)
and renamed to ``OUT`` only when every unit of work is written, so ``OUT``
always holds either nothing, the previous complete store, or a new complete
one. Object storage has no rename: there the store is built in place and
its ``complete`` attribute, set last, is the only sign that it is finished
(``--overwrite`` removes the old store first). An interrupted run leaves the
store incomplete; running the same command again resumes it, skipping units
marked done (a unit is idempotent: it rewrites whole shards). A store made
with another configuration is refused, naming the first field that differs,
except an interrupted one whose dataset changed in some source files and
nothing else (a bad image fixed): its units with tiles of those files are
computed again and the others kept (``StoreWriter.open``'s ``redo``).

Units may be written by several processes at once (dask workers, each
having :meth:`StoreWriter.attach` ed to the store): units never share an
object, and only :meth:`StoreWriter.finish` touches the attributes.

:func:`add_pooled_layer` writes vectors computed after extraction (the
descriptors of ``fit-ssl``) into a finished local store as a pooled layer.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.errors import StoreError, StoreMismatchError
from embedcache.store import schema
from embedcache.store.location import StoreLocation


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


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


def _only_data_changed(old: dict, new: dict) -> bool:
    """Whether two store configurations differ only in the dataset's fingerprint."""
    return config_difference({**old, "dataset_fingerprint": None}, {**new, "dataset_fingerprint": None}) is None


def read_attrs(where) -> dict | None:
    """The raw embedcache attributes of the store at ``where`` (path, URL or location); None if there is none."""
    loc = StoreLocation.parse(where)
    with loc.errors():
        if not loc.exists():
            return None
        try:
            group = loc.open_group("r")
        except Exception as exc:
            from zarr.errors import BaseZarrError

            # Locally anything unreadable is "not a store"; remotely only zarr's verdict is.
            if loc.is_local or isinstance(exc, BaseZarrError):
                return None
            raise
        return dict(group.attrs).get(schema.ATTRS)


def _metadata_documents(specs: list[schema.ArraySpec], attrs: schema.StoreAttrs) -> dict[str, bytes]:
    """Every ``zarr.json`` of a new store, with the arrays' metadata consolidated into the root's.

    Built in memory and written in one concurrent batch: on object storage
    creating arrays one by one costs ~10 requests each, and consolidated
    metadata lets every reader and worker open all arrays with one request.
    """
    import warnings

    import zarr
    from zarr.storage import MemoryStore

    documents: dict = {}
    group = zarr.open_group(store=MemoryStore(documents), mode="w")
    for s in specs:
        group.create_array(s.path, shape=s.shape, dtype=s.dtype, chunks=s.chunks, shards=s.shards,
                           compressors=schema.compressors(s.dtype, s.codec), fill_value=0)
    n_units = schema.n_units(attrs.config.n_tiles, attrs.config.unit_tiles)
    group.create_array(schema.DONE, shape=(n_units,), dtype="uint8", chunks=(1,),
                       compressors=schema.compressors("uint8", "zstd"), fill_value=0)
    created = attrs.replace(complete=False, provenance=dataclasses.replace(attrs.provenance, created=_now()))
    group.attrs[schema.ATTRS] = created.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec (yet)"
        zarr.consolidate_metadata(group.store)
    return {key: buf.to_bytes() for key, buf in documents.items()}


class StoreWriter:
    """Writes units of work into a store being built, and finishes it.

    Use :meth:`open` (the run that creates or resumes a store) or
    :meth:`attach` (another process adding units to it) rather than the
    constructor.

    Attributes
    ----------
    out : Path or StoreLocation
        The finished store's place.
    path : Path or StoreLocation
        Where it is being built (``OUT.partial`` locally, ``out`` on object storage).
    """

    def __init__(self, location: StoreLocation, group, config: schema.StoreConfig):
        self.location = location
        self.out = location.path
        self.path = location.building.path
        self.group = group
        self.config = config
        self.unit_tiles = int(config.unit_tiles)
        self.n_tiles = int(config.n_tiles)
        self.n_units = schema.n_units(self.n_tiles, self.unit_tiles)
        self._arrays = {}
        self._units = {}
        self.redone: tuple[int, int] | None = None  # (units computed again, finished units kept) after a fix
        self.repaired: list[int] | None = None  # with repair: the damaged units marked to compute again

    @classmethod
    def open(cls, out, attrs: schema.StoreAttrs, specs: list[schema.ArraySpec],
             overwrite: bool = False, redo=None, repair: bool = False) -> "StoreWriter | None":
        """Open for writing; returns None when ``out`` is already complete with this config.

        With ``repair``, a store of this config (complete or interrupted)
        is first checked chunk by chunk: the finished units whose chunks
        cannot be read back are marked to compute again (:attr:`repaired`)
        and the rest kept; a complete local store goes back to
        ``OUT.partial`` for that and returns to ``OUT`` when finished. None
        when a complete store has no damaged unit.

        ``out`` is a local path or an fsspec URL; ``attrs`` what the new store
        records (its ``config`` decides whether an existing store is the same).
        ``redo(source_fingerprints, source_names, done_units, tile_source, tile_offset) -> units or None``: for an
        interrupted store
        whose dataset changed and nothing else, the finished units to compute
        again (the rest are kept, and :attr:`redone` says how many of each);
        None, or no ``redo``, refuses it as made otherwise.

        Raises
        ------
        StoreMismatchError
            ``out`` (or its partial) was made with another configuration
            and ``overwrite`` is False.
        StoreError
            ``out`` holds something that is not a store, or cannot be reached.
        """
        loc = StoreLocation.parse(out)
        build = loc.building
        config = attrs.config.to_dict()
        with loc.errors():
            if loc.is_local:
                files.recover(loc.path)
            done_attrs = read_attrs(loc)
            if done_attrs is None and not loc.is_empty():
                raise StoreError(f"{loc} exists and is not an embedcache store; choose another --out")
            if done_attrs is not None and not overwrite:
                diff = config_difference(done_attrs.get("config", {}), config)
                if diff:
                    raise StoreMismatchError(f"{loc} was made with another configuration ({diff}); "
                                             "use --overwrite to replace it, or another --out")
                if done_attrs.get("complete"):
                    return cls._reopen_damaged(loc, build, attrs.config) if repair else None
                if build == loc:  # object storage: an unfinished store in place, resumed
                    return cls(loc, build.open_group("r+"), attrs.config)._repair(repair)
            if build != loc:
                part_attrs = read_attrs(build)
                if part_attrs is not None and not overwrite:
                    diff = config_difference(part_attrs.get("config", {}), config)
                    if diff and redo is not None and _only_data_changed(part_attrs.get("config", {}), config):
                        writer = cls._keep_finished(loc, build, part_attrs, attrs, redo)
                        if writer is not None:
                            return writer
                    if diff:
                        raise StoreMismatchError(
                            f"{build} (an interrupted extraction) was made with another configuration ({diff}); "
                            "use --overwrite to start again, or another --out")
                    return cls(loc, build.open_group("r+"), attrs.config)._repair(repair)
            if repair:
                raise StoreError(f"{loc}: no store of this configuration to repair; run extract without --repair")
            # Locally this clears a stale partial; on object storage (no rename) the old store itself.
            build.remove()
            build.write_files(_metadata_documents(specs, attrs))
            group = build.open_group("r+")
        return cls(loc, group, attrs.config)

    @classmethod
    def _reopen_damaged(cls, loc, build, config: schema.StoreConfig) -> "StoreWriter | None":
        """A complete store whose damaged units are marked to compute again; None when none is damaged.

        Locally the store moves back to ``OUT.partial`` first (renamed, not
        copied), so an interrupted repair resumes like any extraction and
        ``OUT`` is only ever a complete store; its ``complete`` flag is
        cleared after the damaged units are unmarked.
        """
        from embedcache.store.reader import open_store
        from embedcache.store.verify import damaged_units

        damaged = damaged_units(open_store(loc))
        if not damaged:
            return None
        if build != loc:
            build.remove()  # a stale partial of an earlier run
            Path(loc.path).rename(build.path)
        writer = cls(loc, build.open_group("r+"), config)
        writer._unmark(damaged)
        return writer

    def _repair(self, repair: bool) -> "StoreWriter":
        """With ``repair``: the finished units of this unfinished store whose chunks cannot be read, unmarked."""
        if repair:
            from embedcache.store.reader import open_store
            from embedcache.store.verify import damaged_units

            self._unmark(damaged_units(open_store(self.location.building)))
        return self

    def _unmark(self, units: list[int]) -> None:
        """Mark ``units`` not done, delete what they stored, and mark the store incomplete.

        The objects go: a damaged shard cannot be rewritten in part where
        zarr writes it (zarr reads it back to merge a write that covers only
        some of it, as the last, shorter unit's does; :meth:`write_unit`'s
        own encoder never reads), and a unit missing its objects reads as
        zeros, so they are deleted only once the unit is marked not done.
        """
        import asyncio

        import zarr
        from zarr.core.sync import sync

        self.repaired = [int(u) for u in units]
        attrs = schema.StoreAttrs.from_dict(dict(self.group.attrs[schema.ATTRS]))
        # Layers added after extraction (fit-ssl descriptors) are not computed again: theirs stay.
        added = {schema.pooled_path(name, "mean") for name in attrs.descriptors}
        if units:
            done = self.array(schema.DONE)
            for u in units:
                done[u] = 0
            # Every array's shards (or chunks) are one unit deep and span its other axes (schema.array_specs).
            keys = [f"{path}/{arr.metadata.encode_chunk_key((u,) + (0,) * (arr.ndim - 1))}"
                    for path, arr in self.group.members(max_depth=None)
                    if isinstance(arr, zarr.Array) and path != schema.DONE and path not in added for u in units]
            store = self.group.store

            async def delete_all():
                await asyncio.gather(*(store.delete(k) for k in keys))

            sync(delete_all())
        self.group.attrs[schema.ATTRS] = attrs.replace(complete=False).to_dict()

    @classmethod
    def _keep_finished(cls, loc, build, old_attrs: dict, attrs: schema.StoreAttrs, redo) -> "StoreWriter | None":
        """An interrupted store of an earlier state of the dataset, its unchanged units kept; None if it cannot."""
        group = build.open_group("r+")
        old = schema.StoreAttrs.from_dict(old_attrs)
        done = np.asarray(group[schema.DONE][:]).astype(bool)
        units = redo(old.provenance.dataset.get("source_fingerprints"), list(old.source_names), np.flatnonzero(done),
                     np.asarray(group[schema.TILE_SOURCE][:]), np.asarray(group[schema.TILE_OFFSET][:]))
        if units is None:
            return None
        kept = int(done.sum()) - len(units)
        if units:
            done[np.asarray(units, dtype=np.int64)] = False
            group[schema.DONE][:] = done.astype(group[schema.DONE].dtype)
        group.attrs[schema.ATTRS] = attrs.replace(
            complete=False, provenance=dataclasses.replace(attrs.provenance, created=old.provenance.created)).to_dict()
        writer = cls(loc, group, attrs.config)
        writer.redone = (len(units), kept)
        return writer

    @classmethod
    def attach(cls, out) -> "StoreWriter":
        """Write units into a store another process has :meth:`open` ed and not yet finished.

        Raises
        ------
        StoreError
            No store is being built at ``out``.
        """
        loc = StoreLocation.parse(out)
        build = loc.building
        with loc.errors():
            attrs = read_attrs(build)
            if attrs is None:
                raise StoreError(f"{build}: no store is being built here (it was finished, removed or never "
                                 "created)")
            return cls(loc, build.open_group("r+"), schema.StoreAttrs.from_dict(attrs).config)

    def array(self, path: str):
        """An array of the store opened for writing units.

        Every chunk of a unit is written, zeros included (zarr would
        otherwise compare each chunk with the fill value first), and the
        chunks of a write go through the codecs in batches of a unit's
        worth: together these halved the time of ``write_unit``.
        """
        if path not in self._arrays:
            import zarr

            with zarr.config.set({"array.write_empty_chunks": True, "codec_pipeline.batch_size": 256}):
                self._arrays[path] = self.group[path]
        return self._arrays[path]

    def done_units(self) -> np.ndarray:
        return np.asarray(self.array(schema.DONE)[:]).astype(bool)

    def todo_units(self) -> list[int]:
        return [int(u) for u in np.flatnonzero(~self.done_units())]

    def unit_array(self, path: str):
        """The direct encoder of an array's unit objects (:mod:`embedcache.store.shards`); None: zarr writes it."""
        if path not in self._units:
            from embedcache.store.shards import UnitArray

            self._units[path] = UnitArray.of(self.array(path))
        return self._units[path]

    def write_unit(self, unit: int, arrays: dict[str, np.ndarray]):
        """Write every array of one unit, then mark it done (in that order).

        Each array's unit is one object (a shard, or a chunk), encoded in
        one call (:mod:`embedcache.store.shards`: the bytes zarr writes,
        without its ~1 ms of per-chunk overhead), and the objects go out in
        one concurrent batch; an array whose codecs that module does not
        know goes through zarr in the same batch.
        """
        import asyncio

        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        start, stop = schema.unit_range(unit, self.n_tiles, self.unit_tiles)
        for path, data in arrays.items():
            if data.shape[0] != stop - start:
                raise StoreError(f"unit {unit}: {path} has {data.shape[0]} tiles, expected {stop - start}")
        direct, through_zarr = [], []
        for path, data in arrays.items():
            encoder = self.unit_array(path)
            if encoder is not None and encoder.whole_rows and encoder.rows == self.unit_tiles:
                direct.append((encoder, data))
            else:
                through_zarr.append((self.array(path).async_array, data))
        store, proto = self.group.store, default_buffer_prototype()

        async def put(encoder, data):
            # One thread hop per array (the codecs release the GIL): the arrays encode side by side where
            # there are cores to spare, as zarr's chunks did, and one after another on one core.
            encoded = await asyncio.to_thread(encoder.encode, data)
            await store.set(encoder.key(unit), proto.buffer.from_bytes(encoded))

        async def write_all():
            await asyncio.gather(*(put(e, data) for e, data in direct),
                                 *(a.setitem(slice(start, stop), data) for a, data in through_zarr))

        sync(write_all())
        self.array(schema.DONE)[unit] = 1

    def finish(self):
        """Mark complete and, locally, move ``OUT.partial`` to ``OUT``; returns ``out``.

        Refuses while any unit is missing. A previous local store at ``OUT``
        is removed only after the new one is in place.
        """
        missing = int((~self.done_units()).sum())
        if missing:
            raise StoreError(f"{self.path}: {missing} of {self.n_units} units of work are not written yet")
        attrs = schema.StoreAttrs.from_dict(dict(self.group.attrs[schema.ATTRS]))
        self.group.attrs[schema.ATTRS] = attrs.replace(complete=True, finished=_now()).to_dict()
        if not self.location.is_local:
            return self.out
        return files.swap_in(self.path, self.out)


def add_pooled_layer(store, name: str, vectors: np.ndarray, meta: dict) -> None:
    """Write ``(N, V, D)`` vectors into a finished local store as the pooled layer ``name``.

    The layer is read back with ``store.pooled(name)`` and listed in
    ``store.descriptor_layers`` with ``meta`` (and its width). It is built as
    ``pooled/<name>.partial``, then swapped in (:func:`embedcache.files.swap_in`);
    the attributes are updated last, so a failure leaves any earlier layer
    of that name readable.

    Raises
    ------
    StoreError
        An object-storage store (no rename there), or vectors that do not
        match the store's tiles and variants.
    """
    import warnings

    import zarr

    root = Path(str(store.path))
    if not store.location.is_local or not root.is_dir():
        raise StoreError(f"{store.path}: pooled layers can only be written back into a local store")
    if name in store.layers or not name or "/" in name or name.startswith("."):
        raise StoreError(f"{store.path}: {name!r} cannot name a new pooled layer (empty, with '/', or an "
                         "extracted layer)")
    if vectors.shape[:2] != (store.n_tiles, len(store.variants)):
        raise StoreError(f"vectors of shape {vectors.shape} do not match {store.n_tiles} tiles x "
                         f"{len(store.variants)} variants")
    group = zarr.open_group(str(root), mode="r+")
    stage = schema.pooled_path(name + files.PARTIAL, "mean").rsplit("/", 1)[0]
    unit = int(store.config.unit_tiles)
    arr = group.create_array(f"{stage}/mean", shape=vectors.shape, dtype="float32",
                             chunks=(unit, *vectors.shape[1:]),
                             compressors=schema.compressors("float32"), fill_value=0, overwrite=True)
    arr[:] = vectors.astype(np.float32)
    files.swap_in(root / stage, root / schema.pooled_path(name, "mean").rsplit("/", 1)[0])
    attrs = schema.StoreAttrs.from_dict(dict(group.attrs[schema.ATTRS]))
    described = {**attrs.descriptors, name: {**meta, "dim": int(vectors.shape[-1])}}
    group.attrs[schema.ATTRS] = attrs.replace(descriptors=described).to_dict()
    if "consolidated_metadata" in json.loads((root / "zarr.json").read_text()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec (yet)"
            zarr.consolidate_metadata(str(root))  # readers list arrays from it: add the new one

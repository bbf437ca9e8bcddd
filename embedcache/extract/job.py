"""An encoder over a dataset: the arrays of any unit of work, and the store they go into.

Work is split into units of ``unit_tiles`` tiles. :class:`ExtractionJob`
holds a dataset and a loaded encoder and computes every array of any unit
(:meth:`ExtractionJob.compute_unit`), so any process can run any unit and get
the same bytes: :mod:`embedcache.extract.local` runs them in this process,
:mod:`embedcache.extract.distributed` as dask tasks. :class:`Extraction` is
the encoder part alone, which live prediction reuses so that its tokens are
the very computation that filled the store.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from embedcache import __version__
from embedcache.config import ExtractConfig
from embedcache.datasets import TileDataset, open_dataset, resolve_variants
from embedcache.datasets.variants import Variant
from embedcache.device import resolve_device
from embedcache.encoders import get_spec
from embedcache.encoders.features import FeatureExtractor, resolve_layers
from embedcache.encoders.load import load_encoder
from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.store import schema
from embedcache.store.location import StoreLocation
from embedcache.store.quant import quantize
from embedcache.store.writer import StoreWriter


@dataclass
class ExtractResult:
    """What an extraction did."""

    path: Path | StoreLocation  # a Path for local stores
    n_tiles: int
    n_variants: int
    units_run: int
    units_total: int
    seconds: float
    skipped: bool = False  # the store was already complete
    layers: list[str] = field(default_factory=list)
    units: list[dict] = field(default_factory=list)  # each unit run: ``unit, tiles, compute_s`` (+ worker, read/write)
    redone: tuple[int, int] | None = None  # after a fixed source file: (units computed again, finished units kept)
    repaired: list[int] | None = None  # with repair: the damaged units computed again
    shared: str | None = None  # beside other processes: what this one computed, found done, left to others
    finished_by: str | None = None  # "this" or "another" process swapped the store in; None: left unfinished

    @property
    def tiles_per_second(self) -> float:
        done = self.n_tiles * self.units_run / max(1, self.units_total)
        return done / self.seconds if self.seconds > 0 else float("nan")


def read_unit(dataset: TileDataset, unit: int, unit_tiles: int, variants: tuple[Variant, ...]):
    """A unit's tiles ``(n, H, W, 3) uint8``, labels (or None) and pixel-wise (stain) variants by name."""
    start, stop = schema.unit_range(unit, dataset.n_tiles, unit_tiles)
    images = dataset.images(slice(start, stop))
    labels = dataset.labels(slice(start, stop)) if dataset.has_labels else None
    stained = {v.name: v.apply(images, image=True) for v in variants if v.stain is not None}
    return images, labels, stained


class Extraction:
    """An encoder ready to turn tiles into the arrays of a unit of work."""

    def __init__(self, config: ExtractConfig, tile_shape: tuple[int, int]):
        self.config = config
        self.device = resolve_device(config.device)
        self.spec = get_spec(config.encoder)
        self.variants = resolve_variants(config.variants)
        self.encoder = load_encoder(self.spec, config.weights, device=str(self.device), seed=config.seed)
        layers = resolve_layers(self.encoder.model, self.spec.layers, config.layers)
        self.fx = FeatureExtractor(self.encoder, layers, norm=config.norm).to(self.device)
        self.autocast = self.device.type == "cuda"
        self.tile_shape = tile_shape
        self.layouts = self._layouts()

    def _layouts(self) -> list[schema.LayerLayout]:
        probe = torch.zeros((1, *self.tile_shape, 3), dtype=torch.uint8, device=self.device)
        try:
            outs = self._forward(probe)
        except RuntimeError as exc:
            raise DataError(f"encoder {self.spec.name} cannot take {self.tile_shape[0]}x{self.tile_shape[1]} "
                            f"tiles: {exc}") from None
        h, w = self.tile_shape
        return [schema.LayerLayout(name, tuple(int(s) for s in tok.shape[1:]),
                                   int(pre.shape[1]) if pre is not None else 0, self.fx.has_cls,
                                   (h / tok.shape[2], w / tok.shape[3]))
                for name, (tok, pre) in zip(self.fx.names, outs)]

    def _forward(self, tiles: torch.Tensor):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.fx(tiles)

    @property
    def compute(self) -> str:
        return "cuda-bf16-autocast" if self.autocast else f"{self.device.type}-float32"

    def run_unit(self, images: np.ndarray, stained: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Feature arrays of one unit: ``tokens/<layer>`` (n, V, C, h, w) etc.

        Tile-variants go through the encoder tile-major, so each batch fills
        a contiguous run of the outputs. Casting, int8 quantisation, pooling
        and the overflow check run where the tokens are (the GPU when there
        is one); results are copied into pinned host buffers without
        blocking, and the device is waited on once, at the end of the unit.
        """
        n, nv = images.shape[0], len(self.variants)
        cuda = self.device.type == "cuda"
        dtype = self.config.dtype
        host = {}

        def buffer(path, shape, kind):
            host[path] = torch.empty((n * nv, *shape), dtype=kind, pin_memory=cuda)

        stored = {"float16": torch.float16, "float32": torch.float32, "int8": torch.int8}[dtype]
        prefix = getattr(torch, schema.prefix_dtype(dtype))
        for lay in self.layouts:
            c = lay.shape[0]
            buffer(schema.tokens_path(lay.name), lay.shape, stored)
            if dtype == "int8":
                buffer(schema.scales_path(lay.name), (c,), torch.float32)
            buffer(schema.pooled_path(lay.name, "mean"), (c,), torch.float32)
            if lay.has_cls:
                buffer(schema.pooled_path(lay.name, "cls"), (c,), torch.float32)
            if lay.n_prefix:
                buffer(schema.prefix_path(lay.name), (lay.n_prefix, c), prefix)
        sources = {None: _to_device(images, self.device)}
        for name, arr in (stained or {}).items():
            sources[name] = _to_device(arr, self.device)
        pairs = [(t, v) for t in range(n) for v in range(nv)]  # flat index t * nv + v: (n, V) order
        limit = torch.finfo(torch.float16).max if dtype == "float16" else float("inf")
        bad = torch.zeros(len(self.layouts), dtype=torch.bool, device=self.device)  # checked once, at the end
        bs = self.config.batch_size
        for b in range(0, len(pairs), bs):
            chunk = pairs[b:b + bs]
            rows = slice(b, b + len(chunk))
            batch = torch.stack([
                self.variants[v].apply_torch(sources[self.variants[v].name if self.variants[v].stain else None][t],
                                             spatial=(0, 1))
                for t, v in chunk])
            outs = self._forward(batch)
            for k, (lay, (tok, pre)) in enumerate(zip(self.layouts, outs)):
                x = tok.float()  # once (bf16 under autocast; a no-op on the CPU): quantisation and pooling use it
                if dtype == "int8":
                    q, scale = quantize(x)
                    bad[k] |= ~torch.isfinite(scale).all()  # a NaN or inf token makes its channel's scale so
                    host[schema.tokens_path(lay.name)][rows].copy_(q, non_blocking=cuda)
                    host[schema.scales_path(lay.name)][rows].copy_(scale, non_blocking=cuda)
                else:
                    # One reduction finds overflow, inf and NaN alike (NaN propagates through amax).
                    peak = x.abs().amax()
                    bad[k] |= ~(torch.isfinite(peak) & (peak <= limit))
                    host[schema.tokens_path(lay.name)][rows].copy_(tok.to(stored), non_blocking=cuda)
                host[schema.pooled_path(lay.name, "mean")][rows].copy_(x.mean((-2, -1)), non_blocking=cuda)
                if lay.has_cls:
                    host[schema.pooled_path(lay.name, "cls")][rows].copy_(pre[:, 0].float(), non_blocking=cuda)
                if lay.n_prefix:
                    host[schema.prefix_path(lay.name)][rows].copy_(pre.to(prefix), non_blocking=cuda)
        if cuda:
            torch.cuda.current_stream(self.device).synchronize()
        if bool(bad.any()):
            name = self.layouts[int(bad.nonzero()[0, 0])].name
            raise StoreError(f"layer {name} of {self.spec.name} " + (
                "overflows float16; run again with --dtype float32 --overwrite" if dtype == "float16" else
                f"gives tokens that are not finite ({dtype}); check the weights and the tiles"))
        return {path: buf.numpy().reshape(n, nv, *buf.shape[1:]) for path, buf in host.items()}

    def store_config(self, dataset: TileDataset, fingerprint: str) -> schema.StoreConfig:
        """The fields a store must share with any run that adds to it."""
        return schema.StoreConfig(
            encoder=self.spec.to_dict(), weights_sha256=self.encoder.weights_sha256,
            layers=[lay.name for lay in self.layouts], variants=[v.name for v in self.variants],
            dtype=self.config.dtype, norm=self.config.norm, compute=self.compute,
            tile_shape=list(dataset.tile_shape), n_tiles=dataset.n_tiles, unit_tiles=self.config.unit_tiles,
            dataset_fingerprint=fingerprint)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Tiles onto the device; through pinned memory and without blocking on a GPU."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _versions() -> dict:
    import timm
    import zarr

    return {"embedcache": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "zarr": zarr.__version__, "numpy": np.__version__, "python": platform.python_version()}


class ExtractionJob:
    """A dataset and an encoder ready to run over it: the store they make, and any unit's arrays.

    Built once by each process that computes units (this one, or each dask
    worker); :meth:`compute_unit` gives the same bytes wherever it runs.
    """

    def __init__(self, data, config: ExtractConfig):
        self.data, self.config = data, config
        self.dataset = open_dataset(data, format=config.format, **config.dataset_options())
        if self.dataset.n_tiles == 0:
            raise DataError(f"{data}: the dataset has no tiles")
        self.run = Extraction(config, self.dataset.tile_shape)
        stained = [v.name for v in self.run.variants if v.stain is not None]
        if stained and self.dataset.stain != "H&E":
            # The stain variants move haematoxylin and eosin densities: meaningless on another stain.
            raise ConfigError(f"{data}: the {self.dataset.layout} images are {self.dataset.stain}-stained, not H&E; "
                              f"the stain variants ({', '.join(stained)}) perturb H&E only: use --variants flips "
                              "or d4")
        self.n_units = schema.n_units(self.dataset.n_tiles, config.unit_tiles)
        ds = self.dataset
        self.tissue_names = sorted(set(ds.tissue)) if ds.tissue else []
        self.tissue_codes = (np.asarray([self.tissue_names.index(t) for t in ds.tissue], dtype=np.int64)
                             if ds.tissue else np.full(ds.n_tiles, -1, dtype=np.int64))
        self.folds = ds.folds if ds.folds is not None else np.zeros(ds.n_tiles, dtype=np.int64)

    @property
    def layers(self) -> list[str]:
        return [lay.name for lay in self.run.layouts]

    def tiles_in(self, units) -> int:
        """How many tiles the given units hold."""
        return sum(stop - start for start, stop in
                   (schema.unit_range(u, self.dataset.n_tiles, self.config.unit_tiles) for u in units))

    def read_unit(self, unit: int):
        return read_unit(self.dataset, unit, self.config.unit_tiles, self.run.variants)

    def unit_arrays(self, unit: int, images: np.ndarray, labels, stained) -> dict[str, np.ndarray]:
        """Every array of one unit: features from the encoder, then tiles, labels and tile records."""
        arrays = self.run.run_unit(images, stained)
        start, stop = schema.unit_range(unit, self.dataset.n_tiles, self.config.unit_tiles)
        arrays[schema.IMAGES] = images
        if labels is not None:
            arrays[schema.LABELS] = labels
        ti = self.dataset.tiles
        arrays.update({
            schema.TILE_SOURCE: ti.source[start:stop],
            schema.TILE_OFFSET: ti.offset[start:stop],
            schema.TILE_VALID: ti.valid[start:stop],
            schema.TILE_FOLD: self.folds[start:stop],
            schema.TILE_TISSUE: self.tissue_codes[start:stop],
        })
        return arrays

    def compute_unit(self, unit: int) -> dict[str, np.ndarray]:
        return self.unit_arrays(unit, *self.read_unit(unit))

    @property
    def store_id(self) -> str:
        """A digest of the store configuration: processes with the same one can share an extraction."""
        import hashlib
        import json

        if not hasattr(self, "_store_id"):
            config = self.run.store_config(self.dataset, self.dataset.fingerprint()).to_dict()
            self._store_id = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self._store_id

    def open_writer(self, out, overwrite: bool = False, repair: bool = False) -> StoreWriter | None:
        """Create or resume the store at ``out`` (path or URL); None when it is already complete (and, with
        ``repair``, intact: see :meth:`StoreWriter.open`)."""
        run, dataset, config = self.run, self.dataset, self.config
        fingerprint = dataset.fingerprint()
        sources = dataset.source_fingerprints()
        specs = schema.array_specs(dataset.n_tiles, dataset.tile_shape, len(run.variants), run.layouts,
                                   config.dtype, config.unit_tiles, dataset.has_labels, config.codec)
        provenance = schema.Provenance(
            weights=run.encoder.weights, versions=_versions(),
            dataset={**dataset.describe(), "fingerprint": fingerprint,
                     **({"source_fingerprints": sources} if sources is not None else {})},
            device=(torch.cuda.get_device_name(run.device) if run.device.type == "cuda"
                    else platform.processor() or "cpu"),
            batch_size=config.batch_size, extract_config=config.to_dict())
        attrs = schema.StoreAttrs(
            config=run.store_config(dataset, fingerprint), provenance=provenance, layers=tuple(run.layouts),
            variant_defs={v.name: {"flip": v.flip, "k": v.k, "stain": list(v.stain) if v.stain else None}
                          for v in run.variants},
            source_names=tuple(dataset.tiles.source_names), tissue_names=tuple(self.tissue_names),
            class_names=dict(dataset.class_names or {}))
        return StoreWriter.open(out, attrs, specs, overwrite=overwrite, redo=self._units_to_redo, repair=repair)

    def _units_to_redo(self, old: list[str] | None, names: list[str], done: np.ndarray, source: np.ndarray,
                       offset: np.ndarray) -> list[int] | None:
        """Finished units (``done``) of an interrupted store made from an earlier state of this dataset that
        must be computed again: those holding a tile of a source whose files changed (``old``: the store's
        source fingerprints, ``names`` its sources, ``source`` and ``offset`` its tile records). None when
        the units cannot be kept (the tiles moved, or no source fingerprints recorded)."""
        new = self.dataset.source_fingerprints()
        if old is None or new is None or len(old) != len(new) or names != list(self.dataset.tiles.source_names):
            return None
        ti, n, unit_tiles = self.dataset.tiles, self.dataset.n_tiles, self.config.unit_tiles
        changed = {k for k, (a, b) in enumerate(zip(old, new)) if a != b}
        redo = []
        for unit in np.asarray(done).tolist():
            start, stop = schema.unit_range(unit, n, unit_tiles)
            same = (np.array_equal(source[start:stop], ti.source[start:stop])
                    and np.array_equal(offset[start:stop], ti.offset[start:stop]))
            if not same:
                return None
            if changed & set(ti.source[start:stop].tolist()):
                redo.append(unit)
        return redo

"""The one place that runs an encoder over a dataset into a store.

Work is split into units of ``unit_tiles`` tiles. :class:`ExtractionJob`
holds a dataset and a loaded encoder and computes every array of any unit
(:meth:`ExtractionJob.compute_unit`), so any process can run any unit and get
the same bytes: :func:`extract` runs them here, and
:mod:`embedcache.distributed` as dask tasks. Here, a DataLoader worker reads
each unit's tiles (and applies stain variants, which are pixel-wise); the
main thread applies the dihedral variants on the device, runs
``forward_intermediates`` in batches of ``batch_size`` tile-variants, and
hands the unit's arrays to a writer thread, which compresses and writes them
while the next unit computes. A unit is marked done only after all its
arrays are written.
"""

from __future__ import annotations

import platform
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from embedcache import __version__
from embedcache.config import ExtractConfig
from embedcache.datasets import TileDataset, open_dataset, resolve_variants
from embedcache.datasets.variants import Variant
from embedcache.encoders import get_spec
from embedcache.encoders.features import FeatureExtractor, resolve_layers
from embedcache.encoders.load import load_encoder
from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.store import schema
from embedcache.store.location import StoreLocation
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
    units: list[dict] = field(default_factory=list)  # distributed runs: worker and timings of each unit

    @property
    def tiles_per_second(self) -> float:
        done = self.n_tiles * self.units_run / max(1, self.units_total)
        return done / self.seconds if self.seconds > 0 else float("nan")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA GPU is available here; use --device cpu")
    return torch.device(device)


def read_unit(dataset: TileDataset, unit: int, unit_tiles: int, variants: tuple[Variant, ...]):
    """A unit's tiles ``(n, H, W, 3) uint8``, labels (or None) and pixel-wise (stain) variants by name."""
    start, stop = schema.unit_range(unit, dataset.n_tiles, unit_tiles)
    images = dataset.images(slice(start, stop))
    labels = dataset.labels(slice(start, stop)) if dataset.has_labels else None
    stained = {v.name: v.apply(images, image=True) for v in variants if v.stain is not None}
    return images, labels, stained


class _Units(torch.utils.data.Dataset):
    """Unit ``k`` of a list -> its number, tiles, labels and pixel-wise (stain) variants."""

    def __init__(self, dataset: TileDataset, units: list[int], unit_tiles: int, variants: tuple[Variant, ...]):
        self.dataset, self.units, self.unit_tiles, self.variants = dataset, units, unit_tiles, variants

    def __len__(self):
        return len(self.units)

    def __getitem__(self, k):
        unit = self.units[k]
        return (unit, *read_unit(self.dataset, unit, self.unit_tiles, self.variants))


def _collate(batch):
    return batch[0]


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
        return [schema.LayerLayout(name, tuple(int(s) for s in tok.shape[1:]),
                                   int(pre.shape[1]) if pre is not None else 0, self.fx.has_cls)
                for name, (tok, pre) in zip(self.fx.names, outs)]

    def _forward(self, tiles: torch.Tensor):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.fx(tiles)

    @property
    def compute(self) -> str:
        return "cuda-bf16-autocast" if self.autocast else f"{self.device.type}-float32"

    def run_unit(self, images: np.ndarray, stained: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Feature arrays of one unit: ``tokens/<layer>`` (n, V, C, h, w) etc."""
        n, nv = images.shape[0], len(self.variants)
        dtype = torch.float16 if self.config.dtype == "float16" else torch.float32
        out = {}
        for lay in self.layouts:
            out[schema.tokens_path(lay.name)] = np.empty((n, nv, *lay.shape), dtype=self.config.dtype)
            out[schema.pooled_path(lay.name, "mean")] = np.empty((n, nv, lay.shape[0]), dtype=np.float32)
            if lay.has_cls:
                out[schema.pooled_path(lay.name, "cls")] = np.empty((n, nv, lay.shape[0]), dtype=np.float32)
            if lay.n_prefix:
                out[schema.prefix_path(lay.name)] = np.empty((n, nv, lay.n_prefix, lay.shape[0]),
                                                             dtype=self.config.dtype)
        sources = {None: torch.from_numpy(np.ascontiguousarray(images)).to(self.device)}
        for name, arr in (stained or {}).items():
            sources[name] = torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
        pairs = [(v, t) for v in range(nv) for t in range(n)]
        bs = self.config.batch_size
        for b in range(0, len(pairs), bs):
            chunk = pairs[b:b + bs]
            batch = torch.stack([
                self.variants[v].apply_torch(sources[self.variants[v].name if self.variants[v].stain else None][t],
                                             spatial=(0, 1))
                for v, t in chunk])
            outs = self._forward(batch)
            vi = np.array([v for v, _ in chunk])
            ti = np.array([t for _, t in chunk])
            for lay, (tok, pre) in zip(self.layouts, outs):
                stored = tok.to(dtype)
                if not torch.isfinite(stored).all():
                    raise StoreError(f"layer {lay.name} of {self.spec.name} overflows {self.config.dtype}; "
                                     "run again with --dtype float32 --overwrite")
                out[schema.tokens_path(lay.name)][ti, vi] = stored.cpu().numpy()
                out[schema.pooled_path(lay.name, "mean")][ti, vi] = tok.float().mean((-2, -1)).cpu().numpy()
                if lay.has_cls:
                    out[schema.pooled_path(lay.name, "cls")][ti, vi] = pre[:, 0].float().cpu().numpy()
                if lay.n_prefix:
                    out[schema.prefix_path(lay.name)][ti, vi] = pre.to(dtype).cpu().numpy()
        return out

    def store_config(self, dataset: TileDataset, fingerprint: str) -> dict:
        """The fields a store must share with any run that adds to it."""
        return {
            "encoder": self.spec.to_dict(),
            "weights_sha256": self.encoder.weights_sha256,
            "layers": [lay.name for lay in self.layouts],
            "variants": [v.name for v in self.variants],
            "dtype": self.config.dtype,
            "norm": self.config.norm,
            "compute": self.compute,
            "tile_shape": list(dataset.tile_shape),
            "n_tiles": dataset.n_tiles,
            "unit_tiles": self.config.unit_tiles,
            "dataset_fingerprint": fingerprint,
        }


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

    def open_writer(self, out, overwrite: bool = False) -> StoreWriter | None:
        """Create or resume the store at ``out`` (path or URL); None when it is already complete."""
        run, dataset, config = self.run, self.dataset, self.config
        fingerprint = dataset.fingerprint()
        specs = schema.array_specs(dataset.n_tiles, dataset.tile_shape, len(run.variants), run.layouts,
                                   config.dtype, config.unit_tiles, dataset.has_labels)
        provenance = {
            "weights": run.encoder.weights,
            "versions": _versions(),
            "dataset": {**dataset.describe(), "fingerprint": fingerprint},
            "device": (torch.cuda.get_device_name(run.device) if run.device.type == "cuda"
                       else platform.processor() or "cpu"),
            "batch_size": config.batch_size,
            "extract_config": config.to_dict(),
        }
        extra = {
            "tissue_names": self.tissue_names,
            "class_names": {str(k): v for k, v in (dataset.class_names or {}).items()},
            "source_names": dataset.tiles.source_names,
            "layer_info": {lay.name: {"shape": list(lay.shape), "prefix": lay.n_prefix, "has_cls": lay.has_cls,
                                      "stride": [dataset.tile_shape[0] / lay.shape[1],
                                                 dataset.tile_shape[1] / lay.shape[2]]}
                           for lay in run.layouts},
            "variant_defs": {v.name: {"flip": v.flip, "k": v.k, "stain": list(v.stain) if v.stain else None}
                             for v in run.variants},
        }
        return StoreWriter.open(out, run.store_config(dataset, fingerprint), provenance, specs, extra,
                                overwrite=overwrite)


def extract(data, out, config: ExtractConfig = ExtractConfig(), overwrite: bool = False,
            progress: bool = True) -> ExtractResult:
    """Run ``config.encoder`` over every tile and variant of ``data`` into a store at ``out``.

    Parameters
    ----------
    data : str or Path
        A dataset folder (PanNuke, CoNIC or image-folder layout).
    out : str or Path
        The store: a local path, or an fsspec URL such as ``s3://bucket/x.zarr``
        (credentials from the environment). A local store is built as
        ``out.partial`` and renamed when complete; on object storage it is
        built in place, its ``complete`` attribute set last. An interrupted
        run is resumed by running again with the same settings.
    config : ExtractConfig
    overwrite : bool
        Replace a store (or partial store) made with another configuration.
        A local old store stays in place until the new one is complete.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ExtractResult

    See Also
    --------
    embedcache.distributed.extract_distributed : the same on a dask cluster.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    torch.set_grad_enabled(False)
    job = ExtractionJob(data, config)
    run, dataset = job.run, job.dataset
    writer = job.open_writer(out, overwrite)
    if writer is None:
        return ExtractResult(StoreLocation.parse(out).path, dataset.n_tiles, len(run.variants), 0, job.n_units,
                             time.perf_counter() - t0, skipped=True, layers=job.layers)
    todo = writer.todo_units()
    loader = torch.utils.data.DataLoader(
        _Units(dataset, todo, config.unit_tiles, run.variants), batch_size=1, shuffle=False,
        num_workers=config.num_workers, collate_fn=_collate,
        prefetch_factor=2 if config.num_workers else None, persistent_workers=False)

    bar = tqdm(total=dataset.n_tiles, initial=dataset.n_tiles - job.tiles_in(todo), unit="tile",
               disable=not progress, dynamic_ncols=True, desc=f"extract {run.spec.name} x{len(run.variants)} variants")
    pending: queue.Queue = queue.Queue(maxsize=2)
    failure: list[BaseException] = []

    def write_loop():
        while (item := pending.get()) is not None:
            unit, arrays = item
            if failure:
                continue
            try:
                writer.write_unit(unit, arrays)
                bar.update(next(iter(arrays.values())).shape[0])
            except BaseException as exc:  # reported by the main thread
                failure.append(exc)

    thread = threading.Thread(target=write_loop, name="embedcache-writer", daemon=True)
    thread.start()
    t_run = time.perf_counter()
    try:
        for unit, images, labels, stained in loader:
            if failure:
                break
            pending.put((unit, job.unit_arrays(unit, images, labels, stained)))
    finally:
        pending.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
    seconds = time.perf_counter() - t_run
    path = writer.finish()
    return ExtractResult(path, dataset.n_tiles, len(run.variants), len(todo), job.n_units, seconds,
                         layers=job.layers)

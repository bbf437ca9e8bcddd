"""Nuclei from a trained decoder, on cached features or with the encoder run live.

One code path serves both. An *image* (a tile of a stack, or a picture of
any size) is covered by tiles of the run's tile shape; each tile's tokens
come either from a store (cached) or from
:meth:`embedcache.extract.Extraction.run_unit` (live: the very computation
that filled the store, rounded to the store's dtype); the decoder turns
tokens and pixels into maps; the tiles' maps are stitched into the image's
maps; :func:`embedcache.postprocess.instances_from_maps` turns those into
nuclei. So the same tiles give the same nuclei either way.

Stitching: live images are cut into tiles overlapping by ``overlap``
pixels (padded white past the edge, as the folder reader pads); each pixel
takes the maps of the tile in which it lies furthest from a tile border
that is not the image's. A nucleus closer than ``overlap / 2`` to a seam is
whole in both tiles around it, so it is neither cut nor counted twice:
post-processing runs once on the whole image. Stores of large images hold
a grid of tiles without overlap, which the same stitcher assembles
(``overlap=0`` live gives exactly the cached result).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from embedcache.errors import ConfigError, DataError
from embedcache.postprocess import PostprocessConfig, instances_from_maps
from embedcache.train.checkpoint import Run, RunError, check_features, load_run, write_json

WHITE = 255


@dataclass
class ImageJob:
    """One image to predict: its name, size and tiles ``((row, col), key)``.

    A key is a store tile id (cached) or the tile's pixels (live).
    """

    name: str
    shape: tuple[int, int]
    tiles: list
    tissue: str | None = None


def plan_tiles(shape: tuple[int, int], tile: tuple[int, int], overlap: int = 0) -> list[tuple[int, int]]:
    """Top-left corners of tiles covering an image, ``overlap`` px apart from their neighbours.

    >>> plan_tiles((300, 200), (256, 256), overlap=64)
    [(0, 0), (192, 0)]
    """
    if not 0 <= overlap < min(tile):
        raise ConfigError(f"overlap must lie in 0..{min(tile) - 1} px for {tile[0]}x{tile[1]} tiles, got {overlap}")

    def starts(n, t):
        step = t - overlap
        return list(range(0, max(n - overlap, 1), step)) if n > t else [0]

    return [(r, c) for r in starts(shape[0], tile[0]) for c in starts(shape[1], tile[1])]


def cut_tile(image: np.ndarray, offset: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
    """The ``tile``-sized window of ``image`` at ``offset``, padded white past the edge."""
    out = np.full((*tile, 3), WHITE, dtype=np.uint8)
    r, c = offset
    part = image[r:r + tile[0], c:c + tile[1]]
    out[:part.shape[0], :part.shape[1]] = part
    return out


class Stitcher:
    """Maps of one image assembled from its tiles (module docstring)."""

    def __init__(self, shape: tuple[int, int], channels: int):
        self.shape = tuple(shape)
        self.maps = np.zeros((channels, *shape), dtype=np.float32)
        self.image = np.full((*shape, 3), WHITE, dtype=np.uint8)
        self._best = np.full(shape, -1.0, dtype=np.float32)

    def _weight(self, offset, tile) -> np.ndarray:
        (r, c), (th, tw), (h, w) = offset, tile, self.shape
        far = np.float32(1e9)
        rows, cols = np.arange(th, dtype=np.float32), np.arange(tw, dtype=np.float32)
        top = rows if r > 0 else np.full(th, far)
        bottom = th - 1 - rows if r + th < h else np.full(th, far)
        left = cols if c > 0 else np.full(tw, far)
        right = tw - 1 - cols if c + tw < w else np.full(tw, far)
        return np.minimum(np.minimum(top, bottom)[:, None], np.minimum(left, right)[None, :])

    def add(self, offset: tuple[int, int], maps: np.ndarray, image: np.ndarray) -> None:
        r, c = offset
        th, tw = maps.shape[1:]
        h, w = min(th, self.shape[0] - r), min(tw, self.shape[1] - c)
        weight = self._weight(offset, (th, tw))[:h, :w]
        win = weight > self._best[r:r + h, c:c + w]
        self._best[r:r + h, c:c + w][win] = weight[win]
        self.maps[:, r:r + h, c:c + w][:, win] = maps[:, :h, :w][:, win]
        self.image[r:r + h, c:c + w][win] = image[:h, :w][win]


class Predictor:
    """A decoder ready to turn tiles' tokens and pixels into maps, and images into nuclei.

    Parameters
    ----------
    model : NucleiDecoder
    directions : sequence of (d_row, d_col)
        Of the model's distance channels.
    batch_size : int
        Tiles per decoder pass.
    postprocess : PostprocessConfig
    """

    def __init__(self, model, directions, batch_size: int = 8, postprocess: PostprocessConfig = PostprocessConfig()):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.directions = [tuple(d) for d in directions]
        self.batch_size = batch_size
        self.postprocess = postprocess
        self.device = next(model.parameters()).device
        self.tile_shape = tuple(model.tile_shape)
        self.n_types = model.n_types
        self.channels = 3 + model.n_dist + (model.n_types + 1 if model.n_types else 0)

    @torch.no_grad()
    def tile_maps(self, tokens: list[np.ndarray], images: np.ndarray) -> np.ndarray:
        """Maps of a batch of tiles, ``(n, channels, H, W) float32``: P(cls3), distances, P(type)."""
        was_training = self.model.training
        self.model.eval()
        out = self.model([torch.from_numpy(np.ascontiguousarray(t)).to(self.device) for t in tokens],
                         torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        self.model.train(was_training)
        parts = [out["cls3"].softmax(1), out["dist"]]
        if "types" in out:
            parts.append(out["types"].softmax(1))
        return torch.cat(parts, 1).float().cpu().numpy()

    def nuclei(self, maps: np.ndarray) -> dict:
        """Post-process one image's stitched maps."""
        d = self.model.n_dist
        types = maps[3 + d:] if self.n_types else None
        return instances_from_maps(maps[:3], maps[3:3 + d], types, self.postprocess, self.directions)

    def run(self, jobs: Iterator[ImageJob], features: Callable) -> Iterator[tuple[ImageJob, dict, np.ndarray]]:
        """Predict every image: yields ``(job, nuclei, pixels)`` in the jobs' order.

        ``features(keys)`` gives ``(tokens, pixels)`` of a list of tile keys:
        tokens a list (one per layer) of ``(n, C, h, w)`` float32 arrays and
        pixels ``(n, H, W, 3)`` uint8. Tiles of consecutive images share
        batches.
        """
        pending: list = []  # (entry, offset, key)
        queue: list = []  # entries in job order: [job, stitcher, tiles left]

        def flush():
            tokens, pixels = features([key for _, _, key in pending])
            for (entry, offset, _), m, px in zip(pending, self.tile_maps(tokens, pixels), pixels):
                entry[1].add(offset, m, px)
                entry[2] -= 1
            pending.clear()

        def finished():
            while queue and queue[0][2] == 0:
                job, stitcher, _ = queue.pop(0)
                yield job, self.nuclei(stitcher.maps), stitcher.image

        for job in jobs:
            entry = [job, Stitcher(job.shape, self.channels), len(job.tiles)]
            queue.append(entry)
            for offset, key in job.tiles:
                pending.append((entry, offset, key))
                if len(pending) == self.batch_size:
                    flush()
                    yield from finished()
        if pending:
            flush()
        yield from finished()


# ----------------------------------------------------------------------------- where tiles come from

def store_features(store) -> Callable:
    """Cached features: ``keys`` are store tile ids; tokens of the identity variant."""

    def features(keys):
        ids = np.asarray(keys, dtype=np.int64)
        order = np.argsort(ids)
        back = np.argsort(order)
        ids = ids[order].tolist()
        tokens = [store.tokens(layer, ids, 0)[back] for layer in store.layers]
        return tokens, store.images(ids)[back]

    return features


class LiveFeatures:
    """The run's encoder, rebuilt as the store's extraction had it; ``keys`` are tiles' pixels.

    Raises
    ------
    RunError
        The encoder built here differs from the one the run was trained on
        (other weights, layers or token shapes).
    """

    def __init__(self, run: Run, device: str = "cpu", batch_size: int = 8):
        from embedcache.config import ExtractConfig
        from embedcache.extract import Extraction

        known = {f.name for f in fields(ExtractConfig)}
        cfg = {k: v for k, v in run.store.get("extract_config", {}).items() if k in known}
        cfg.update(variants="none", device=device, num_workers=0, batch_size=batch_size)
        self.extraction = Extraction(ExtractConfig(**cfg), tuple(run.store["tile_shape"]))
        self.layers = [lay.name for lay in self.extraction.layouts]
        shapes = {lay.name: list(lay.shape) for lay in self.extraction.layouts}
        if self.layers != run.store["layers"] or shapes != run.store["shapes"]:
            raise RunError(f"{run.path}: the encoder rebuilt for live prediction taps {shapes}, the run was "
                           f"trained on {run.store['shapes']}")
        sha = self.extraction.encoder.weights_sha256
        if sha != run.store["weights_sha256"]:
            trained = run.store["weights_sha256"][:12]
            raise RunError(f"{run.path}: the run was trained on features of weights {trained}…, but the encoder "
                           f"loads {sha[:12]}… here ({self.extraction.encoder.weights}); "
                           "give the same weights (extract --weights) or predict from a store")

    def __call__(self, keys):
        from embedcache.store import schema

        pixels = np.stack(keys)
        arrays = self.extraction.run_unit(pixels)
        return [arrays[schema.tokens_path(layer)][:, 0].astype(np.float32) for layer in self.layers], pixels


def _stack_name(i: int) -> str:
    return f"tile{i:05d}"


def _layout(store) -> str | None:
    return (store.attrs.get("provenance", {}).get("dataset") or {}).get("layout")


def store_jobs(store, tiles=None) -> list[ImageJob]:
    """One job per source image holding any of ``tiles`` (all tiles when None)."""
    info = store.tile_info()
    layout = _layout(store)
    names = list(store.attrs.get("source_names") or [])
    tissue = store.tissue
    chosen = np.arange(store.n_tiles) if tiles is None else np.asarray(tiles, dtype=np.int64)
    jobs = []
    for src in sorted(set(info["source"][chosen].tolist())):
        ids = np.flatnonzero(info["source"] == src)
        ends = info["offset"][ids] + info["valid"][ids]
        shape = (int(ends[:, 0].max()), int(ends[:, 1].max()))
        name = names[src] if layout == "folder" and src < len(names) else _stack_name(int(ids[0]))
        jobs.append(ImageJob(name, shape, [(tuple(int(v) for v in info["offset"][i]), int(i)) for i in ids],
                             tissue[ids[0]] if tissue else None))
    return jobs


def store_truth(store, jobs: list[ImageJob]):
    """The labels of each job's image, assembled from its tiles (a LabelSet)."""
    from embedcache.datasets import LabelSet

    insts, types = [], []
    valid = store.tile_info()["valid"]
    for job in jobs:
        inst = np.zeros(job.shape, dtype=np.int32)
        typ = np.zeros(job.shape, dtype=np.int32)
        for (r, c), tile in job.tiles:
            i, t = store.labels(tile)
            h, w = valid[tile]
            inst[r:r + h, c:c + w] = i[:h, :w]
            typ[r:r + h, c:c + w] = t[:h, :w]
        insts.append(inst)
        types.append(typ)
    layout = _layout(store) or "folder"
    has_types = any(t.any() for t in types)
    return LabelSet(layout if layout in ("pannuke", "conic") else "folder", [j.name for j in jobs], insts,
                    types if has_types else None, [j.tissue or "" for j in jobs] if store.tissue else None,
                    dict(store.class_names) or None)


def data_jobs(path, format: str, tile_shape, overlap: int) -> tuple[Iterator[ImageJob], str, int, dict]:
    """Jobs over a dataset folder or one image file: ``(jobs, layout, n_images, class_names)``."""
    from embedcache.datasets import detect_format, open_dataset
    from embedcache.datasets.base import to_uint8_rgb
    from embedcache.datasets.folder import IMAGE_SUFFIXES, list_images, read_image_file

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")

    def job(name, image, tissue=None):
        tiles = [(o, cut_tile(image, o, tile_shape)) for o in plan_tiles(image.shape[:2], tile_shape, overlap)]
        return ImageJob(name, tuple(image.shape[:2]), tiles, tissue)

    def read(f):
        return to_uint8_rgb(read_image_file(f), str(f))

    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a dataset folder")
        return iter([job(path.stem, read(path))]), "folder", 1, {}
    layout = detect_format(path) if format == "auto" else format
    if layout == "folder":
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: no images found")
        return (job(f.stem, read(f)) for f in files), "folder", len(files), {}
    ds = open_dataset(path, format=layout)
    tissue = ds.tissue
    jobs = (job(_stack_name(i), ds.images([i])[0], tissue[i] if tissue else None) for i in range(ds.n_tiles))
    return jobs, "stack", ds.n_tiles, dict(ds.class_names or {})


# ----------------------------------------------------------------------------- entry points

@dataclass
class PredictResult:
    """What :func:`predict` wrote."""

    path: Path
    n_images: int
    n_nuclei: int
    layout: str
    mode: str  # "cached" or "live"
    seconds: float


def _split_tiles(run: Run, store, split: str):
    if split == "all":
        return None
    if split not in ("val", "train"):
        raise ConfigError(f"split must be all, val or train, not {split!r}")
    if store.config.get("dataset_fingerprint") != run.store.get("dataset_fingerprint"):
        raise ConfigError(f"--split {split} names tiles of the store {run.path} was trained on; {store.path} "
                          "holds another dataset: use --split all")
    return np.asarray(run.meta["split"][split], dtype=np.int64)


def _radius(magnification: str) -> float:
    return 6.0 if magnification == "20x" else 12.0


def predict(run, out, *, store=None, data=None, format: str = "auto", split: str = "all",
            overlap: int | None = None, magnification: str = "40x", postprocess: PostprocessConfig | None = None,
            batch_size: int = 8, device: str = "cpu", overlays: bool = True, geojson: bool = True,
            progress: bool = True) -> PredictResult:
    """Predict nuclei with a trained decoder and write them (see :mod:`embedcache.prediction_io`).

    Parameters
    ----------
    run : str or Path
        A run directory from ``fit-decoder``.
    out : str or Path
        Output folder (replaced only if it is a previous prediction).
    store : str or Path, optional
        Predict from this store's cached features (identity variant).
    data : str or Path, optional
        Or run the encoder live over a dataset folder (PanNuke, CoNIC or
        image folder) or one image file.
    format : {"auto", "pannuke", "conic", "folder"}
    split : {"all", "val", "train"}
        With ``store``: the run's split of its own store.
    overlap : int, optional
        Live images larger than a tile: overlap of neighbouring tiles in
        pixels (default: a quarter of the tile).
    magnification : {"40x", "20x"}
        Post-processing defaults (:meth:`PostprocessConfig.for_magnification`).
    postprocess : PostprocessConfig, optional
        Overrides ``magnification``.
    batch_size : int
    device : str
    overlays, geojson : bool
        Also write overlay PNGs and GeoJSON.

    Returns
    -------
    PredictResult
    """
    import time

    from tqdm.auto import tqdm

    from embedcache.datasets import PANNUKE_CLASSES
    from embedcache.extract import resolve_device
    from embedcache.prediction_io import PredictionWriter
    from embedcache.store import open_store

    t0 = time.perf_counter()
    if (store is None) == (data is None):
        raise ConfigError("give either a store (cached features) or data (the encoder runs live), not both")
    dev = resolve_device(device)
    loaded = load_run(run, device=str(dev))
    post = postprocess or PostprocessConfig.for_magnification(magnification)
    predictor = Predictor(loaded.model, loaded.directions, batch_size, post)
    tile = tuple(loaded.store["tile_shape"])
    if store is not None:
        s = open_store(store)
        check_features(loaded.store, s, loaded.path)
        jobs = store_jobs(s, _split_tiles(loaded, s, split))
        layout = "stack" if _layout(s) in ("pannuke", "conic") else "folder"
        features, n_images, mode, source = store_features(s), len(jobs), "cached", str(s.path)
        jobs = iter(jobs)
    else:
        if split != "all":
            raise ConfigError("--split applies to --store predictions; with --data every image is predicted")
        overlap = min(tile) // 4 if overlap is None else overlap
        jobs, layout, n_images, _ = data_jobs(data, format, tile, overlap)
        features, mode, source = LiveFeatures(loaded, str(dev), batch_size), "live", str(data)
    names = loaded.class_names
    writer = PredictionWriter(out, layout, n_images, names, pannuke=layout == "stack" and names == PANNUKE_CLASSES,
                              overlays=overlays, geojson=geojson, with_types=loaded.model.n_types > 0)
    total = 0
    with tqdm(total=n_images, unit="image", desc=f"predict ({mode})", disable=not progress,
              dynamic_ncols=True) as bar:
        for job, nuclei, pixels in predictor.run(jobs, features):
            writer.add(job.name, nuclei, pixels, job.tissue)
            total += int(nuclei["inst"].max())
            bar.update(1)
    path = writer.close({"run": str(loaded.path), "mode": mode, "source": source, "split": split,
                         "overlap": overlap if mode == "live" else 0, "magnification": magnification,
                         "postprocess": post.to_dict(), "class_names": {str(k): v for k, v in names.items()}})
    return PredictResult(path, n_images, total, layout, mode, time.perf_counter() - t0)


def _predicted_set(predictor: Predictor, store, jobs: list[ImageJob], truth):
    from embedcache.datasets import LabelSet

    insts, types = [], []
    for _, nuclei, _ in predictor.run(iter(jobs), store_features(store)):
        insts.append(nuclei["inst"])
        types.append(nuclei["types"])
    return LabelSet(truth.layout, truth.names, insts, types if predictor.n_types else None, truth.tissue,
                    truth.class_names)


def auto_protocol(class_names: dict, has_types: bool) -> str:
    """``pannuke`` or ``conic`` for their classes, else ``hovernet``."""
    from embedcache.datasets import CONIC_CLASSES, PANNUKE_CLASSES

    if has_types and class_names == PANNUKE_CLASSES:
        return "pannuke"
    if has_types and class_names == CONIC_CLASSES:
        return "conic"
    return "hovernet"


def pq_scorer(directions, postprocess: PostprocessConfig = PostprocessConfig(), batch_size: int = 8):
    """A validation metric for :func:`embedcache.train.loop.fit`: mean PQ over the images of ``tiles``."""
    from embedcache.metrics import evaluate

    def score(model, store, tiles) -> float:
        jobs = store_jobs(store, tiles)
        truth = store_truth(store, jobs)
        pred = _predicted_set(Predictor(model, directions, batch_size, postprocess), store, jobs, truth)
        pq = evaluate(truth, pred, "hovernet").summary["pq"]
        return float(pq) if np.isfinite(pq) else 0.0

    return score


def evaluate_run(run, store=None, *, protocol: str = "auto", magnification: str = "40x",
                 postprocess: PostprocessConfig | None = None, batch_size: int = 8, device: str = "cpu"):
    """Score a run's best checkpoint on its held-out split; writes ``RUN/eval.json``.

    ``store`` defaults to the store the run was trained on. ``protocol``
    ``auto`` picks pannuke or conic for their classes, hovernet otherwise
    (detection radius 12 px at 40x, 6 px at 20x).

    Returns
    -------
    embedcache.metrics.Evaluation
    """
    from embedcache.extract import resolve_device
    from embedcache.metrics import evaluate
    from embedcache.store import open_store

    loaded = load_run(run, device=str(resolve_device(device)))
    s = open_store(store or loaded.store["path"])
    check_features(loaded.store, s, loaded.path)
    jobs = store_jobs(s, _split_tiles(loaded, s, "val"))
    truth = store_truth(s, jobs)
    post = postprocess or PostprocessConfig.for_magnification(magnification)
    pred = _predicted_set(Predictor(loaded.model, loaded.directions, batch_size, post), s, jobs, truth)
    if protocol == "auto":
        protocol = auto_protocol(loaded.class_names, truth.types is not None and pred.types is not None)
    result = evaluate(truth, pred, protocol, radius=_radius(magnification))
    data = result.to_dict()
    data["protocol"] = protocol
    write_json(Path(loaded.path) / "eval.json", data)
    return result

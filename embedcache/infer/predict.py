"""``predict``: nuclei from a trained decoder, on cached features or with the encoder run live.

One code path serves both. An image (a tile of a stack, or a picture of any
size) is a :class:`~embedcache.geometry.TiledImage`; each tile's tokens come
from a store or from the encoder (:mod:`embedcache.infer.features`); the
:class:`~embedcache.infer.predictor.Predictor` stitches the tiles' maps and
post-processes each image once; :class:`~embedcache.infer.writer.PredictionWriter`
writes the nuclei where ``evaluate``, viewers and QuPath read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from embedcache.config import PostprocessConfig
from embedcache.datasets import PANNUKE_CLASSES, detect_format, is_stack, open_dataset
from embedcache.datasets.folder import IMAGE_SUFFIXES, list_images, read_rgb_file
from embedcache.device import resolve_device
from embedcache.errors import ConfigError, DataError
from embedcache.geometry import TiledImage
from embedcache.infer.features import LiveFeatures, store_features
from embedcache.infer.predictor import Predictor
from embedcache.infer.tiling import tile_image
from embedcache.infer.tta import tta_variants
from embedcache.infer.writer import PredictionWriter
from embedcache.store import open_store
from embedcache.datasets.base import stack_name
from embedcache.store.images import source_images
from embedcache.train.checkpoint import check_features, load_run


@dataclass
class PredictResult:
    """What :func:`predict` wrote."""

    path: Path
    n_images: int
    n_nuclei: int
    layout: str
    mode: str  # "cached" or "live"
    seconds: float
    postprocess_source: str = "default"  # "tuned" (the run's postprocess.json), "given" or "default"


def data_images(path, format: str, tile_shape, overlap: int, working_mpp: float | None = None,
                mpp: float | None = None) -> tuple[Iterator[TiledImage], str, int, dict, dict]:
    """Images of a dataset folder or one image file, cut into tiles.

    With ``working_mpp`` (the resolution the run was trained at) whole
    images are first resampled from their own resolution (file metadata,
    ``mpp.csv``, ``mpp``: :mod:`embedcache.datasets.resolution`) to it.

    Returns
    -------
    images, layout, n_images, class_names
    original : dict of str to (int, int)
        The own size of each image that was resampled, to map its
        predictions back to its pixels.
    """

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")

    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a dataset folder")
        pixels, original = read_rgb_file(path), {}
        if working_mpp is not None:
            pixels, original = _to_working(path, pixels, working_mpp, mpp)
        return iter([tile_image(path.stem, pixels, tile_shape, overlap)]), "folder", 1, {}, original
    layout = detect_format(path) if format == "auto" else format
    if layout == "folder" and working_mpp is None:
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: no images found")
        return ((tile_image(f.stem, read_rgb_file(f), tile_shape, overlap) for f in files), "folder", len(files), {},
                {})
    ds = open_dataset(path, format=layout, **({"working_mpp": working_mpp, "mpp": mpp} if working_mpp and
                                              not is_stack(layout) else {}))
    original = ({name: ds.original_shape(k) for k, name in enumerate(ds.tiles.source_names)}
                if getattr(ds, "working_mpp", None) else {})
    if not ds.stack:  # a release of whole images: each image whole, cut as live prediction cuts it
        tissue = getattr(ds, "source_tissue", None)
        names = ds.tiles.source_names
        return ((tile_image(name, ds.source_image(k), tile_shape, overlap, tissue[k] if tissue else None)
                 for k, name in enumerate(names)), "folder", len(names), dict(ds.class_names or {}), original)
    tissue = ds.tissue
    images = (tile_image(stack_name(i), ds.images([i])[0], tile_shape, overlap, tissue[i] if tissue else None)
              for i in range(ds.n_tiles))
    return images, "stack", ds.n_tiles, dict(ds.class_names or {}), {}


def _to_working(path: Path, pixels: np.ndarray, working_mpp: float, mpp: float | None):
    """One image file resampled to ``working_mpp`` from its own resolution, and ``{name: own size}``."""
    from embedcache.datasets.resolution import image_mpps, resize_image, scaled_shape

    (own,), _ = image_mpps([path], [path.stem], path.parent, mpp)
    if own is None:
        raise DataError(f"{path}: the run was trained at {working_mpp:g} um/px and this image records no "
                        "resolution; give it in mpp.csv (image,mpp) beside it, or --mpp")
    return (resize_image(pixels, scaled_shape(pixels.shape[:2], own / working_mpp)),
            {path.stem: tuple(pixels.shape[:2])})


def to_own_pixels(predicted, original: dict):
    """Predictions of resampled images mapped back to each image's own pixels (label maps by nearest
    neighbour; the instances and their scores unchanged), so they are scored against its own truth."""
    from embedcache.datasets.resolution import resize_image, resize_labels

    for image, nuclei, pixels in predicted:
        shape = original.get(image.name)
        if shape is not None:
            nuclei = {**nuclei, "inst": resize_labels(nuclei["inst"], shape),
                      "types": resize_labels(nuclei["types"], shape) if nuclei.get("types") is not None else None}
            pixels = resize_image(pixels, shape) if pixels is not None else None
        yield image, nuclei, pixels


def split_tiles(run, store, split: str) -> np.ndarray | None:
    """The store tiles of a run's ``val`` or ``train`` split (None for ``all``).

    Raises
    ------
    ConfigError
        An unknown split, or a split of another store's tiles.
    """
    if split == "all":
        return None
    if split not in ("val", "train"):
        raise ConfigError(f"split must be all, val or train, not {split!r}")
    if store.config.dataset_fingerprint != run.store.get("dataset_fingerprint"):
        raise ConfigError(f"--split {split} names tiles of the store {run.path} was trained on; {store.path} "
                          "holds another dataset: use --split all")
    return np.asarray(run.meta["split"][split], dtype=np.int64)


def prediction_writer(out, run, layout: str, n_images: int, overlays: bool, geojson: bool) -> PredictionWriter:
    """The writer of a run's predictions (PanNuke layout too when the run's classes are PanNuke's)."""

    names = run.class_names
    return PredictionWriter(out, layout, n_images, names, pannuke=layout == "stack" and names == PANNUKE_CLASSES,
                            overlays=overlays, geojson=geojson, with_types=run.model.n_types > 0)


def write_predictions(writer: PredictionWriter | None, predicted, progress_bar=None) -> tuple[list, list, int]:
    """Write every ``(image, nuclei, pixels)`` of ``predicted`` (unless ``writer`` is None).

    Returns the instance maps, the type maps and the number of nuclei.
    """
    insts, types, total = [], [], 0
    for image, nuclei, pixels in predicted:
        if writer is not None:
            writer.add(image.name, nuclei, pixels, image.tissue)
        insts.append(nuclei["inst"])
        types.append(nuclei["types"])
        total += int(nuclei["inst"].max())
        if progress_bar is not None:
            progress_bar.update(1)
    return insts, types, total


def predict(run, out, *, store=None, data=None, format: str = "auto", split: str = "all",
            overlap: int | None = None, magnification: str = "40x", postprocess: PostprocessConfig | None = None,
            tta: str = "none", batch_size: int = 8, device: str = "cpu", overlays: bool = True, geojson: bool = True,
            progress: bool = True, mpp: float | None = None) -> PredictResult:
    """Predict nuclei with a trained decoder and write them (see :mod:`embedcache.infer.writer`).

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
    tta : {"none", "flips", "d4"}
        Test-time augmentation (:mod:`embedcache.infer.tta`): on a store the
        cached variants' tokens are decoded (decoder passes only); live, the
        encoder also runs once per variant.
    batch_size : int
    device : str
    overlays, geojson : bool
        Also write overlay PNGs and GeoJSON.
    mpp : float, optional
        Live, for a run trained at a working resolution (``extract
        --working-mpp``): the microns per pixel of images that record none
        and are not in ``mpp.csv``. Each image is resampled to the run's
        resolution and its nuclei mapped back to its own pixels.

    Returns
    -------
    PredictResult
    """
    from embedcache.progress import progress_bar

    t0 = time.perf_counter()
    if (store is None) == (data is None):
        raise ConfigError("give either a store (cached features) or data (the encoder runs live), not both")
    dev = resolve_device(device)
    loaded = load_run(run, device=str(dev))
    from embedcache.infer.tune import run_postprocess

    post, post_source = run_postprocess(loaded.path, magnification, postprocess)  # the run's tuned ones if any
    variants = tta_variants(tta)
    predictor = Predictor(loaded.model, loaded.directions, batch_size, post, variants)
    tile = tuple(loaded.store["tile_shape"])
    if store is not None:
        s = open_store(store)
        check_features(loaded.store, s, loaded.path)
        features = store_features(s, variants)
        images = source_images(s, split_tiles(loaded, s, split))
        layout = "stack" if s.tiles_are_images else "folder"
        n_images, mode, source = len(images), "cached", str(s.path)
        images = iter(images)
    else:
        if split != "all":
            raise ConfigError("--split applies to --store predictions; with --data every image is predicted")
        overlap = min(tile) // 4 if overlap is None else overlap
        working = (loaded.store.get("extract_config") or {}).get("working_mpp")
        if mpp is not None and working is None:
            raise ConfigError(f"--mpp resamples images to the resolution a run was trained at; {loaded.path} was "
                              "trained on images as they are (extract without --working-mpp): leave --mpp out")
        images, layout, n_images, _, original = data_images(data, format, tile, overlap, working, mpp)
        features, mode, source = LiveFeatures(loaded, str(dev), batch_size, variants), "live", str(data)
    writer = prediction_writer(out, loaded, layout, n_images, overlays, geojson)
    with progress_bar(total=n_images, unit="image", desc=f"predict ({mode})", disable=not progress,
              dynamic_ncols=True) as bar:
        predicted = predictor.run(images, features)
        if store is None and original:
            predicted = to_own_pixels(predicted, original)
        _, _, total = write_predictions(writer, predicted, bar)
    path = writer.close(prediction_info(loaded, mode, source, split, overlap if mode == "live" else 0,
                                        magnification, post, tta, post_source))
    return PredictResult(path, n_images, total, layout, mode, time.perf_counter() - t0, post_source)


def prediction_info(run, mode: str, source: str, split: str, overlap: int, magnification: str,
                    post: PostprocessConfig, tta: str = "none", post_source: str = "default") -> dict:
    """What a prediction folder records of how it was made (``prediction.json``)."""
    return {"run": str(run.path), "mode": mode, "source": source, "split": split, "overlap": overlap,
            "magnification": magnification, "postprocess": post.to_dict(), "postprocess_source": post_source,
            "tta": tta,
            "class_names": {str(k): v for k, v in run.class_names.items()}}

"""The one scorer of a decoder run: predict its held-out images from the cache, score them.

``fit-decoder``, ``embedcache run`` and training's validation PQ all go
through here, so a run's score is the same number wherever it is shown.
Images are the run's held-out tiles put back together
(:func:`embedcache.store.images.source_images`); the protocol ``auto`` is
PanNuke's or CoNIC's for their classes, else HoVer-Net's (detection radius
12 px at 40x, 6 px at 20x).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedcache.config import PostprocessConfig
from embedcache.datasets import LabelSet
from embedcache.device import resolve_device
from embedcache.files import write_json
from embedcache.infer.features import store_features
from embedcache.infer.predict import prediction_info, prediction_writer, split_tiles, write_predictions
from embedcache.infer.predictor import Predictor
from embedcache.infer.tta import tta_variants
from embedcache.infer.tune import run_postprocess
from embedcache.metrics import evaluate
from embedcache.metrics.protocols import auto_protocol, detection_radius
from embedcache.store import open_store
from embedcache.store.images import image_groups, image_truth, source_images
from embedcache.train.checkpoint import check_features, load_run


def _predicted(predictor: Predictor, features, images, truth, writer=None, progress_bar=None):
    """The predictions of ``images`` as a LabelSet in the truth's order (written too with a ``writer``)."""
    insts, types, n_nuclei = write_predictions(writer, predictor.run(iter(images), features), progress_bar)
    pred = LabelSet(truth.layout, truth.names, insts, types if predictor.n_types else None, truth.tissue,
                    truth.class_names)
    return pred, n_nuclei


def pq_scorer(directions, postprocess: PostprocessConfig = PostprocessConfig(), batch_size: int = 8):
    """A validation metric for :func:`embedcache.train.loop.fit`: HoVer-Net PQ over the images of ``tiles``."""

    def score(model, store, tiles) -> float:
        images = source_images(store, tiles)
        truth = image_truth(store, images)
        pred, _ = _predicted(Predictor(model, directions, batch_size, postprocess), store_features(store), images,
                             truth)
        pq = evaluate(truth, pred, "hovernet").summary["pq"]
        return float(pq) if np.isfinite(pq) else 0.0

    return score


def evaluate_run(run, store=None, *, out=None, predictions=None, protocol: str = "auto",
                 magnification: str = "40x", postprocess: PostprocessConfig | None = None, tuned=None,
                 tta: str = "none",
                 batch_size: int = 8, device: str = "cpu", progress: bool = False):
    """Score a run's best checkpoint on its held-out split; writes ``eval.json``.

    Parameters
    ----------
    run : str or Path
        A run directory from ``fit-decoder``.
    store : str or Path, optional
        The store to read features and truth from; default the one the run
        was trained on (a store of the same tiles and features).
    out : str or Path, optional
        Folder of ``eval.json``; default the run directory.
    predictions : str or Path, optional
        Also write the predicted nuclei there, as ``predict`` does (no
        overlays or GeoJSON).
    protocol : {"auto", "hovernet", "pannuke", "conic"}
    magnification : {"40x", "20x"}
        Post-processing defaults and the HoVer-Net detection radius.
    postprocess : PostprocessConfig, optional
        Overrides the run's tuned post-processing (``fit-decoder --tune``), else ``magnification``'s.
    tuned : str or Path, optional
        The folder of the ``postprocess.json`` to use (default the run's).
    tta : {"none", "flips", "d4"}
        Test-time augmentation over the store's cached variants.

    Returns
    -------
    embedcache.metrics.Evaluation
        ``eval.json`` holds its ``to_dict()`` with ``protocol``, the held-out
        ``tiles`` and the ``n_nuclei`` predicted.
    """
    from embedcache.progress import progress_bar

    loaded = load_run(run, device=str(resolve_device(device)))
    s = open_store(store or loaded.store["path"])
    check_features(loaded.store, s, loaded.path)
    tiles = split_tiles(loaded, s, "val")
    images = source_images(s, tiles)
    truth = image_truth(s, images)
    post, post_source = run_postprocess(tuned or loaded.path, magnification, postprocess)
    variants = tta_variants(tta)
    features = store_features(s, variants)
    predictor = Predictor(loaded.model, loaded.directions, batch_size, post, variants)
    layout = "stack" if s.tiles_are_images else "folder"
    writer = (prediction_writer(predictions, loaded, layout, len(images), overlays=False, geojson=False)
              if predictions is not None else None)
    with progress_bar(total=len(images), unit="image", desc="evaluate", disable=not progress, dynamic_ncols=True) as bar:
        pred, n_nuclei = _predicted(predictor, features, images, truth, writer, bar)
    if writer is not None:
        writer.close(prediction_info(loaded, "cached", str(s.path), "val", 0, magnification, post, tta))
    if protocol == "auto":
        protocol = auto_protocol(loaded.class_names, truth.types is not None and pred.types is not None)
    result = evaluate(truth, pred, protocol, radius=detection_radius(magnification))
    data = {**result.to_dict(), "protocol": protocol, "tiles": [int(t) for t in tiles], "n_nuclei": n_nuclei,
            "tta": tta, "postprocess": post.to_dict(), "postprocess_source": post_source}
    groups = image_groups(s, images)
    if groups is not None:  # patches of shared source images: the report resamples whole sources
        data["groups"] = groups
    write_json(Path(out or loaded.path) / "eval.json", data)
    return result

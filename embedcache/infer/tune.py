"""Post-processing thresholds picked by PQ on images the decoder neither trained on nor is scored on.

:func:`tune_postprocess` decodes a tuning split of the run's store once
(cached features), then post-processes the maps with every setting of a
small grid around the magnification's defaults (foreground and marker
thresholds, smallest nucleus) and keeps the one with the best HoVer-Net PQ
(ties keep the defaults). The tuning images must be apart from the run's
training and held-out tiles: tuned on the held-out images, the thresholds
would flatter the score they are judged by. The choice, with PQ on the
tuning images before and after, goes to ``RUN/postprocess.json``;
``predict`` and the run's evaluation then use it unless given other
settings (:func:`run_postprocess`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np

from embedcache.config import PostprocessConfig
from embedcache.datasets import LabelSet
from embedcache.errors import ConfigError
from embedcache.files import write_json
from embedcache.infer.features import store_features
from embedcache.infer.predictor import Predictor
from embedcache.infer.tta import tta_variants
from embedcache.metrics import evaluate
from embedcache.metrics.protocols import detection_radius
from embedcache.postprocess import instances_from_maps
from embedcache.store import open_store
from embedcache.store.images import image_truth, source_images
from embedcache.train.checkpoint import check_features, load_run, read_meta
from embedcache.train.stream import tuning_tiles

TUNED = "postprocess.json"
FOREGROUND = (0.4, 0.5, 0.6)
MARKER = (0.3, 0.4, 0.5)
SIZE_SCALE = (0.5, 1.0, 2.0)  # times the magnification's smallest nucleus and marker


def grid(base: PostprocessConfig) -> list[PostprocessConfig]:
    """The settings tried: ``base`` first, then every foreground x marker x size combination."""
    out = [base]
    for fg, mk, scale in itertools.product(FOREGROUND, MARKER, SIZE_SCALE):
        cfg = dataclasses.replace(base, foreground=fg, marker=mk, min_size=int(round(base.min_size * scale)),
                                  marker_min_size=int(round(base.marker_min_size * scale)))
        if cfg not in out:
            out.append(cfg)
    return out


def tune_postprocess(run, spec: str, *, store=None, magnification: str = "40x", batch_size: int = 8,
                     device: str = "cpu", out=None, on_val: bool = False, tta: str = "none") -> dict:
    """Pick post-processing by PQ on the tiles ``spec`` selects (the split syntax of ``--val``); writes
    ``postprocess.json`` into ``out`` (default the run, whose predictions then use it) and returns what it holds.

    ``tta`` tunes on the maps merged over the cached variants, as
    prediction with that test-time augmentation will make them (their
    probabilities are smoother, so their best thresholds can differ).
    ``on_val`` allows tuning on the run's validation split, for runs whose
    validation images only choose the epoch and whose score comes from
    images outside the run's store (``benchmarks/cpm15_ablation.py``).

    Raises
    ------
    ConfigError
        The split selects no tiles, or tiles the run trained on or is scored on.
    """
    loaded = load_run(run, device=device)
    s = open_store(store or loaded.store["path"])
    check_features(loaded.store, s, loaded.path)
    cfg = loaded.meta["config"]
    seed = cfg["seed"] if cfg.get("split_seed") is None else cfg["split_seed"]  # as the run's own split was drawn
    tiles = tuning_tiles(s, spec, int(seed), loaded.meta["split"], on_val)
    images = source_images(s, tiles)
    truth = image_truth(s, images)
    base = PostprocessConfig.for_magnification(magnification)
    variants = tta_variants(tta)
    predictor = Predictor(loaded.model, loaded.directions, batch_size, base, variants)
    maps = [m for _, m, _ in predictor.stitched(iter(images), store_features(s, variants))]
    d, n_types = loaded.model.n_dist, loaded.model.n_types
    radius = detection_radius(magnification)

    def pq(cfg: PostprocessConfig) -> float:
        insts = [instances_from_maps(m[:3], m[3:3 + d], None, cfg, predictor.directions)["inst"] for m in maps]
        pred = LabelSet(truth.layout, truth.names, insts, None, truth.tissue, truth.class_names)
        plain = dataclasses.replace(truth, types=None)
        value = evaluate(plain, pred, "hovernet", radius=radius).summary["pq"]
        return float(value) if np.isfinite(value) else 0.0

    scores = [(pq(cfg), -k, cfg) for k, cfg in enumerate(grid(base))]  # ties keep the earlier (the defaults)
    best_pq, _, best = max(scores, key=lambda t: (t[0], t[1]))
    result = {"chosen": best.to_dict(), "magnification": magnification, "pq_default": scores[0][0],
              "pq_tuned": best_pq, "tiles": [int(t) for t in tiles], "images": len(images), "tried": len(scores),
              "split": spec, "types": bool(n_types), "tta": tta}
    write_json(Path(out or loaded.path) / TUNED, result)
    return result


def run_postprocess(run_path, magnification: str = "40x", given: PostprocessConfig | None = None
                    ) -> tuple[PostprocessConfig, str]:
    """The post-processing a run's predictions use and where it comes from: ``given`` (the caller's),
    ``tuned`` (``RUN/postprocess.json`` at that magnification) or ``default`` (the magnification's).

    A run trained at a working resolution (``extract --working-mpp``) makes
    its maps at that resolution whatever the images': its defaults are the
    nucleus sizes at that resolution (:meth:`PostprocessConfig.for_mpp`),
    not the magnification's."""
    if given is not None:
        return given, "given"
    path = Path(run_path) / TUNED
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("magnification") == magnification:
            return PostprocessConfig(**data["chosen"]), "tuned"
    working = _working_mpp(run_path)
    if working is not None:
        return PostprocessConfig.for_mpp(working), "default"
    return PostprocessConfig.for_magnification(magnification), "default"


def _working_mpp(run_path) -> float | None:
    """The resolution a run's store was resampled to (None: images as they were)."""
    store = read_meta(run_path).get("store") or {}
    return (store.get("extract_config") or {}).get("working_mpp")


def given_postprocess(spec: str, magnification: str = "40x") -> PostprocessConfig | None:
    """What ``predict --postprocess`` names: ``run`` (None: the run's own, :func:`run_postprocess`),
    ``defaults`` (the magnification's) or a JSON file of :class:`PostprocessConfig` fields over them
    (another run's ``postprocess.json`` too)."""
    if spec == "run":
        return None
    if spec == "defaults":
        return PostprocessConfig.for_magnification(magnification)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--postprocess {spec}: not run, defaults or a JSON file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("chosen"), dict):  # a run's postprocess.json
        data = data["chosen"]
    fields = set(PostprocessConfig.__dataclass_fields__)
    if not isinstance(data, dict) or set(data) - fields:
        unknown = ", ".join(sorted(set(data) - fields)) if isinstance(data, dict) else "not an object"
        raise ConfigError(f"{path}: {unknown}: a post-processing file holds an object of {', '.join(sorted(fields))}")
    return PostprocessConfig.for_magnification(magnification, **data)

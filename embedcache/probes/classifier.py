"""A kept cell classifier: the cell probe's best linear probe, refitted on every typed cell and saved.

``probe --level cell --save CLASSIFIER`` keeps, of one cell store, the
layer whose linear probe scored best out of fold; it is refitted on every
typed cell with the same sweep (:func:`~embedcache.probes.fit.fit_linear`)
and written as a folder::

    classifier.safetensors   mean, scale (D,), weight (K or 1, D), bias (K or 1), float64
    classifier.json          layer, width, class names, encoder, weights, the store and nuclei it was
                             trained on, its out-of-fold scores and the L2 strength chosen

A classifier is plain arithmetic, no scikit-learn at prediction time:
``z = ((x - mean) / scale) @ weight.T + bias``, then softmax over the classes
(one logit, two classes: the logistic ``[1 - s(z), s(z)]``, scikit-learn's
rule); a PCA fitted with ``--pca`` is folded into ``weight`` and ``bias``.
It serves vectors of the same encoder (name and weights) and layer only
(:meth:`CellClassifier.check`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache import files
from embedcache.errors import ConfigError, DataError

FORMAT = 1
WEIGHTS, META = "classifier.safetensors", "classifier.json"
ANNOTATED = ("labels", "points")  # nuclei sources whose types are a person's labels


@dataclass
class CellClassifier:
    """A linear classifier of cell vectors of one encoder's layer.

    Attributes
    ----------
    layer : str
    dim : int
    classes : list of str
        Class names, in the order of the probabilities.
    mean, scale : (D,) ndarray of float64
        Standardisation.
    weight : (K, D) or (1, D) ndarray of float64
    bias : (K,) or (1,) ndarray of float64
    encoder : str
    weights_sha256 : str
    trained_on : dict
        The cell store (path, nuclei, source store) it was fitted on.
    scores : dict
        Out-of-fold scores of the probe chosen, and the L2 strength.
    """

    layer: str
    dim: int
    classes: list
    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    encoder: str
    weights_sha256: str
    trained_on: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    path: str = ""  # where it was read from
    sha256: str = ""  # of its two files, as read (what an output records to know the classifier again)

    def logits(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.weight.T + self.bias

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities ``(n, K)`` of vectors ``(n, D)``."""
        z = self.logits(X)
        if z.shape[1] == 1:
            p = 1.0 / (1.0 + np.exp(-z[:, 0]))
            return np.column_stack([1 - p, p])
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class index ``(n,)`` into :attr:`classes`."""
        return self.predict_proba(X).argmax(axis=1)

    def check(self, encoder: str, weights_sha256: str, dims: dict, where: str) -> None:
        """Refuse vectors of another encoder, weights or layer, in one line.

        ``dims``: width of each layer the vectors hold.

        Raises
        ------
        ConfigError
        """
        if encoder != self.encoder or weights_sha256 != self.weights_sha256:
            raise ConfigError(f"{where}: the classifier was trained on {self.encoder} (weights "
                              f"{str(self.weights_sha256)[:12]}…), these cells are of {encoder} (weights "
                              f"{str(weights_sha256)[:12]}…); train a classifier on this encoder's cells")
        if dims.get(self.layer) != self.dim:
            have = ", ".join(f"{k} ({v})" for k, v in dims.items())
            raise ConfigError(f"{where}: the classifier reads layer {self.layer} ({self.dim} wide), these cells "
                              f"have {have}; pool that layer (--cells / --layers {self.layer})")

    def check_labels(self, class_names: dict, kind: str, where: str) -> None:
        """Refuse cells annotated in another class set, in one line.

        Cells whose types are annotations (``kind`` ``labels`` or
        ``points``, :class:`~embedcache.cells.nuclei.NucleiSource`) name
        the classes a classifier of them must predict; a classifier of
        other classes would write classes beside the labels that no label
        can match. Nuclei a decoder found (``prediction``, ``outlines``)
        carry the decoder's types, which a classifier may refine into
        classes of its own: those are not checked.

        ``class_names``: ``{type id: name}`` of the cells (0, unknown, ignored).

        Raises
        ------
        ConfigError
        """
        names = {str(v) for k, v in class_names.items() if int(k)}
        other = [c for c in self.classes if c not in names]
        if kind in ANNOTATED and names and other:
            raise ConfigError(f"{where}: the classifier predicts {', '.join(self.classes)}, but these cells are "
                              f"labelled {', '.join(sorted(names))} (no {', '.join(other)}); train a classifier on "
                              "cells labelled with these classes (probe --level cell --save), or classify nuclei "
                              "a decoder found (--nuclei PREDICTIONS)")

    def describe(self) -> dict:
        """What an output records of the classifier that typed its cells (a changed classifier is another)."""
        return {"path": self.path, "layer": self.layer, "classes": list(self.classes), "sha256": self.sha256}

    def save(self, path) -> Path:
        """Write the folder ``path`` (module docstring); returns it."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(getattr(self, k), dtype=np.float64)
                   for k in ("mean", "scale", "weight", "bias")}
        with files.atomic_file(path / WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
        meta = {"format": FORMAT, "kind": "linear cell classifier", "layer": self.layer, "dim": self.dim,
                "classes": list(self.classes), "encoder": self.encoder, "weights_sha256": self.weights_sha256,
                "trained_on": self.trained_on, "scores": self.scores}
        files.write_json(path / META, meta)
        return path


def load_classifier(path) -> CellClassifier:
    """Read a classifier folder written by :meth:`CellClassifier.save`.

    Raises
    ------
    DataError
        Not such a folder, or a file that cannot be read.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise DataError(f"{path}: not a cell classifier (no {META} and {WEIGHTS}); write one with "
                        "`embedcache probe --level cell --save CLASSIFIER`")
    import hashlib

    try:
        raw = {name: (path / name).read_bytes() for name in (META, WEIGHTS)}
        meta = json.loads(raw[META])
        t = load_file(str(path / WEIGHTS))
    except Exception as exc:
        raise DataError(f"{path}: cannot read the classifier ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: classifier format {meta.get('format')}, this version reads {FORMAT}")
    classes, dim = list(meta["classes"]), int(meta["dim"])
    rows = t["weight"].shape[0]
    if rows not in (len(classes), 1 if len(classes) == 2 else -1) or t["weight"].shape[1:] != (dim,) or \
            t["mean"].shape != (dim,) or t["scale"].shape != (dim,) or t["bias"].shape != (rows,):
        raise DataError(f"{path}: {META} names {len(classes)} classes of {dim}-wide vectors, but {WEIGHTS} holds "
                        f"weights {tuple(t['weight'].shape)}: the two files are of different classifiers; save it "
                        "again with `embedcache probe --level cell --save`")
    digest = hashlib.sha256(raw[META] + raw[WEIGHTS]).hexdigest()
    return CellClassifier(meta["layer"], dim, classes, t["mean"], t["scale"], t["weight"], t["bias"], meta["encoder"],
                          meta["weights_sha256"], meta.get("trained_on", {}), meta.get("scores", {}),
                          str(path.resolve()), digest)


def from_pipeline(pipe, layer: str, dim: int, classes: list, encoder: str, weights_sha256: str,
                  trained_on: dict, scores: dict) -> CellClassifier:
    """A :class:`CellClassifier` of a fitted :func:`~embedcache.probes.fit.fit_linear` pipeline (classification)."""
    scaler, model = pipe.steps[0][1], pipe.steps[-1][1]
    weight, bias = np.asarray(model.coef_, np.float64), np.asarray(model.intercept_, np.float64)
    if len(pipe.steps) == 3:  # PCA between: z = W (P (s - m)) + b = (W P) s + (b - W P m)
        pca = pipe.steps[1][1]
        bias = bias - weight @ pca.components_ @ pca.mean_
        weight = weight @ pca.components_
    scale = np.asarray(scaler.scale_, np.float64)
    return CellClassifier(layer, dim, list(classes), np.asarray(scaler.mean_, np.float64), scale, weight, bias,
                          encoder, weights_sha256, trained_on, scores)


def keep_classifier(store_path, result, config) -> CellClassifier:
    """The best linear probe of one cell store's layers in ``result`` (:func:`~embedcache.probes.cell.run_cell_probes`),
    refitted on every typed cell.

    Raises
    ------
    ConfigError
        The probe ran no linear method.
    """
    from sklearn.metrics import balanced_accuracy_score

    from embedcache.probes.cell import cell_labels
    from embedcache.probes.fit import fit_linear
    from embedcache.store import open_store

    linear = [p for p in result.predictions if p.method == "linear" and p.store == result.predictions[0].store]
    if not linear:
        raise ConfigError("--save keeps a linear probe; run the probe with --method linear or both")
    scored = [(balanced_accuracy_score(p.y_true, p.y_pred), p) for p in linear]
    score, best = max(scored, key=lambda s: s[0])
    store = open_store(store_path)
    keep, y, classes = cell_labels(store)
    X = store.vectors(best.layer)[keep]
    groups = store.table()["source"][keep]
    pipe = fit_linear(X, y, groups, config.l2_grid, config.seed, config.pca)
    if len(np.unique(y)) != len(classes):  # pragma: no cover - cell_labels keeps present classes only
        raise DataError(f"{store.path}: classes without cells")
    scores = {"balanced_accuracy_oof": round(float(score), 4),
              "accuracy_oof": round(float((best.y_pred == best.y_true).mean()), 4),
              "folds": config.folds or 5, "l2": pipe.best_params["l2"], "n_cells": int(len(y)),
              "per_layer": {p.layer: round(float(s), 4) for s, p in scored}}
    trained_on = {"cells": str(store.path), "nuclei": store.nuclei, "source_store": store.source_store}
    return from_pipeline(pipe, best.layer, store.dims[best.layer], classes, store.encoder.name,
                         store.source_store["weights_sha256"], trained_on, scores)


def classify_vectors(classifier: CellClassifier, vectors, n: int, chunk: int = 65536):
    """``(class index (n,), probabilities (n, K))`` of ``vectors(start, stop) -> (m, D)``, a chunk at a time."""
    index = np.zeros(n, np.int64)
    proba = np.zeros((n, len(classifier.classes)), np.float32)
    for s in range(0, n, chunk):
        p = classifier.predict_proba(vectors(s, min(n, s + chunk)))
        proba[s:s + len(p)] = p
        index[s:s + len(p)] = p.argmax(axis=1)
    return index, proba


def classes_table(classifier: CellClassifier, index: np.ndarray, proba: np.ndarray, ids: np.ndarray):
    """The rows of ``cell_classes.parquet`` (:func:`write_classes`) of some cells, as a pyarrow Table."""
    import pyarrow as pa

    n = len(index)
    cols = {"id": pa.array(ids, pa.int64()),
            "class_name": pa.array(np.asarray(classifier.classes, dtype=object)[index] if n else [], pa.string()),
            "class_score": pa.array(proba[np.arange(n), index] if n else np.zeros(0), pa.float32())}
    for k, name in enumerate(classifier.classes):
        cols[f"p_{name}"] = pa.array(proba[:, k], pa.float32())
    return pa.table(cols)


def write_classes(path: Path, classifier: CellClassifier, index: np.ndarray, proba: np.ndarray,
                  ids: np.ndarray | None = None) -> Path:
    """``cell_classes.parquet``: ``id`` (row of the cells, or the nuclei's ids), ``class_name``, ``class_score``
    and ``p_<class>`` for every class."""
    import pyarrow.parquet as pq

    table = classes_table(classifier, index, proba, np.arange(len(index)) if ids is None else ids)
    with files.atomic_file(path) as tmp:
        pq.write_table(table, str(tmp))
    return Path(path)


def classify_cells(cells_path, classifier_path) -> tuple[Path, dict]:
    """Apply a saved classifier to a cell store's vectors (identity variant): ``OUT/cell_classes.parquet``
    (ids: the cell store's rows) and the cells per class.

    Raises
    ------
    ConfigError
        A classifier of another encoder, weights or layer, or of other classes than the cells' labels.
    """
    from embedcache.store import open_store

    classifier = load_classifier(classifier_path)
    store = open_store(cells_path)
    classifier.check(store.encoder.name, store.source_store.get("weights_sha256"), store.dims, str(classifier_path))
    classifier.check_labels(store.class_names, store.nuclei.get("kind", ""), str(classifier_path))
    index, proba = classify_vectors(classifier, lambda a, b: store.vectors(classifier.layer, slice(a, b)),
                                    store.n_cells)
    out = write_classes(Path(store.path) / "cell_classes.parquet", classifier, index, proba)
    return out, {name: int((index == k).sum()) for k, name in enumerate(classifier.classes)}


def check_for_store(classifier_path, store_path, layers="all") -> CellClassifier:
    """The classifier, checked against the layers ``layers`` of an embedding store before cells are pooled from it
    (so a classifier of another encoder or layer is refused before anything is written)."""
    from embedcache.store import open_store

    classifier = load_classifier(classifier_path)
    store = open_store(store_path)
    dims = {name: int(store.layout(name).shape[0]) for name in store.select_layers(layers)}
    classifier.check(store.encoder.name, store.config.weights_sha256, dims, str(classifier_path))
    return classifier

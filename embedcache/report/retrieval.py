"""Retrieval tables of stores' descriptors: precision at k and ADDR of layers on the same queries and pairs.

The store side of :mod:`embedcache.metrics.retrieval` (what ``embedcache
retrieval`` prints): which tiles are
queries (the slides ``fit-ssl`` held out, else a seeded split), their
labels (recorded in the store, or a CSV file read by
:func:`embedcache.probes.labels.read_csv_labels`), and one row per
(store, layer) compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedcache.config import RetrievalConfig
from embedcache.errors import ConfigError, DataError
from embedcache.geometry import TileGeometry, split_slides
from embedcache.metrics.retrieval import addr, addr_pairs, precision_at_k
from embedcache.probes.labels import read_csv_labels, store_tile_names
from embedcache.store import open_store


@dataclass
class RetrievalRow:
    """Scores of one descriptor set (a store's layer)."""

    name: str
    dim: int
    bytes_per_tile: int  # float32 descriptor of one tile and variant
    precision: float
    per_label: dict[str, float]
    addr: float
    n_queries: int
    n_near: int
    n_far: int


@dataclass
class RetrievalReport:
    """Rows compared on the same queries and pairs."""

    k: int
    query_slides: list[str]
    rows: list[RetrievalRow] = field(default_factory=list)

    def table(self) -> str:
        labels = sorted({lab for r in self.rows for lab in r.per_label})
        head = ["descriptors", "dim", "bytes/tile", f"P@{self.k}", *[f"P@{self.k} {lab}" for lab in labels], "ADDR"]
        body = [[r.name, str(r.dim), str(r.bytes_per_tile), f"{r.precision:.4f}",
                 *[f"{r.per_label.get(lab, float('nan')):.4f}" for lab in labels], f"{r.addr:.4f}"]
                for r in self.rows]
        widths = [max(len(row[c]) for row in [head, *body]) for c in range(len(head))]
        fmt = lambda row: "  ".join(v.ljust(w) if c == 0 else v.rjust(w)  # noqa: E731
                                    for c, (v, w) in enumerate(zip(row, widths)))
        return "\n".join([fmt(head), *map(fmt, body)])

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"k": self.k, "query_slides": self.query_slides, "rows": [asdict(r) for r in self.rows]}


def read_labels(store, labels: str) -> list[str]:
    """Tile labels: ``tissue`` (recorded in the store) or a CSV of ``tile,label``; ``""`` for none."""
    if labels == "tissue":
        names = store.tissue
        if names is None:
            raise DataError(f"{store.path}: the store has no tile labels; put NAME.geojson beside each slide "
                            "before extracting, or pass --labels FILE.csv")
        return names
    return read_csv_labels(labels, store.n_tiles, store_tile_names(store), every_tile=False)


def query_slides(stores, geo: TileGeometry, config: RetrievalConfig) -> list[str]:
    """Slides whose labelled tiles are the queries (see ``RetrievalConfig.queries``)."""
    if config.queries == "all":
        return list(geo.slide_names)
    if config.queries != "auto":
        names = [s.strip() for s in config.queries.split(",") if s.strip()]
        unknown = [n for n in names if n not in geo.slide_names]
        if unknown:
            raise ConfigError(f"no slide {unknown[0]!r} in the store; slides: {', '.join(geo.slide_names)}")
        return names
    recorded = {tuple(s.descriptor(name).get("held_out") or ()) for s in stores
                for name in s.descriptor_layers if s.descriptor(name).get("held_out")}
    if len(recorded) > 1:
        raise ConfigError("the descriptor layers were trained with different held-out slides; "
                          "pass --queries SLIDES to compare them on the same queries")
    if recorded:
        return list(recorded.pop())
    return split_slides(geo.slide_names, config.holdout, config.seed)


def _same_tiles(stores) -> TileGeometry:
    geos = [s.geometry() for s in stores]
    first = geos[0]
    for s, g in zip(stores[1:], geos[1:]):
        if (g.slide_names != first.slide_names or g.source.shape != first.source.shape
                or not np.array_equal(g.source, first.source) or not np.allclose(g.centres_um, first.centres_um)):
            raise DataError(f"{s.path} holds other tiles than {stores[0].path}; compare stores extracted "
                            "from the same slides with the same tiling")
    return first


def evaluate_retrieval(entries, config: RetrievalConfig = RetrievalConfig()) -> RetrievalReport:
    """Precision at k and ADDR of several (store, layer) descriptor sets on the same queries.

    Parameters
    ----------
    entries : list of (Store, str)
        Stores (extracted from the same slides) and a layer of each: an
        extracted layer (its pooled vector ``config.kind``) or a descriptor
        layer written by ``fit-ssl``.
    config : RetrievalConfig

    Returns
    -------
    RetrievalReport
    """
    if not entries:
        raise ConfigError("nothing to compare: give at least one --store and --layer")
    stores = list({id(s): s for s, _ in entries}.values())
    geo = _same_tiles(stores)
    labels = read_labels(stores[0], config.labels)
    held = query_slides(stores, geo, config)
    codes = [geo.slide_names.index(h) for h in held]
    queries = np.flatnonzero(np.isin(geo.source, codes))
    near, far = addr_pairs(geo, queries, config.d_near, config.d_far, config.far_from, config.far_pairs, config.seed)
    report = RetrievalReport(config.k, held)
    for store, layer in entries:
        kind = "mean" if layer in store.descriptor_layers else config.kind
        desc = store.pooled(layer, slice(None), variant=0, kind=kind)
        p, per_label, nq = precision_at_k(desc, labels, geo.source, queries, config.k, config.metric)
        name = layer if len(stores) == 1 else f"{Path(str(store.path)).name}:{layer}"
        report.rows.append(RetrievalRow(name, int(desc.shape[1]), int(desc.shape[1]) * 4, p, per_label,
                                        addr(desc, near, far), nq, len(near), len(far)))
    return report


def compare_stores(paths, layers=("last",), config: RetrievalConfig = RetrievalConfig()) -> RetrievalReport:
    """Open stores and score each requested layer of each (``evaluate_retrieval``).

    ``layers`` holds names, indices, ``last``, ``descriptors`` (every layer
    written by ``fit-ssl``) or ``all`` (extracted and written layers); a
    name is looked up in every store that has it and must exist in one.
    """

    stores = [open_store(p) for p in paths]
    entries = []
    for spec in layers:
        found = []
        for s in stores:
            if spec == "all":
                found += [(s, name) for name in s.layers + s.descriptor_layers]
            elif spec == "descriptors":
                found += [(s, name) for name in s.descriptor_layers]
            elif spec in ("last",) or spec.lstrip("-").isdigit() or spec in s.layers + s.descriptor_layers:
                found.append((s, s.resolve_layer(spec)))
        if not found:
            raise ConfigError(f"no store has layer {spec!r}; layers: " + "; ".join(
                f"{s.path}: {', '.join(s.layers + s.descriptor_layers)}" for s in stores))
        entries += [e for e in found if e not in entries]
    return evaluate_retrieval(entries, config)

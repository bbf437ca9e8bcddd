"""Stream training samples from a store: cached tokens of a variant, its image, its targets.

Each epoch, every training tile contributes one of its cached variants,
drawn by a generator seeded with ``(seed, epoch)``; the tile's image and
targets are moved by the same variant (:mod:`embedcache.train.targets`).
The draw happens in the main process (:class:`EpochBatches`), so DataLoader
workers hold no state and a resumed run sees the same batches as an
uninterrupted one.

Splits (:func:`make_split`) are written as strings, recorded in the run:

``auto``          the release's official validation split when it has one (CoNIC's challenge split,
                  CytoDArk0's ``folds.csv``), else the last fold when the store has several, else ``frac:0.2``
``official``      the release's validation split, or its test split when it names no validation split
``train``, ``val``, ``test``  the release's own splits (``embedcache datasets`` lists them)
``foldK``         tiles of fold K (1-based: PanNuke's fold number, else the order of the dataset's folds)
``frac:F``        a seeded fraction F of the *source images* (tiles of one image stay together)
``frac:F,groups=FILE.csv``  a seeded fraction F of the *groups* (patient, centre) that FILE
                  gives each source image (columns ``image,group``): images of one group stay together
``frac:F,groups=tissue``  a seeded fraction F of the tissues or cohorts the release names (PanNuke's
                  tissues, CoNIC's and Lizard's cohorts, MoNuSeg's organs): whole cohorts held out
``tiles:I,J,..``  tile ids
``sources:A,B``   source image names (file stems of the folder layout)
``rest``          every tile not in the other split (training's default)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from embedcache.datasets.variants import BY_NAME
from embedcache.errors import ConfigError, DataError
from embedcache.store import open_store, quant
from embedcache.workers import die_with_parent


# ----------------------------------------------------------------------------- splits

@dataclass(frozen=True)
class Split:
    """Training and validation tiles of a store, and how they were chosen."""

    train: np.ndarray
    val: np.ndarray
    train_spec: str
    val_spec: str

    def to_dict(self) -> dict:
        return {"train_spec": self.train_spec, "val_spec": self.val_spec,
                "train": [int(t) for t in self.train], "val": [int(t) for t in self.val]}

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        return cls(np.asarray(d["train"], dtype=np.int64), np.asarray(d["val"], dtype=np.int64),
                   d["train_spec"], d["val_spec"])


def read_groups(path, store) -> np.ndarray:
    """The group code of each source image of ``store`` from a CSV of ``image,group`` (header required).

    Raises
    ------
    DataError
        As :func:`group_codes`.
    """
    names = list(store.source_names) or [f"tile{t:05d}" for t in range(store.n_tiles)]
    return group_codes(path, names)[0]


def group_codes(path, names, what: str = "image") -> tuple[np.ndarray, list[str]]:
    """Codes into the sorted group names of each of ``names`` (sources: images or slides), from a CSV of
    ``image,group`` (or ``slide,group``; header required); ``-1`` for an empty name.

    Raises
    ------
    DataError
        No such file, no name and ``group`` columns, a name listed twice or with two groups, a name not
        among ``names``, or one of ``names`` the file leaves out.
    """
    import csv
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such groups file (a CSV with columns {what},group)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = {(k or "").strip().lower(): k for k in (rows[0].keys() if rows else [])}
    key = next((k for k in (what, "image", "slide") if k in header), None)
    if key is None or "group" not in header:
        raise DataError(f"{path}: needs a header with columns {what},group (got {', '.join(header) or 'no rows'})")
    names = list(names)
    group_of: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        name, group = row[header[key]].strip(), (row[header["group"]] or "").strip()
        if name not in names:
            raise DataError(f"{path}:{line}: {what} {name!r} is not a source {what} of the store "
                            f"(it has {', '.join(names[:4])}{' ...' if len(names) > 4 else ''})")
        if not group:
            raise DataError(f"{path}:{line}: {what} {name!r} has no group")
        if group_of.get(name, group) != group:
            raise DataError(f"{path}:{line}: {what} {name!r} is in two groups ({group_of[name]!r} and {group!r}); "
                            f"the tiles of one {what} cannot be split")
        group_of[name] = group
    missing = [n for n in names if n and n not in group_of]
    if missing:
        raise DataError(f"{path}: no group for {len(missing)} source {what}(s) of the store, e.g. {missing[0]!r}; "
                        f"give every {what} its group")
    groups = sorted(set(group_of.values()))
    codes = {g: k for k, g in enumerate(groups)}
    return np.array([codes[group_of[n]] if n else -1 for n in names], dtype=np.int64), groups


def select_tiles(store, spec: str, seed: int = 0, which: str = "selected") -> np.ndarray:
    """The store tiles a split spec selects (the syntax of ``--val``; module docstring)."""
    return _select(store, spec, seed, which)


def _select(store, spec: str, seed: int, which: str) -> np.ndarray:
    info = store.tile_info()
    n = store.n_tiles
    folds = np.asarray(info["fold"])
    source = np.asarray(info["source"])
    spec = spec.strip()
    named = getattr(store, "official_splits", None) or {}
    if spec == "auto":
        spec = "val" if "val" in named else (f"fold{int(folds.max()) + 1}" if len(np.unique(folds)) > 1
                                             else "frac:0.2")
    if spec == "official":
        spec = "val" if "val" in named else "test"
    if spec in named:
        return np.flatnonzero(np.isin(folds, named[spec]))
    if spec in ("train", "val", "test"):
        names = f"it names {', '.join(named)}" if named else "it names none"
        raise ConfigError(f"{which} split {spec!r}: the store's dataset has no official {spec} split ({names}); "
                          "use foldK or frac:F")
    if spec.startswith("fold"):
        k = spec[4:].lstrip(":")
        if not k.isdigit() or int(k) < 1:
            raise ConfigError(f"{which} split {spec!r}: write foldK with K from 1 (the first fold)")
        return np.flatnonzero(folds == int(k) - 1)
    if spec.startswith("frac:") or spec.replace(".", "", 1).isdigit():
        spec, _, group_file = spec.partition(",groups=")
        try:
            frac = float(spec.split(":", 1)[-1])
        except ValueError:
            frac = -1.0
        if not 0 < frac < 1:
            raise ConfigError(f"{which} split {spec!r}: the fraction must lie strictly between 0 and 1")
        # The unit drawn: the source image, the tissue or cohort the release gives each image, or the group
        # the file gives each image.
        if group_file == "tissue":
            unit = np.asarray(info["tissue"])
            if not getattr(store, "tissue_names", None) or (unit < 0).any():
                raise DataError(f"{which} split {spec},groups=tissue: the store's dataset gives no tissue or cohort "
                                "to every tile; use groups=FILE.csv")
        else:
            unit = source if not group_file else read_groups(group_file, store)[source]
        units = np.unique(unit)
        if len(units) < 2:
            raise DataError(f"{group_file or 'the store'}: a single {'group' if group_file else 'source image'}; "
                            "nothing to split: use another --val (foldK, tiles:I,J) or give several groups")
        rng = np.random.default_rng([seed, 7])
        k = max(1, int(round(frac * len(units))))
        chosen = rng.choice(units, size=min(k, len(units) - 1), replace=False)
        return np.flatnonzero(np.isin(unit, chosen))
    if spec.startswith("tiles:"):
        try:
            ids = np.asarray([int(s) for s in spec[6:].split(",") if s.strip()], dtype=np.int64)
        except ValueError:
            raise ConfigError(f"{which} split {spec!r}: tile ids must be integers, e.g. tiles:0,5,9") from None
        bad = ids[(ids < 0) | (ids >= n)]
        if bad.size:
            raise ConfigError(f"{which} split {spec!r}: tile {bad[0]} does not exist (the store has 0..{n - 1})")
        return np.unique(ids)
    if spec.startswith("sources:"):
        names = store.source_names
        wanted = [s.strip() for s in spec[8:].split(",") if s.strip()]
        missing = [w for w in wanted if w not in names]
        if missing:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise ConfigError(f"{which} split {spec!r}: no source image {missing[0]!r} in the store (it has {shown})")
        return np.flatnonzero(np.isin(source, [names.index(w) for w in wanted]))
    raise ConfigError(f"{which} split {spec!r} not understood; use auto, official, train, val, test, foldK, frac:F, "
                      "frac:F,groups=FILE.csv, tiles:I,J or sources:A,B")


def tuning_tiles(store, spec: str, seed: int, split, on_val: bool = False) -> np.ndarray:
    """The tiles a tuning split selects, refused where they meet the run's own split.

    Parameters
    ----------
    spec : str
        The split syntax of ``--val`` (``sources:A,B``, ...).
    seed : int
        The seed the run's split was drawn with.
    split : Split or mapping
        The run's ``train`` and ``val`` tiles.
    on_val : bool
        Allow tiles of the validation split (a run scored on images outside its store).

    Raises
    ------
    ConfigError
        The spec selects no tiles, or tiles the run trains on or is scored on:
        thresholds tuned there would flatter its score.
    """
    tiles = select_tiles(store, spec, int(seed), "tuning")
    if tiles.size == 0:
        raise ConfigError(f"the tuning split {spec!r} holds no tiles; choose images apart from training and "
                          "validation (e.g. sources:A,B)")
    parts = split.to_dict() if isinstance(split, Split) else split
    for name, what in (("train", "trained on"), ("val", "scored on")):
        used = set(np.asarray(parts[name]).tolist()) & set(tiles.tolist())
        if used and not (name == "val" and on_val):
            raise ConfigError(f"the tuning split {spec!r} holds {len(used)} tile(s) the run {what} (its "
                              f"{name} split); tune on images apart from both, e.g. leave them out with --train")
    return tiles


def make_split(store, val: str = "auto", train: str = "rest", seed: int = 0) -> Split:
    """Choose validation and training tiles (module docstring for the specs).

    Raises
    ------
    ConfigError
        A spec that cannot be read, or a split that holds no tiles.
    """
    info = store.tile_info()
    n_folds = int(np.asarray(info["fold"]).max()) + 1
    val_ids = _select(store, val, seed, "validation")
    if val_ids.size == 0:
        raise ConfigError(f"the validation split {val!r} holds no tiles (the store has {store.n_tiles} tiles in "
                          f"{n_folds} fold{'s' if n_folds > 1 else ''}); choose another --val")
    if train == "rest":
        train_ids = np.setdiff1d(np.arange(store.n_tiles), val_ids)
    else:
        train_ids = np.setdiff1d(_select(store, train, seed, "training"), val_ids)
    if train_ids.size == 0:
        raise ConfigError(f"the training split {train!r} holds no tiles once the validation split {val!r} is set "
                          "aside; choose another --val or --train")
    return Split(train_ids.astype(np.int64), val_ids.astype(np.int64), train, val)


# ----------------------------------------------------------------------------- sampling

class EpochBatches:
    """Batches of ``(position, variant)`` pairs, drawn again each epoch.

    Parameters
    ----------
    tiles : (n,) ndarray of int
        Store tile ids (positions index this array).
    n_variants : sequence of int
        Variant indices a tile may be shown in.
    batch_size : int
    seed : int
    unit_tiles : int
        Tiles per shard of the store. ``order="units"`` shuffles shards, then
        tiles inside windows of ``window`` shards, so a batch reads few
        shards (each shard index is read once per window, which matters on
        object stores); ``order="random"`` is a plain permutation.
    shuffle : bool
        False for validation: every tile once, in order, variant 0.
    """

    def __init__(self, tiles, variants, batch_size: int, seed: int = 0, unit_tiles: int = 16,
                 order: str = "units", shuffle: bool = True, window: int = 4):
        if order not in ("units", "random"):
            raise ConfigError(f"order must be units or random, not {order!r}")
        self.tiles = np.asarray(tiles, dtype=np.int64)
        self.variants = np.asarray(list(variants), dtype=np.int64)
        self.batch_size, self.seed, self.unit_tiles = int(batch_size), int(seed), max(1, int(unit_tiles))
        self.order, self.shuffle, self.window = order, shuffle, window
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-len(self.tiles) // self.batch_size)

    def pairs(self) -> list[tuple[int, int]]:
        """Every ``(position, variant)`` of the epoch, in reading order."""
        n = len(self.tiles)
        if not self.shuffle:
            return [(i, 0) for i in range(n)]
        rng = np.random.default_rng([self.seed, self.epoch])
        chosen = self.variants[rng.integers(len(self.variants), size=n)]
        if self.order == "random":
            order = rng.permutation(n)
        else:
            unit = self.tiles // self.unit_tiles
            units = rng.permutation(np.unique(unit))
            order = []
            for w in range(0, len(units), self.window):
                members = np.flatnonzero(np.isin(unit, units[w:w + self.window]))
                order.extend(rng.permutation(members).tolist())
            order = np.asarray(order, dtype=np.int64)
        return [(int(i), int(chosen[i])) for i in order]

    def __iter__(self):
        pairs = self.pairs()
        for b in range(0, len(pairs), self.batch_size):
            yield pairs[b:b + self.batch_size]


# ----------------------------------------------------------------------------- dataset

def feature_bytes(store, n_tiles: int, n_variants: int) -> int:
    """Bytes that ``n_tiles`` tiles x ``n_variants`` variants of every layer take in RAM (as stored)."""
    item = np.dtype(store.config.dtype).itemsize
    shapes = [store.layout(layer).shape for layer in store.layers]
    per = sum(int(np.prod(s)) * item + (4 * s[0] if store.quantized else 0) for s in shapes)
    h, w = store.tile_shape
    return n_tiles * (n_variants * per + h * w * 3)


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; a guess elsewhere)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


class TileStream(torch.utils.data.Dataset):
    """Samples of a store: index with a batch of ``(position, variant)`` pairs.

    Parameters
    ----------
    store : Store
    tiles : (n,) ndarray of int
        Store tile ids.
    targets : TargetCache or None
        None: samples carry no targets (prediction).
    preload : bool
        Read the tiles' tokens (every variant) and images into RAM first.
    progress : bool
        Progress bar while preloading.
    with_tokens : bool
        False: samples carry no tokens (an encoder computes them live from
        the sample's image, e.g. to compare with the cache).

    A sample is a dict: ``tokens`` (list of ``(C, h, w)`` tensors as stored:
    float16, float32 or int8), ``scales`` (int8 stores: list of ``(C,)``
    float32), ``image`` ``(H, W, 3)`` uint8 (with the variant applied, stain
    included), ``cls3``/``types`` ``(H, W)`` uint8, ``dist`` ``(D, H, W)``
    float16, ``valid`` ``(H, W)`` bool, ``tile`` and ``variant``. Samples
    stay in these compact types on their way out of a loader worker (a
    quarter of the bytes of float32 and int64); :func:`to_device` converts
    a batch where it is used.
    """

    def __init__(self, store, tiles, targets=None, preload: bool = False, progress: bool = False,
                 with_tokens: bool = True):
        self.store = store
        self.path = store.path
        self.tiles = np.asarray(tiles, dtype=np.int64)
        self.targets = targets
        self.layers = list(store.layers) if with_tokens else []
        self.variants = [BY_NAME[v] for v in store.variants]
        self._pid = os.getpid()
        self._ram = None
        if preload:
            self._ram = self._preload(progress)

    def _preload(self, progress: bool) -> dict:
        from embedcache.progress import progress_bar

        out = {"images": np.empty((len(self.tiles), *self.store.tile_shape, 3), dtype=np.uint8)}
        n_var = len(self.store.variants)
        for layer in self.layers:
            shape = self.store.layout(layer).shape
            out[layer] = np.empty((len(self.tiles), n_var, *shape), dtype=self.store.config.dtype)
            if self.store.quantized:
                out[layer, "scales"] = np.empty((len(self.tiles), n_var, shape[0]), dtype=np.float32)
        order = np.argsort(self.tiles)
        step = max(1, int(self.store.config.unit_tiles))
        with progress_bar(total=len(order), unit="tile", desc="preload", disable=not progress, dynamic_ncols=True) as bar:
            for b in range(0, len(order), step):
                pos = order[b:b + step]
                ids = self.tiles[pos].tolist()
                out["images"][pos] = self.store.images(ids)
                for layer in self.layers:
                    values, scales = self.store.stored_tokens(layer, ids, variant=None)
                    out[layer][pos] = values
                    if scales is not None:
                        out[layer, "scales"][pos] = scales
                bar.update(len(pos))
        return out

    def _reader(self):
        # A forked DataLoader worker opens its own view of the store.
        if os.getpid() != self._pid:
            self.store = open_store(self.path)
            self._pid = os.getpid()
        return self.store

    def __len__(self) -> int:
        return len(self.tiles)

    def sample(self, pos: int, variant: int, read: tuple | None = None) -> dict:
        """One sample; ``read`` gives its tokens and image already read (see :meth:`__getitem__`)."""
        tile = int(self.tiles[pos])
        v = self.variants[variant]
        if read is not None:
            tokens, image = read
        elif self._ram is not None:
            tokens = [(self._ram[layer][pos, variant],
                       self._ram[layer, "scales"][pos, variant] if self.store.quantized else None)
                      for layer in self.layers]
            image = self._ram["images"][pos]
        else:
            store = self._reader()
            tokens = [store.stored_tokens(layer, tile, variant) for layer in self.layers]
            image = store.images(tile)
        item = {"tokens": [torch.from_numpy(np.ascontiguousarray(values)) for values, _ in tokens],
                "image": torch.from_numpy(v.apply(image, image=True)),
                "tile": tile, "variant": variant}
        if tokens and tokens[0][1] is not None:
            item["scales"] = [torch.from_numpy(np.ascontiguousarray(scales)) for _, scales in tokens]
        if self.targets is not None:
            t = self.targets.get(tile, v)
            item.update(cls3=torch.from_numpy(np.ascontiguousarray(t["cls3"])),
                        dist=torch.from_numpy(np.ascontiguousarray(t["dist"])),
                        types=torch.from_numpy(np.ascontiguousarray(t["types"])),
                        valid=torch.from_numpy(np.ascontiguousarray(t["valid"])))
        return item

    def __getitem__(self, batch):
        if self._ram is not None or not self.layers:
            return collate([self.sample(p, v) for p, v in batch])
        # From disk: the whole batch's chunks in one concurrent read.
        tokens, images = self._reader().samples([(int(self.tiles[p]), v) for p, v in batch], self.layers,
                                                stored=True)
        return collate([self.sample(p, v, ([(values[k], None if scales is None else scales[k])
                                             for values, scales in tokens], images[k]))
                        for k, (p, v) in enumerate(batch)])


LISTS = ("tokens", "scales")  # keys holding one tensor per layer


def collate(samples: list[dict]) -> dict:
    """Stack samples into a batch (tokens and scales stay lists, one tensor per layer)."""
    out = {key: [torch.stack(ts) for ts in zip(*(s[key] for s in samples))] for key in LISTS if key in samples[0]}
    for key in samples[0]:
        if key in LISTS:
            continue
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.as_tensor(vals)
    return out


def to_device(batch: dict, device) -> dict:
    """A batch on ``device`` in the types training uses: float32 tokens (int8 scaled), int64 classes,
    float32 distances. Converting here, after the move, keeps the loader's bytes compact.
    """
    non_blocking = torch.device(device).type == "cuda"
    move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
    out = {k: move(v) for k, v in batch.items() if k not in LISTS}
    if "scales" in batch:
        out["tokens"] = [quant.dequantize_torch(move(t), move(s)) for t, s in zip(batch["tokens"], batch["scales"])]
    else:
        out["tokens"] = [move(t).float() for t in batch["tokens"]]
    for key, kind in (("cls3", torch.int64), ("types", torch.int64), ("dist", torch.float32)):
        if key in out:
            out[key] = out[key].to(kind)
    return out


def _worker_init(_):
    # Workers only read and decompress; leave the cores to the training step: one thread, and a lower
    # priority, so the step's threads are not descheduled while a batch is read ahead.
    torch.set_num_threads(1)
    try:
        os.nice(10)
    except OSError:
        pass
    die_with_parent()


def make_loader(dataset: TileStream, batches: EpochBatches, workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader that reads whole batches in ``workers`` processes (0: in this one)."""
    return torch.utils.data.DataLoader(
        dataset, sampler=batches, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None, worker_init_fn=_worker_init if workers else None)


def check_trainable(store) -> None:
    """Refuse stores that cannot train a decoder, saying what to do."""
    if not store.complete:
        raise DataError(f"{store.path}: the store is incomplete; finish it by running the same "
                        "`embedcache extract` command again")
    if not store.has_labels:
        raise DataError(f"{store.path}: the store has no labels (it was extracted from an unlabelled dataset); "
                        "extract a dataset with instance maps (PanNuke masks.npy, CoNIC labels.npy or NAME_inst.png)")

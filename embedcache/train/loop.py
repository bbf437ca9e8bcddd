"""Train the nuclei decoder from a store: AdamW, warm-up + cosine, early stopping, resume.

:func:`fit` builds the run in ``RUN.partial`` and renames it to ``RUN`` when
training ends, like ``extract`` does with stores: an interrupted run
resumes from its last finished epoch when the same command runs again, and
ends with the same weights as an uninterrupted one (batches are drawn from
``(seed, epoch)``; no other randomness is involved on a CPU). A run made with
other settings or another store is refused, naming the first field that
differs, unless ``overwrite`` is given (the old run stays in place until
the new one is finished).
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from embedcache import files
from embedcache.shared import sole
from embedcache.config import FitConfig
from embedcache.device import resolve_device
from embedcache.errors import ConfigError, RunError, TrainingError
from embedcache.store import open_store
from embedcache.threads import compute_threads, use_threads
from embedcache.train.checkpoint import (
    FEATURE_FIELDS, RUN_FORMAT, RUN_VERSION, build_model,
    feature_difference, load_optimizer,
    load_weights, optimizer_tensors, read_meta, save_weights, store_provenance, versions,
)
from embedcache.train.augment import epoch_generator, hed_jitter
from embedcache.train.decoder import NucleiLoss, type_weights
from embedcache.train.stream import (
    EpochBatches, TileStream, available_memory, check_trainable, feature_bytes, make_loader, make_split, to_device,
)
from embedcache.train.targets import TargetCache


# Settings that may change when a run is resumed: they do not change what it computes.
# ("workers" is what runs made before loader_workers had the name recorded.)
RESUMABLE = ("epochs", "patience", "loader_workers", "workers", "preload", "device")


@dataclass
class FitResult:
    """What :func:`fit` did."""

    path: Path
    epochs_run: int
    best_epoch: int
    best_value: float
    monitor: str
    stopped_early: bool
    seconds: float
    skipped: bool = False
    history: list[dict] = field(default_factory=list)


def _lr_at(step: int, steps_per_epoch: int, cfg: FitConfig) -> float:
    warm = cfg.warmup_epochs * steps_per_epoch
    total = max(1, cfg.epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / (warm + 1)
    t = min(1.0, (step - warm) / max(1, total - warm))
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def variant_ids(store, spec: str) -> list[int]:
    """Indices of the cached variants training draws from (``all`` or comma-separated names)."""
    if spec == "all":
        return list(range(len(store.variants)))
    names = [s.strip() for s in spec.split(",") if s.strip()]
    missing = [n for n in names if n not in store.variants]
    if missing or not names:
        raise ConfigError(f"variant {missing[0] if missing else spec!r} is not in the store "
                          f"(it has {', '.join(store.variants)})")
    return [store.variants.index(n) for n in names]


def _n_types(store, targets: TargetCache) -> int:
    named = max(store.class_names, default=0)
    return int(max(named, int(targets.types.max(initial=0))))


def _settings_difference(old: dict, new: dict) -> str | None:
    for key in sorted(set(old) | set(new)):
        if key in RESUMABLE:
            continue
        if old.get(key) != new.get(key):
            return f"{key}: the run has {old.get(key)!r}, this command {new.get(key)!r}"
    return None


def _open_run_dir(out: Path, meta: dict, overwrite: bool) -> tuple[Path, dict | None]:
    """Where to write, and the state to resume from (None: start afresh)."""
    files.recover(out)
    partial = files.partial_path(out)
    for candidate in (partial, out):
        if not (candidate / "run.json").exists():
            continue
        try:
            old = read_meta(candidate)
        except RunError:
            if overwrite:
                continue
            raise
        diff = _settings_difference(old["config"], meta["config"]) or \
            feature_difference(old["store"], meta["store"], FEATURE_FIELDS + ("dataset_fingerprint",))
        if not diff:
            return candidate, old
        if not overwrite:
            raise RunError(f"{candidate} holds a run made with other settings ({diff}); "
                           "choose another --out, or pass --overwrite to replace it")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise RunError(f"{out} exists and is not a decoder run; choose another --out")
    return files.fresh_partial(out), None


def _write_log(path: Path, history: list[dict]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    files.write_text(path / "log.csv", buf.getvalue())


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text or "can't allocate memory" in text or isinstance(exc, MemoryError))


class Trainer:
    """One training run in progress; :func:`fit` drives it."""

    def __init__(self, model, loss, config: FitConfig, device, progress: bool):
        self.model, self.loss, self.config, self.device, self.progress = model, loss, config, device, progress
        self.opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0

    def _guard(self, where: str, fn):
        try:
            return fn()
        except Exception as exc:
            if _is_oom(exc):
                b = self.config.batch_size
                hint = f"try --batch-size {max(1, b // 2)}" if b > 1 else "free memory or use a smaller --width"
                raise TrainingError(f"out of memory {where} with --batch-size {b}; {hint} "
                                    "(the last finished epoch is kept; run again to resume)") from None
            raise

    def train_epoch(self, epoch: int, loader, steps_per_epoch: int) -> dict:
        from embedcache.progress import progress_bar

        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        bar = progress_bar(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
                   disable=not self.progress, dynamic_ncols=True, leave=False)
        colours = epoch_generator(self.config.seed, epoch)
        for k, batch in enumerate(bar):
            lr = _lr_at(self.step, steps_per_epoch, self.config)
            for g in self.opt.param_groups:
                g["lr"] = lr

            @torch.enable_grad()  # extraction in the same process may have switched gradients off
            def step():
                b = to_device(batch, self.device)
                image = hed_jitter(b["image"], self.config.colour, colours)
                total, parts = self.loss(self.model(b["tokens"], image), b)
                if not torch.isfinite(total):
                    tiles = ", ".join(str(int(t)) for t in batch["tile"][:4])
                    raise TrainingError(
                        f"the loss became {total.item()} at epoch {epoch + 1}, step {k + 1} (tiles {tiles}); "
                        f"training stopped and the last finished epoch is kept. Lower --lr (now {self.config.lr:g}) "
                        "and start again with --overwrite, or check the store with `embedcache verify`")
                self.opt.zero_grad(set_to_none=True)
                total.backward()
                self.opt.step()
                return total, parts

            total, parts = self._guard(f"at epoch {epoch + 1}, step {k + 1}", step)
            self.step += 1
            w = len(batch["tile"])
            n += w
            sums["loss"] = sums.get("loss", 0.0) + total.item() * w
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v.item() * w
            bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
        bar.close()
        return {f"train_{k}": v / max(1, n) for k, v in sums.items()}

    @torch.no_grad()
    def validate(self, loader) -> dict:
        self.model.eval()
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            b = to_device(batch, self.device)
            total, parts = self._guard("while validating", lambda: self.loss(self.model(b["tokens"], b["image"]), b))
            w = len(batch["tile"])
            n += w
            sums["loss"] = sums.get("loss", 0.0) + total.item() * w
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v.item() * w
        return {f"val_{k}": v / max(1, n) for k, v in sums.items()}

    def checkpoint(self, where: Path, name: str, with_optimizer: bool, meta: dict | None = None):
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if with_optimizer:
            tensors.update(optimizer_tensors(self.opt))
        save_weights(where / f"{name}.safetensors", tensors, meta)

    def restore(self, where: Path):
        tensors, meta = load_weights(where / "last.safetensors")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer(self.opt, tensors)
        self.step = int(meta.get("step", 0))


def _preload_wanted(config: FitConfig, store, n_tiles: int, n_variants: int) -> bool:
    if config.preload != "auto":
        return config.preload == "yes"
    return feature_bytes(store, n_tiles, n_variants) < available_memory() // 4


def fit(store_path, out, config: FitConfig = FitConfig(), *, overwrite: bool = False, progress: bool = True,
        scorer=None) -> FitResult:
    """Train a nuclei decoder on a store's cached features.

    Parameters
    ----------
    store_path : str or Path
        A complete store with labels.
    out : str or Path
        The run directory (built as ``out.partial``, renamed when done).
    config : FitConfig
    overwrite : bool
        Replace a run made with other settings (kept until the new one ends).
    progress : bool
    scorer : callable, optional
        ``scorer(model, store, tiles) -> float``, a validation metric where
        higher is better (PQ); logged every epoch and, with
        ``config.monitor == "pq"``, used for early stopping.

    Returns
    -------
    FitResult

    Raises
    ------
    DataError
        The store has no labels or is incomplete.
    ConfigError
        An empty or unreadable split, or bad settings.
    RunError
        ``out`` holds a run made otherwise (without ``overwrite``).
    TrainingError
        The loss became NaN, or memory ran out.
    """
    with use_threads(beside=config.loader_workers):  # the loader processes share the thread budget (unless
        # the features are preloaded: then the loader is light and torch takes the whole budget)
        return _fit(store_path, out, config, overwrite, progress, scorer)


def _fit(store_path, out, config: FitConfig, overwrite: bool, progress: bool, scorer) -> FitResult:
    t0 = time.perf_counter()
    out = Path(out)
    store = open_store(store_path)
    check_trainable(store)
    if config.monitor == "pq" and scorer is None:
        raise ConfigError("monitor=pq needs a scorer (fit-decoder provides one); use monitor=loss")
    split = make_split(store, config.val, config.train,
                       config.seed if config.split_seed is None else config.split_seed)
    variants = variant_ids(store, config.variants)
    meta = {"format": RUN_FORMAT, "version": RUN_VERSION, "config": config.to_dict(),
            "store": store_provenance(store), "split": split.to_dict()}
    with sole(out, "fit-decoder"):  # a second fit-decoder into this run directory is refused while this lives
        return _fit_in(out, store, split, variants, meta, config, overwrite, progress, scorer, t0)


def _fit_in(out: Path, store, split, variants, meta: dict, config: FitConfig, overwrite: bool, progress: bool,
            scorer, t0: float) -> FitResult:
    where, old = _open_run_dir(out, meta, overwrite)
    st = (old or {}).get("state", {})
    if st.get("done") and (st["stopped_early"] or st["epoch"] >= config.epochs):
        return FitResult(files.swap_in(where, out), st["epoch"], st["best_epoch"], st["best_value"], config.monitor,
                         st["stopped_early"], time.perf_counter() - t0, skipped=True, history=st["history"])

    device = resolve_device(config.device)
    targets = TargetCache(store, np.concatenate([split.train, split.val]), config.targets, progress=progress)
    n_types = _n_types(store, targets)
    weights = type_weights(targets.type_frequencies(n_types + 1)) if n_types else []
    spec = store.encoder
    meta["model"] = {"shapes": [list(store.layout(k).shape) for k in store.layers],
                     "n_dist": len(config.targets.directions), "n_types": n_types, "type_weights": weights,
                     "directions": [list(d) for d in config.targets.directions],
                     "mean": list(spec.mean), "std": list(spec.std)}
    meta["created"] = (old or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S")
    meta["versions"] = versions()

    torch.manual_seed(config.seed)
    model = build_model(meta).to(device)
    loss = NucleiLoss(config.targets.directions, n_types, weights or None, config.loss).to(device)
    trainer = Trainer(model, loss, config, device, progress)
    state = {"epoch": 0, "step": 0, "best_epoch": 0, "best_value": None, "bad_epochs": 0, "done": False,
             "stopped_early": False, "history": []}
    if old is not None and old.get("state", {}).get("epoch"):
        trainer.restore(where)
        state = old["state"]
    meta["state"] = state
    files.write_json(where / "run.json", meta)

    preload = _preload_wanted(config, store, len(split.train) + len(split.val), len(store.variants))
    if preload:  # the loader only slices arrays in RAM: it takes no core from the forward and backward
        torch.set_num_threads(compute_threads(0))
    train_set = TileStream(store, split.train, targets, preload=preload, progress=progress)
    val_set = TileStream(store, split.val, targets, preload=preload, progress=False)
    unit = int(store.config.unit_tiles)
    batches = EpochBatches(split.train, variants, config.batch_size, config.seed, unit, config.order)
    train_loader = make_loader(train_set, batches, config.loader_workers)
    val_loader = make_loader(val_set, EpochBatches(split.val, [0], config.batch_size, shuffle=False), 0)

    higher = config.monitor == "pq"
    for epoch in range(state["epoch"], config.epochs):
        if config.patience and state["bad_epochs"] >= config.patience:
            state["stopped_early"] = True
            break
        te = time.perf_counter()
        batches.set_epoch(epoch)
        row = {"epoch": epoch + 1, "lr": _lr_at(trainer.step, len(batches), config)}
        row.update(trainer.train_epoch(epoch, train_loader, len(batches)))
        row.update(trainer.validate(val_loader))
        if scorer is not None:
            row["val_pq"] = float(scorer(model, store, split.val))
            model.train()
        value = row["val_pq"] if higher else row["val_loss"]
        better = state["best_value"] is None or (value > state["best_value"] if higher else value < state["best_value"])
        row["seconds"] = round(time.perf_counter() - te, 2)
        row["best"] = int(better)
        if better:
            state.update(best_value=value, best_epoch=epoch + 1, bad_epochs=0)
            trainer.checkpoint(where, "best", with_optimizer=False, meta={"epoch": epoch + 1})
        else:
            state["bad_epochs"] += 1
        trainer.checkpoint(where, "last", with_optimizer=True, meta={"epoch": epoch + 1, "step": trainer.step})
        state["history"].append(row)
        state.update(epoch=epoch + 1, step=trainer.step)
        _write_log(where, state["history"])
        files.write_json(where / "run.json", meta)
        if progress:
            from tqdm.auto import tqdm

            extra = f", val PQ {row['val_pq']:.4f}" if "val_pq" in row else ""
            tqdm.write(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}"
                       f"{extra}{' *' if better else ''} ({row['seconds']:.1f} s)")
    if config.patience and state["bad_epochs"] >= config.patience and state["epoch"] < config.epochs:
        state["stopped_early"] = True
    state["done"] = True
    meta["config"] = config.to_dict()
    files.write_json(where / "run.json", meta)
    path = files.swap_in(where, out)
    return FitResult(path, state["epoch"], state["best_epoch"], state["best_value"], config.monitor,
                     state["stopped_early"], time.perf_counter() - t0, history=state["history"])


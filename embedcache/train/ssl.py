"""Self-supervised similarity learning on slides (Gildenblat and Klaiman, 2019).

Tiles close together on a slide are taken as similar, tiles far apart as
dissimilar (:mod:`embedcache.train.pairs`), and a siamese network learns
128-d descriptors with the contrastive loss
``L = (1 - y) d^2 + y max(0, m - d)^2`` (d the Euclidean distance between
L2-normalised descriptors, y = 1 for a far pair). Two ways to run it:

* **head** (:func:`fit_head`): a small MLP on a store's cached pooled
  vectors, minutes on a CPU. Vectors are standardised with the training
  tiles' mean and spread, each side of a pair may read a random cached
  variant (rotations, flips), and the descriptors of every tile and variant
  are written back into the store as ``pooled/<name>/mean``, listed in the
  store's descriptor layers (its extraction config is untouched, so
  ``extract`` still recognises the store), by
  :func:`embedcache.store.writer.add_pooled_layer`: staged and swapped in,
  so an earlier layer of that name survives any failure.
* **encoder** (:func:`fit_encoder`): a siamese timm CNN (ResNet-50 by
  default) trained on tiles read from the slides, optionally stain
  normalised in LAB space (Reinhard, to the mean colour statistics of the
  training tiles). The backbone goes to a safetensors file with the
  projection as its classifier, which ``--encoder timm:resnet50 --weights
  FILE`` loads (the classifier is dropped on load).

Slides held out (``holdout``, the seeded split of
:func:`~embedcache.geometry.split_slides`) give no pairs, so
retrieval queries come from slides the descriptors never trained on.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedcache.config import SSLConfig
from embedcache.datasets import open_dataset
from embedcache.device import resolve_device
from embedcache.encoders import get_spec
from embedcache.encoders.load import load_encoder
from embedcache.errors import ConfigError, DataError, StoreError
from embedcache.files import atomic_file
from embedcache.geometry import TileGeometry, split_slides
from embedcache.store import open_store
from embedcache.store.writer import add_pooled_layer
from embedcache.train.pairs import PairSampler

DROPOUT = 0.2  # head: on its input and hidden units


@dataclass
class SSLResult:
    """What a ``fit-ssl`` run did."""

    mode: str
    output: str  # descriptor layer name (head) or checkpoint path (encoder)
    pairs_seen: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per epoch (head) or per step (encoder)
    held_out: list[str] = field(default_factory=list)
    n_near: int = 0  # distinct near pairs available
    n_far: int = 0  # distinct far pairs available

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_seen / self.seconds if self.seconds > 0 else float("nan")


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of ``(1 - y) d^2 + y max(0, margin - d)^2`` over pairs.

    Parameters
    ----------
    a, b : (P, D) tensor
        Descriptors of the two sides.
    y : (P,) tensor
        1 for a dissimilar (far) pair, 0 for a similar (near) one.
    margin : float
    """
    d = torch.sqrt(((a - b) ** 2).sum(1) + 1e-12)  # eps: the gradient of sqrt at 0 is infinite
    y = y.to(d.dtype)
    return ((1 - y) * d ** 2 + y * F.relu(margin - d) ** 2).mean()


class ProjectionHead(torch.nn.Module):
    """Standardise, ``Linear -> ReLU -> Linear``, L2-normalise: ``(B, D)`` -> ``(B, dim)``."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, hidden: int = 512, dim: int = 128,
                 dropout: float = DROPOUT):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.mlp = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(len(mean), hidden),
                                       torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp((x - self.mean) / self.std), dim=1)


def held_out_slides(slides: list[str], holdout: float, seed: int, groups: str | None = None) -> list[str]:
    """The slides kept out of training: a seeded fraction of the slides, or of the groups a ``slide,group``
    CSV gives them (a group's slides together)."""
    if holdout <= 0:
        return []
    if groups is None:
        return split_slides(slides, holdout, seed)
    from embedcache.train.stream import group_codes

    codes, names = group_codes(groups, slides, what="slide")
    if len(names) < 2:
        raise DataError(f"{groups}: every slide is in one group ({names[0]!r}); nothing to hold out")
    held = {names.index(g) for g in split_slides(names, holdout, seed)}
    return sorted(s for s, c in zip(slides, codes) if c in held)


def _training_tiles(geo: TileGeometry, config: SSLConfig) -> tuple[np.ndarray, list[str]]:
    held = held_out_slides(list(geo.slide_names), config.holdout, config.seed, config.groups)
    held_codes = [geo.slide_names.index(h) for h in held]
    return np.flatnonzero(~np.isin(geo.source, held_codes)), held


def _sampler(geo: TileGeometry, config: SSLConfig) -> tuple[PairSampler, list[str]]:
    train, held = _training_tiles(geo, config)
    return PairSampler(geo, config.d_near, config.d_far, config.far_from, subset=train), held


# ----------------------------------------------------------------------------
# Head mode
# ----------------------------------------------------------------------------
@contextmanager
def _training_threads():
    """Autograd on (extraction switches it off process-wide) and one torch thread.

    The head's matrices are small: two threads mostly wait on each other,
    and on a busy machine spin against other processes.
    """
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    torch.set_num_threads(1)
    torch.set_grad_enabled(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)


def _head_epoch(head, opt, x: torch.Tensor, pairs, config: SSLConfig, rng) -> float:
    """One pass over ``pairs`` in shuffled batches; each side reads a random variant of ``x`` (V, N, D)."""
    order = rng.permutation(len(pairs))
    va = torch.from_numpy(rng.integers(x.shape[0], size=len(pairs)))
    vb = torch.from_numpy(rng.integers(x.shape[0], size=len(pairs)))
    i, j, y = (torch.from_numpy(a) for a in (pairs.i, pairs.j, pairs.y))
    total = 0.0
    for b in range(0, len(pairs), config.batch):
        sel = torch.from_numpy(order[b:b + config.batch])
        loss = contrastive_loss(head(x[va[sel], i[sel]]), head(x[vb[sel], j[sel]]), y[sel], config.margin)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += loss.item() * len(sel)
    return total / len(pairs)


def fit_head(store_path, config: SSLConfig = SSLConfig(), progress: bool = True) -> SSLResult:
    """Train a projection head on a store's pooled vectors and write its descriptors back.

    Parameters
    ----------
    store_path : path
        A complete store extracted from slides.
    config : SSLConfig
        ``mode`` is ignored (this is head mode).
    progress : bool

    Returns
    -------
    SSLResult
        ``output`` is the descriptor layer name (read it with
        ``open_store(path).pooled(name)``).
    """
    from embedcache.progress import progress_bar

    store = open_store(store_path)
    if not store.complete:
        raise StoreError(f"{store.path}: the store is not complete; finish the extraction first")
    layer = store.resolve_layer(config.layer)
    if config.name in store.layers:
        raise ConfigError(f"{config.name!r} is an extracted layer of {store.path}; choose another --name")
    geo = store.geometry()
    sampler, held = _sampler(geo, config)
    # (V, N, D): every cached variant, each side of a pair reads a random one (augment), or the identity.
    feats = np.stack([store.pooled(layer, slice(None), variant=v, kind=config.kind)
                      for v in range(len(store.variants) if config.augment else 1)])
    train = sampler.tiles
    torch.manual_seed(config.seed)
    head = ProjectionHead(feats[0, train].mean(0), feats[0, train].std(0) + 1e-6, config.hidden, config.dim)
    opt = torch.optim.Adam(head.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    x = torch.from_numpy(feats)
    losses, seen, seconds = [], 0, 0.0
    with _training_threads():
        for _ in progress_bar(range(config.epochs), desc=f"fit-ssl head on {layer}", unit="epoch", disable=not progress):
            pairs = sampler.sample(config.pairs // 2, config.pairs - config.pairs // 2, rng)
            t0 = time.perf_counter()
            losses.append(_head_epoch(head, opt, x, pairs, config, rng))
            seconds += time.perf_counter() - t0
            seen += len(pairs)
    head.eval()
    with torch.no_grad():
        if not config.augment:
            feats = np.stack([store.pooled(layer, slice(None), variant=v, kind=config.kind)
                              for v in range(len(store.variants))])
        desc = head(torch.from_numpy(feats).flatten(0, 1)).reshape(*feats.shape[:2], -1).transpose(0, 1).numpy()
    meta = {"source_layer": layer, "kind": config.kind, "config": config.to_dict(), "held_out": held,
            "pairs_seen": seen, "final_loss": losses[-1] if losses else None}
    add_pooled_layer(store, config.name, desc, meta)
    return SSLResult("head", config.name, seen, seconds, losses, held, len(sampler.near), sampler.n_far)


# ----------------------------------------------------------------------------
# Encoder mode
# ----------------------------------------------------------------------------
def lab_stats(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each LAB channel per tile: two ``(n, 3)`` arrays."""
    from skimage.color import rgb2lab

    lab = rgb2lab(tiles)
    return lab.mean((1, 2)), lab.std((1, 2))


def reinhard(tiles: np.ndarray, target_mean: np.ndarray, target_std: np.ndarray) -> np.ndarray:
    """Reinhard stain normalisation: match each tile's LAB mean and spread to a target.

    Parameters
    ----------
    tiles : (n, H, W, 3) ndarray of uint8
    target_mean, target_std : (3,) ndarray
        LAB statistics to match.

    Returns
    -------
    (n, H, W, 3) ndarray of uint8
    """
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(tiles)
    mean = lab.mean((1, 2), keepdims=True)
    std = lab.std((1, 2), keepdims=True) + 1e-6
    out = (lab - mean) / std * np.asarray(target_std) + np.asarray(target_mean)
    return np.clip(np.rint(lab2rgb(out) * 255), 0, 255).astype(np.uint8)


class _Siamese(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, dim: int, mean, std):
        super().__init__()
        self.backbone = backbone
        self.proj = torch.nn.Linear(backbone.num_features, dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        x = (tiles.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return F.normalize(self.proj(self.backbone(x)), dim=1)


def _random_d4(tiles: np.ndarray, rng) -> np.ndarray:
    """Each tile turned by a random multiple of 90 degrees and maybe flipped."""
    out = np.empty_like(tiles)
    for k, t in enumerate(tiles):
        t = np.rot90(t, int(rng.integers(4)))
        out[k] = t[:, ::-1] if rng.random() < 0.5 else t
    return out


def fit_encoder(data, out, config: SSLConfig = SSLConfig(mode="encoder"), dataset_options: dict | None = None,
                progress: bool = True) -> SSLResult:
    """Train a siamese encoder on slide tiles and save it for the encoder registry.

    Parameters
    ----------
    data : path
        Slides (a folder or one file; see :class:`~embedcache.datasets.slides.SlideDataset`).
    out : path
        Checkpoint to write (``.safetensors``): the backbone's weights, and
        the projection as its classifier. Written to ``out.partial`` and
        renamed when complete.
    config : SSLConfig
    dataset_options : dict, optional
        ``tile_size``, ``tile_mpp``, ``mpp``, ``min_tissue`` of the tiling.
    progress : bool
    """
    from safetensors.torch import save_file
    from embedcache.progress import progress_bar

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"{out}: the checkpoint is written as safetensors; name it *.safetensors")
    dataset = open_dataset(data, format="slides", **(dataset_options or {}))
    geo = dataset.geometry()
    sampler, held = _sampler(geo, config)
    device = resolve_device(config.device)
    spec = get_spec(config.encoder)
    if spec.is_vit:
        raise ConfigError(f"encoder mode trains CNNs (timm:resnet50 by default), not the ViT {spec.name}")
    encoder = load_encoder(spec, config.weights, seed=config.seed)
    torch.manual_seed(config.seed)
    model = _Siamese(encoder.model, config.dim, spec.mean, spec.std).to(device).train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    rng = np.random.default_rng(config.seed)
    target = None
    if config.stain_norm:
        sample = rng.choice(sampler.tiles, size=min(64, len(sampler.tiles)), replace=False)
        means, stds = lab_stats(dataset.images(np.sort(sample)))
        target = (means.mean(0), stds.mean(0))
    n_near = config.batch // 2
    losses, seen, seconds = [], 0, 0.0
    with torch.enable_grad():
        for _ in progress_bar(range(config.steps), desc=f"fit-ssl {spec.name}", unit="step", disable=not progress):
            pairs = sampler.sample(n_near, config.batch - n_near, rng)
            tiles = dataset.images(np.concatenate([pairs.i, pairs.j]))
            if target is not None:
                tiles = reinhard(tiles, *target)
            tiles = torch.from_numpy(np.ascontiguousarray(_random_d4(tiles, rng))).to(device)
            t0 = time.perf_counter()
            z = model(tiles)
            loss = contrastive_loss(z[:len(pairs)], z[len(pairs):], torch.from_numpy(pairs.y).to(device), config.margin)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seconds += time.perf_counter() - t0
            seen += len(pairs)
            losses.append(loss.item())
    classifier = (encoder.model.pretrained_cfg or {}).get("classifier") or "fc"
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    state[f"{classifier}.weight"] = model.proj.weight.detach().cpu().contiguous()
    state[f"{classifier}.bias"] = model.proj.bias.detach().cpu().contiguous()
    meta = {"embedcache": json.dumps({"ssl_config": config.to_dict(), "held_out": held, "pairs_seen": seen,
                                      "stain_target": [t.tolist() for t in target] if target else None,
                                      "tile_mpp": dataset.tile_mpp, "tile_size": dataset.tile_shape[0]})}
    with atomic_file(out) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return SSLResult("encoder", str(out), seen, seconds, losses, held, len(sampler.near), sampler.n_far)

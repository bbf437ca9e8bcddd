"""One nuclei decoder for every frozen encoder: ViT grids and pyramids alike.

The decoder takes the cached patch tokens of several encoder depths plus the
tile itself and predicts, at full resolution, a 3-class map (background,
body, boundary), directional distance maps and a type map (see
:mod:`embedcache.train.targets`).

Design (one rule covers both encoder shapes). Taps are ordered coarse to
fine, deeper first among equal strides. The first keeps its stride; every
later tap is brought to a stride at most half the previous one (and at
least 2) by learned 2x up-sampling blocks (transposed conv + conv):

- a ViT (all taps at 1/16) becomes 1/16, 1/8, 1/4, 1/2: UNETR's progressive
  up-sampling of each depth;
- a pyramid (1/4 .. 1/32) needs no up-sampling: a plain U-Net.

A U-Net path then walks from the coarsest level to half resolution,
up-sampling bilinearly and concatenating every skip of the level, with
``depth`` conv blocks per level. A branch over the image itself (a 3x3 conv
at full resolution, then a strided one) adds a skip at 1/2 and, at full
resolution, a pointwise correction added to the heads' logits, which are
computed at 1/2 and up-sampled bilinearly: the image gives boundaries finer
than any patch, and no wide tensor is ever held at full resolution (on a
CPU that would cost as much as all the rest). Channels grow with stride:
``width`` at 1/4, ``width * s / 4`` at 1/s, clamped to ``[width/2, 4*width]``.
Each tap is first normalised per channel (batch statistics, no affine),
because frozen encoders' layers differ in scale by orders of magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from embedcache.config import DecoderConfig, LossConfig
from embedcache.encoders.registry import IMAGENET_MEAN, IMAGENET_STD
from embedcache.errors import ConfigError

HEADS = ("cls3", "dist", "types")


@dataclass(frozen=True)
class TapPlan:
    """Where one encoder tap enters the decoder."""

    index: int  # position in the list of layers given to the decoder
    channels: int
    size: tuple[int, int]  # (h, w) as cached
    stride: float
    n_up: int  # learned 2x up-sampling blocks

    @property
    def out_size(self) -> tuple[int, int]:
        return self.size[0] * 2 ** self.n_up, self.size[1] * 2 ** self.n_up

    @property
    def out_stride(self) -> float:
        return self.stride / 2 ** self.n_up


def plan_taps(shapes: list[tuple[int, int, int]], tile_shape: tuple[int, int]) -> list[TapPlan]:
    """How each tap of shape ``(C, h, w)`` is brought to its level (module docstring).

    Taps are given shallow to deep, as a store lists them.
    """
    if not shapes:
        raise ConfigError("the decoder needs at least one encoder layer")
    order = sorted(range(len(shapes)), key=lambda i: (tile_shape[0] / shapes[i][1], i), reverse=True)
    plans, previous = [], None
    for i in order:
        c, h, w = shapes[i]
        stride = tile_shape[0] / h
        n_up = 0
        if previous is not None:
            while stride / 2 ** n_up > previous / 2 * (1 + 1e-6) and stride / 2 ** (n_up + 1) >= 2 - 1e-6:
                n_up += 1
        plan = TapPlan(i, c, (h, w), stride, n_up)
        previous = plan.out_stride
        plans.append(plan)
    return plans


def _block(cin: int, cout: int, stride: int = 1, kernel: int = 3, norm: bool = True) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=not norm)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)) if norm else \
        nn.Sequential(conv, nn.ReLU(inplace=True))


class _Up(nn.Module):
    """2x learned up-sampling (UNETR's deconvolution block)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
        self.conv = _block(cout, cout)

    def forward(self, x):
        return self.conv(self.deconv(x))


class _Tap(nn.Module):
    def __init__(self, plan: TapPlan, config: DecoderConfig):
        super().__init__()
        self.norm = nn.BatchNorm2d(plan.channels, affine=False)
        c = config.channels(plan.stride)
        self.proj = nn.Sequential(nn.Conv2d(plan.channels, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        ups, s = [], plan.stride
        for _ in range(plan.n_up):
            s /= 2
            ups.append(_Up(c, config.channels(s)))
            c = config.channels(s)
        self.ups = nn.Sequential(*ups)
        self.out_channels = c

    def forward(self, x):
        return self.ups(self.proj(self.norm(x)))


class NucleiDecoder(nn.Module):
    """Frozen-encoder taps + the tile -> full-resolution nuclei maps.

    Parameters
    ----------
    shapes : list of (C, h, w)
        Token shape of each cached layer, shallow to deep.
    tile_shape : (H, W)
    n_dist : int
        Distance channels (4 for ``cisca``, 2 for ``hovernet``).
    n_types : int
        Nucleus types (0: no type head); the type head has ``n_types + 1``
        classes, 0 being background.
    config : DecoderConfig
    mean, std : 3 floats
        The encoder's normalisation of RGB in 0..1 (used by the image branch).

    Call it with ``tokens`` (list of ``(B, C, h, w)`` float tensors, one per
    layer) and ``images`` (``(B, H, W, 3)`` uint8); it returns a dict of
    logits ``cls3`` ``(B, 3, H, W)``, ``types`` ``(B, n_types + 1, H, W)``
    and distance maps ``dist`` ``(B, n_dist, H, W)`` in -1..1.
    """

    def __init__(self, shapes, tile_shape, n_dist: int, n_types: int, config: DecoderConfig = DecoderConfig(),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.config = config
        self.tile_shape = tuple(int(s) for s in tile_shape)
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.n_dist, self.n_types = int(n_dist), int(n_types)
        self.plans = plan_taps(self.shapes, self.tile_shape)
        self.taps = nn.ModuleList([_Tap(p, config) for p in self.plans])
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255, persistent=False)

        h, w = self.tile_shape
        half = ((h + 1) // 2, (w + 1) // 2)
        skips = [(p.out_size, tap.out_channels) for p, tap in zip(self.plans, self.taps)]
        n_out = 3 + self.n_dist + (self.n_types + 1 if self.n_types else 0)
        if config.image_branch:
            c1, c2 = max(8, config.channels(1) // 2), max(8, config.channels(2) // 2)
            # No normalisation at full resolution: memory-bound on a CPU, and pixels are already normalised.
            self.image1 = _block(3, c1, norm=False)
            self.image2 = _block(c1, c2, stride=2)
            self.image_head = nn.Conv2d(c1, n_out, 1)
            skips.append((half, c2))
        sizes = sorted({s for s, _ in skips if s[0] < h} | {half}, key=lambda s: s[0] * s[1])
        self.levels = sizes
        self.level_blocks = nn.ModuleList()
        previous = 0
        for size in sizes:
            cin = previous + sum(c for s, c in skips if s == size)
            cout = self.config.channels(h / size[0])
            layers = [_block(cin, cout)] + [_block(cout, cout) for _ in range(config.depth - 1)]
            self.level_blocks.append(nn.Sequential(*layers))
            previous = cout
        # One conv for every head: cls3, distances, types, split in forward.
        self.head = nn.Conv2d(previous, n_out, 1)

    def _check(self, tokens, images):
        if len(tokens) != len(self.shapes):
            raise ConfigError(f"decoder expects {len(self.shapes)} layers, got {len(tokens)}")
        for k, (t, s) in enumerate(zip(tokens, self.shapes)):
            if tuple(t.shape[1:]) != s:
                raise ConfigError(f"layer {k}: decoder expects tokens of shape {s}, got {tuple(t.shape[1:])}")
        if tuple(images.shape[1:3]) != self.tile_shape:
            raise ConfigError(f"decoder expects {self.tile_shape} tiles, got {tuple(images.shape[1:3])}")

    def forward(self, tokens: list[torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
        self._check(tokens, images)
        feats: dict[tuple[int, int], list[torch.Tensor]] = {}
        for plan, tap in zip(self.plans, self.taps):
            x = tap(tokens[plan.index])
            feats.setdefault(tuple(x.shape[-2:]), []).append(x)
        f1 = None
        if self.config.image_branch:
            x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
            f1 = self.image1(x)
            f2 = self.image2(f1)
            feats.setdefault(tuple(f2.shape[-2:]), []).append(f2)
        x = None
        for size, block in zip(self.levels, self.level_blocks):
            parts = feats.get(size, [])
            if x is not None:
                parts = [F.interpolate(x, size=size, mode="bilinear", align_corners=False)] + parts
            x = block(torch.cat(parts, dim=1))
        logits = F.interpolate(self.head(x), size=self.tile_shape, mode="bilinear", align_corners=False)
        if f1 is not None:
            logits = logits + self.image_head(f1)
        d = self.n_dist
        out = {"cls3": logits[:, :3], "dist": torch.tanh(logits[:, 3:3 + d])}
        if self.n_types:
            out["types"] = logits[:, 3 + d:]
        return out

    def describe(self) -> dict:
        """Plain data: the plan of each tap, the levels, the parameter count."""
        return {
            "taps": [{"layer": p.index, "shape": list(self.shapes[p.index]), "stride": p.stride, "n_up": p.n_up,
                      "level": list(p.out_size)} for p in self.plans],
            "levels": [list(s) for s in self.levels],
            "parameters": sum(p.numel() for p in self.parameters()),
        }


# ----------------------------------------------------------------------------- losses

def type_weights(frequencies, power: float = 0.5, clip: float = 10.0) -> list[float]:
    """Inverse-frequency class weights ``(N / n_c) ** power``, mean 1 over the classes seen."""
    import numpy as np

    f = np.asarray(frequencies, dtype=np.float64)
    seen = f > 0
    w = np.ones_like(f)
    if seen.any():
        w[seen] = (f[seen].sum() / f[seen]) ** power
        w[seen] /= w[seen].mean()
    return np.clip(w, 1 / clip, clip).round(6).tolist()


def class_terms(logits, target, mask, weight=None):
    """Cross-entropy and soft confusion counts of a segmentation, from one log-softmax.

    Parameters
    ----------
    logits : (B, K, H, W) tensor
    target : (B, H, W) tensor of int64
    mask : (B, H, W) tensor of bool
        Pixels that count.
    weight : (K,) tensor, optional
        Cross-entropy class weights (the mean is weighted, as torch does).

    Returns
    -------
    ce : scalar tensor
    tp, fp, fn : (K,) tensors
        Soft true positives, false positives and false negatives per class.
    """
    k = logits.shape[1]
    logp = logits.log_softmax(1)
    p = logp.exp()
    m = mask.to(p.dtype)
    idx = target[:, None]
    logp_t = logp.gather(1, idx)[:, 0]
    p_t = p.gather(1, idx)[:, 0]
    w = m if weight is None else weight[target] * m
    ce = -(logp_t * w).sum() / w.sum().clamp_min(1e-6)
    flat = target.reshape(-1)
    tp = torch.zeros(k, dtype=p.dtype, device=p.device).scatter_add(0, flat, (p_t * m).reshape(-1))
    count = torch.zeros(k, dtype=p.dtype, device=p.device).scatter_add(0, flat, m.reshape(-1))
    psum = (p * m[:, None]).sum((0, 2, 3))
    return ce, tp, psum - tp, count - tp


def dice_loss(tp, fp, fn, eps: float = 1.0):
    """1 - mean soft Dice over classes, from :func:`class_terms` counts."""
    return 1 - ((2 * tp + eps) / (2 * tp + fp + fn + eps)).mean()


def tversky_loss(tp, fp, fn, alpha: float = 0.3, beta: float = 0.7, eps: float = 1.0):
    """1 - mean Tversky index over classes (``alpha`` on false positives, ``beta`` on false negatives)."""
    return 1 - ((tp + eps) / (tp + alpha * fp + beta * fn + eps)).mean()


def directional_kernels(directions) -> torch.Tensor:
    """Sobel derivatives along each direction, ``(D, 1, 3, 3)``."""
    d_row = torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]) / 8
    d_col = d_row.t()
    ks = [(ur * d_row + uc * d_col) / math.hypot(ur, uc) for ur, uc in directions]
    return torch.stack(ks)[:, None]


class NucleiLoss(nn.Module):
    """The sum of the weighted loss terms; returns ``(total, parts)``.

    Parameters
    ----------
    directions : sequence of (d_row, d_col)
        Of the distance channels (for the gradient loss).
    n_types : int
    weights : list of float, optional
        Cross-entropy weight of each type class 0..n_types.
    config : LossConfig
    """

    def __init__(self, directions, n_types: int, weights=None, config: LossConfig = LossConfig()):
        super().__init__()
        self.config = config
        self.n_types = n_types
        self.register_buffer("kernels", directional_kernels(directions), persistent=False)
        w = torch.tensor(weights if weights is not None else [1.0] * (n_types + 1), dtype=torch.float32)
        self.register_buffer("type_weight", w, persistent=False)

    def forward(self, out: dict, batch: dict):
        cfg = self.config
        valid = batch["valid"]
        cls3 = batch["cls3"]
        ce, tp, fp, fn = class_terms(out["cls3"], cls3, valid)
        parts = {"cls3_ce": ce, "cls3_dice": dice_loss(tp, fp, fn)}
        fg = (cls3 > 0) & valid
        m = fg[:, None].to(out["dist"].dtype)
        n = (m.sum() * out["dist"].shape[1]).clamp_min(1)
        err = out["dist"] - batch["dist"]
        parts["dist"] = ((err.abs() if cfg.distance_error == "mae" else err ** 2) * m).sum() / n
        groups = self.kernels.shape[0]
        g_pred = F.conv2d(out["dist"], self.kernels, padding=1, groups=groups)
        g_true = F.conv2d(batch["dist"], self.kernels, padding=1, groups=groups)
        parts["gradient"] = (((g_pred - g_true) ** 2) * m).sum() / n
        total = cfg.cls3 * (parts["cls3_ce"] + parts["cls3_dice"]) + cfg.dist * parts["dist"] + \
            cfg.gradient * parts["gradient"]
        if self.n_types and "types" in out:
            ce, tp, fp, fn = class_terms(out["types"], batch["types"], valid, self.type_weight)
            parts["types_ce"] = ce
            parts["types_tversky"] = tversky_loss(tp, fp, fn, cfg.tversky_alpha, cfg.tversky_beta)
            total = total + cfg.types * (parts["types_ce"] + parts["types_tversky"])
        return total, parts

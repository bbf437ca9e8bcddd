"""Pixel-level colour augmentation of the tiles the decoder's image branch sees during training.

The cached tokens were computed once from the unaltered tile, so only the
image branch (:mod:`embedcache.train.decoder`) can see a changed stain. The
jitter is the HED one of Tellez et al. (2018, 2019): each tile's optical
density is split into haematoxylin, eosin and DAB by the Ruifrok-Johnston
matrix (scikit-image's), each stain is scaled by ``1 + U(-s, s)`` and
shifted by ``U(-s, s)`` (in scikit-image's normalised stain units), and the
result is turned back into RGB (without scikit-image's clamp of negative
stains, so that no jitter gives back the tile exactly). ``s = 0.05`` is
their "HED-light".
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

_LOG_ADJUST = -math.log(1e-6)  # scikit-image's separate_stains / combine_stains scale


def hed_jitter(images: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """HED-jittered copies of uint8 RGB tiles ``(B, H, W, 3)`` (module docstring); ``strength`` 0 returns them.

    >>> x = torch.full((2, 4, 4, 3), 200, dtype=torch.uint8)
    >>> torch.equal(hed_jitter(x, 0.0), x)
    True
    >>> y = hed_jitter(x, 0.05, torch.Generator().manual_seed(0))
    >>> y.dtype, y.shape, bool((y != x).any())
    (torch.uint8, torch.Size([2, 4, 4, 3]), True)
    """
    if strength <= 0:
        return images
    b = images.shape[0]
    to_hed = torch.as_tensor(hed_from_rgb, dtype=torch.float32, device=images.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=torch.float32, device=images.device)
    draw = torch.rand((2, b, 1, 1, 3), generator=generator).to(images.device) * 2 - 1
    alpha, beta = 1 + strength * draw[0], strength * draw[1]
    rgb = (images.float() / 255).clamp_min(1e-6)
    stains = (-torch.log(rgb) / _LOG_ADJUST) @ to_hed  # scikit-image's rgb2hed
    stains = stains * alpha + beta
    out = torch.exp(-(stains * _LOG_ADJUST) @ to_rgb)  # and hed2rgb
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The draws of one epoch: the same on a resumed run as on an uninterrupted one."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 11]).generate_state(1)[0]))

"""int8 tokens: symmetric quantisation with one scale per tile, variant and channel.

A tile-variant's patch tokens ``(C, h, w)`` are stored as int8 ``q`` with a
float32 scale per channel, ``s = max|x| / 127`` over the channel's grid, and
read back as ``q * s``: the error of any token is at most ``s / 2``. A scale
per channel follows the channels' very different ranges (a few channels of
a ViT run far larger than the rest); taking it per tile keeps every unit of
work independent of the others (no calibration pass), so any worker
computes the same bytes. The scales cost ``4 / (h * w)`` bytes per token
value (1.6% at a 16 x 16 grid).

``quantize`` runs in torch, where the tokens are (on the GPU when there is
one); ``dequantize`` runs in numpy where the store is read, and
``dequantize_torch`` where a training batch is used (the same float32
product, so both give the same floats).
"""

from __future__ import annotations

import numpy as np

QMAX = 127


def quantize(tokens):
    """Quantise ``(..., C, h, w)`` float tokens (a torch tensor).

    Returns
    -------
    q : (..., C, h, w) torch.Tensor of int8
    scale : (..., C) torch.Tensor of float32
        Zero for a channel that is zero everywhere.
    """
    import torch

    x = tokens.float()
    scale = x.abs().amax(dim=(-2, -1)) / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / safe[..., None, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(..., C, h, w)`` float32 tokens from int8 ``q`` and ``(..., C)`` scales.

    >>> q = np.array([[[[127, -64]]]], dtype=np.int8)
    >>> dequantize(q, np.array([[0.5]], dtype=np.float32))
    array([[[[ 63.5, -32. ]]]], dtype=float32)
    """
    out = q.astype(np.float32)
    out *= np.asarray(scale, dtype=np.float32)[..., None, None]
    return out


def dequantize_torch(q, scale):
    """:func:`dequantize` for torch tensors (wherever they are): ``q.float() * scale``, channel-wise."""
    return q.float() * scale[..., None, None]


def to_float(values: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Stored tokens as float32: int8 ``values`` scaled by ``scales``, others cast (no copy when float32)."""
    if scales is None:
        return values.astype(np.float32, copy=False)
    return dequantize(values, scales)

"""Multi-layer features of a frozen encoder through timm's ``forward_intermediates``.

Patch tokens come back as ``(B, C, h, w)`` maps; a ViT's prefix tokens
(class token first, then registers) are returned apart, never mixed into
the grid. Intermediates are the raw block outputs (``norm=False``, as UNETR
taps them) unless the extraction asks for the final norm to be applied.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedcache.encoders.load import LoadedEncoder
from embedcache.layers import select_layers


def layer_names(model: torch.nn.Module) -> list[str]:
    """Names of the model's tappable depths (timm ``feature_info`` modules)."""
    return [str(f["module"]) for f in model.feature_info]


def resolve_layers(model: torch.nn.Module, default: tuple[int, ...], request: str | list | None) -> list[int]:
    """Indices into ``feature_info`` for ``default``, ``all``, ``last``, or names/indices.

    ``request`` is read by :func:`embedcache.layers.select_layers` against the
    model's layer names (``blocks.11``; indices negative from the end).
    """
    return select_layers(request, layer_names(model), default)


class FeatureExtractor(torch.nn.Module):
    """Tiles in, multi-layer features out.

    Parameters
    ----------
    encoder : LoadedEncoder
    layers : list of int
        Indices into the model's ``feature_info``.
    norm : bool
        Apply the model's final norm to every tapped layer.

    Call it with ``(B, H, W, 3)`` uint8 tiles (any device); it normalises
    them with the encoder's mean/std, fits them to the model (native,
    resize or pad, see :mod:`embedcache.encoders.registry`) and returns a
    list, one entry per layer, of ``(tokens, prefix)``: tokens
    ``(B, C, h, w)``, prefix ``(B, P, C)`` or None.
    """

    def __init__(self, encoder: LoadedEncoder, layers: list[int], norm: bool = False):
        super().__init__()
        self.spec = encoder.spec
        self.model = encoder.model.eval().requires_grad_(False)
        self.indices = list(layers)
        self.names = [layer_names(self.model)[i] for i in self.indices]
        self.norm = norm
        self.n_prefix = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self.has_cls = getattr(self.model, "cls_token", None) is not None
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1) * 255, persistent=False)

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 to the normalised, fitted ``(B, 3, h, w)`` float input."""
        x = tiles.permute(0, 3, 1, 2).float()
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        spec = self.spec
        if spec.fit == "resize" and spec.input_size and x.shape[-1] != spec.input_size:
            x = F.interpolate(x, size=(spec.input_size, spec.input_size), mode="bicubic", align_corners=False,
                              antialias=True)
        elif spec.fit == "pad" and spec.patch_size:
            p = spec.patch_size
            ph, pw = (-x.shape[-2]) % p, (-x.shape[-1]) % p
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return x

    @torch.inference_mode()
    def forward(self, tiles: torch.Tensor):
        x = self.preprocess(tiles)
        kwargs = {"indices": self.indices, "norm": self.norm, "output_fmt": "NCHW", "intermediates_only": True}
        if self.n_prefix:
            kwargs["return_prefix_tokens"] = True
        outs = self.model.forward_intermediates(x, **kwargs)
        if self.n_prefix:
            return [(tok, pre) for tok, pre in outs]
        return [(tok, None) for tok in outs]

    def describe(self, tile_shape=(256, 256), device: str = "meta") -> dict[str, dict]:
        """Per layer: token shape ``(C, h, w)`` for a tile, prefix count, stride in tile pixels."""
        x = torch.zeros((1, *tile_shape, 3), dtype=torch.uint8, device=device)
        with torch.device(device):
            outs = self.forward(x)
        info = {}
        for name, (tok, pre) in zip(self.names, outs):
            info[name] = {
                "shape": [int(s) for s in tok.shape[1:]],
                "prefix": int(pre.shape[1]) if pre is not None else 0,
                "stride": [tile_shape[0] / tok.shape[2], tile_shape[1] / tok.shape[3]],
            }
        return info

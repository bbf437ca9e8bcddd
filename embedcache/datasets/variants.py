"""Fixed, named augmentation variants of a tile.

A variant is a deterministic transform: a dihedral part (an optional
horizontal flip followed by ``k`` counter-clockwise quarter turns, applied
to the image *and* its label maps) and an optional stain part (a fixed
rescaling of the haematoxylin, eosin and DAB channels, applied to the image
only). The same name always means the same transform, so a later stage can
apply it to the labels of a cached tile and get the labels of the cached
features.

Sets: ``none`` (identity), ``flips`` (identity, hflip, vflip), ``d4`` (the 8
dihedral transforms), ``d4+stain`` (d4 and two stain variants), or a comma
separated list of names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedcache.errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """One named transform.

    Attributes
    ----------
    name : str
    flip : bool
        Mirror left-right first.
    k : int
        Then rotate by ``k`` quarter turns counter-clockwise (numpy's rot90).
    stain : tuple of 6 floats or None
        Scale and shift (s_h, s_e, s_d, b_h, b_e, b_d) of the HED optical
        densities (Ruifrok-Johnston deconvolution), or None.
    """

    name: str
    flip: bool = False
    k: int = 0
    stain: tuple[float, ...] | None = None

    @property
    def is_geometric_identity(self) -> bool:
        return not self.flip and self.k % 4 == 0

    def apply(self, x: np.ndarray, spatial=(-3, -2), image: bool = True) -> np.ndarray:
        """Apply to an array whose axes ``spatial`` are (rows, cols).

        ``image=False`` applies only the geometric part (for label maps).
        The default axes suit (..., H, W, C) images and (..., H, W, 2) labels;
        use ``spatial=(-2, -1)`` for (..., C, H, W) feature maps.
        """
        if image and self.stain is not None:
            x = _stain(x, self.stain)
        if self.flip:
            x = np.flip(x, axis=spatial[1])
        if self.k % 4:
            x = np.rot90(x, self.k, axes=spatial)
        return np.ascontiguousarray(x)

    def invert(self, x: np.ndarray, spatial=(-3, -2)) -> np.ndarray:
        """Undo the geometric part (maps predicted in the variant's frame back)."""
        if self.k % 4:
            x = np.rot90(x, -self.k, axes=spatial)
        if self.flip:
            x = np.flip(x, axis=spatial[1])
        return np.ascontiguousarray(x)

    def apply_torch(self, x, spatial=(-2, -1)):
        """The geometric part on a torch tensor, by default (..., C, H, W)."""
        import torch

        if self.flip:
            x = torch.flip(x, dims=(spatial[1],))
        if self.k % 4:
            x = torch.rot90(x, self.k, dims=spatial)
        return x


D4 = (
    Variant("identity"),
    Variant("rot90", k=1),
    Variant("rot180", k=2),
    Variant("rot270", k=3),
    Variant("hflip", flip=True),
    Variant("transpose", flip=True, k=1),
    Variant("vflip", flip=True, k=2),
    Variant("antitranspose", flip=True, k=3),
)
# Two fixed stain perturbations of moderate size (about +-8% optical density),
# drawn once and written down so they never change between versions.
STAIN = (
    Variant("stain_a", stain=(1.08, 0.93, 1.0, 0.01, -0.01, 0.0)),
    Variant("stain_b", stain=(0.92, 1.07, 1.0, -0.01, 0.01, 0.0)),
)
BY_NAME = {v.name: v for v in D4 + STAIN}
SETS = {
    "none": ("identity",),
    "flips": ("identity", "hflip", "vflip"),
    "d4": tuple(v.name for v in D4),
    "d4+stain": tuple(v.name for v in D4 + STAIN),
}


def resolve_variants(spec: str | list[str] | tuple[str, ...]) -> tuple[Variant, ...]:
    """Variants from a set name, a comma-separated list, or a list of names.

    The identity always comes first (a later stage tests on variant 0).
    """
    if isinstance(spec, str):
        names = SETS.get(spec) or tuple(s.strip() for s in spec.split(",") if s.strip())
    else:
        names = tuple(spec)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}; use one of the sets {', '.join(SETS)} "
                          f"or names from {', '.join(BY_NAME)}")
    if not names:
        raise ConfigError("no variants given; use 'none' for the identity only")
    if len(set(names)) != len(names):
        raise ConfigError(f"variant listed twice in {','.join(names)}")
    if names[0] != "identity":
        raise ConfigError(f"the first variant must be 'identity' (got {names[0]!r}); it is the one tests use")
    return tuple(BY_NAME[n] for n in names)


def _stain(image: np.ndarray, params: tuple[float, ...]) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    scale, shift = np.asarray(params[:3]), np.asarray(params[3:])
    hed = rgb2hed(image)
    rgb = hed2rgb(hed * scale + shift)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)

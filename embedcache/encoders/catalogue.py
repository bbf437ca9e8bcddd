"""A plain-data description of the registry (what ``embedcache encoders`` shows)."""

from __future__ import annotations

from embedcache.encoders.features import layer_names
from embedcache.encoders.load import build_model
from embedcache.encoders.registry import REGISTRY, EncoderSpec


def terms(spec: EncoderSpec) -> str:
    """The licence in a word or two: ``open``, ``gated``, ``non-commercial`` or both."""
    words = [w for w, on in (("gated", spec.gated), ("non-commercial", spec.non_commercial)) if on]
    return ", ".join(words) or "open"


def describe_spec(spec: EncoderSpec) -> dict:
    """Layer names and parameters come from the architecture itself, built on the meta device (no memory,
    no weights); ``params`` counts the feature extractor (no classifier head)."""
    model = build_model(spec, device="meta")
    names = layer_names(model)
    return {
        "name": spec.name,
        "family": spec.family,
        "arch": spec.arch,
        "dim": spec.dims[spec.layers[-1]] if spec.layers else spec.dims[-1],
        "dims": [spec.dims[i] for i in spec.layers],
        "layers": [names[i] for i in spec.layers],
        "n_layers": len(names),
        "patch_size": spec.patch_size,
        "fit": spec.fit,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "weights": spec.weights,
        "params": sum(p.numel() for p in model.parameters()),
        "licence": spec.licence,
        "terms": terms(spec),
        "gated": spec.gated,
        "non_commercial": spec.non_commercial,
        "layout": spec.layout,
        "description": spec.description,
    }


def describe_registry() -> list[dict]:
    return [describe_spec(s) for s in REGISTRY.values()]


# Encoders users compare that the registry does not build, and why: an entry is only added once its
# conversion is proven equal to the reference implementation.
NOT_BUILT_IN = (
    ("conch-v1.5", "MahmoodLab/conchv1_5", "TITAN's patch encoder, a ViT-L/16 in TRIDENT's own code (DINO-style "
                                           "position interpolation): left out until checked against that code"),
)
HOW_TO_LOAD = ("to use one anyway: convert its weights to timm's key names and pass --encoder timm:<architecture> "
               "--weights FILE.safetensors (a strict load names any key that does not fit)")

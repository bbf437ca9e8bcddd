"""Checkpoints in other layouts as timm state dicts: key maps and tensor reshapes.

CONCH v1's CoCa checkpoint keeps its image trunk, a timm ViT, under
``visual.trunk.``: :func:`coca_trunk` takes it and leaves the attention
poolers and the text towers out by name.

Phikon (``ViTModel``), Phikon-v2 and Midnight (``Dinov2Model``) and the
DINOv2-with-registers models (``Dinov2WithRegistersModel``, and Hibou's
custom copy of it) publish ``model.safetensors`` files with transformers'
key names. They are the same networks as timm's ViTs, so the weights are
renamed and reshaped here and the forward stays timm's
``forward_intermediates``. Nothing here imports transformers: a
checkpoint is only tensors.

What differs between the layouts (checked against transformers
``models/vit/modeling_vit.py``, ``models/dinov2/modeling_dinov2.py`` and
``models/dinov2_with_registers/modeling_dinov2_with_registers.py``, as
``save_pretrained`` writes them):

- attention: separate ``query``/``key``/``value`` linears; timm fuses them
  into one ``qkv`` (rows q, then k, then v);
- SwiGLU (ViT-g, Hibou): ``mlp.weights_in`` is timm's packed ``mlp.fc1``
  (gate half first, as in timm's ``SwiGLUPacked``);
- layer scale: ``layer_scale1.lambda1`` is ``ls1.gamma``;
- position embeddings: transformers keeps one for the class token and the
  patch grid of its ``image_size``, and interpolates the grid at run time
  (bicubic, ``align_corners=False``; with ``antialias=True`` in the
  registers model only). The grid is resampled here, once, by the same
  rule to the timm model's grid, so a tile of the model's size gives what
  transformers gives for it. A timm model that adds no position to its
  prefix tokens (``no_embed_class``: the DINOv2 register models) takes the
  class token's position into the class token itself, which is exact: that
  position is a constant added to a constant;
- registers: transformers inserts them after the class token *after* adding
  positions, the way timm's ``no_embed_class`` models do;
- ``embeddings.mask_token`` (masked-image pretraining) and ViT's
  ``pooler.dense`` (a classifier head's pooler) take no part in features and
  are dropped by name; any other key left over is an error.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from embedcache.errors import WeightsError

# CONCH v1 (MahmoodLab/CONCH, conch/open_clip_custom): a CoCa model whose image trunk is a timm
# VisionTransformer under ``visual.trunk.``; its poolers, text tower and decoder are no part of the trunk.
_COCA_TRUNK = "visual.trunk."
_COCA_OTHER = ("visual.attn_pool_contrast.", "visual.attn_pool_caption.", "visual.ln_contrast.",
               "visual.ln_caption.", "visual.proj_contrast", "visual.head.", "text.", "text_decoder.", "logit_scale")

# Keys the features never use, dropped by name.
_UNUSED = ("embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")
# Prefixes a task model (ViTForImageClassification, Dinov2ForImageClassification) puts before the backbone.
_BACKBONE_PREFIXES = ("vit.", "dinov2.", "dinov2_with_registers.", "model.")

_BLOCK = [  # (transformers suffix after encoder.layer.N., timm suffix after blocks.N.)
    ("layernorm_before.", "norm1."), ("layernorm_after.", "norm2."),  # ViTModel
    ("norm1.", "norm1."), ("norm2.", "norm2."),  # Dinov2
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."), ("output.dense.", "mlp.fc2."),
    ("layer_scale1.lambda1", "ls1.gamma"), ("layer_scale2.lambda1", "ls2.gamma"),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
    ("mlp.weights_in.", "mlp.fc1."), ("mlp.weights_out.", "mlp.fc2."),
]
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def is_transformers_layout(sd: dict) -> bool:
    """True for a checkpoint with transformers' ViT/DINOv2 key names (``embeddings.cls_token``)."""
    return any(_strip(k) == "embeddings.cls_token" for k in sd)


def is_coca_layout(sd: dict) -> bool:
    """True for a CONCH-style CoCa checkpoint (``visual.trunk.pos_embed``)."""
    return _COCA_TRUNK + "pos_embed" in sd


def coca_trunk(sd: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The image trunk of a CoCa checkpoint in timm's keys; the poolers and text towers left out by name.

    Raises
    ------
    WeightsError
        For a key that is neither the trunk's nor one of CONCH's other parts, naming it.
    """
    unknown = [k for k in sd if not k.startswith(_COCA_TRUNK) and not k.startswith(_COCA_OTHER)]
    if unknown:
        raise WeightsError(f"{source}: {len(unknown)} key(s) of no known part of a CONCH CoCa model "
                           f"(e.g. {unknown[0]}); check that the file is CONCH's pytorch_model.bin")
    return {k[len(_COCA_TRUNK):]: v for k, v in sd.items() if k.startswith(_COCA_TRUNK)}


def _strip(key: str) -> str:
    for prefix in _BACKBONE_PREFIXES:
        if key.startswith(prefix + "embeddings.") or key.startswith(prefix + "encoder.") \
                or key.startswith(prefix + "layernorm."):
            return key[len(prefix):]
    return key


def _resample_grid(pos: torch.Tensor, grid: tuple[int, int], antialias: bool) -> torch.Tensor:
    """``(1, n*n, C)`` patch positions to ``(1, h*w, C)``, by transformers' run-time rule."""
    n = int(round(pos.shape[1] ** 0.5))
    if n * n != pos.shape[1]:
        raise WeightsError(f"embeddings.position_embeddings: {pos.shape[1]} patch positions are not a square grid")
    if (n, n) == tuple(grid):
        return pos
    dim = pos.shape[-1]
    x = pos.reshape(1, n, n, dim).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias)
    return x.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)


def transformers_to_timm(sd: dict[str, torch.Tensor], model: torch.nn.Module, source: str = "checkpoint"
                         ) -> dict[str, torch.Tensor]:
    """Rename and reshape a transformers ViT/DINOv2 state dict into ``model``'s timm keys.

    Parameters
    ----------
    sd : dict of str to Tensor
        As ``save_pretrained`` writes it (``model.safetensors``).
    model : timm VisionTransformer
        The architecture it goes into; its ``patch_embed.grid_size`` is the
        grid the position embeddings are resampled to.
    source : str
        Named in errors.

    Returns
    -------
    dict of str to Tensor
        timm keys; the caller loads it strictly (:func:`embedcache.encoders.load._fit_to_model`).

    Raises
    ------
    WeightsError
        For a key this map does not know, naming it.
    """
    sd = {_strip(k): v for k, v in sd.items()}
    registers = "embeddings.register_tokens" in sd
    qkv: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in sd.items():
        if key in _UNUSED:
            continue
        if key == "embeddings.cls_token":
            out["cls_token"] = value
        elif key == "embeddings.register_tokens":
            out["reg_token"] = value
        elif key == "embeddings.position_embeddings":
            continue  # below, once the class token is known
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out["norm." + key.split(".", 1)[1]] = value
        elif m := _LAYER.match(key):
            i, rest = int(m.group(1)), m.group(2)
            if q := re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest):
                qkv.setdefault(i, {}).setdefault(q.group(2), {})[q.group(1)] = value
                continue
            for theirs, ours in _BLOCK:
                if rest.startswith(theirs):
                    out[f"blocks.{i}.{ours}{rest[len(theirs):]}"] = value
                    break
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{source}: {len(unknown)} key(s) of no known transformers ViT/DINOv2 layout "
                           f"(e.g. {unknown[0]}); check that the file is the encoder's backbone")
    for i, parts in qkv.items():
        for kind, qkv_parts in parts.items():
            missing = [p for p in ("query", "key", "value") if p not in qkv_parts]
            if missing:
                raise WeightsError(f"{source}: encoder.layer.{i}.attention.attention.{missing[0]}.{kind} missing")
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([qkv_parts[p] for p in ("query", "key", "value")])
    pos = sd.get("embeddings.position_embeddings")
    if pos is not None and getattr(model, "pos_embed", None) is not None:
        grid = tuple(model.patch_embed.grid_size)
        # The registers model interpolates with antialias (modeling_dinov2_with_registers.py), ViT and Dinov2 not.
        patches = _resample_grid(pos[:, 1:], grid, antialias=registers)
        if getattr(model, "no_embed_class", False):
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = patches
        else:
            out["pos_embed"] = torch.cat([pos[:, :1], patches], dim=1)
    elif pos is not None:
        out["pos_embed"] = pos  # left for the strict load to name
    return out

"""Every registry entry is the published model: sizes, token layout and checkpoint keys, checked without weights.

Each architecture is built on the meta device (no memory, no download) and
compared with the figures its model card or paper publishes, written here
with their source. A checkpoint with the published key names and shapes is
then loaded strictly through the registry's own loader.
"""

from __future__ import annotations

import pytest
import torch

from embedcache.encoders import REGISTRY, get_spec
from embedcache.encoders.load import _fit_to_model, build_model

# name: (published parameters, relative tolerance from the figure's rounding, counted with a 1000-class head, source)
PUBLISHED_PARAMS = {
    "h-optimus-0": (1.1e9, 0.05, False, "hf.co/bioptimus/H-optimus-0: 'a 1.1B parameter vision transformer'"),
    "h-optimus-1": (1.1e9, 0.05, False, "Bioptimus launch note: 'a 1.1 billion parameter vision transformer'"),
    "virchow": (632e6, 0.005, False, "hf.co/paige-ai/Virchow model card: 'Params (M): 632'"),
    "virchow2": (632e6, 0.005, False, "Zimmermann et al. 2024, arXiv 2408.00738: 'a 632 million parameter ViT'"),
    "uni": (0.3e9, 0.05, False, "Chen et al. 2024 (UNI), hf.co/MahmoodLab/UNI: ViT-L/16, 0.3B parameters"),
    "dinov2-vits14": (21e6, 0.05, False, "Oquab et al. 2023 (DINOv2), facebookresearch/dinov2 README: 21 M"),
    "dinov2-vitb14": (86e6, 0.02, False, "DINOv2 README: ViT-B/14 distilled, 86 M"),
    "dinov2-vitl14": (300e6, 0.02, False, "DINOv2 README: ViT-L/14 distilled, 300 M"),
    "dinov2-vitg14": (1100e6, 0.05, False, "DINOv2 README: ViT-g/14, 1,100 M"),
    "vit-b16-in22k": (86e6, 0.02, False, "Dosovitskiy et al. 2021, Table 1: ViT-Base 86M"),
    "vit-l16-in22k": (307e6, 0.02, False, "Dosovitskiy et al. 2021, Table 1: ViT-Large 307M"),
    "convnext-b-in22k": (89e6, 0.02, True, "Liu et al. 2022 (ConvNeXt), Table 1: ConvNeXt-B 89M"),
    "convnext-l-in22k": (198e6, 0.02, True, "Liu et al. 2022 (ConvNeXt), Table 1: ConvNeXt-L 198M"),
    "swinv2-b-in22k": (88e6, 0.02, True, "Liu et al. 2022 (Swin V2), Table 1: SwinV2-B 88M"),
    "swinv2-l-in22k": (197e6, 0.02, True, "Liu et al. 2022 (Swin V2), Table 1: SwinV2-L 197M"),
    "efficientnet_lite0": (4.7e6, 0.02, True, "tensorflow/tpu EfficientNet-Lite README: Lite0 4.7M params"),
    "phikon": (86e6, 0.01, False, "Filiot et al. 2023 (Phikon), hf.co/owkin/phikon: ViT-Base/16, 86M"),
    "phikon-v2": (300e6, 0.02, False, "Filiot et al. 2024, arXiv 2409.09173: Phikon-v2, ViT-L/16 (0.3B)"),
    "midnight": (1.1e9, 0.05, False, "Karasikov et al. 2025 (Midnight), hf.co/kaiko-ai/midnight: ViT-g/14, 1.1B"),
    "hibou-b": (86e6, 0.01, False, "Nechaev et al. 2024, arXiv 2406.05074: Hibou-B, ViT-B/14 86M"),
    "conch": (86e6, 0.02, False, "Lu et al. 2024 (CONCH), Nat. Med.: image encoder ViT-B/16 (86M, at 448 px)"),
    "hibou-l": (0.3e9, 0.02, False, "Nechaev et al. 2024, arXiv 2406.05074: Hibou-L, ViT-L/14 (0.3B)"),
    # facebookresearch/dinov3 README, table of pretrained backbones (parameters rounded to 1M).
    "dinov3-vits16": (21e6, 0.03, False, "DINOv3 README: ViT-S/16 distilled, 21M"),
    "dinov3-vits16plus": (29e6, 0.03, False, "DINOv3 README: ViT-S+/16 distilled, 29M"),
    "dinov3-vitb16": (86e6, 0.01, False, "DINOv3 README: ViT-B/16 distilled, 86M"),
    "dinov3-vitl16": (300e6, 0.015, False, "DINOv3 README: ViT-L/16 distilled, 300M"),
    "dinov3-vitl16-sat": (300e6, 0.015, False, "DINOv3 README: ViT-L/16 distilled (SAT-493M), 300M"),
    "dinov3-vith16plus": (840e6, 0.002, False, "DINOv3 README: ViT-H+/16 distilled, 840M"),
    "dinov3-vit7b16": (6716e6, 0.0002, False, "DINOv3 README: ViT-7B/16, 6,716M"),
    "dinov3-convnext-tiny": (29e6, 0.02, True, "DINOv3 README: ConvNeXt Tiny, 29M"),
    "dinov3-convnext-small": (50e6, 0.02, True, "DINOv3 README: ConvNeXt Small, 50M"),
    "dinov3-convnext-base": (89e6, 0.02, True, "DINOv3 README: ConvNeXt Base, 89M"),
    "dinov3-convnext-large": (198e6, 0.02, True, "DINOv3 README: ConvNeXt Large, 198M"),
}

# name: (embedding width, blocks, class + register tokens, patch) as published (model cards, READMEs, hubconf).
PUBLISHED_LAYOUT = {
    "h-optimus-0": (1536, 40, 5, 14),  # GitHub bioptimus/releases: g/14, 4 registers, 40 blocks, dim 1536
    "h-optimus-1": (1536, 40, 5, 14),  # same backbone (TRIDENT loads it strictly into these kwargs)
    "h0-mini": (768, 12, 5, 14),  # ViT-B/14 with 4 registers (Filiot et al. 2025, arXiv 2501.16239)
    "virchow": (1280, 32, 1, 14),  # card: ViT-H/14, layers 32, embedding 1280, SwiGLU
    "virchow2": (1280, 32, 5, 14),  # arXiv 2408.00738: ViT-H/14 with 4 registers
    "uni": (1024, 24, 1, 16),  # ViT-L/16
    "uni2-h": (1536, 24, 9, 14),  # hf.co/MahmoodLab/UNI2-h README kwargs: depth 24, dim 1536, 8 registers
    "prov-gigapath": (1536, 40, 1, 16),  # Xu et al. 2024: ViT-g/16 tile encoder
    "kaiko-vits16": (384, 12, 1, 16),  # kaiko-ai/towards_large_pathology_fms hubconf.py
    "kaiko-vits8": (384, 12, 1, 8),
    "kaiko-vitb16": (768, 12, 1, 16),
    "kaiko-vitb8": (768, 12, 1, 8),
    "kaiko-vitl14": (1024, 24, 5, 14),  # vit_large_patch14_reg4_dinov2
    "lunit-vits8": (384, 12, 1, 8),  # lunit-io/benchmark-ssl-pathology README: ViT-S, embed 384, heads 6
    "lunit-vits16": (384, 12, 1, 16),
    "dinov2-vits14": (384, 12, 1, 14),
    "dinov2-vitb14": (768, 12, 1, 14),
    "dinov2-vitl14": (1024, 24, 1, 14),
    "dinov2-vitg14": (1536, 40, 1, 14),
    "vit-b16-in22k": (768, 12, 1, 16),
    "vit-l16-in22k": (1024, 24, 1, 16),
    "phikon": (768, 12, 1, 16),  # ViTModel ViT-B/16, class token only
    "phikon-v2": (1024, 24, 1, 16),  # Dinov2Model ViT-L/16 without registers
    "midnight": (1536, 40, 1, 14),  # Dinov2Model ViT-g/14 without registers
    "hibou-b": (768, 12, 5, 14),  # HistAI/hibou build_model: num_register_tokens=4, patch 14
    "hibou-l": (1024, 24, 5, 14),
    "conch": (768, 12, 1, 16),  # conch_ViT-B-16.json: width 768, 12 layers, patch 16 (timm ViT, class token)
    # facebookresearch/dinov3 hubconf / models/vision_transformer.py: n_storage_tokens=4, patch 16.
    "dinov3-vits16": (384, 12, 5, 16),
    "dinov3-vits16plus": (384, 12, 5, 16),
    "dinov3-vitb16": (768, 12, 5, 16),
    "dinov3-vitl16": (1024, 24, 5, 16),
    "dinov3-vitl16-sat": (1024, 24, 5, 16),
    "dinov3-vith16plus": (1280, 32, 5, 16),
    "dinov3-vit7b16": (4096, 40, 5, 16),
}

# name: published checkpoint keys and their shapes (what a wrong kwarg would break: registers, LayerScale,
# SwiGLU widths, position embeddings with or without the prefix tokens).
PUBLISHED_KEYS = {
    "h-optimus-0": {"reg_token": (1, 4, 1536), "pos_embed": (1, 256, 1536), "blocks.0.ls1.gamma": (1536,),
                    "blocks.0.mlp.fc1.weight": (8192, 1536), "blocks.39.mlp.fc2.weight": (1536, 4096)},
    "h0-mini": {"reg_token": (1, 4, 768), "blocks.0.mlp.fc1.weight": (4096, 768),
                "blocks.0.mlp.fc2.weight": (768, 2048), "blocks.0.ls2.gamma": (768,)},
    "virchow": {"pos_embed": (1, 257, 1280), "blocks.0.mlp.fc1.weight": (6832, 1280),
                "blocks.0.mlp.fc2.weight": (1280, 3416), "blocks.31.ls1.gamma": (1280,)},
    "virchow2": {"reg_token": (1, 4, 1280), "pos_embed": (1, 261, 1280), "blocks.0.mlp.fc1.weight": (6832, 1280)},
    "uni": {"pos_embed": (1, 197, 1024), "blocks.23.ls2.gamma": (1024,), "blocks.0.mlp.fc1.weight": (4096, 1024)},
    "uni2-h": {"reg_token": (1, 8, 1536), "pos_embed": (1, 256, 1536), "blocks.0.mlp.fc1.weight": (8192, 1536)},
    "kaiko-vitl14": {"reg_token": (1, 4, 1024), "pos_embed": (1, 1369, 1024)},
    "lunit-vits8": {"pos_embed": (1, 785, 384), "patch_embed.proj.weight": (384, 3, 8, 8)},
}


def test_the_registry_covers_the_field():
    assert len(REGISTRY) >= 40
    assert set(PUBLISHED_LAYOUT) <= set(REGISTRY) and set(PUBLISHED_PARAMS) <= set(REGISTRY)
    vits = {n for n, s in REGISTRY.items() if s.is_vit}
    assert vits <= set(PUBLISHED_LAYOUT) | {"vit-r50-in21k"}  # every ViT's layout is checked


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_are_the_published_ones(name):
    published, tolerance, with_head, source = PUBLISHED_PARAMS[name]
    model = build_model(get_spec(name), device="meta", **({"num_classes": 1000} if with_head else {}))
    measured = sum(p.numel() for p in model.parameters())
    assert measured == pytest.approx(published, rel=tolerance), f"{name}: {measured:,} vs {source}"


@pytest.mark.parametrize("name", sorted(PUBLISHED_LAYOUT))
def test_token_layout_is_the_published_one(name):
    width, depth, prefix, patch = PUBLISHED_LAYOUT[name]
    spec = get_spec(name)
    model = build_model(spec, device="meta")
    assert (model.embed_dim, len(model.blocks), model.num_prefix_tokens) == (width, depth, prefix)
    assert tuple(model.patch_embed.patch_size) == (patch, patch) and spec.patch_size == patch
    assert spec.dims == (width,) * depth and spec.layers[-1] == depth - 1
    # A 256-px tile meets the model whole (patch 8 or 16) or resized to 224 (patch 14): a grid of whole patches.
    side = spec.input_size if spec.fit == "resize" else 256
    assert side % patch == 0


@pytest.mark.parametrize("name", sorted(PUBLISHED_KEYS))
def test_a_checkpoint_with_the_published_keys_loads_strictly(name):
    spec = get_spec(name)
    model = build_model(spec, device="meta")
    own = model.state_dict()
    for key, shape in PUBLISHED_KEYS[name].items():
        assert key in own and tuple(own[key].shape) == shape, f"{name}: {key}"
    # The published file: the same keys and shapes (a classifier head too, which feature extraction drops).
    checkpoint = {k: torch.empty(v.shape, device="meta") for k, v in own.items()}
    checkpoint["head.weight"] = torch.empty((1000, model.embed_dim), device="meta")
    fitted = _fit_to_model(checkpoint, model, f"{name}.safetensors", spec)
    model.load_state_dict(fitted, strict=True, assign=True)
    # One wrong width (a model built without SwiGLU or LayerScale) fails with the keys that differ.
    broken = dict(fitted)
    broken.pop(next(k for k in fitted if k.endswith("ls1.gamma") or k.endswith("mlp.fc1.weight")))
    with pytest.raises(Exception, match="1 missing"):
        _fit_to_model(broken, model, f"{name}.safetensors", spec)


def test_encoders_check_says_what_can_be_had_here(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache and no stored token
    runner = CliRunner()
    ok = runner.invoke(main, ["encoders", "--check", "efficientnet_lite0"])
    assert ok.exit_code == 0 and ok.output.startswith("efficientnet_lite0") and "installed with its package" in ok.output
    gated = runner.invoke(main, ["encoders", "--check", "efficientnet_lite0", "--check", "h-optimus-0"])
    assert gated.exit_code == 1
    line = gated.output.splitlines()[1]
    assert line.startswith("h-optimus-0") and " NO " in line
    assert "bioptimus/H-optimus-0 is gated: accept its terms at https://huggingface.co/bioptimus/H-optimus-0" in line
    missing = runner.invoke(main, ["encoders", "--check", "uni", "--weights", str(tmp_path / "uni.safetensors")])
    assert missing.exit_code == 1 and "uni.safetensors: no such weights file" in missing.output
    listing = runner.invoke(main, ["encoders"])
    assert listing.exit_code == 0 and "h-optimus-0" in listing.output and "not built in" in listing.output
    assert "conch-v1.5" in listing.output and "--weights FILE.safetensors" in listing.output


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if n.startswith("dinov3-")))
def test_dinov3_entries_take_timm_published_weights_and_preprocessing(name):
    """Each DINOv3 entry names a pretrained tag timm publishes, with its normalisation (SAT-493M has its own)."""
    import timm

    spec = get_spec(name)
    tag = spec.weights.removeprefix("hf-hub:timm/")
    assert tag in timm.list_pretrained("*dinov3*")
    cfg = timm.get_pretrained_cfg(tag)
    assert spec.mean == pytest.approx(cfg.mean) and spec.std == pytest.approx(cfg.std)
    # The ViTs were trained at 256 px: a tile goes in whole, so the grid is the one the model learned on.
    assert spec.fit == "native" and (cfg.input_size[-1] == 256 or not spec.is_vit)
    assert cfg.license == "dinov3-license" and not spec.gated and not spec.non_commercial


def test_the_listing_shows_terms_and_parameters_and_check_says_what_a_download_brings(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from embedcache.cli import main

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runner = CliRunner()
    listing = runner.invoke(main, ["encoders"])
    assert listing.exit_code == 0
    rows = {line.split()[0]: line.split() for line in listing.output.splitlines()[1:] if line and line[0] != " "}
    # params counted from the architecture; the terms from the spec's gated / non-commercial flags.
    assert rows["phikon"][2:4] == ["86M", "768"] and "non-commercial" in rows["phikon"]
    assert rows["dinov3-vit7b16"][2] == "6.7B" and "open" in rows["dinov3-vit7b16"]
    assert rows["hibou-l"][6] == "gated" and rows["uni"][6:8] == ["gated,", "non-commercial"]
    assert sum(1 for name in rows if name in REGISTRY) == len(REGISTRY) >= 40
    # A transformers-layout entry: what would come, in which layout, on which terms; offline it cannot.
    check = runner.invoke(main, ["encoders", "--check", "phikon-v2"])
    assert check.exit_code == 1
    assert ("needs a download from the Hugging Face hub (owkin/phikon-v2) (model.safetensors or pytorch_model.bin, "
            "transformers layout converted on load; non-commercial use only), which cannot be reached") in check.output
    gated = runner.invoke(main, ["encoders", "--check", "hibou-l"])
    assert gated.exit_code == 1 and "histai/hibou-L is gated: accept its terms at" in gated.output
    conch = runner.invoke(main, ["encoders", "--check", "conch"])
    assert conch.exit_code == 1 and "MahmoodLab/CONCH is gated" in conch.output
    assert "a CoCa model of which the image trunk is loaded; non-commercial use only" in conch.output
    # Without the hub's client the line names the extra to install.
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    missing = runner.invoke(main, ["encoders", "--check", "dinov3-vitl16"])
    assert missing.exit_code == 1 and "pip install 'embedcache[hub]'" in missing.output
    assert "timm/vit_large_patch16_dinov3.lvd1689m" in missing.output and len(missing.output.splitlines()) == 1

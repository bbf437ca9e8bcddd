"""transformers-layout checkpoints converted into timm models give transformers' own hidden states.

For each family the registry converts (ViTModel: Phikon; Dinov2Model: Phikon-v2 with GELU, Midnight with
SwiGLU; Dinov2WithRegistersModel: Hibou's registers variant) a small model of the same family is built in
transformers with random weights, saved with ``save_pretrained`` (the layout the hub holds), converted and
loaded through the registry's own loader into the entry's timm architecture at the same small size. Every
block of the timm model, read through :class:`FeatureExtractor` on real H&E tiles, must equal transformers'
``output_hidden_states`` (block outputs before the final LayerNorm) to float tolerance, class and register
tokens included, and the final normed tokens its ``last_hidden_state``.

The small configs keep what makes each family itself: patch size, registers, layer scale, SwiGLU or GELU,
LayerNorm eps, and a position grid of another size than the tile's (so the conversion's resampling rule is
checked against transformers' run-time interpolation).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import shared_data

from embedcache.encoders import get_spec
from embedcache.encoders.convert import is_transformers_layout, transformers_to_timm
from embedcache.encoders.features import FeatureExtractor
from embedcache.encoders.load import load_encoder, read_state_dict
from embedcache.errors import WeightsError

transformers = pytest.importorskip("transformers")

WIDTH, DEPTH, HEADS = 64, 3, 2


def _he_tiles() -> torch.Tensor:
    """Two 256x256 tiles of a real H&E image (CPM-15), ``(2, 256, 256, 3)`` uint8."""
    from PIL import Image

    im = np.asarray(Image.open(shared_data("cpm15-dev") / "image01.png").convert("RGB"))
    return torch.from_numpy(np.stack([im[:256, :256], im[-256:, -256:]]).copy())


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every weight random (norm scales around 1), so no tensor passes by being zeros or ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * noise if ("norm" in name and name.endswith("weight")) else 0.1 * noise)


def _hf_model(family: str, tmp_path):
    common = {"hidden_size": WIDTH, "num_hidden_layers": DEPTH, "num_attention_heads": HEADS}
    if family == "vit":  # Phikon: ViTModel, patch 16, LayerNorm eps 1e-12 (ViTConfig's default), no layer scale
        cfg = transformers.ViTConfig(intermediate_size=4 * WIDTH, patch_size=16, image_size=224, **common)
        model = transformers.ViTModel(cfg)  # with its pooler, which the conversion drops
    elif family == "dinov2":  # Phikon-v2: Dinov2Model, patch 16, layer scale, GELU MLP
        cfg = transformers.Dinov2Config(patch_size=16, image_size=224, **common)
        model = transformers.Dinov2Model(cfg)
    elif family == "dinov2-swiglu":  # Midnight: Dinov2Model ViT-g style, patch 14, SwiGLU; positions for 126 px
        cfg = transformers.Dinov2Config(patch_size=14, image_size=126, use_swiglu_ffn=True, **common)
        model = transformers.Dinov2Model(cfg)
    else:  # Hibou: DINOv2 with 4 registers, patch 14, SwiGLU; positions for 126 px (interpolated with antialias)
        cfg = transformers.Dinov2WithRegistersConfig(patch_size=14, image_size=126, num_register_tokens=4,
                                                     use_swiglu_ffn=True, **common)
        model = transformers.Dinov2WithRegistersModel(cfg)
    _randomise(model, seed=len(family))
    model.eval().save_pretrained(tmp_path)
    return model, tmp_path / "model.safetensors"


# family: (registry entry whose architecture the weights go into, its overrides at the small size)
CASES = {
    "vit": ("phikon", {}),
    "dinov2": ("phikon-v2", {}),
    # transformers' SwiGLU hidden width: 4*64 -> int(256*2/3) rounded up to 8 = 176, packed 352 = 5.5*64.
    "dinov2-swiglu": ("midnight", {"mlp_ratio": 5.5}),
    "dinov2-registers": ("hibou-b", {"mlp_ratio": 5.5}),
}


def _small(name: str, overrides: dict):
    spec = get_spec(name)
    kwargs = {**spec.kwargs, "embed_dim": WIDTH, "depth": DEPTH, "num_heads": HEADS, **overrides}
    return dataclasses.replace(spec, name=f"{name}-small", kwargs=kwargs, dims=(WIDTH,) * DEPTH,
                               layers=tuple(range(DEPTH)))


@pytest.mark.parametrize("family", sorted(CASES))
def test_every_block_equals_transformers_hidden_states(family, tmp_path):
    tiles = _he_tiles()
    hf, path = _hf_model(family, tmp_path)
    assert is_transformers_layout(read_state_dict(path))
    name, overrides = CASES[family]
    spec = _small(name, overrides)
    enc = load_encoder(spec, path)
    fx = FeatureExtractor(enc, list(range(DEPTH)))
    x = fx.preprocess(tiles)  # the entry's own normalisation and fit (256 native, or resized to 224)
    with torch.inference_mode():
        kwargs = {"interpolate_pos_encoding": True} if family == "vit" else {}
        ref = hf(pixel_values=x, output_hidden_states=True, **kwargs)
        ours = fx(tiles)
        (last, last_prefix), = FeatureExtractor(enc, [DEPTH - 1], norm=True)(tiles)
    n_prefix = 5 if family == "dinov2-registers" else 1
    grid = x.shape[-1] // spec.patch_size
    assert len(ref.hidden_states) == DEPTH + 1  # the embeddings, then one per block
    for i, (tok, prefix) in enumerate(ours):
        block = ref.hidden_states[i + 1]  # before the final LayerNorm, as our taps are
        assert prefix.shape == (2, n_prefix, WIDTH) and tok.shape == (2, WIDTH, grid, grid)
        torch.testing.assert_close(prefix, block[:, :n_prefix], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(tok.flatten(2).transpose(1, 2), block[:, n_prefix:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), ref.last_hidden_state[:, n_prefix:],
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last_prefix, ref.last_hidden_state[:, :n_prefix], rtol=1e-4, atol=1e-4)
    # Not equal by accident: the blocks change the tokens and the tiles differ.
    assert not torch.allclose(ours[0][0], ours[-1][0], atol=1e-2)
    assert not torch.allclose(ours[-1][0][0], ours[-1][0][1], atol=1e-2)


def _small_checkpoint(tmp_path):
    _, path = _hf_model("dinov2-registers", tmp_path)
    return read_state_dict(path)


def test_a_key_of_no_known_layout_is_named(tmp_path):
    from safetensors.torch import save_file

    sd = _small_checkpoint(tmp_path)
    sd["encoder.layer.0.attention.attention.rotary.weight"] = torch.zeros(4)
    save_file(sd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(WeightsError, match=r"odd\.safetensors: 1 key\(s\) of no known transformers ViT/DINOv2 "
                                           r"layout \(e\.g\. encoder\.layer\.0\.attention\.attention\.rotary"):
        load_encoder(_small("hibou-b", {"mlp_ratio": 5.5}), tmp_path / "odd.safetensors")


def test_a_checkpoint_of_another_size_names_the_tensor_and_both_shapes(tmp_path):
    (tmp_path / "b").mkdir()
    _, path = _hf_model("dinov2-registers", tmp_path / "b")
    wider = dataclasses.replace(_small("hibou-b", {"mlp_ratio": 5.5}),
                                kwargs={**_small("hibou-b", {}).kwargs, "embed_dim": 96, "mlp_ratio": 5.5})
    with pytest.raises(WeightsError, match=r"does not fit encoder 'hibou-b-small'.*of another shape \(e\.g\. "
                                           r"cls_token: file \(1, 1, 64\), model \(1, 1, 96\)\)"):
        load_encoder(wider, path)


def test_registers_missing_from_the_model_are_named(tmp_path):
    """A registers checkpoint put into an entry without registers fails on the register tokens."""
    _, path = _hf_model("dinov2-registers", tmp_path)
    with pytest.raises(WeightsError, match=r"1 unexpected \(e\.g\. reg_token\)"):
        load_encoder(_small("midnight", {"mlp_ratio": 5.5}), path)


def test_a_split_attention_with_a_part_missing_is_named(tmp_path):
    sd = _small_checkpoint(tmp_path)
    del sd["encoder.layer.2.attention.attention.value.bias"]
    model = load_encoder(_small("hibou-b", {"mlp_ratio": 5.5}), "random").model
    with pytest.raises(WeightsError, match=r"encoder\.layer\.2\.attention\.attention\.value\.bias missing"):
        transformers_to_timm(sd, model, "ckpt")


def test_loading_a_transformers_checkpoint_does_not_import_transformers(tmp_path):
    import subprocess
    import sys

    _, path = _hf_model("vit", tmp_path)
    code = ("import sys, dataclasses; from embedcache.encoders import get_spec; "
            "from embedcache.encoders.load import load_encoder; "
            "s = get_spec('phikon'); s = dataclasses.replace(s, kwargs={**s.kwargs, 'embed_dim': 64, 'depth': 3, "
            f"'num_heads': 2}}); load_encoder(s, {str(path)!r}); assert 'transformers' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _conch_reference(seed: int = 3):
    """CONCH v1's image trunk as its own code builds it (MahmoodLab/CONCH conch/open_clip_custom/coca_model.py,
    ``_build_vision_tower``: timm's VisionTransformer with the config's width, depth, heads, mlp_ratio 4,
    image_size 448, patch 16, num_classes 0, dynamic_img_size), at a small width."""
    from timm.models.vision_transformer import VisionTransformer

    trunk = VisionTransformer(embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=4, img_size=448,
                              patch_size=16, num_classes=0, dynamic_img_size=True)
    _randomise(trunk, seed)
    return trunk.eval()


def _conch_checkpoint(trunk, path):
    """The CoCa checkpoint's layout: the trunk under visual.trunk., then the poolers and text towers
    (names from conch/open_clip_custom/vision_tower.py and coca_model.py)."""
    sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()}
    sd.update({"visual.attn_pool_contrast.query": torch.zeros(1, 512), "visual.ln_contrast.weight": torch.ones(512),
               "visual.proj_contrast": torch.zeros(512, 512), "visual.attn_pool_caption.query": torch.zeros(256, 768),
               "visual.ln_caption.bias": torch.zeros(768), "text.token_embedding.weight": torch.zeros(8, 768),
               "text_decoder.ln_final.weight": torch.ones(768), "logit_scale": torch.ones(())})
    torch.save(sd, path)
    return path


def test_conch_trunk_equals_conchs_own_tower_on_every_block(tmp_path):
    tiles = _he_tiles()
    trunk = _conch_reference()
    path = _conch_checkpoint(trunk, tmp_path / "pytorch_model.bin")
    spec = _small("conch", {})
    enc = load_encoder(spec, path)
    fx = FeatureExtractor(enc, list(range(DEPTH)))
    x = fx.preprocess(tiles)
    assert x.shape[-1] == 256  # native: a 16x16 grid, positions resampled from CONCH's 28x28 by timm
    with torch.inference_mode():
        seq = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(x)))
        blocks = []
        for blk in trunk.blocks:
            seq = blk(seq)
            blocks.append(seq)
        final = trunk.forward_features(x)  # what CONCH's attention poolers read
        ours = fx(tiles)
        (last, last_prefix), = FeatureExtractor(enc, [DEPTH - 1], norm=True)(tiles)
    for (tok, prefix), ref in zip(ours, blocks):
        torch.testing.assert_close(prefix, ref[:, :1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tok.flatten(2).transpose(1, 2), ref[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), final[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_prefix, final[:, :1], rtol=1e-5, atol=1e-5)


def test_a_coca_key_of_no_known_part_is_named(tmp_path):
    trunk = _conch_reference()
    path = _conch_checkpoint(trunk, tmp_path / "pytorch_model.bin")
    sd = torch.load(path, weights_only=True)
    sd["visual.adapter.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "odd.bin")
    with pytest.raises(WeightsError, match=r"odd\.bin: 1 key\(s\) of no known part of a CONCH CoCa model "
                                           r"\(e\.g\. visual\.adapter\.weight\)"):
        load_encoder(_small("conch", {}), tmp_path / "odd.bin")


def test_conch_checkpoint_of_conchs_own_coca_model(tmp_path):
    """With CONCH's own package installed (``conch``, as ``pip install conch-fork`` or MahmoodLab/CONCH
    provides it): its CoCa model at a small width, saved whole, loads into the entry, and every block and the
    final tokens equal its image trunk's on real H&E tiles."""
    coca = pytest.importorskip("conch.open_clip_custom.coca_model")
    text = {"context_length": 8, "vocab_size": 50, "width": 48, "heads": 2, "layers": 1}
    # conch_ViT-B-16.json at a small width: attention poolers for contrast and caption, 448-px trunk, patch 16.
    vision = {"image_size": 448, "patch_size": 16, "width": WIDTH, "layers": DEPTH, "num_heads": HEADS,
              "attentional_pool_caption": True, "attentional_pool_contrast": True, "attn_pooler_heads": 2,
              "n_queries_contrast": 1, "n_queries_caption": 4, "output_tokens": True}
    model = coca.CoCa(embed_dim=32, embed_dim_caption=48, multimodal_cfg=text,
                      text_cfg={**text, "embed_cls": True, "output_tokens": True}, vision_cfg=vision)
    _randomise(model, seed=11)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    tiles = _he_tiles()
    enc = load_encoder(_small("conch", {}), tmp_path / "pytorch_model.bin")
    fx = FeatureExtractor(enc, list(range(DEPTH)))
    trunk = model.visual.trunk.eval()
    x = fx.preprocess(tiles)
    with torch.inference_mode():
        ours = fx(tiles)
        (last, last_prefix), = FeatureExtractor(enc, [DEPTH - 1], norm=True)(tiles)
        blocks = trunk.forward_intermediates(x, norm=False, intermediates_only=True, output_fmt="NLC")
        final = trunk(x)  # CONCH sets trunk.forward to forward_features: the tokens its poolers read
    for (tok, _), ref in zip(ours, blocks):
        torch.testing.assert_close(tok.flatten(2).transpose(1, 2), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), final[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_prefix, final[:, :1], rtol=1e-5, atol=1e-5)

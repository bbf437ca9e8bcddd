"""Registry, building on the meta device, weight loading and layer taps."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from conftest import TINY_CNN, TINY_VIT

from embedcache.encoders import REGISTRY, get_spec
from embedcache.encoders.features import FeatureExtractor, resolve_layers
from embedcache.encoders.load import LoadedEncoder, build_model, load_encoder
from embedcache.errors import ConfigError, EncoderError, WeightsError

REQUIRED = {"virchow2", "uni", "uni2-h", "prov-gigapath", "dinov2-vitl14", "vit-l16-in22k", "convnext-l-in22k",
            "swinv2-l-in22k", "vit-r50-in21k", "efficientnet_lite0"}
# Prefix tokens per ViT: class token + registers.
PREFIX = {"virchow2": 5, "uni2-h": 9, "h-optimus-0": 5, "h-optimus-1": 5, "h0-mini": 5, "kaiko-vitl14": 5,
          "hibou-b": 5, "hibou-l": 5, **{n: 5 for n in REGISTRY if n.startswith("dinov3-vit")}}


def test_registry_names_every_required_encoder():
    assert REQUIRED <= set(REGISTRY)
    assert {s.family for s in REGISTRY.values()} == {"general", "pathology"}
    assert {n for n, s in REGISTRY.items() if s.family == "pathology"} == {
        "virchow2", "virchow", "uni", "uni2-h", "prov-gigapath", "h-optimus-0", "h-optimus-1", "h0-mini",
        "kaiko-vits16", "kaiko-vits8", "kaiko-vitb16", "kaiko-vitb8", "kaiko-vitl14", "lunit-vits8", "lunit-vits16",
        "phikon", "phikon-v2", "midnight", "hibou-b", "hibou-l", "conch"}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_entry_builds_its_architecture_and_declared_shapes(name):
    spec = get_spec(name)
    model = build_model(spec, device="meta")
    assert [int(f["num_chs"]) for f in model.feature_info] == list(spec.dims)
    fx = FeatureExtractor(LoadedEncoder(spec, model, "random", ""), list(spec.layers))
    info = fx.describe(tile_shape=(256, 256), device="meta")
    assert list(info) == [model.feature_info[i]["module"] for i in spec.layers]
    for i, (layer, d) in zip(spec.layers, info.items()):
        c, h, w = d["shape"]
        assert c == spec.dims[i]
        if spec.is_vit:
            # Patch-16 ViTs take 256 px natively, patch-14 ones are resized to 224: a 16x16 grid either way;
            # patch-8 ones give 32x32.
            assert (h, w) == ((16, 16) if spec.fit == "resize" else (256 // spec.patch_size,) * 2)
            assert d["prefix"] == PREFIX.get(name, 1)
        else:
            reduction = model.feature_info[i]["reduction"]
            assert (h, w) == (256 // reduction, 256 // reduction)
            assert d["prefix"] == 0


def test_unknown_encoder_suggests_close_names():
    with pytest.raises(EncoderError, match="did you mean 'virchow' or 'virchow2'"):
        get_spec("virchow3")
    with pytest.raises(EncoderError, match="timm has no architecture"):
        get_spec("timm:not_a_model_at_all")


def test_timm_prefix_reads_preprocessing_from_timm():
    spec = get_spec("timm:vit_small_patch14_dinov2")
    assert spec.patch_size == 14 and spec.fit == "resize" and spec.input_size == 224
    assert get_spec("timm:resnet18").patch_size is None


def _cat_logits(model, spec):
    from PIL import Image
    from skimage.data import chelsea

    im = np.asarray(Image.fromarray(chelsea()).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    x = (im - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    with torch.inference_mode():
        return model(torch.from_numpy(x).permute(2, 0, 1)[None])[0]


def test_efficientnet_lite0_real_weights_classify_the_cat():
    spec = get_spec("efficientnet_lite0")
    enc = load_encoder(spec, num_classes=1000)
    probs = _cat_logits(enc.model, spec).softmax(-1)
    # ImageNet 281..285 are the domestic cats; Chelsea is a tabby, 285 (Egyptian cat) is the usual top-1.
    assert int(probs.argmax()) in range(281, 286)
    assert float(probs[281:286].sum()) > 0.8
    assert enc.weights == "package:efficientnet_lite0" and len(enc.weights_sha256) == 64


def test_random_weights_do_not_classify_the_cat():
    spec = get_spec("efficientnet_lite0")
    enc = load_encoder(spec, "random", num_classes=1000)
    assert float(_cat_logits(enc.model, spec).softmax(-1)[281:286].sum()) < 0.2


def test_local_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file

    spec = get_spec(TINY_VIT)
    src = load_encoder(spec, "random", seed=1)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    got = load_encoder(spec, path, seed=2)
    for k, v in src.model.state_dict().items():
        assert torch.equal(v, got.model.state_dict()[k]), k
    assert got.weights_sha256 != "random"


class Payload:
    """An arbitrary class: unpickling it could run code, so it must never be loaded."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pth_with_pickled_objects_is_refused(tmp_path):
    spec = get_spec(TINY_VIT)
    sd = load_encoder(spec, "random").model.state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "extra": Payload()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        load_encoder(spec, path)


def test_training_checkpoint_with_argparse_namespace_loads(tmp_path):
    # timm's own training checkpoints carry their arguments as a Namespace: plain data, allowed.
    spec = get_spec(TINY_VIT)
    sd = load_encoder(spec, "random", seed=4).model.state_dict()
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1)}, tmp_path / "train.pth")
    assert torch.equal(load_encoder(spec, tmp_path / "train.pth").model.state_dict()["cls_token"], sd["cls_token"])


def test_plain_pth_state_dict_loads(tmp_path):
    spec = get_spec(TINY_VIT)
    sd = load_encoder(spec, "random", seed=5).model.state_dict()
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "w.pth")
    got = load_encoder(spec, tmp_path / "w.pth")
    assert torch.equal(got.model.state_dict()["pos_embed"], sd["pos_embed"])


def test_weights_of_another_architecture_name_the_keys(tmp_path):
    from safetensors.torch import save_file

    other = load_encoder(get_spec(TINY_CNN), "random").model.state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(tmp_path / "cnn.safetensors"))
    with pytest.raises(WeightsError, match=r"does not fit encoder 'timm:test_vit'.*missing"):
        load_encoder(get_spec(TINY_VIT), tmp_path / "cnn.safetensors")


def test_missing_weights_file():
    with pytest.raises(WeightsError, match="not found"):
        load_encoder(get_spec(TINY_VIT), "/nonexistent/w.safetensors")


def test_gated_hub_model_offline_says_how_to_provide_a_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"MahmoodLab/UNI.*--weights FILE"):
        load_encoder(get_spec("uni"))


def test_resolve_layers_by_name_index_and_all():
    model = build_model(get_spec(TINY_VIT), device="meta")
    assert resolve_layers(model, (1, 3), None) == [1, 3]
    assert resolve_layers(model, (1, 3), "blocks.5,0") == [0, 5]
    assert resolve_layers(model, (1,), "-1") == [len(model.feature_info) - 1]
    assert resolve_layers(model, (1,), "all") == list(range(len(model.feature_info)))
    with pytest.raises(ConfigError, match="no layer 'blocks.99'; it has blocks.0, blocks.1, "):
        resolve_layers(model, (1,), "blocks.99")
    with pytest.raises(ConfigError, match="out of range"):
        resolve_layers(model, (1,), "40")


def test_prefix_tokens_are_kept_apart_from_patch_tokens():
    spec = get_spec(TINY_VIT)
    enc = load_encoder(spec, "random")
    fx = FeatureExtractor(enc, [5])
    tiles = torch.randint(0, 255, (2, 64, 64, 3), dtype=torch.uint8)
    (tok, pre), = fx(tiles)
    assert tok.shape == (2, 64, 4, 4) and pre.shape == (2, 1, 64)
    # The same numbers as running the blocks by hand and splitting at num_prefix_tokens.
    m = enc.model
    with torch.inference_mode():
        seq = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(fx.preprocess(tiles)))))
        for blk in m.blocks[:6]:
            seq = blk(seq)
    assert torch.allclose(pre, seq[:, :1], atol=1e-5)
    assert torch.allclose(tok.flatten(2).transpose(1, 2), seq[:, 1:], atol=1e-5)


def test_dinov3_registers_and_class_token_stay_apart_from_the_rope_grid():
    """A small DINOv3 ViT (RoPE, 4 registers): the prefix is the class token then the registers, the grid the rest."""
    spec = get_spec("dinov3-vits16")
    torch.manual_seed(0)
    enc = LoadedEncoder(spec, build_model(spec, embed_dim=64, depth=2, num_heads=2), "random", "")
    fx = FeatureExtractor(enc, [0, 1])
    tiles = torch.randint(0, 255, (2, 256, 256, 3), dtype=torch.uint8)
    (tok0, pre0), (tok, pre) = fx(tiles)
    assert tok.shape == (2, 64, 16, 16) and pre.shape == (2, 5, 64)
    m = enc.model
    with torch.inference_mode():
        seq, rope = m._pos_embed(m.patch_embed(fx.preprocess(tiles)))
        for blk in m.blocks:
            seq = blk(seq, rope=rope)
    assert torch.allclose(pre, seq[:, :5], atol=1e-5)
    assert torch.allclose(tok.flatten(2).transpose(1, 2), seq[:, 5:], atol=1e-5)
    # The class token leads: before any block it is the learned class token, then the 4 registers.
    first = m._pos_embed(m.patch_embed(fx.preprocess(tiles)))[0]
    assert torch.equal(first[0, 0], m.cls_token[0, 0]) and torch.equal(first[0, 1:5], m.reg_token[0])


def test_dinov3_loads_metas_own_checkpoint_layout(tmp_path):
    """Meta's DINOv3 release (facebookresearch/dinov3 .pth) names registers ``storage_tokens``, keeps a zero
    q/k/v bias with its ``bias_mask``, ``ls1.gamma`` layer scale, RoPE ``periods`` and the pretraining
    ``mask_token`` (the names timm's eva.py checkpoint_filter_fn converts); such a file loads into the entry."""
    spec = get_spec("dinov3-vits16")
    small = {"embed_dim": 64, "depth": 2, "num_heads": 2}
    theirs = load_encoder(spec, "random", seed=7, **small).model.state_dict()
    meta = {"mask_token": torch.zeros(1, 64), "rope_embed.periods": torch.ones(8)}
    for key, value in theirs.items():
        key = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        meta[key] = value
        if key.endswith("attn.qkv.weight"):
            meta[key.replace("weight", "bias")] = torch.zeros(value.shape[0])
            meta[key.replace("weight", "bias_mask")] = torch.ones(value.shape[0])
    torch.save(meta, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth")
    got = load_encoder(spec, tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth", seed=8, **small).model.state_dict()
    assert got.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(got[key], value), key

"""The decoder: one design for ViT grids and pyramids, its heads and its losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from decoder_helpers import one_thread  # noqa: F401 (one_thread: pytestmark)

from embedcache.errors import ConfigError
from embedcache.config import DIRECTIONS, DecoderConfig, LossConfig
from embedcache.train.decoder import NucleiDecoder, NucleiLoss, class_terms, plan_taps, type_weights

VIT_GRID = [(32, 4, 4)] * 4  # a patch-16 ViT on 64-px tiles: one 1/16 grid at four depths
PYRAMID = [(16, 16, 16), (24, 8, 8), (40, 4, 4), (64, 2, 2)]  # 1/4 .. 1/32

pytestmark = pytest.mark.usefixtures("one_thread")


def run(shapes, tile=64, n_types=5, batch=2, **cfg):
    torch.manual_seed(0)
    model = NucleiDecoder(shapes, (tile, tile), 4, n_types, DecoderConfig(width=8, **cfg))
    tokens = [torch.randn(batch, *s) for s in shapes]
    images = torch.randint(0, 256, (batch, tile, tile, 3), dtype=torch.uint8)
    return model, model(tokens, images)


def test_vit_grid_is_upsampled_progressively_unetr_style():
    plans = plan_taps(VIT_GRID, (64, 64))
    # Deepest first; each shallower depth gets one more 2x up-sampling block: 1/16, 1/8, 1/4, 1/2.
    assert [p.index for p in plans] == [3, 2, 1, 0]
    assert [p.n_up for p in plans] == [0, 1, 2, 3]
    assert [p.out_stride for p in plans] == [16, 8, 4, 2]
    model, out = run(VIT_GRID)
    assert out["cls3"].shape == (2, 3, 64, 64)
    assert out["dist"].shape == (2, 4, 64, 64) and out["dist"].abs().max() <= 1
    assert out["types"].shape == (2, 6, 64, 64)
    assert model.describe()["levels"] == [[4, 4], [8, 8], [16, 16], [32, 32]]


def test_pyramid_needs_no_upsampling_blocks():
    plans = plan_taps(PYRAMID, (64, 64))
    assert [p.n_up for p in plans] == [0, 0, 0, 0]
    assert [p.out_stride for p in plans] == [32, 16, 8, 4]
    model, out = run(PYRAMID, n_types=0)
    assert set(out) == {"cls3", "dist"} and out["cls3"].shape == (2, 3, 64, 64)
    assert model.describe()["levels"] == [[2, 2], [4, 4], [8, 8], [16, 16], [32, 32]]


def test_many_vit_depths_stop_at_half_resolution_and_the_image_branch_is_optional():
    plans = plan_taps([(8, 4, 4)] * 6, (64, 64))
    assert [p.out_stride for p in plans] == [16, 8, 4, 2, 2, 2]
    _, out = run([(8, 4, 4)] * 6, image_branch=False)
    assert out["cls3"].shape == (2, 3, 64, 64)


def test_image_branch_sees_pixels_at_full_resolution():
    model, _ = run(PYRAMID)
    model.eval()
    tokens = [torch.zeros(1, *s) for s in PYRAMID]
    images = torch.full((1, 64, 64, 3), 200, dtype=torch.uint8)
    base = model(tokens, images)["cls3"]
    images[0, 10, 20] = 0  # one dark pixel changes the logits right there
    diff = (model(tokens, images)["cls3"] - base).abs().sum(1)[0]
    assert diff[10, 20] > 0 and diff[40, 50] == 0


def test_wrong_shapes_are_refused_with_the_shapes_named():
    model, _ = run(PYRAMID)
    with pytest.raises(ConfigError, match=r"expects tokens of shape \(16, 16, 16\)"):
        model([torch.zeros(1, 16, 8, 8)] + [torch.zeros(1, *s) for s in PYRAMID[1:]],
              torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="expects 4 layers"):
        model([torch.zeros(1, *PYRAMID[0])], torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="width"):
        DecoderConfig(width=2)


def test_class_terms_agree_with_torch_cross_entropy_and_hand_counts():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    mask = torch.rand(2, 5, 6) > 0.3
    weight = torch.tensor([0.5, 1.0, 2.0])
    ce, tp, fp, fn = class_terms(logits, target, mask, weight)
    ref = F.cross_entropy(logits.permute(0, 2, 3, 1)[mask], target[mask], weight=weight)
    assert torch.allclose(ce, ref, atol=1e-6)
    p = logits.softmax(1).permute(0, 2, 3, 1)[mask]
    onehot = F.one_hot(target[mask], 3).float()
    assert torch.allclose(tp, (p * onehot).sum(0), atol=1e-5)
    assert torch.allclose(fp, (p * (1 - onehot)).sum(0), atol=1e-5)
    assert torch.allclose(fn, ((1 - p) * onehot).sum(0), atol=1e-5)


def test_loss_is_small_for_the_truth_and_ignores_padding():
    loss = NucleiLoss(DIRECTIONS["cisca"], 2)
    cls3 = torch.zeros(1, 16, 16, dtype=torch.long)
    cls3[0, 4:12, 4:12] = 1
    dist = torch.zeros(1, 4, 16, 16)
    dist[0, 0, 4:12, 4:12] = torch.linspace(-1, 1, 8)
    types = (cls3 > 0).long() * 2
    batch = {"cls3": cls3, "dist": dist, "types": types, "valid": torch.ones(1, 16, 16, dtype=torch.bool)}
    perfect = {"cls3": F.one_hot(cls3, 3).permute(0, 3, 1, 2).float() * 20, "dist": dist.clone(),
               "types": F.one_hot(types, 3).permute(0, 3, 1, 2).float() * 20}
    wrong = {k: v.flip(-1).flip(-2) if k != "dist" else -v for k, v in perfect.items()}
    good, parts = loss(perfect, batch)
    bad, _ = loss(wrong, batch)
    assert good < 0.05 < bad and parts["dist"] == 0 and parts["gradient"] == 0
    # Predictions in padded pixels do not count.
    batch["valid"][0, :, 8:] = False
    noisy = dict(perfect, cls3=perfect["cls3"].clone())
    noisy["cls3"][0, :, :, 8:] = torch.randn(3, 16, 8) * 20
    assert loss(noisy, batch)[0] < 0.05
    with pytest.raises(ConfigError):
        LossConfig(distance_error="huber")


def test_type_weights_favour_rare_classes():
    w = type_weights([900, 90, 9, 0])
    assert w[1] > w[0] and w[2] > w[1] and w[3] == 1.0
    assert np.isclose(np.mean(w[:3]), 1.0, atol=1e-5)

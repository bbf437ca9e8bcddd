"""Training from a store: the loss falls, seeds repeat, runs resume, bad input gets one clear message."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_VIT
from decoder_helpers import fit_config, make_store, one_thread, write_conic  # noqa: F401 (one_thread: pytestmark)
from safetensors.torch import load_file

from embedcache import open_store
from embedcache.errors import ConfigError, DataError
from embedcache.train import loop
from embedcache.config import FitConfig
from embedcache.errors import RunError, TrainingError
from embedcache.train.checkpoint import load_run
from embedcache.train.decoder import NucleiDecoder, NucleiLoss
from embedcache.train.loop import fit
from embedcache.train.stream import EpochBatches, TileStream, collate, to_device
from embedcache.train.targets import TargetCache

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    conic = write_conic(tmp / "d", n=6)
    return {"tmp": tmp, "conic": conic, "store": make_store(conic, tmp / "s.zarr")}


def weights(path):
    return load_file(str(path))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_few_steps_lower_the_loss(data):
    store = open_store(data["store"])
    tiles = np.arange(4)
    ds = TileStream(store, tiles, TargetCache(store, tiles))
    batch = to_device(ds[EpochBatches(tiles, [0, 1, 2], 4, seed=0).pairs()], "cpu")
    torch.manual_seed(0)
    shapes = [store.layout(k).shape for k in store.layers]
    model = NucleiDecoder(shapes, store.tile_shape, 4, 5, fit_config().decoder)
    loss = NucleiLoss([(0, 1), (1, 0), (1, 1), (1, -1)], 5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    torch.set_grad_enabled(True)  # extraction (the fixture) switches gradients off in this process
    for _ in range(8):
        total, _ = loss(model(batch["tokens"], batch["image"]), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses


def test_fit_writes_a_run_that_records_its_store_and_split(data, tmp_path):
    res = fit(data["store"], tmp_path / "run", fit_config(epochs=3, lr=3e-3), progress=False)
    assert res.epochs_run == 3 and not res.skipped and (tmp_path / "run").is_dir()
    assert not (tmp_path / "run.partial").exists()
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["split"]["val"] == [4, 5] and meta["split"]["train"] == [0, 1, 2, 3]
    assert meta["store"]["encoder"]["name"] == "timm:test_efficientnet" and meta["store"]["weights_sha256"]
    assert meta["store"]["layers"] == open_store(data["store"]).layers and meta["state"]["done"]
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch,lr,train_loss") and len(log) == 4
    hist = res.history
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert {"best.safetensors", "last.safetensors"} <= {p.name for p in (tmp_path / "run").iterdir()}
    run = load_run(tmp_path / "run")
    assert isinstance(run.model, NucleiDecoder) and not run.model.training
    # Running the same command again has nothing to do.
    assert fit(data["store"], tmp_path / "run", fit_config(epochs=3, lr=3e-3), progress=False).skipped


def test_same_seed_same_weights_other_seed_other_weights(data, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        fit(data["store"], tmp_path / name, fit_config(epochs=1, seed=seed), progress=False)
    a, b, c = (weights(tmp_path / n / "last.safetensors") for n in "abc")
    assert same(a, b) and not same(a, c)


def _stopping_at_second(real):
    """``Trainer.train_epoch`` interrupted (as by Ctrl-C) when the second epoch starts."""
    def stop_at_second(self, epoch, *a):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch, *a)

    return stop_at_second


def test_an_interrupted_run_resumes_to_the_same_weights(data, tmp_path, monkeypatch):
    cfg = fit_config(epochs=2)
    fit(data["store"], tmp_path / "whole", cfg, progress=False)
    real = loop.Trainer.train_epoch
    monkeypatch.setattr(loop.Trainer, "train_epoch", _stopping_at_second(real))
    with pytest.raises(KeyboardInterrupt):
        fit(data["store"], tmp_path / "cut", cfg, progress=False)
    assert (tmp_path / "cut.partial" / "last.safetensors").exists() and not (tmp_path / "cut").exists()
    monkeypatch.setattr(loop.Trainer, "train_epoch", real)
    res = fit(data["store"], tmp_path / "cut", cfg, progress=False)
    assert res.epochs_run == 2 and len(res.history) == 2
    assert same(weights(tmp_path / "whole" / "last.safetensors"), weights(tmp_path / "cut" / "last.safetensors"))


def test_nan_loss_stops_and_keeps_the_previous_run(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(data["store"], out, fit_config(epochs=1), progress=False)
    before = (out / "best.safetensors").read_bytes()
    real = NucleiLoss.forward

    def nan_loss(self, o, b):
        total, parts = real(self, o, b)
        return total * float("nan"), parts

    monkeypatch.setattr(NucleiLoss, "forward", nan_loss)
    with pytest.raises(TrainingError, match=r"became nan at epoch 1, step 1 \(tiles .*Lower --lr"):
        fit(data["store"], out, fit_config(epochs=1, lr=5e-3), overwrite=True, progress=False)
    assert (out / "best.safetensors").read_bytes() == before


def test_out_of_memory_names_a_smaller_batch(data, tmp_path, monkeypatch):
    def oom(self, tokens, images):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(NucleiDecoder, "forward", oom)
    with pytest.raises(TrainingError, match="out of memory at epoch 1, step 1 with --batch-size 2; try --batch-size 1"):
        fit(data["store"], tmp_path / "run", fit_config(), progress=False)


def test_refusals(data, tmp_path):
    out = tmp_path / "run"
    fit(data["store"], out, fit_config(epochs=1), progress=False)
    with pytest.raises(RunError, match="other settings .*lr.* --overwrite"):
        fit(data["store"], out, fit_config(epochs=1, lr=0.01), progress=False)
    vit = make_store(data["conic"], data["tmp"] / "vit.zarr", encoder=TINY_VIT)
    with pytest.raises(RunError, match="encoder.name: the run was trained on 'timm:test_efficientnet', the store "
                                       "has 'timm:test_vit'"):
        fit(vit, out, fit_config(epochs=1), progress=False)
    bare = make_store(write_conic(tmp_path / "u", n=2, labels=False), tmp_path / "u.zarr", variants="none")
    with pytest.raises(DataError, match="no labels"):
        fit(bare, tmp_path / "x", fit_config(), progress=False)
    with pytest.raises(ConfigError, match="holds no tiles"):
        fit(data["store"], tmp_path / "y", fit_config(val="tiles:0,1,2,3,4,5"), progress=False)
    with pytest.raises(ConfigError, match="needs a scorer"):
        fit(data["store"], tmp_path / "z", fit_config(monitor="pq"), progress=False)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not a decoder run"):
        fit(data["store"], tmp_path / "taken", fit_config(), progress=False)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_fit_config_round_trips_and_validates():
    cfg = fit_config(epochs=4)
    assert FitConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="learning rate"):
        FitConfig(lr=0)
    with pytest.raises(ConfigError, match="unknown FitConfig field 'epoch'"):
        FitConfig.from_dict({"epoch": 3})


def test_pq_monitor_logs_the_score_and_stops_early(data, tmp_path):
    scores = iter([0.5, 0.4, 0.3, 0.2])
    res = fit(data["store"], tmp_path / "run", fit_config(epochs=4, monitor="pq", patience=1), progress=False,
              scorer=lambda model, store, tiles: next(scores))
    assert res.stopped_early and res.best_epoch == 1 and res.epochs_run == 2
    assert [h["val_pq"] for h in res.history] == [0.5, 0.4]


def test_collate_keeps_layers_apart():
    s = {"tokens": [torch.zeros(2, 3, 3), torch.zeros(4, 1, 1)], "tile": 3}
    b = collate([s, s])
    assert [t.shape for t in b["tokens"]] == [(2, 2, 3, 3), (2, 4, 1, 1)] and b["tile"].tolist() == [3, 3]


def test_a_second_fit_into_a_live_run_is_refused_and_a_dead_ones_is_resumed(data, tmp_path, monkeypatch):
    from process_helpers import leave_dead_claims

    from embedcache.claims import Claims, claims_place
    from embedcache.errors import ClaimedError

    cfg, out = fit_config(epochs=2), tmp_path / "run"
    first = Claims(claims_place(out), "fit-decoder")  # a live fit-decoder (this process) writing the run
    assert first.acquire("fit-decoder")
    with pytest.raises(ClaimedError, match=r"^--out .*run is being written by pid \d+ on .* now; wait") as err:
        fit(data["store"], out, cfg, progress=False)
    assert "\n" not in str(err.value) and not out.exists() and not (tmp_path / "run.partial").exists()
    first.release_all()

    # The first fit is killed after its first epoch: its claim stays behind, its owner dead.
    real = loop.Trainer.train_epoch
    monkeypatch.setattr(loop.Trainer, "train_epoch", _stopping_at_second(real))
    with pytest.raises(KeyboardInterrupt):
        fit(data["store"], out, cfg, progress=False)
    epochs = []

    def count(self, epoch, *a):
        epochs.append(epoch)
        return real(self, epoch, *a)

    monkeypatch.setattr(loop.Trainer, "train_epoch", count)
    leave_dead_claims(claims_place(out), "fit-decoder", ["fit-decoder"])
    res = fit(data["store"], out, cfg, progress=False)
    assert epochs == [1] and res.epochs_run == 2 and len(res.history) == 2  # resumed at epoch 2
    assert not claims_place(out).exists()

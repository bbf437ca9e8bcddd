"""A run directory: decoder weights (safetensors), ``run.json`` and the store it was trained on.

Layout of ``RUN/``::
    run.json            settings, store provenance, split, training state and history
    best.safetensors    decoder weights of the best epoch (what ``predict`` uses)
    last.safetensors    decoder and optimiser state after the last finished epoch (resume)
    log.csv             one row per epoch: losses, validation loss and metric, learning rate
    eval.json           scores of the best checkpoint on the held-out split (written by fit-decoder)

A run records what it was trained on (encoder spec, weight checksum, layers
and their token shapes, tile shape): a store made otherwise is refused,
naming what differs. Every file is written under a temporary name and
renamed, so a file on disk is always whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedcache import __version__
from embedcache.config import DecoderConfig
from embedcache.errors import RunError
from embedcache.files import atomic_file
from embedcache.train.decoder import NucleiDecoder

RUN_FORMAT = "embedcache-decoder-run"
RUN_VERSION = 1

def store_provenance(store) -> dict:
    """What a run needs to know of the store it trains on (and to refuse others)."""
    return {
        "path": str(store.path),
        "encoder": store.encoder.to_dict(),
        "weights": store.provenance.weights,
        "weights_sha256": store.config.weights_sha256,
        "layers": list(store.layers),
        "shapes": {layer: list(store.layout(layer).shape) for layer in store.layers},
        "variants": list(store.variants),
        "tile_shape": list(store.tile_shape),
        "dtype": store.config.dtype,
        "mpp": store.tile_mpp,  # microns per pixel of the tiles (slides; None when the dataset records none)
        "norm": store.config.norm,
        "dataset_fingerprint": store.config.dataset_fingerprint,
        "layout": store.dataset_layout,
        "extract_config": store.extract_config,
        "class_names": {str(k): v for k, v in store.class_names.items()},
    }


# Fields that make features of one store usable by a decoder trained on another.
FEATURE_FIELDS = ("encoder.name", "encoder.arch", "weights_sha256", "layers", "shapes", "tile_shape", "norm")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def feature_difference(trained: dict, store: dict, fields=FEATURE_FIELDS) -> str | None:
    """The first field where a run's store and another store disagree, described; None if none."""
    for f in fields:
        a, b = _get(trained, f), _get(store, f)
        if a != b:
            short = lambda x: (x[:12] + "…") if isinstance(x, str) and len(x) > 40 else x  # noqa: E731
            return f"{f}: the run was trained on {short(a)!r}, the store has {short(b)!r}"
    return None


def check_features(run_store: dict, store, run_path) -> None:
    """Refuse a store whose features a run's decoder cannot read."""
    diff = feature_difference(run_store, store_provenance(store))
    if diff:
        raise RunError(f"{run_path} was trained on features of {run_store['encoder']['name']} "
                       f"({', '.join(run_store['layers'])}); {store.path} differs in {diff}. "
                       "Extract the data with the run's encoder and layers, or train a decoder on this store")


def save_weights(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """safetensors file, written under a temporary name and renamed."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    return Path(path)


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: weights file not found; the run is incomplete or was moved")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
            return {k: fh.get_tensor(k) for k in fh.keys()}, meta
    except Exception as exc:  # a truncated or foreign file
        raise RunError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            state.setdefault(int(i), {})[key] = value
    sd["state"] = state
    opt.load_state_dict(sd)


@dataclass
class Run:
    """A run directory read back: its ``run.json`` and the decoder with the chosen weights."""

    path: Path
    meta: dict
    model: torch.nn.Module

    @property
    def store(self) -> dict:
        return self.meta["store"]

    @property
    def directions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self.meta["model"]["directions"]]

    @property
    def class_names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.store.get("class_names", {}).items()}


def read_meta(path: Path) -> dict:
    path = Path(path)
    f = path / "run.json"
    if not f.is_file():
        raise RunError(f"{path}: not a decoder run (no run.json); train one with `embedcache fit-decoder`")
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{f}: cannot read ({exc})") from None
    if meta.get("format") != RUN_FORMAT:
        raise RunError(f"{f}: not an embedcache decoder run")
    if meta.get("version") != RUN_VERSION:
        raise RunError(f"{f}: run format version {meta.get('version')}; this embedcache reads {RUN_VERSION}")
    return meta


def build_model(meta: dict):
    """The decoder a run describes, with fresh weights."""

    m = meta["model"]
    cfg = DecoderConfig.from_dict(meta["config"]["decoder"])
    return NucleiDecoder([tuple(s) for s in m["shapes"]], tuple(meta["store"]["tile_shape"]), m["n_dist"],
                         m["n_types"], cfg, mean=m["mean"], std=m["std"])


def load_run(path, which: str = "best", device: str = "cpu") -> Run:
    """Read a run and its decoder weights (``best`` or ``last``), in eval mode.

    Raises
    ------
    RunError
        No run there, or its files cannot be read.
    """
    path = Path(path)
    meta = read_meta(path)
    if not meta.get("state", {}).get("epoch"):
        raise RunError(f"{path}: the run has not finished an epoch yet; run fit-decoder again to resume it")
    model = build_model(meta)
    tensors, _ = load_weights(path / f"{which}.safetensors")
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{path / (which + '.safetensors')}: weights do not fit the decoder in run.json "
                       f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
    return Run(path, meta, model.to(device).eval())


def versions() -> dict:
    import platform

    return {"embedcache": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}

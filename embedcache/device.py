"""Which torch device a step runs on: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

from embedcache.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> str:
    """Refuse a device name that is none of ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (no torch needed).

    >>> check_device("cuda:1")
    'cuda:1'
    """
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


def resolve_device(device: str = "auto"):
    """The :class:`torch.device` for a device name; ``auto`` is the GPU when there is one.

    Raises
    ------
    ConfigError
        A CUDA device asked for where there is none, or a name that is not a device.
    """
    import torch

    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but no CUDA GPU is available here; use --device cpu")
    return torch.device(device)

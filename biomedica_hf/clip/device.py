"""Which device a model runs on: ``auto`` -> cuda, else mps, else cpu (torch is imported only when asked)."""
from __future__ import annotations

from typing import Any


def pick_device(device: str = "auto") -> str:
    """``auto``: cuda > mps > cpu; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: Any = "auto") -> Any:
    """:func:`pick_device` as a ``torch.device`` (a ``torch.device`` is returned as given)."""
    import torch

    return device if isinstance(device, torch.device) else torch.device(pick_device(device))


__all__ = ["pick_device", "resolve_device"]

"""The CLIP model library: one model class and SPEC grammar (``model``), the image side shared with the concept
embedder and search (``pixels``: bytes -> fitted RGB; ``backbones``: DINOv2 / CLIP image embeddings), the device
(``device``), the missing-weights error (``weights``), training data (``data``), ``loss``, ``export``, model cards
(``card``), an offline transformers tokenizer (``tokenizer``) and tiny random models for tests and smoke runs
(``tiny``).

Library code (open_clip style): it never imports the harnesses above it (``eval``, ``train``, ``search``). The
names below load on first use, so importing ``biomedica_hf.clip.pixels`` does not import torch.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ClipModel": "model", "ModelAdapter": "model", "ModelSpec": "model",
    "build_model": "model", "load_model": "model", "parse_model_spec": "model",
    "ClipLoss": "loss", "gather_features": "loss",
    "convert_open_clip_to_hf": "export", "export_model": "export", "save_open_clip_folder": "export",
    "wise_ft": "export",
}
__all__ = ["ClipLoss", "ClipModel", "ModelAdapter", "ModelSpec", "build_model",
           "convert_open_clip_to_hf", "export_model", "gather_features", "load_model", "parse_model_spec",
           "save_open_clip_folder", "wise_ft"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)

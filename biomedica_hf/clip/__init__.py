"""CLIP continual pre-training on BIOMEDICA: model adapters, data, loss, trainer, export, model cards.

Library code (open_clip style); the training entry point is ``finetune/clip/train.py``.
"""
from biomedica_hf.clip.export import convert_open_clip_to_hf, export_model, wise_ft
from biomedica_hf.clip.loss import ClipLoss, gather_features
from biomedica_hf.clip.model import TrainableClip, build_model

__all__ = ["ClipLoss", "TrainableClip", "build_model", "convert_open_clip_to_hf", "export_model", "gather_features",
           "wise_ft"]

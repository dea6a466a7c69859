"""Tiny random models saved like real checkpoints, for tests that load a model from a folder."""
from __future__ import annotations

from pathlib import Path


def save_tiny_dinov2(folder: Path, image_size: int = 56) -> Path:
    """A random 2-layer DINOv2 (with registers) + image processor saved like a real checkpoint."""
    import torch
    from transformers import AutoModel, BitImageProcessor, Dinov2WithRegistersConfig

    torch.manual_seed(0)
    # transformers 5 DINOv2 configs size the MLP with mlp_ratio (intermediate = 2 x 32 = 64)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                       image_size=image_size, patch_size=14, num_register_tokens=4)
    AutoModel.from_config(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder

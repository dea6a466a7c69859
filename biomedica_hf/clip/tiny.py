"""Tiny randomly initialised CLIP models (open_clip and transformers) for tests, benchmarks and smoke runs.

They are built from config dicts with random weights: no download, a few hundred thousand parameters
apart from the 49,408-token embedding table.
"""
from __future__ import annotations

import copy

import torch

# open_clip: custom small ViT + text tower, 32 px images, 16-token context
TINY_OPEN_CLIP_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 4, "head_width": 16, "mlp_ratio": 2},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_open_clip(cfg: dict | None = None, seed: int = 0, name: str = "tiny-open-clip"):
    """(clip, model, cfg): a :class:`~biomedica_hf.clip.model.ClipModel` (evaluation mode) around an open_clip
    ``CLIP`` built from ``cfg`` with seeded random weights, that inner model, and the config."""
    from biomedica_hf.clip.model import build_model

    cfg = copy.deepcopy(cfg or TINY_OPEN_CLIP_CFG)
    clip = build_model({"kind": "open_clip", "name": name, "model_cfg": cfg, "train_augment": False}, seed=seed)
    return clip.eval(), clip.model, cfg


def tiny_clip_config(image_size: int = 32, patch_size: int = 4, hidden: int = 32, context: int = 16):
    """A transformers ``CLIPConfig`` of the same size as :data:`TINY_OPEN_CLIP_CFG` (CLIP BPE ids)."""
    from transformers import CLIPConfig

    common = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**common, "max_position_embeddings": context, "vocab_size": 49408, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {**common, "image_size": image_size, "patch_size": patch_size}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)


def tiny_transformers_clip(folder, seed: int = 0, config=None):
    """A random transformers ``CLIPModel`` + ``CLIPProcessor`` saved to ``folder``; returns it loaded as
    :class:`~biomedica_hf.clip.model.ClipModel` (evaluation mode, the processor's own preprocessing).

    The tokenizer is built offline from open_clip's BPE (:func:`biomedica_hf.clip.tokenizer.write_clip_tokenizer`).
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from biomedica_hf.clip.model import ProcessorTransform, wrap_transformers
    from biomedica_hf.clip.tokenizer import write_clip_tokenizer

    config = config or tiny_clip_config()
    torch.manual_seed(seed)
    model = CLIPModel(config)
    size = config.vision_config.image_size
    tokenizer = write_clip_tokenizer(folder, model_max_length=config.text_config.max_position_embeddings)
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return wrap_transformers(model, processor, f"transformers:{folder}", train_augment=False,
                             preprocess=ProcessorTransform(processor)).eval()

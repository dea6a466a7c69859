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
    """(adapter, model, cfg) for an open_clip ``CLIP`` built from ``cfg`` with seeded random weights."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    from biomedica_hf.clip.adapters import OpenClipAdapter

    cfg = copy.deepcopy(cfg or TINY_OPEN_CLIP_CFG)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
    tokenizer = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])
    return OpenClipAdapter(model, preprocess, tokenizer, name), model, cfg


def tiny_clip_config(image_size: int = 32, patch_size: int = 4, hidden: int = 32, context: int = 16):
    """A transformers ``CLIPConfig`` of the same size as :data:`TINY_OPEN_CLIP_CFG` (CLIP BPE ids)."""
    from transformers import CLIPConfig

    common = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**common, "max_position_embeddings": context, "vocab_size": 49408, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 49407}
    vision = {**common, "image_size": image_size, "patch_size": patch_size}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)


def tiny_transformers_clip(folder, seed: int = 0, config=None):
    """A random transformers ``CLIPModel`` + ``CLIPProcessor`` saved to ``folder``; returns the adapter.

    The tokenizer is built offline from open_clip's BPE (:func:`..hf_tokenizer.write_clip_tokenizer`).
    """
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from biomedica_hf.clip.adapters import TransformersClipAdapter
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
    return TransformersClipAdapter(model, processor, f"transformers:{folder}")

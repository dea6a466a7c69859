"""One trainable interface over open_clip ``CLIP`` and transformers ``CLIPModel``.

:class:`TrainableClip` is the ``nn.Module`` the training loop sees (and that accelerate / DDP wraps):
``forward(pixel_values, input_ids, attention_mask=None) -> (image_features, text_features, logit_scale)``
(features unnormalised, ``logit_scale`` exponentiated), plus ``preprocess_train`` / ``preprocess_val``
(PIL -> tensor), ``tokenize(texts) -> dict`` and the model-specific switches (gradient checkpointing,
LoRA target modules). :func:`build_model` builds one from the ``model:`` section of a recipe config.
"""
from __future__ import annotations

import copy
import os
import tempfile
from typing import Any

import torch

from biomedica_hf.clip.adapters import _features

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# attention and MLP projections of both towers
LORA_TARGETS = {
    # nn.MultiheadAttention (q/k/v/out, peft's MHA layer) + MLP linears of every residual block
    "open_clip": ["attn", "c_fc", "c_proj"],
    "transformers": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


class TrainableClip(torch.nn.Module):
    """A CLIP model of either library behind one forward."""

    def __init__(self, model: torch.nn.Module, kind: str, image_size: int, context_length: int, tokenizer: Any,
                 mean=OPENAI_MEAN, std=OPENAI_STD, name: str = "", model_cfg: dict | None = None,
                 train_augment: bool = True, processor: Any = None) -> None:
        super().__init__()
        import open_clip

        if kind not in LORA_TARGETS:
            raise ValueError(f"model kind must be one of {sorted(LORA_TARGETS)}, got {kind!r}")
        self.model, self.kind, self.name = model, kind, name
        self.image_size, self.context_length = image_size, context_length
        self.tokenizer, self.processor, self.model_cfg = tokenizer, processor, model_cfg
        self.mean, self.std = tuple(mean), tuple(std)
        self.preprocess_val = open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)
        self.preprocess_train = (open_clip.image_transform(image_size, is_train=True, mean=mean, std=std)
                                 if train_augment else self.preprocess_val)

    # ------------------------------------------------------------------ forward
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "open_clip":
            return self.model.encode_image(pixel_values)
        return _features(self.model.get_image_features(pixel_values=pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "open_clip":
            return self.model.encode_text(input_ids)
        return _features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    @property
    def logit_scale_param(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None):
        return (self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                self.logit_scale_param.exp())

    # ------------------------------------------------------------------ inputs
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.kind == "open_clip":
            return {"input_ids": self.tokenizer(list(texts))}
        enc = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ------------------------------------------------------------------ switches
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if self.kind == "open_clip":
            self.model.set_grad_checkpointing(enable)
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_disable()

    def apply_lora(self, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                   target_modules: list[str] | None = None) -> None:
        """Wrap the inner model with PEFT LoRA on both towers; the temperature stays trainable."""
        from peft import LoraConfig, get_peft_model

        targets = target_modules or LORA_TARGETS[self.kind]
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        self.model = get_peft_model(self.model, config)
        self.base_core().logit_scale.requires_grad_(True)

    @property
    def is_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def base_core(self) -> torch.nn.Module:
        """The underlying open_clip / transformers model (below any PEFT wrapper)."""
        return self.model.get_base_model() if self.is_lora else self.model

    def merge_lora(self) -> None:
        """Fold LoRA weights into the base weights and drop the PEFT wrapper (no-op without LoRA)."""
        if self.is_lora:
            self.model = self.model.merge_and_unload()


# ---------------------------------------------------------------------- builders
def _hf_processor_parts(path: str | None, config, tokenizer_dir: str | None):
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    from biomedica_hf.clip.tokenizer import write_clip_tokenizer

    if path and os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        processor = CLIPProcessor.from_pretrained(path)
        return processor, processor.tokenizer
    ctx = config.text_config.max_position_embeddings
    if tokenizer_dir and os.path.isfile(os.path.join(tokenizer_dir, "vocab.json")):
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    else:   # offline: build from open_clip's BPE
        tokenizer = write_clip_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="clip_tok_"), model_max_length=ctx)
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer), tokenizer


def build_model(cfg: dict, seed: int | None = None) -> TrainableClip:
    """Build from a recipe's ``model:`` section.

    open_clip: ``{kind: open_clip, name: ViT-L-14, pretrained: commonpool_xl_clip_s13b_b90k}`` (any
    ``create_model_and_transforms`` name / ``hf-hub:`` / ``local-dir:``), or ``model_cfg: {...}`` for a
    custom (e.g. tiny random) config. transformers: ``{kind: transformers, name_or_path: DIR_OR_ID}`` or
    ``config: {text_config: ..., vision_config: ..., projection_dim: ...}`` (random weights).
    ``train_augment: false`` uses the eval transform for training too (deterministic tests).
    """
    import open_clip

    cfg = copy.deepcopy(cfg)
    kind = cfg.get("kind", "open_clip")
    augment = cfg.get("train_augment", True)
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "open_clip":
        if cfg.get("model_cfg"):
            model_cfg = cfg["model_cfg"]
            model = open_clip.model.CLIP(**model_cfg)
            name = cfg.get("name", "custom")
            from open_clip.tokenizer import SimpleTokenizer

            tokenizer = SimpleTokenizer(context_length=model_cfg["text_cfg"].get("context_length", 77))
            pp = {"mean": OPENAI_MEAN, "std": OPENAI_STD}
        else:
            name = cfg.get("name", "ViT-L-14")
            pretrained = cfg.get("pretrained")
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
            tokenizer = open_clip.get_tokenizer(name)
            model_cfg = open_clip.get_model_config(name) if not name.startswith(("hf-hub:", "local-dir:")) else None
            pp = open_clip.get_model_preprocess_cfg(model)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return TrainableClip(model, "open_clip", int(size), int(model.context_length), tokenizer,
                             pp.get("mean", OPENAI_MEAN), pp.get("std", OPENAI_STD), name, model_cfg, augment)
    if kind == "transformers":
        from transformers import CLIPConfig, CLIPModel

        path = cfg.get("name_or_path")
        if path and not cfg.get("config"):
            model = CLIPModel.from_pretrained(path)
        else:
            model = CLIPModel(CLIPConfig(**cfg["config"]))
        processor, tokenizer = _hf_processor_parts(path, model.config, cfg.get("tokenizer_dir"))
        ip = processor.image_processor
        return TrainableClip(model, "transformers", model.config.vision_config.image_size,
                             model.config.text_config.max_position_embeddings, tokenizer,
                             ip.image_mean or OPENAI_MEAN, ip.image_std or OPENAI_STD, path or "custom-clip", None,
                             augment, processor)
    raise ValueError(f"model.kind must be open_clip or transformers, got {kind!r}")

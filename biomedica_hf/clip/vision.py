"""The image side every model here shares: the device, image bytes -> RGB, square fitting, image backbones.

Used by the CLIP wrapper (:mod:`biomedica_hf.clip.model`), the concept stage's embedder
(``biomedica_hf.concepts.embed``) and search's encoders, so that an image is decoded, flattened and
embedded the same way wherever it is seen.

* :func:`pick_device` - ``auto`` -> cuda, else mps, else cpu.
* :func:`open_rgb` / :func:`flatten_to_rgb` - bytes or a PIL image -> RGB by :func:`biomedica_hf.images.to_rgb`
  (the policy every stage shares); large JPEGs decode at reduced scale.
* :func:`prepare_image` - bytes -> ``image_size`` square: ``pad`` (white), ``crop`` (centre) or ``squash``.
* :func:`load_image_model` / :func:`embed_images` - an image backbone (DINOv2 or any transformers
  ``AutoModel`` + ``AutoImageProcessor``, Hub id or local folder; or any CLIP model SPEC of
  :mod:`biomedica_hf.clip.model`) and its pooled, L2-normalised float32 embeddings.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
FITS = ("pad", "crop", "squash")
MAX_DECODE_SIDE = 1024  # JPEG draft decoding down to ~this size before the model's own resize


def pick_device(device: str = "auto") -> str:
    """``auto``: cuda > mps > cpu; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


# ------------------------------------------------------------------------------------ images
def flatten_to_rgb(img):
    """RGB image by the one image policy (:func:`biomedica_hf.images.to_rgb`: upright, transparency onto white,
    16-bit stretched, CMYK through its profile)."""
    from biomedica_hf.images import to_rgb

    return to_rgb(img)


def open_rgb(data: bytes | Any, max_side: int = MAX_DECODE_SIDE):
    """Image bytes (decoded; a JPEG over ``2 * max_side`` at reduced scale) or a PIL image, as RGB."""
    from PIL import Image

    if isinstance(data, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(data)))
        if img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))
    else:
        img = data
    return flatten_to_rgb(img)


def prepare_image(data: bytes, image_size: int = 224, fit: str = "pad"):
    """Decode image bytes into an ``image_size`` x ``image_size`` RGB image.

    ``pad`` (default): longest side to ``image_size``, padded to a square with white, so that a wide
    multi-panel figure is seen whole; ``crop``: shortest side to ``image_size``, centre crop (DINOv2's
    own recipe); ``squash``: resize ignoring the aspect ratio.
    """
    from PIL import Image

    if fit not in FITS:
        raise ValueError(f"fit={fit!r}: expected one of {FITS}")
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (image_size, image_size))  # JPEG: decode at 1/2..1/8 scale, never below the target
    img = flatten_to_rgb(img)
    w, h = img.size
    bicubic = Image.Resampling.BICUBIC
    if fit == "squash":
        return img.resize((image_size, image_size), bicubic, reducing_gap=3.0)
    if fit == "crop":
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        img = img.resize((nw, nh), bicubic, reducing_gap=3.0)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        return img.crop((left, top, left + image_size, top + image_size))
    scale = image_size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    canvas.paste(img.resize((nw, nh), bicubic, reducing_gap=3.0), ((image_size - nw) // 2, (image_size - nh) // 2))
    return canvas


# ------------------------------------------------------------------------------------ weights
def raise_missing_weights(what: str, local: bool, exc: BaseException, hint: str) -> None:
    """Weights that are neither local nor cached while the Hub is unreachable: raise the one-line
    :class:`~biomedica_hf.errors.MissingWeightsError` saying what fixes it (else return)."""
    from biomedica_hf.errors import MissingWeightsError, hub_offline, unreachable

    if local or not (hub_offline() or unreachable(exc)):
        return
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub cannot be reached"
    raise MissingWeightsError(f"{what} not in the local Hugging Face cache and {why}", hint) from exc


_BACKBONE_HINT = "pass --model PATH to a local model folder (save_pretrained layout), or run once with network to cache it"


def _fail_fast_when_unreachable(name: str) -> None:
    """A Hub id that is not cached, with a Hub that does not answer: the one-line error now, not after the
    download client's retries."""
    from biomedica_hf.errors import hub_offline, hub_reachable, is_local_path

    if is_local_path(name) or hub_offline():
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, local_files_only=True, allow_patterns=["config.json"])
        return                                  # cached: from_pretrained will not need the network
    except Exception as exc:  # noqa: BLE001 - not cached (or not a repo id): ask the network
        log.debug("%s is not cached (%s): asking the Hub", name, exc)
    if not hub_reachable():
        raise_missing_weights(f"embedding model {name!r} is", False, ConnectionError(
            f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} cannot be reached"), _BACKBONE_HINT)


# ------------------------------------------------------------------------------------ backbones
def load_image_model(model: Any, processor: Any = None) -> tuple[Any, Any, str]:
    """(model, processor, name) of an image backbone.

    A string is a CLIP model SPEC (see :mod:`biomedica_hf.clip.model`: then the model is the
    :class:`~biomedica_hf.clip.model.ClipModel` and the processor ``None``), else a Hub id or local
    folder loaded with ``AutoModel`` + ``AutoImageProcessor`` (DINOv2, ViT, ...). A model object is
    used as given (it needs its ``processor``).
    """
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        from biomedica_hf.clip.model import clip_spec, load_model

        spec = clip_spec(name)
        if spec is not None:
            return load_model(spec, "cpu"), None, name
        from transformers import AutoImageProcessor, AutoModel

        from biomedica_hf.errors import is_local_path

        _fail_fast_when_unreachable(name)
        try:
            net = AutoModel.from_pretrained(name)
            if processor is None:
                processor = AutoImageProcessor.from_pretrained(name)
        except OSError as exc:
            raise_missing_weights(f"embedding model {name!r} is", is_local_path(name), exc, _BACKBONE_HINT)
            raise
    else:
        net = model
        if processor is None and not hasattr(net, "encode_images"):
            raise ValueError("a model object needs its image processor (processor=...)")
        name = getattr(getattr(net, "config", None), "name_or_path", "") or getattr(net, "name", "") or \
            type(net).__name__
    if isinstance(processor, (str, os.PathLike)):
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(os.fspath(processor))
    return net.eval(), processor, name


def embed_images(model: Any, processor: Any, images: Sequence[Any], device: str = "cpu") -> np.ndarray:
    """float32 ``[len(images), dim]``, L2-normalised: a CLIP model's image embedding, else the backbone's
    pooler_output, else its CLS token (the processor only rescales and normalises: images come fitted)."""
    import torch

    if hasattr(model, "encode_images"):          # a CLIP model (its own preprocessing)
        return model.encode_images(images).numpy()
    switches = {k: False for k in ("do_resize", "do_center_crop") if hasattr(processor, k)}
    pixels = processor(images=list(images), return_tensors="pt", **switches)["pixel_values"]
    pixels = pixels.to(device, non_blocking=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda")
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        out = model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        feats = pooled if pooled is not None else out.last_hidden_state[:, 0]
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)

"""Image backbones: a model that turns fitted images into one pooled, L2-normalised vector each.

Used by the concept stage's embedder (``biomedica_hf.concepts.embed``) and search's image encoders, so that an
image is embedded the same way wherever it is seen (its pixels come from :mod:`biomedica_hf.clip.pixels`).

* :func:`load_image_model` - DINOv2 or any transformers ``AutoModel`` + ``AutoImageProcessor`` (Hub id or local
  folder), or any CLIP model SPEC of :mod:`biomedica_hf.clip.model` (its image tower);
* :func:`embed_images` - float32 ``[n, dim]``: a CLIP model's image embedding, else the backbone's pooler
  output, else its CLS token.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from biomedica_hf.clip.weights import BACKBONE_HINT, fail_fast_when_unreachable, raise_missing_weights


def load_image_model(model: Any, processor: Any = None) -> tuple[Any, Any, str]:
    """(model, processor, name) of an image backbone.

    A string is a CLIP model SPEC (see :mod:`biomedica_hf.clip.model`: then the model is the
    :class:`~biomedica_hf.clip.model.ClipModel` and the processor ``None``), else a Hub id or local
    folder loaded with ``AutoModel`` + ``AutoImageProcessor`` (DINOv2, ViT, ...). A model object is
    used as given (it needs its ``processor``).
    """
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        hub_id = _is_hub_id(name)
        if hub_id:                  # cached, or the one-line error before torch and transformers are imported
            fail_fast_when_unreachable(name)
        from biomedica_hf.clip.model import clip_spec, load_model

        spec = None if hub_id else clip_spec(name)
        if spec is not None:
            return load_model(spec, "cpu"), None, name
        from transformers import AutoImageProcessor, AutoModel

        from biomedica_hf.errors import is_local_path

        if not hub_id:
            fail_fast_when_unreachable(name)
        try:
            net = AutoModel.from_pretrained(name)
            if processor is None:
                processor = AutoImageProcessor.from_pretrained(name)
        except OSError as exc:
            raise_missing_weights(f"embedding model {name!r} is", is_local_path(name), exc, BACKBONE_HINT)
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


def check_image_model(model: Any) -> None:
    """A Hub id (``org/name``) that is not cached while the Hub is off or does not answer: the one-line
    :class:`~biomedica_hf.errors.MissingWeightsError` now, before torch and transformers are imported (seconds);
    anything else is left to :func:`load_image_model`."""
    if isinstance(model, (str, os.PathLike)) and _is_hub_id(os.fspath(model)):
        fail_fast_when_unreachable(os.fspath(model))


def _is_hub_id(name: str) -> bool:
    """``org/name``, not a path here: a Hub id of an image model, never a CLIP SPEC (those are open_clip names
    without a slash, ``hf-hub:``/``local-dir:``/``transformers:``/``clip:`` SPECs or existing folders)."""
    from biomedica_hf.errors import is_local_path

    head = name.split("/", 1)[0]
    return name.count("/") == 1 and ":" not in head and not is_local_path(name)


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


__all__ = ["embed_images", "load_image_model"]

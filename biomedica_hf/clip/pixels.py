"""Image bytes -> the RGB image a model is given: decoded (large JPEGs at reduced scale) and fitted to a square.

Every model here sees an image the same way: the CLIP wrapper (:mod:`biomedica_hf.clip.model`), the concept
stage's embedder (``biomedica_hf.concepts.embed``) and search's encoders. The colour policy itself (orientation,
transparency onto white, 16-bit, CMYK) is the core's :func:`biomedica_hf.images.to_rgb`; this module adds the
decoding shortcuts and the square fitting.

* :func:`open_rgb` - bytes or a PIL image -> RGB (a JPEG over ``2 * max_side`` decodes at reduced scale);
* :func:`prepare_image` - bytes -> ``image_size`` square: ``pad`` (white), ``crop`` (centre) or ``squash``.
"""
from __future__ import annotations

import io
from typing import Any

from biomedica_hf.images import to_rgb

FITS = ("pad", "crop", "squash")
MAX_DECODE_SIDE = 1024  # JPEG draft decoding down to ~this size before the model's own resize


def open_rgb(data: bytes | Any, max_side: int = MAX_DECODE_SIDE):
    """Image bytes (decoded; a JPEG over ``2 * max_side`` at reduced scale) or a PIL image, as RGB."""
    from PIL import Image

    if isinstance(data, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(bytes(data)))
        if img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (max_side, max_side))
    else:
        img = data
    return to_rgb(img)


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
    img = to_rgb(img)
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


__all__ = ["FITS", "MAX_DECODE_SIDE", "open_rgb", "prepare_image"]

"""The one image policy of every stage that looks at pixels: bytes or a PIL image -> an upright RGB image.

CLIP (training and inference), SmolVLM (training and captioning), concept sheets and embeddings, evaluation
and search thumbnails all call :func:`to_rgb`, so a figure is seen the same way everywhere. The rules follow
what the build does to the pixels it converts (``biomedica_hf.build.media``), so that an image decoded from a
shard and the same image converted by the build agree:

* EXIF orientation is applied (``ImageOps.exif_transpose``, as ``datasets.Image`` does on decode and the build
  does to the images it converts; idempotent: the tag is removed from the result);
* transparency is flattened onto white (figures are drawn on white): ``RGBA``, ``LA``, ``PA``, ``RGBa``,
  ``La`` and palette / greyscale / RGB images with a ``transparency`` entry are alpha-composited onto an opaque
  white background (``Image.alpha_composite``); a black background (``convert("RGB")`` drops the alpha) would
  turn dark line art into a black square;
* high bit depth (``I;16``, ``I;16B``/``L``/``N``, ``I``, ``F``) is stretched linearly from the image's own
  min..max to 0..255 with rounding, non-finite values map to 0 and a constant image uses the nominal range
  (0..65535; 0..1 for float) - the build's rule; ``convert("RGB")`` would clip 16-bit data to almost white;
* ``CMYK`` goes through its embedded ICC profile to sRGB when it has one, else Pillow's formula (the build's
  rule);
* everything else: ``convert("RGB")``.

``keep_gray=True`` returns ``L`` for a greyscale source (what a JPEG thumbnail stores) instead of RGB.
"""
from __future__ import annotations

import io
import os
from typing import Any

HIGH_BIT_DEPTH = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
WHITE = (255, 255, 255, 255)
EXIF_ORIENTATION = 0x0112


def open_image(data: Any):
    """A PIL image from encoded bytes, a ``datasets`` image dict (``{"bytes", "path"}``), a path, or a PIL
    image (returned as is)."""
    from PIL import Image

    if isinstance(data, Image.Image):
        return data
    if isinstance(data, dict):
        if data.get("bytes"):
            data = data["bytes"]
        elif data.get("path"):
            data = data["path"]
        else:
            raise ValueError("image dict has neither bytes nor path")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(data)))
    if isinstance(data, (str, os.PathLike)):
        return Image.open(data)
    raise TypeError(f"not an image: {type(data).__name__}")


def stretch_to_l(img):
    """8-bit ``L`` from a high-bit-depth single-band image: min..max -> 0..255 (see the module docstring)."""
    import numpy as np
    from PIL import Image

    a = np.asarray(img).astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return Image.new("L", img.size, 0)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    if hi <= lo:
        lo, hi = (0.0, 1.0) if img.mode == "F" else (0.0, 65535.0)
    a = np.nan_to_num((np.where(finite, a, np.nan) - lo) * (255.0 / (hi - lo)), nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def cmyk_to_rgb(img):
    """CMYK -> RGB through the embedded ICC profile when there is one, else Pillow's formula."""
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile / no littlecms: fall back, as the build does
            pass
    return img.convert("RGB")


def has_transparency(img) -> bool:
    return img.mode in ALPHA_MODES or "transparency" in img.info


def to_rgb(data: Any, *, orient: bool = True, keep_gray: bool = False):
    """Encoded bytes / image dict / path / PIL image -> upright RGB (``L`` for a greyscale source with
    ``keep_gray``), following the module's policy. The image is loaded (its file can be closed)."""
    from PIL import Image, ImageOps

    img = open_image(data)
    if orient:
        try:
            if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
                img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - malformed EXIF must not fail an otherwise good image (the build's rule)
            pass
    gray = img.mode in GRAY_MODES or (img.mode == "P" and _gray_palette(img))
    if img.mode in HIGH_BIT_DEPTH:
        img = stretch_to_l(img)
    if img.mode == "CMYK":
        out = cmyk_to_rgb(img)
    elif has_transparency(img):
        rgba = img.convert("RGBA")
        out = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
    else:
        out = img if img.mode == "RGB" else img.convert("RGB")
    if keep_gray and gray:
        return out.convert("L")
    out.load()
    return out


def _gray_palette(img) -> bool:
    palette = img.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))

"""The one image policy of every stage that looks at pixels: how any PIL mode becomes 8-bit pixels.

Three entry points share the same rules, so a figure is seen the same way everywhere:

* :func:`to_output_mode` - what the build writes when it converts a figure to PNG (``ingest.media``): the
  explicit mode table :data:`TARGET_MODE`, alpha kept unless every pixel is opaque;
* :func:`to_rgb` - what CLIP (training and inference), SmolVLM (training and captioning), concept sheets and
  embeddings, evaluation and search thumbnails see: an upright RGB image (``L`` with ``keep_gray``), alpha
  flattened onto white;
* :func:`hash_gray` - the input of the perceptual hash (``neardup.hashing``): 8-bit grayscale, alpha
  flattened onto white, large images box-reduced first.
* :func:`reduce_by` - an integer box-reduce (of whole blocks, with a ``box``) where the mode allows: the perceptual
  hash's first step for images that are not decoded at a DCT scale.

The rules:

* EXIF orientation is applied (:func:`exif_orientation` / :data:`ORIENTATION_TRANSPOSE` in the build,
  ``ImageOps.exif_transpose`` in :func:`to_rgb`, as ``datasets.Image`` does on decode; malformed EXIF counts as
  upright);
* transparency is flattened onto white where the result has no alpha (figures are drawn on white): ``RGBA``,
  ``LA``, ``PA``, ``RGBa``, ``La`` and palette / greyscale / RGB images with a ``transparency`` entry are
  alpha-composited onto an opaque white background (``Image.alpha_composite``); a black background
  (``convert("RGB")`` drops the alpha) would turn dark line art into a black square;
* high bit depth (``I;16``, ``I;16B``/``L``/``N``, ``I``, ``F``) is stretched linearly from the image's own
  min..max to 0..255 with rounding, non-finite values map to 0 and a constant image uses the nominal range
  (0..65535; 0..1 for float) (:func:`stretch_to_l`, in row blocks: bounded memory); ``convert("RGB")`` would
  clip 16-bit data to almost white;
* ``CMYK`` goes through its embedded ICC profile to sRGB when it has one, else Pillow's formula
  (:func:`cmyk_to_rgb`);
* everything else: ``convert`` to the target mode.

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

#: source mode -> mode of a converted PNG (the build's table).  "P" becomes "RGBA" when the palette has a
#: transparent entry; any alpha that is fully opaque is dropped afterwards (:func:`to_output_mode`).
TARGET_MODE: dict[str, str] = {
    "1": "L",
    "L": "L",
    "LA": "LA",
    "La": "LA",        # premultiplied alpha -> straight alpha
    "P": "RGB",
    "PA": "RGBA",
    "RGB": "RGB",
    "RGBA": "RGBA",
    "RGBa": "RGBA",
    "RGBX": "RGB",
    "CMYK": "RGB",     # via the embedded ICC profile when present (cmyk_to_rgb)
    "YCbCr": "RGB",
    "LAB": "RGB",
    "HSV": "RGB",
    "I;16": "L",       # high bit depth: min..max stretch (stretch_to_l)
    "I;16B": "L",
    "I;16L": "L",
    "I;16N": "L",
    "I": "L",
    "F": "L",
}

# EXIF orientation -> the transpose that displays the image upright (as PIL.ImageOps.exif_transpose), by the
# values of PIL.Image.Transpose (kept as ints so that importing this module does not import Pillow)
_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}   # FLIP_LEFT_RIGHT 0, FLIP_TOP_BOTTOM 1, ROTATE_90 2,
#                                                            ROTATE_180 3, ROTATE_270 4, TRANSPOSE 5, TRANSVERSE 6


class UnsupportedMode(ValueError):
    """A PIL mode with no row in :data:`TARGET_MODE`."""


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


def _row_blocks(img, budget: int = 16 << 20):
    """``(y0, block)`` crops of whole rows, each about ``budget`` bytes as float64."""
    w, h = img.size
    rows = max(1, budget // max(1, w * 8))
    for y in range(0, h, rows):
        yield y, img.crop((0, y, w, min(h, y + rows)))


def stretch_to_l(img):
    """8-bit ``L`` from a high-bit-depth single-band image: linear map of min..max to 0..255, rounded.

    A constant image falls back to the nominal range (0..65535, or 0..1 for float); non-finite values map to 0.
    Works in row blocks, so the extra memory is the 8-bit output plus one block (not 8 bytes a pixel).
    """
    import numpy as np
    from PIL import Image

    lo, hi = np.inf, -np.inf
    for _, block in _row_blocks(img):
        a = np.asarray(block).astype(np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    out = Image.new("L", img.size, 0)
    if not np.isfinite(lo):  # no finite pixel
        return out
    if hi <= lo:
        lo, hi = (0.0, 1.0) if img.mode == "F" else (0.0, 65535.0)
    for y, block in _row_blocks(img):
        a = np.asarray(block).astype(np.float64)
        a = np.nan_to_num((np.where(np.isfinite(a), a, np.nan) - lo) * (255.0 / (hi - lo)), nan=0.0)
        out.paste(Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L"), (0, y))
    return out


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


def exif_orientation(img) -> int:
    """The EXIF orientation of ``img`` (2..8), or 1 when it has none or its EXIF is malformed (never fails an
    otherwise good image)."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not fail an otherwise good image
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def apply_orientation(img, orientation: int):
    """``img`` transposed so that an image with EXIF ``orientation`` displays upright (1: unchanged)."""
    from PIL import Image

    return img if orientation == 1 else img.transpose(Image.Transpose(_TRANSPOSE[orientation]))


def to_output_mode(img):
    """A loaded image in the 8-bit mode the build writes (:data:`TARGET_MODE`): high bit depth stretched, CMYK
    through its profile, alpha kept unless fully opaque. Raises :class:`UnsupportedMode` for a mode not in the
    table."""
    mode = img.mode
    if mode not in TARGET_MODE:
        raise UnsupportedMode(f"image mode {mode}")
    if mode in HIGH_BIT_DEPTH:
        return stretch_to_l(img)
    if mode == "CMYK":
        return cmyk_to_rgb(img)
    target = TARGET_MODE[mode]
    if mode == "P" and "transparency" in img.info:
        target = "RGBA"
    out = img if mode == target else img.convert(target)
    if "A" in out.getbands() and out.getchannel("A").getextrema() == (255, 255):
        out = out.convert(out.mode[:-1])  # fully opaque: RGBA -> RGB, LA -> L
    return out


def flatten_on_white(img):
    """``RGBA`` of ``img`` composited onto opaque white."""
    from PIL import Image

    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba)


def reduce_by(img, factor: int, box: tuple[int, int, int, int] | None = None):
    """``img`` (its ``box``, default all of it) box-reduced by an integer factor (``Image.reduce``) where its mode
    allows (palette images through RGB(A)); an image of another mode is returned as it is (the hash's Lanczos
    resize copes)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if factor >= 2 and img.mode in ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F", "I;16"):
        try:
            return img.reduce(factor, box)
        except (ValueError, NotImplementedError):   # a mode reduce() does not support: the resize copes
            pass
    return img


def hash_gray(img, reduce_to: int):
    """The perceptual hash's input: an 8-bit grayscale copy of ``img`` with alpha composited on white; a large
    image is first box-reduced (integer factor) to about ``reduce_to`` pixels on its short side."""
    img = reduce_by(img, min(img.size) // reduce_to)
    if img.mode in HIGH_BIT_DEPTH:
        return stretch_to_l(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return flatten_on_white(img).convert("L")
    return img if img.mode == "L" else img.convert("L")


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
        out = flatten_on_white(img).convert("RGB")
    else:
        out = img if img.mode == "RGB" else img.convert("RGB")
    if keep_gray and gray:
        return out.convert("L")
    out.load()
    return out


def _gray_palette(img) -> bool:
    palette = img.getpalette() or []
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))

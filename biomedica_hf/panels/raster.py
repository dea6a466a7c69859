"""A figure's working copy and its ink, shared by the splitter (``split.py``) and the label reader (``labels.py``).

* :class:`Panel` - one panel: its box in original pixels, confidence and printed label;
* :func:`reduced_copy` - a copy no longer than ``MAX_SIDE`` on its long side (JPEG draft decoding, ``reduce``);
* :func:`to_rgb_array` - any PIL mode as an ``(h, w, 3)`` uint8 array;
* :func:`background` / :func:`foreground` - the border's commonest colour, and the pixels that differ from it by
  more than JPEG noise (``FG_THRESHOLD``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from biomedica_hf.images import to_rgb

MAX_SIDE = 1024          # the long side of the working copy
FG_THRESHOLD = 40        # max channel difference from the background that still counts as background (JPEG noise)
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Panel:
    """One panel of a figure: ``bbox`` in ORIGINAL pixels (x0, y0, x1, y1; x1/y1 exclusive), a confidence in [0, 1],
    and the printed label read near it (normalised: "A", "b", "ii", "1A"), if any."""
    bbox: tuple[int, int, int, int]
    score: float
    label: str | None = None
    label_score: float = 0.0


# ---------------------------------------------------------------------------------------------- the working copy

def _not_loaded(image: Image.Image) -> bool:
    return bool(getattr(image, "tile", None))


def reduced_copy(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    """A copy of ``image`` whose long side is at most ``max_side``, made without decoding a full-size copy where
    the format allows it: a not-yet-loaded JPEG is re-opened from its file and decoded at 1/2, 1/4 or 1/8 scale
    (``Image.draft``); otherwise ``Image.reduce`` (box filter) or, for modes it does not take, a nearest resize.
    The caller's image is never changed."""
    W, H = image.size
    factor = max(W, H) / max_side
    src = image
    lazy_jpeg = getattr(image, "format", None) == "JPEG" and _not_loaded(image) and getattr(image, "filename", "")
    if factor > 1 and lazy_jpeg:
        try:
            src = Image.open(image.filename)
            src.draft(None, (max(1, int(W / factor)), max(1, int(H / factor))))
        except (OSError, Image.DecompressionBombError):   # the caller opened it; we decode it as it is
            src = image
    w, h = src.size
    k = math.ceil(max(w, h) / max_side)
    if k > 1:
        try:
            src = src.reduce(k)
        except ValueError:               # modes reduce() does not take (P, 1, I;16 ...)
            src = src.resize((max(1, w // k), max(1, h // k)), Image.NEAREST)
    return src


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8 of any PIL mode, by the one image policy (:func:`biomedica_hf.images.to_rgb`: alpha
    composited on white, 16-bit / float stretched from their min..max, CMYK through its profile, palettes
    converted), without applying EXIF orientation: panel boxes are in the stored image's coordinates."""
    return np.asarray(to_rgb(image, orient=False))


def background(rgb: np.ndarray) -> np.ndarray:
    """The background colour: the commonest (coarsely binned) colour of the image border, white when no colour
    dominates the border (panels that touch the edges)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int32)
    codes = (border[:, 0] // 32) * 64 + (border[:, 1] // 32) * 8 + border[:, 2] // 32
    counts = np.bincount(codes, minlength=512)
    top = int(counts.argmax())
    if counts[top] < 0.25 * len(codes):
        return np.array([255, 255, 255], dtype=np.int32)
    return np.median(border[codes == top], axis=0).astype(np.int32)


def foreground(rgb: np.ndarray, bg: np.ndarray, threshold: int = FG_THRESHOLD) -> np.ndarray:
    """Pixels whose largest channel difference from ``bg`` exceeds ``threshold``."""
    out = np.zeros(rgb.shape[:2], dtype=bool)
    for c in range(3):
        ch = rgb[:, :, c]
        b = int(bg[c])
        # |ch - b| > t  <=>  ch > b + t  or  ch < b - t   (uint8 compares, no signed copy)
        if b + threshold < 255:
            out |= ch > b + threshold
        if b - threshold > 0:
            out |= ch < b - threshold
    return out

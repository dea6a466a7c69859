"""Read the printed panel label ("A", "(b)", "c.", "1A", "ii") near each panel box with an OCR whose weights ship
in its wheel (RapidOCR: PP-OCR ONNX models inside ``rapidocr-onnxruntime``; nothing is downloaded at run time).

Only small regions are read: the top-left corner of each box (where almost every journal prints the label,
inside or just outside the panel) on a reduced copy of the figure. The text found there is normalised
(brackets, dots and colons dropped) and accepted when it looks like a label: one letter, one or two digits with an
optional letter ("1A"), or a lower-case roman numeral up to "xii". Used for the splitter's boxes and for a
detector's boxes alike.
"""
from __future__ import annotations

import re
import threading

import numpy as np
from PIL import Image

from biomedica_hf.panels.split import Panel, reduced_copy, to_rgb_array

LABEL_SIDE = 2048        # the long side of the copy labels are read from
_ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii")
_LABEL = re.compile(r"^(?:[A-Za-z]|\d{1,2}[A-Za-z]?)$")
_STRIP = re.compile(r"^[\(\[\{]+|[\)\]\}\.\:,;'\"`]+$")
_engine = None
_engine_lock = threading.Lock()


class OCRUnavailable(RuntimeError):
    """The OCR package is not installed (``pip install biomedica-hf[panels]``)."""


def _ocr():
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise OCRUnavailable("panel labels need rapidocr-onnxruntime: pip install 'biomedica-hf[panels]'") from e
            _engine = RapidOCR(use_cls=False, print_verbose=False)
        return _engine


def normalise_label(text: str) -> str | None:
    """``"(a)"`` -> ``"a"``, ``"B."`` -> ``"B"``, ``"1A"`` -> ``"1A"``, ``"(ii)"`` -> ``"ii"``; None when the text is
    not a panel label (a word, a number over 99, punctuation only)."""
    t = text.strip().replace(" ", "")
    prev = None
    while prev != t:
        prev, t = t, _STRIP.sub("", t)
    if not t:
        return None
    if t.lower() in _ROMAN and (t.islower() or len(t) == 1):
        return t
    if _LABEL.match(t):
        return t
    return None


def corner_region(box: tuple[int, int, int, int], W: int, H: int) -> tuple[int, int, int, int]:
    """Where a panel's label is looked for: its top-left corner, reaching a little outside the box."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    size = max(W, H)
    pad = max(4, int(0.02 * size))
    cw = min(w, max(int(0.3 * w), int(0.08 * size), 40))
    ch = min(h, max(int(0.22 * h), int(0.07 * size), 36))
    return (max(0, x0 - pad), max(0, y0 - pad), min(W, x0 + cw), min(H, y0 + ch))


def _read(crop: np.ndarray) -> list[tuple[tuple[float, float, float, float], str, float]]:
    """(box in crop pixels, text, confidence) of every text line RapidOCR finds in ``crop``."""
    result, _ = _ocr()(crop)
    out = []
    for quad, text, conf in result or []:
        xs = [p[0] for p in quad]
        ys = [p[1] for p in quad]
        out.append(((min(xs), min(ys), max(xs), max(ys)), text, float(conf)))
    return out


def read_label(rgb: np.ndarray, region: tuple[int, int, int, int], anchor: tuple[int, int]) -> tuple[str | None, float]:
    """The label read in ``region`` of ``rgb`` (working-copy pixels): of the label-like texts found, the one
    nearest ``anchor`` (the panel's top-left corner), weighted by confidence."""
    x0, y0, x1, y1 = region
    crop = rgb[y0:y1, x0:x1]
    if crop.size == 0 or min(crop.shape[:2]) < 6:
        return None, 0.0
    scale = 1.0
    if max(crop.shape[:2]) < 64:                   # tiny figures: give the detector something to see
        scale = 64 / max(crop.shape[:2])
        crop = np.asarray(Image.fromarray(crop).resize((max(1, round(crop.shape[1] * scale)),
                                                        max(1, round(crop.shape[0] * scale))), Image.BICUBIC))
    crop = np.pad(crop, ((8, 8), (8, 8), (0, 0)), constant_values=255)
    best: tuple[float, str | None, float] = (float("inf"), None, 0.0)
    for (bx0, by0, bx1, by1), text, conf in _read(crop):
        label = normalise_label(text)
        if label is None:
            # "A Mitochondria": a label followed by a title in one detected line
            head = text.strip().split(" ")[0] if " " in text.strip() else ""
            label = normalise_label(head) if head and len(head) <= 4 else None
            conf *= 0.9
        if label is None:
            continue
        cx = x0 + (bx0 - 8) / scale
        cy = y0 + (by0 - 8) / scale
        dist = ((cx - anchor[0]) ** 2 + (cy - anchor[1]) ** 2) ** 0.5
        cost = dist / max(1.0, conf)
        if cost < best[0]:
            best = (cost, label, conf)
    return best[1], best[2]


def label_panels(image: Image.Image, bboxes: list[tuple[int, int, int, int]],
                 scores: list[float] | None = None) -> list[Panel]:
    """A ``Panel`` for each box (original pixels) with the printed label read near its top-left corner (None
    and label_score 0 where none was read). ``scores`` default to 1.0."""
    scores = [1.0] * len(bboxes) if scores is None else list(scores)
    if len(scores) != len(bboxes):
        raise ValueError(f"{len(bboxes)} boxes but {len(scores)} scores")
    if not bboxes:
        return []
    W, H = image.size
    small = reduced_copy(image, LABEL_SIDE)
    rgb = to_rgb_array(small)
    sx, sy = rgb.shape[1] / W, rgb.shape[0] / H
    out = []
    for b, s in zip(bboxes, scores):
        sb = (int(b[0] * sx), int(b[1] * sy), max(int(b[0] * sx) + 1, int(round(b[2] * sx))),
              max(int(b[1] * sy) + 1, int(round(b[3] * sy))))
        region = corner_region(sb, rgb.shape[1], rgb.shape[0])
        label, conf = read_label(rgb, region, (sb[0], sb[1]))
        out.append(Panel(tuple(int(v) for v in b), float(s), label, float(conf) if label else 0.0))
    return out

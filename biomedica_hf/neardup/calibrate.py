"""Threshold calibration on real figures: generated copies inside, distinct figures outside.

Positives: each figure against its re-encoded (JPEG q60/75/85/95), resized (0.5x, 0.75x, 1.5x, 2x, then
JPEG q90 as journals re-publish), PNG<->JPEG and resized-and-re-encoded copies. Negatives: every pair
of distinct figures (distinct sha256 of the decoded pixels' source files, thumbnails ``.gif`` left out
because they are the same figures as their ``.jpg``). Used by the tests and ``benchmarks/bench_neardup.py``.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from biomedica_hf.images import HIGH_BIT_DEPTH, flatten_on_white, stretch_to_l
from biomedica_hf.neardup.hashing import HASHERS, hex_distance, image_hashes, open_image

FIGURE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MIN_SIDE = 64


def figure_files(roots: Iterable[Path], min_side: int = MIN_SIDE) -> list[Path]:
    """Distinct figure images (by file sha256) under ``roots``, sorted; tiny images and GIF thumbnails skipped."""
    seen: dict[str, Path] = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.suffix.lower() not in FIGURE_EXTS or not p.is_file():
                continue
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in seen:
                continue
            try:
                with Image.open(p) as im:
                    if min(im.size) < min_side:
                        continue
            except Exception:   # noqa: BLE001 - not an image Pillow reads: not a calibration figure
                continue
            seen[digest] = p
    return sorted(seen.values())


def full_image(data: bytes) -> Image.Image:
    """The first frame decoded at full size (no DCT scaling): what a journal re-encodes or resizes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = Image.open(io.BytesIO(data))
        img.load()
    return img


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in HIGH_BIT_DEPTH:
        return stretch_to_l(img)
    if "A" in img.getbands() or img.mode == "P":
        return flatten_on_white(img).convert("RGB")
    return img.convert("RGB")


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    _rgb(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    _rgb(img).save(buf, format="PNG")
    return buf.getvalue()


def _resize(img: Image.Image, scale: float) -> Image.Image:
    w, h = img.size
    return _rgb(img).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def copies(img: Image.Image, fmt: str) -> dict[str, bytes]:
    """The generated near-duplicate copies of one figure, by transform name."""
    out = {f"jpeg_q{q}": _jpeg(img, q) for q in (60, 75, 85, 95)}
    for s in (0.5, 0.75, 1.5, 2.0):
        out[f"resize_{s}x"] = _jpeg(_resize(img, s), 90)
    out["png_jpeg_swap"] = _png(img) if fmt == "JPEG" else _jpeg(img, 85)
    out["resize_0.5x_q60"] = _jpeg(_resize(img, 0.5), 60)
    return out


@dataclass
class Calibration:
    """Distances per hash: positives by transform, negatives over distinct pairs."""

    figures: list[str]
    positives: dict[str, dict[str, list[int]]] = field(default_factory=dict)   # hash -> transform -> distances
    negatives: dict[str, list[int]] = field(default_factory=dict)               # hash -> distances
    closest_negative: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    def all_positives(self, name: str) -> np.ndarray:
        return np.asarray([d for ds in self.positives[name].values() for d in ds], dtype=np.int64)

    def precision_recall(self, name: str, threshold: int) -> tuple[float, float, int, int]:
        """(precision, recall, false positives, false negatives) of ``distance <= threshold``.

        Precision counts every negative pair (a rate over n^2 pairs, so read it together with the FP count).
        """
        pos = self.all_positives(name)
        neg = np.asarray(self.negatives[name], dtype=np.int64)
        tp, fn, fp = int((pos <= threshold).sum()), int((pos > threshold).sum()), int((neg <= threshold).sum())
        return (tp / (tp + fp) if tp + fp else 1.0), (tp / len(pos) if len(pos) else 1.0), fp, fn


def calibrate(files: Sequence[Path], names: Sequence[str] = tuple(HASHERS)) -> Calibration:
    """Hash every figure and its copies with each candidate hash; collect the distance distributions."""
    cal = Calibration(figures=[str(f) for f in files])
    originals: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        cal.positives[n] = {}
    for f in files:
        data = f.read_bytes()
        base = image_hashes(open_image(data), names)      # as the build hashes it (a JPEG at its DCT scale)
        for n in names:
            originals[n].append(base[n])
        img = full_image(data)                             # the copies are made from the full-size pixels
        for t, copy in copies(img, img.format or "").items():
            h = image_hashes(open_image(copy), names)
            for n in names:
                cal.positives[n].setdefault(t, []).append(hex_distance(base[n], h[n]))
    for n in names:
        negs = []
        best = (None, None, 10**9)
        for (i, a), (j, b) in itertools.combinations(enumerate(originals[n]), 2):
            d = hex_distance(a, b)
            negs.append(d)
            if d < best[2]:
                best = (str(files[i]), str(files[j]), d)
        cal.negatives[n] = negs
        cal.closest_negative[n] = best
    return cal


def choose_threshold(cal: Calibration, name: str) -> int:
    """The midpoint of the gap between the largest copy distance and the smallest distinct-pair distance."""
    pos_max = int(cal.all_positives(name).max())
    neg_min = int(min(cal.negatives[name]))
    return (pos_max + neg_min) // 2 if neg_min > pos_max else pos_max

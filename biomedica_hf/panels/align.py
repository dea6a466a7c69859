"""Give every panel of a figure its subcaption: by its printed label, by reading order, by position words, or the
shared part only.

Input: the panels of one image (anything with ``bbox``, ``score``, ``label``, ``label_score``, as
:class:`biomedica_hf.panels.split.Panel`), in reading order, and the figure's caption. Output: one
:class:`AlignedPanel` per panel, same order, recording how its text was found (``method``) and how sure that is
(``confidence``, 0..1):

==========  ===========================================================================================  ==========
method      when                                                                                         confidence
==========  ===========================================================================================  ==========
single      the figure is one panel: its caption is the whole caption                                    1.0
label       the panel's printed label (OCR) names a part of the caption ("A" <-> "(A)"; case-insensitive   0.6 + 0.4 x
            when the caption's family differs in case)                                                   label score
position    the caption's markers are position words (left/right/top/bottom...) and there are as many      0.6
            panels as positions: each position takes the panel nearest to it
order       panels without a readable label: between two labelled panels (reading order), the parts whose   0.5
            labels lie between theirs, when as many; else, when the panels left are as many as the parts
            left, paired in reading order with the parts in label order
shared      anything else (no markers, markers that match no panel, counts that differ): the panel's        0.2
            text is the shared part (and footer) only, ``subcaption`` is None
==========  ===========================================================================================  ==========

Pure functions: no image is read here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from biomedica_hf.panels.captions import POSITION, Subcaptions, label_rank, match_label, split_caption

SINGLE, LABEL, POSITION_METHOD, ORDER, SHARED = "single", "label", "position", "order", "shared"
METHODS = (SINGLE, LABEL, POSITION_METHOD, ORDER, SHARED)
CONFIDENCE = {SINGLE: 1.0, POSITION_METHOD: 0.6, ORDER: 0.5, SHARED: 0.2}

# where a position word points, in [0, 1] x [0, 1] image coordinates (x right, y down)
_POINTS = {"left": (0.0, 0.5), "right": (1.0, 0.5), "top": (0.5, 0.0), "bottom": (0.5, 1.0),
           "middle": (0.5, 0.5), "center": (0.5, 0.5), "top left": (0.0, 0.0), "top right": (1.0, 0.0),
           "bottom left": (0.0, 1.0), "bottom right": (1.0, 1.0), "top middle": (0.5, 0.0),
           "top center": (0.5, 0.0), "bottom middle": (0.5, 1.0), "bottom center": (0.5, 1.0),
           "middle left": (0.0, 0.5), "middle right": (1.0, 0.5), "center left": (0.0, 0.5),
           "center right": (1.0, 0.5)}


@dataclass(frozen=True)
class AlignedPanel:
    """One panel with its text. ``bbox``: x0, y0, x1, y1 in original pixels (x1/y1 exclusive); ``label``: printed
    label read from the image (None when unread); ``caption_label``: the caption part it was given ("A"), None
    when none; ``subcaption``: that part's text; ``shared``: the caption's shared part; ``caption``: what the
    panel's training caption is (shared part + subcaption + footer, or the whole caption for a single panel)."""

    bbox: tuple[int, int, int, int]
    score: float
    label: str | None
    label_score: float
    caption_label: str | None
    subcaption: str | None
    shared: str
    caption: str
    method: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = [int(v) for v in self.bbox]
        d["score"] = round(float(self.score), 4)
        d["label_score"] = round(float(self.label_score), 4)
        d["confidence"] = round(float(self.confidence), 3)
        return d


def _get(panel: Any, name: str, default: Any = None) -> Any:
    return panel.get(name, default) if isinstance(panel, dict) else getattr(panel, name, default)


def _centre(bbox: Sequence[int], size: tuple[int, int]) -> tuple[float, float]:
    w, h = max(1, size[0]), max(1, size[1])
    return ((bbox[0] + bbox[2]) / 2 / w, (bbox[1] + bbox[3]) / 2 / h)


def _extent(panels: Sequence[Any]) -> tuple[int, int]:
    return (max((_get(p, "bbox")[2] for p in panels), default=1), max((_get(p, "bbox")[3] for p in panels), default=1))


def _by_position(panels: Sequence[Any], labels: list[str], size: tuple[int, int]) -> dict[int, str] | None:
    """Panel index -> position label, nearest first (greedy), when every label has a known point."""
    if len(labels) != len(panels) or any(lab not in _POINTS for lab in labels):
        return None
    centres = [_centre(_get(p, "bbox"), size) for p in panels]
    # normalise the centres to the panels' own spread, so "left"/"right" work for a row of two in a tall figure
    xs, ys = [c[0] for c in centres], [c[1] for c in centres]
    def spread(v: float, lo: float, hi: float) -> float:
        return 0.5 if hi - lo < 1e-6 else (v - lo) / (hi - lo)
    centres = [(spread(x, min(xs), max(xs)), spread(y, min(ys), max(ys))) for x, y in centres]
    pairs = sorted(((cx - _POINTS[lab][0]) ** 2 + (cy - _POINTS[lab][1]) ** 2, i, lab)
                   for i, (cx, cy) in enumerate(centres) for lab in labels)
    out: dict[int, str] = {}
    for _, i, lab in pairs:
        if i not in out and lab not in out.values():
            out[i] = lab
    return out if len(out) == len(panels) else None


def _fill_gaps(assigned: dict[int, tuple[str, str, float]], used: set[str], parts: list[str], family: str,
               n: int) -> None:
    """Unlabelled panels between labelled ones, in reading order, take the caption parts whose labels fall between
    their neighbours' ("B", ?, "D" -> the ? is "C"), when the gap holds as many panels as such parts (method
    ``order``). Gaps before the first and after the last labelled panel count too."""
    rank = {c: label_rank(c, family) for c in parts}
    i = 0
    while i < n:
        if i in assigned:
            i += 1
            continue
        j = i
        while j < n and j not in assigned:
            j += 1
        lo = rank[assigned[i - 1][0]] if i > 0 else -1
        hi = rank[assigned[j][0]] if j < n else float("inf")
        if lo < hi:
            cands = sorted((c for c in parts if c not in used and lo < rank[c] < hi), key=lambda c: rank[c])
            if len(cands) == j - i:
                for k, c in zip(range(i, j), cands):
                    assigned[k] = (c, ORDER, CONFIDENCE[ORDER])
                    used.add(c)
        i = j


def align_panels(panels: Sequence[Any], caption: str | None, *, size: tuple[int, int] | None = None,
                 subcaptions: Subcaptions | None = None) -> list[AlignedPanel]:
    """Pair each panel with its part of ``caption`` (module doc); ``size`` = (width, height) of the image (the
    panels' extent when None). Never raises on odd input: no panels gives [], no caption gives empty texts."""
    caption = caption or ""
    if not panels:
        return []
    labels = [_get(p, "label") for p in panels]
    sub = subcaptions or split_caption(caption, image_labels=[lab for lab in labels if lab])
    size = size or _extent(panels)
    n = len(panels)
    assigned: dict[int, tuple[str, str, float]] = {}      # panel index -> (caption label, method, confidence)
    if n == 1:
        p = panels[0]
        return [AlignedPanel(tuple(_get(p, "bbox")), float(_get(p, "score", 1.0)), labels[0],
                             float(_get(p, "label_score", 0.0) or 0.0), None, caption.strip() or None,
                             sub.shared, caption.strip(), SINGLE, CONFIDENCE[SINGLE])]
    parts = list(sub.parts)
    if sub.family == POSITION:
        pos = _by_position(panels, parts, size)
        if pos:
            assigned = {i: (lab, POSITION_METHOD, CONFIDENCE[POSITION_METHOD]) for i, lab in pos.items()}
    else:
        used: set[str] = set()
        for i, lab in enumerate(labels):
            if not lab:
                continue
            hit = match_label(lab, [c for c in parts if c not in used])
            if hit is not None:
                used.add(hit)
                exact = hit == lab
                ls = float(_get(panels[i], "label_score", 0.0) or 0.0)
                assigned[i] = (hit, LABEL, (0.6 + 0.4 * max(0.0, min(1.0, ls))) * (1.0 if exact else 0.9))
        if sub.family and assigned:
            _fill_gaps(assigned, used, parts, sub.family, n)
        rest_panels = [i for i in range(n) if i not in assigned]
        rest_parts = [c for c in parts if c not in used]
        if rest_panels and len(rest_panels) == len(rest_parts):
            fam = sub.family
            ordered = sorted(rest_parts, key=lambda c: (label_rank(c, fam), parts.index(c))) if fam else rest_parts
            for i, c in zip(rest_panels, ordered):
                assigned[i] = (c, ORDER, CONFIDENCE[ORDER])
    out = []
    for i, p in enumerate(panels):
        bbox = tuple(int(v) for v in _get(p, "bbox"))
        score, ls = float(_get(p, "score", 1.0)), float(_get(p, "label_score", 0.0) or 0.0)
        if i in assigned:
            lab, method, conf = assigned[i]
            text = sub.parts.get(lab)
            out.append(AlignedPanel(bbox, score, labels[i], ls, lab, text, sub.shared, sub.full_text(lab),
                                    method, round(conf, 3)))
        else:
            full = " ".join(t for t in (sub.shared, sub.footer) if t) if sub.parts else caption.strip()
            out.append(AlignedPanel(bbox, score, labels[i], ls, None, None, sub.shared, full, SHARED,
                                    CONFIDENCE[SHARED]))
    return out


__all__ = ["METHODS", "AlignedPanel", "align_panels"]

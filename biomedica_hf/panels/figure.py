"""One figure in, its panels with subcaptions out: the splitter (or a detector), the label reader, the caption
splitter and the alignment, as one call.

:func:`split_figure` is what ``biomedica panels split`` prints for each image and what the dataset stage stores
for each sample::

    {"width": W, "height": H, "family": "upper" | ... | null, "shared": TEXT,
     "panels": [{"bbox": [x0, y0, x1, y1], "label": "A" | null, "subcaption": TEXT | null, "score": float,
                 "label_score": float, "caption_label": "A" | null, "caption": TEXT, "method": "label" | "position" |
                 "order" | "shared" | "single", "confidence": float}, ...]}

``bbox`` is in original pixels, x1/y1 exclusive; a single-panel figure gives exactly one panel (method
``single``, its caption the whole caption).
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from biomedica_hf.panels.align import AlignedPanel, align_panels
from biomedica_hf.panels.captions import split_caption


class Detector(Protocol):
    """Boxes for a batch of images: ``detect(images) -> [[(bbox, score), ...] per image]`` (original pixels)."""

    def detect(self, images: Sequence[Image.Image]) -> list[list[tuple[tuple[int, int, int, int], float]]]: ...


def open_image(image: Image.Image | bytes | str | os.PathLike[str]) -> Image.Image:
    """A PIL image from an image, its bytes or its path (not decoded yet: the splitter reads a reduced copy)."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image)))
    return Image.open(Path(image))


def find_panels(image: Image.Image, *, labels: bool = True, detector: Detector | None = None,
                caption: str | None = None) -> list[Any]:
    """The panels of one image, in reading order, with their printed labels when ``labels``: the CPU splitter,
    or ``detector``'s boxes read by the same label reader. Never empty: no box means the whole image.
    ``caption`` lets the splitter keep a gutter split whose panel count the caption's markers confirm."""
    from biomedica_hf.panels.split import split_image

    if detector is None:
        return split_image(image, labels=labels, caption=caption)
    boxes = detector.detect([image])[0]
    return panels_from_boxes(image, boxes, labels=labels)


def panels_from_boxes(image: Image.Image, boxes: Sequence[tuple[Sequence[int], float]], *,
                      labels: bool = True) -> list[Any]:
    """Detector boxes -> panels in reading order (labels read when ``labels`` and more than one box)."""
    from biomedica_hf.panels.split import Panel, reading_order

    W, H = image.size
    clean = []
    for bbox, score in boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in bbox)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
        if x1 > x0 and y1 > y0:
            clean.append(((x0, y0, x1, y1), float(score)))
    if not clean:
        return [Panel((0, 0, W, H), 0.0)]
    order = reading_order([b for b, _ in clean])
    clean = [clean[i] for i in order]
    if labels and len(clean) > 1:
        from biomedica_hf.panels.labels import label_panels

        return label_panels(image, [b for b, _ in clean], [s for _, s in clean])
    return [Panel(b, s) for b, s in clean]


def figure_result(size: tuple[int, int], panels: Sequence[Any], caption: str | None) -> dict[str, Any]:
    """The result dict (module doc) of panels already found."""
    sub = split_caption(caption, image_labels=[p.label for p in panels if getattr(p, "label", None)])
    aligned: list[AlignedPanel] = align_panels(panels, caption, size=size, subcaptions=sub)
    out = []
    for p in aligned:
        d = p.to_dict()
        d.pop("shared")
        out.append(d)
    return {"width": int(size[0]), "height": int(size[1]), "family": sub.family, "shared": sub.shared,
            "panels": out}


def split_figure(image: Image.Image | bytes | str | os.PathLike[str], caption: str | None = None, *,
                 labels: bool = True, detector: Detector | None = None) -> dict[str, Any]:
    """Split one figure into panels, read their labels and give each its subcaption (module doc).

    ``image``: a PIL image, its bytes or a path; ``caption``: the figure's caption (None: no subcaptions);
    ``labels``: read the printed panel labels (OCR); ``detector``: boxes from a model instead of the splitter
    (:mod:`biomedica_hf.panels.detector`). Raises ``OSError`` / ``PIL.UnidentifiedImageError`` for a file that is
    not an image."""
    img = open_image(image)
    panels = find_panels(img, labels=labels, detector=detector, caption=caption)
    return figure_result(img.size, panels, caption)


__all__ = ["Detector", "figure_result", "find_panels", "open_image", "panels_from_boxes", "split_figure"]

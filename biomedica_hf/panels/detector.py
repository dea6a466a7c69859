"""``--detector transformers:PATH``: panel boxes from any ``AutoModelForObjectDetection`` checkpoint.

DETR / DAB-DETR / Deformable-DETR / RT-DETR checkpoints (a local ``save_pretrained`` folder or a Hub id; offline
the folder must be local), run batched, on the GPU when there is one (``device="auto"``: cuda > mps > cpu).
Open-PMC-18M's settings are the defaults: score threshold 0.2, NMS IoU 0.2. Each image is given to the
processor as a reduced copy (long side at most ``max_side``, 1333 like DETR's own resize) so a 12000 x 12000
figure costs no more than a normal one; boxes are mapped back to original pixels (x1/y1 exclusive). The boxes
then go through the same label reader and subcaption steps as the splitter's
(:func:`biomedica_hf.panels.figure.panels_from_boxes`). Every class the model predicts counts as a panel.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biomedica_hf.clip.device import pick_device

PREFIX = "transformers:"
SCORE_THRESHOLD = 0.2
NMS_IOU = 0.2
MAX_SIDE = 1333


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Indices kept by greedy non-maximum suppression (highest score first)."""
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    area = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        xx0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx1 - xx0) * np.maximum(0, yy1 - yy0)
        union = area[i] + area[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)
        order = [j for j, o in zip(order, overlap) if o <= iou]
    return keep


class TransformersDetector:
    """A loaded checkpoint; :meth:`detect` gives ``[(bbox, score), ...]`` per image (original pixels)."""

    def __init__(self, path: str, *, threshold: float = SCORE_THRESHOLD, iou: float = NMS_IOU,
                 batch_size: int = 8, device: str = "auto", max_side: int = MAX_SIDE) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        self.path, self.threshold, self.iou = path, float(threshold), float(iou)
        self.batch_size, self.max_side = max(1, int(batch_size)), int(max_side)
        self.device = pick_device(device)
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = AutoModelForObjectDetection.from_pretrained(path).eval().to(self.device)
        self._torch = torch

    def detect(self, images: Sequence[Any]) -> list[list[tuple[tuple[int, int, int, int], float]]]:
        from biomedica_hf.panels.raster import reduced_copy

        out: list[list[tuple[tuple[int, int, int, int], float]]] = []
        for start in range(0, len(images), self.batch_size):
            batch = list(images[start:start + self.batch_size])
            small = [reduced_copy(im, self.max_side).convert("RGB") for im in batch]
            inputs = self.processor(images=small, return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                outputs = self.model(**inputs)
            sizes = [(im.height, im.width) for im in small]
            results = self.processor.post_process_object_detection(outputs, threshold=self.threshold,
                                                                    target_sizes=sizes)
            for im, sm, res in zip(batch, small, results):
                boxes = res["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
                scores = res["scores"].detach().float().cpu().numpy().reshape(-1)
                sx, sy = im.width / max(1, sm.width), im.height / max(1, sm.height)
                found = []
                for i in nms(boxes, scores, self.iou):
                    x0, y0, x1, y1 = boxes[i]
                    b = (int(np.floor(max(0.0, x0) * sx)), int(np.floor(max(0.0, y0) * sy)),
                         int(np.ceil(min(sm.width, x1) * sx)), int(np.ceil(min(sm.height, y1) * sy)))
                    if b[2] > b[0] and b[3] > b[1]:
                        found.append((b, float(scores[i])))
                out.append(found)
        return out


def load_detector(spec: str, **kwargs: Any) -> TransformersDetector:
    """``"transformers:PATH"`` -> a :class:`TransformersDetector`; anything else is a ``ValueError``."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX) or not spec[len(PREFIX):].strip():
        raise ValueError(f"detector {spec!r}: want transformers:PATH (a folder saved with save_pretrained, or a Hub "
                         "id, of an AutoModelForObjectDetection checkpoint)")
    try:
        return TransformersDetector(spec[len(PREFIX):].strip(), **kwargs)
    except OSError as e:     # no such folder / repo, missing weights
        raise ValueError(f"detector {spec!r} could not be loaded: {e}") from e


__all__ = ["NMS_IOU", "SCORE_THRESHOLD", "TransformersDetector", "load_detector", "nms"]

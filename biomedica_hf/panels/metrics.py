"""Figure-separation metrics: ImageCLEF accuracy, F1 at an IoU threshold, single-panel kept whole, label accuracy.

ImageCLEF (2013-2016 medical figure separation; the CompFigSep evaluator): the predicted boxes are taken in order;
each takes the true panel with the largest overlap divided by the PREDICTED box's area; it is correct when that
ratio is at least 0.66 and the true panel has not been taken already; a figure scores correct / max(#true,
#predicted); the set scores the mean over figures. Boxes are (x0, y0, x1, y1), x1/y1 exclusive.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Box = tuple[int, int, int, int]


def area(b: Box) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])


def intersection(a: Box, b: Box) -> int:
    return area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union else 0.0


def imageclef_matches(pred: list[Box], true: list[Box], threshold: float = 0.66) -> list[int | None]:
    """For each predicted box (in order) the index of the true panel it takes, or None when it is not correct."""
    taken: set[int] = set()
    out: list[int | None] = []
    for p in pred:
        pa = area(p)
        best, best_ratio = None, 0.0
        for j, t in enumerate(true):
            r = intersection(p, t) / pa if pa else 0.0
            if r > best_ratio:
                best, best_ratio = j, r
        if best is not None and best_ratio >= threshold and best not in taken:
            taken.add(best)
            out.append(best)
        else:
            out.append(None)
    return out


def imageclef_accuracy(pred: list[Box], true: list[Box]) -> float:
    """One figure's ImageCLEF score: correct / max(#true, #predicted) (1.0 when both are empty)."""
    n = max(len(pred), len(true))
    if n == 0:
        return 1.0
    return sum(m is not None for m in imageclef_matches(pred, true)) / n


def iou_matches(pred: list[Box], true: list[Box], threshold: float = 0.5) -> list[tuple[int, int]]:
    """Greedy one-to-one (pred, true) pairs by decreasing IoU, each at least ``threshold``."""
    pairs = sorted(((iou(p, t), i, j) for i, p in enumerate(pred) for j, t in enumerate(true)), reverse=True)
    used_p: set[int] = set()
    used_t: set[int] = set()
    out = []
    for v, i, j in pairs:
        if v < threshold:
            break
        if i in used_p or j in used_t:
            continue
        used_p.add(i)
        used_t.add(j)
        out.append((i, j))
    return out


@dataclass
class Scores:
    """Running totals over a set of figures; ``summary()`` gives the table's numbers."""
    imageclef: list[float] = field(default_factory=list)
    imageclef_compound: list[float] = field(default_factory=list)
    imageclef_single: list[float] = field(default_factory=list)
    tp: int = 0
    n_pred: int = 0
    n_true: int = 0
    singles: int = 0
    singles_whole: int = 0
    labelled: int = 0          # matched true panels that carry a printed label
    labels_right: int = 0
    seconds: float = 0.0
    figures: int = 0

    def add(self, pred: list[Box], true: list[Box], pred_labels: list[str | None] | None = None,
            true_labels: list[str | None] | None = None, seconds: float = 0.0) -> float:
        """Score one figure; returns its ImageCLEF accuracy."""
        acc = imageclef_accuracy(pred, true)
        self.imageclef.append(acc)
        (self.imageclef_compound if len(true) > 1 else self.imageclef_single).append(acc)
        pairs = iou_matches(pred, true)
        self.tp += len(pairs)
        self.n_pred += len(pred)
        self.n_true += len(true)
        if len(true) == 1:
            self.singles += 1
            self.singles_whole += int(len(pred) == 1 and iou(pred[0], true[0]) >= 0.5)
        if pred_labels is not None and true_labels is not None:
            for i, j in pairs:
                if true_labels[j]:
                    self.labelled += 1
                    self.labels_right += int(pred_labels[i] == true_labels[j])
        self.seconds += seconds
        self.figures += 1
        return acc

    def summary(self) -> dict[str, float | int | None]:
        def mean(v: list[float]) -> float | None:
            return sum(v) / len(v) if v else None
        precision = self.tp / self.n_pred if self.n_pred else 0.0
        recall = self.tp / self.n_true if self.n_true else 0.0
        return {
            "figures": self.figures,
            "imageclef": mean(self.imageclef),
            "imageclef_compound": mean(self.imageclef_compound),
            "imageclef_single": mean(self.imageclef_single),
            "f1_iou50": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "singles_whole": self.singles_whole / self.singles if self.singles else None,
            "label_accuracy": self.labels_right / self.labelled if self.labelled else None,
            "labelled_matched": self.labelled,
            "figures_per_s": self.figures / self.seconds if self.seconds else None,
        }

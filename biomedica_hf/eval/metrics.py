"""Pure metric functions (numpy / torch, no I/O): zero-shot classification and retrieval.

Tie handling (one rule everywhere, chosen for honesty: a model cannot gain from a tie):

* **Retrieval** - the rank of the correct item is ``1 + #(strictly higher score) + #(other items with
  an equal score)``: ties count *pessimistically*, the correct item is placed after every item it
  ties with ("ties count as misses"). ``ties="optimistic"`` places it before them, and
  ``ties="expected"`` gives the expectation under a uniformly random tie-break: the mean rank is
  ``1 + higher + ties / 2`` and Recall@k is ``clip((k - higher) / (ties + 1), 0, 1)``.
* **Classification** - an image counts as correct only if its true class scores *strictly* above
  every other class. For the confusion matrix / F1 a predicted label is still needed: among the
  classes that share the top score, the lowest-index class that is *not* the true class is taken
  (so a tie that includes the true class is an error, attributed deterministically).

A model with constant outputs therefore scores exactly 0 accuracy and Recall@k = max(0, ...) = 0
under the default rule, not ``1/K`` by lucky argmax order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

TieRule = Literal["pessimistic", "optimistic", "expected"]
TIE_RULES: tuple[str, ...] = ("pessimistic", "optimistic", "expected")


# ------------------------------------------------------------------------------- classification
def tie_aware_predictions(scores: np.ndarray, labels: np.ndarray, tie_eps: float = 0.0) -> np.ndarray:
    """Predicted class per row of ``scores`` (n, K): argmax, a tie with the true class counts against it.

    Scores within ``tie_eps`` of the row's maximum share the top.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    top = scores.max(axis=1, keepdims=True)
    at_top = scores >= top - tie_eps                                  # (n, K) classes sharing the top score
    true_at_top = at_top[np.arange(len(labels)), labels]
    others = at_top.copy()
    others[np.arange(len(labels)), labels] = False
    has_other = others.any(axis=1)
    pred = np.where(true_at_top & ~has_other, labels, np.argmax(others, axis=1))
    return pred.astype(np.int64)


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def classification_report(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and a per-class report from true and predicted labels.

    Balanced accuracy and macro-F1 average over the classes *present in the labels* (a class with
    no test image has no recall; sklearn's ``balanced_accuracy_score`` does the same). Per-class
    precision of a never-predicted class is 0, as is F1 when precision + recall = 0.
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    k = len(class_names)
    cm = confusion_matrix(labels, preds, k)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(np.float64)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = support > 0
    n = int(support.sum())
    return {
        "n": n,
        "n_classes": k,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "chance_balanced_accuracy": float(1.0 / present.sum()) if present.any() else float("nan"),
        "per_class": [
            {"class": str(name), "support": int(support[i]), "predicted": int(predicted[i]),
             "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": cm.tolist(),
    }


def quadratic_weighted_kappa(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights ``(i - j)^2 / (K - 1)^2`` for ordinal classes 0..K-1.

    1 = perfect agreement, 0 = chance (the product of the marginals), negative = worse than chance;
    NaN when the expected disagreement is 0 (e.g. every label and prediction in one class).
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    k = int(n_classes)
    if k < 2 or labels.size == 0:
        return float("nan")
    observed = confusion_matrix(labels, preds, k).astype(np.float64)
    n = observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    denom = (weights * expected).sum()
    return float(1.0 - (weights * observed).sum() / denom) if denom > 0 else float("nan")


def zero_shot_metrics(scores: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                      tie_eps: float = 0.0, ordered: bool = False) -> dict:
    """Classification metrics from a (n, K) score matrix, ties counted against the true class.

    ``ordered``: the classes are ordinal in the given order; adds ``quadratic_kappa``.
    """
    preds = tie_aware_predictions(scores, labels, tie_eps)
    out = classification_report(labels, preds, class_names)
    if ordered:
        out["quadratic_kappa"] = quadratic_weighted_kappa(labels, preds, len(class_names))
    return out


# ------------------------------------------------------------------------------------ retrieval
def ranks_from_counts(higher: np.ndarray, ties: np.ndarray, rule: TieRule = "pessimistic") -> np.ndarray:
    """1-based rank of the correct item from ``higher`` (strictly better items) and ``ties`` (others equal)."""
    higher = np.asarray(higher, dtype=np.float64)
    ties = np.asarray(ties, dtype=np.float64)
    if rule == "pessimistic":
        return 1 + higher + ties
    if rule == "optimistic":
        return 1 + higher
    if rule == "expected":
        return 1 + higher + ties / 2
    raise ValueError(f"unknown tie rule {rule!r}; one of {TIE_RULES}")


def recall_at_k(higher: np.ndarray, ties: np.ndarray, k: int, rule: TieRule = "pessimistic") -> float:
    """Fraction of queries whose correct item is within the top ``k`` (mean over queries)."""
    higher = np.asarray(higher, dtype=np.float64)
    ties = np.asarray(ties, dtype=np.float64)
    if rule == "expected":
        hit = np.clip((k - higher) / (ties + 1), 0.0, 1.0)
    else:
        hit = ranks_from_counts(higher, ties, rule) <= k
    return float(np.mean(hit)) if hit.size else float("nan")


def retrieval_metrics(higher: np.ndarray, ties: np.ndarray, ks: Sequence[int] = (1, 5, 10, 100),
                      rule: TieRule = "pessimistic") -> dict:
    """Recall@k (in [0, 1]), mean and median rank for one direction of retrieval."""
    ranks = ranks_from_counts(higher, ties, rule)
    out = {f"R@{k}": recall_at_k(higher, ties, k, rule) for k in ks}
    out["mean_rank"] = float(ranks.mean()) if ranks.size else float("nan")
    out["median_rank"] = float(np.median(ranks)) if ranks.size else float("nan")
    out["n_queries"] = int(ranks.size)
    return out


def rank_counts_dense(sim: np.ndarray, targets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(higher, ties) per row of a dense (n_queries, n_gallery) similarity matrix (reference implementation).

    ``targets[i]`` is the gallery index of query i's correct item (default: i).
    """
    sim = np.asarray(sim)
    n = sim.shape[0]
    targets = np.arange(n) if targets is None else np.asarray(targets)
    correct = sim[np.arange(n), targets][:, None]
    higher = (sim > correct).sum(axis=1)
    ties = (sim == correct).sum(axis=1) - 1
    return higher.astype(np.int64), ties.astype(np.int64)

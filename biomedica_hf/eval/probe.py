"""Linear probe and few-shot evaluation on frozen image embeddings (scikit-learn logistic regression).

* **Linear probe** (CLIP paper, Radford et al. 2021, appendix A.3): L2-normalised image embeddings of the
  train split; ``LogisticRegression`` (L-BFGS, multinomial) with the inverse regularisation ``C`` chosen on
  the val split from a log-spaced grid (by balanced accuracy, ties to the smaller ``C``), then refit on
  train + val and scored on test.
* **Few-shot**: for each ``k`` in ``shots`` and each seed, ``k`` images per class drawn from the train split, the
  same logistic regression with ``C`` chosen on val; mean and standard deviation over the seeds. A ``k`` the data
  cannot support (a class of the train split has fewer than ``k`` images: every seed would draw the same whole
  class, and the result would not be ``k``-shot) is skipped and reported by :func:`unsupported_shots`; each result
  says the ``k`` it used per class (``k_per_class``).

Metrics are those of zero-shot (:func:`.metrics.zero_shot_metrics`: accuracy, balanced accuracy, macro-F1,
quadratic weighted kappa for ordered classes) on the same test images.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biomedica_hf.eval.metrics import zero_shot_metrics

C_GRID = tuple(float(c) for c in np.logspace(-2, 3, 11))
SHOTS = (1, 2, 4, 8, 16)
SUMMARY_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "quadratic_kappa")


@dataclass
class Splits:
    """Embeddings and class indices of train / val / test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _fit(x: np.ndarray, y: np.ndarray, c: float, n_classes: int, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # convergence notes on tiny few-shot sets
        clf.fit(x, y)
    return clf


def _scores(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) decision scores over every class (classes absent from the training data get -inf)."""
    raw = clf.decision_function(x)
    if raw.ndim == 1:                            # binary: one column for classes_[1]
        raw = np.stack([-raw, raw], axis=1)
    out = np.full((len(x), n_classes), -np.inf)
    out[:, clf.classes_] = raw
    return out


def _balanced(y: np.ndarray, pred: np.ndarray) -> float:
    present = np.unique(y)
    return float(np.mean([(pred[y == c] == c).mean() for c in present]))


def choose_c(x_train, y_train, x_val, y_val, n_classes: int, grid: Sequence[float] = C_GRID, seed: int = 0):
    """(best C, [(C, val balanced accuracy)]) - the smallest C among the best."""
    curve = []
    for c in grid:
        clf = _fit(x_train, y_train, c, n_classes, seed)
        pred = np.argmax(_scores(clf, x_val, n_classes), axis=1)
        curve.append((float(c), _balanced(y_val, pred)))
    best = max(v for _, v in curve)
    return next(c for c, v in curve if v == best), curve


def _single_class(y: np.ndarray) -> bool:
    return len(np.unique(y)) < 2


def linear_probe(s: Splits, class_names: Sequence[str], ordered: bool = False, grid: Sequence[float] = C_GRID,
                 tie_eps: float = 0.0) -> dict:
    """Metrics of a logistic regression on the train embeddings (C chosen on val, refit on train + val)."""
    k = len(class_names)
    if _single_class(s.y_train):
        raise ValueError("linear probe: the train split holds a single class")
    c, curve = choose_c(s.x_train, s.y_train, s.x_val, s.y_val, k, grid)
    clf = _fit(np.concatenate([s.x_train, s.x_val]), np.concatenate([s.y_train, s.y_val]), c, k)
    res = zero_shot_metrics(_scores(clf, s.x_test, k), s.y_test, class_names, tie_eps, ordered)
    res.update(C=c, c_curve=curve, n_train=len(s.y_train), n_val=len(s.y_val), n_test=len(s.y_test))
    return res


def sample_shots(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` examples per class (all of a smaller class), drawn with ``seed``; sorted."""
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        idx.extend(rng.choice(members, size=min(k, len(members)), replace=False).tolist())
    return np.sort(np.asarray(idx, dtype=np.int64))


def train_counts(y_train: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    """Images per class in the train split (classes present there)."""
    values, counts = np.unique(y_train, return_counts=True)
    return {class_names[int(v)]: int(n) for v, n in zip(values, counts)}


def unsupported_shots(y_train: np.ndarray, class_names: Sequence[str], shots: Sequence[int]) -> dict[str, dict]:
    """``{k: {"reason", "train_per_class"}}`` for each ``k`` some train class has fewer than ``k`` images of."""
    counts = train_counts(y_train, class_names)
    out = {}
    for k in shots:
        short = {c: n for c, n in counts.items() if n < k}
        if short:
            out[str(k)] = {"reason": f"{len(short)} class(es) have fewer than {k} train images ("
                                     + ", ".join(f"{c}: {n}" for c, n in sorted(short.items(), key=lambda kv: kv[1]))
                                     + ")", "train_per_class": counts}
    return out


def few_shot(s: Splits, class_names: Sequence[str], shots: Sequence[int] = SHOTS, seeds: Sequence[int] = (0, 1, 2),
             ordered: bool = False, grid: Sequence[float] = C_GRID, tie_eps: float = 0.0) -> dict:
    """Per supported k: mean and std over seeds of the test metrics of a probe trained on k examples per class
    (``k_per_class``: what was used); the k values of :func:`unsupported_shots` are left out."""
    k_classes = len(class_names)
    out: dict[str, dict] = {}
    skip = unsupported_shots(s.y_train, class_names, shots)
    for k in shots:
        if str(k) in skip:
            continue
        runs = []
        for seed in seeds:
            idx = sample_shots(s.y_train, k, seed)
            if _single_class(s.y_train[idx]):
                continue
            c, _ = choose_c(s.x_train[idx], s.y_train[idx], s.x_val, s.y_val, k_classes, grid, seed)
            clf = _fit(s.x_train[idx], s.y_train[idx], c, k_classes, seed)
            m = zero_shot_metrics(_scores(clf, s.x_test, k_classes), s.y_test, class_names, tie_eps, ordered)
            runs.append({"seed": int(seed), "C": c, "n_train": len(idx),
                         **{key: m[key] for key in SUMMARY_KEYS if key in m}})
        if not runs:
            continue
        summary = {}
        for key in SUMMARY_KEYS:
            vals = np.array([r[key] for r in runs if key in r], dtype=np.float64)
            if vals.size:
                summary[key] = float(np.mean(vals))
                summary[f"{key}_std"] = float(np.std(vals, ddof=1)) if vals.size > 1 else 0.0
        used = train_counts(s.y_train[sample_shots(s.y_train, k, seeds[0])], class_names)
        out[str(k)] = {"k": int(k), "k_per_class": used, "seeds": len(runs), **summary, "runs": runs}
    return out

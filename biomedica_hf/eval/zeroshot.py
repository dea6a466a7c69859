"""Zero-shot classification: prompt-ensembled class prototypes, scored against image embeddings."""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from biomedica_hf.clip.model import ModelAdapter
from biomedica_hf.eval.evalset import EvalRows, decode_image
from biomedica_hf.eval.metrics import zero_shot_metrics


def encode_in_batches(fn, items: Sequence, batch: int) -> torch.Tensor:
    """Concatenate ``fn(items[i:i+batch])`` over the items."""
    return torch.cat([fn(items[i:i + batch]) for i in range(0, len(items), batch)]) if items else torch.empty(0)


def class_prototypes(adapter: ModelAdapter, phrases: Sequence[str], templates: Sequence[str],
                     batch: int = 256) -> torch.Tensor:
    """(K, d): per class, the mean of its normalised template embeddings, renormalised (prompt ensembling)."""
    texts = [t.format(p) if "{}" in t else t for p in phrases for t in templates]
    emb = encode_in_batches(adapter.encode_texts, texts, batch).view(len(phrases), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def image_embeddings(adapter: ModelAdapter, blobs: Sequence[bytes], batch: int = 64) -> torch.Tensor:
    """(n, d) normalised embeddings, decoding one batch of images at a time."""
    return encode_in_batches(lambda b: adapter.encode_images([decode_image(x) for x in b]), blobs, batch)


def class_space(rows: EvalRows) -> tuple[list[str], np.ndarray]:
    """Classes = distinct options in first-seen order; the class index of every row's answer."""
    classes: dict[str, int] = {}
    seen: set[int] = set()
    for opts in rows.options:
        if id(opts) in seen:     # rows share their options tuple (read_evalset): each distinct list once
            continue
        seen.add(id(opts))
        for o in opts:
            classes.setdefault(o, len(classes))
    labels = np.array([classes[opts[a]] for opts, a in zip(rows.options, rows.answer_idx)], dtype=np.int64)
    return list(classes), labels


def score_matrix(image_emb: torch.Tensor, prototypes: torch.Tensor, rows: EvalRows, classes: list[str]) -> np.ndarray:
    """(n, K) cosine scores; classes that are not among a row's options get -inf (each row picks among its own)."""
    scores = (image_emb @ prototypes.T).double().numpy()
    index = {c: i for i, c in enumerate(classes)}
    if any(len(o) != len(classes) for o in rows.options):
        allowed = np.zeros_like(scores, dtype=bool)
        cols: dict[int, list[int]] = {}      # per distinct options tuple
        for r, opts in enumerate(rows.options):
            if (c := cols.get(id(opts))) is None:
                c = cols[id(opts)] = [index[o] for o in opts]
            allowed[r, c] = True
        scores = np.where(allowed, scores, -np.inf)
    return scores


def evaluate_zero_shot(adapter: ModelAdapter, rows: EvalRows, templates: Sequence[str] = ("{}",),
                       phrase=lambda c: c, batch: int = 64, tie_eps: float = 1e-6, ordered: bool = False) -> dict:
    """Metrics of ``adapter`` on ``rows`` (accuracy, balanced accuracy, macro-F1, per-class report, timing).

    ``ordered``: the classes (first-seen option order) are ordinal; adds quadratic weighted kappa.
    """
    classes, labels = class_space(rows)
    t0 = time.perf_counter()
    protos = class_prototypes(adapter, [phrase(c) for c in classes], templates, batch=max(batch, 64))
    t1 = time.perf_counter()
    img = image_embeddings(adapter, rows.images, batch)
    t2 = time.perf_counter()
    scores = score_matrix(img, protos, rows, classes)
    result = zero_shot_metrics(scores, labels, classes, tie_eps=tie_eps, ordered=ordered)
    result.update(text_seconds=t1 - t0, image_seconds=t2 - t1,
                  images_per_second=len(rows) / (t2 - t1) if t2 > t1 else float("nan"))
    return result

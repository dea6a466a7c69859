"""Reciprocal rank fusion (Cormack et al. 2009): ``score(d) = sum_lists w / (k + rank_d)``, ranks from 1."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

RRF_K = 60


def rrf(rankings: Mapping[str, Sequence[int] | np.ndarray], k: int = RRF_K,
        weights: Mapping[str, float] | None = None) -> list[tuple[int, float, dict[str, int]]]:
    """Fuse ranked id lists: ``[(id, fused score, {list name: rank})]``, best first.

    Ties break by the best single rank, then by id, so the order is deterministic.
    """
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ids in rankings.items():
        w = 1.0 if weights is None else float(weights.get(name, 1.0))
        for rank, doc in enumerate(ids, start=1):
            doc = int(doc)
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
            ranks.setdefault(doc, {})[name] = rank
    order = sorted(scores, key=lambda d: (-scores[d], min(ranks[d].values()), d))
    return [(d, scores[d], ranks[d]) for d in order]

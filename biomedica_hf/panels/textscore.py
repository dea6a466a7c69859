"""Score subcaptions against hand-written truth: token F1 per label, and the share of labels whose text is right.

A predicted subcaption is *right* when its token F1 with the truth is at least ``RIGHT_F1`` (0.7): the same words,
give or take a connective, a cross-reference or a trailing sentence. Tokens are lower-cased words and numbers
(punctuation dropped). A caption whose truth has no parts is right when nothing was split off it.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RIGHT_F1 = 0.7


def tokens(text: str | None) -> list[str]:
    return re.findall(r"[0-9a-zα-ωµμ]+", (text or "").lower())


def token_f1(predicted: str | None, truth: str | None) -> float:
    p, t = Counter(tokens(predicted)), Counter(tokens(truth))
    if not p and not t:
        return 1.0
    common = sum((p & t).values())
    if not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(t.values())
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class SubcaptionScore:
    labels: int             # truth labels scored
    right: int              # of them with token F1 >= RIGHT_F1
    mean_f1: float
    negatives: int          # captions without markers
    negatives_kept: int     # of them left unsplit

    @property
    def accuracy(self) -> float:
        return self.right / self.labels if self.labels else 0.0


def score(pairs: Iterable[tuple[Mapping[str, str], Mapping[str, str | None]]]) -> SubcaptionScore:
    """``pairs``: (truth parts, predicted parts) per caption, both label -> text. A truth label missing from the
    prediction scores F1 0."""
    f1s, negatives, kept = [], 0, 0
    for truth, predicted in pairs:
        if not truth:
            negatives += 1
            kept += not any(predicted.values())
            continue
        f1s += [token_f1(predicted.get(lab), text) for lab, text in truth.items()]
    right = sum(f >= RIGHT_F1 for f in f1s)
    return SubcaptionScore(len(f1s), right, sum(f1s) / len(f1s) if f1s else 0.0, negatives, kept)


__all__ = ["RIGHT_F1", "SubcaptionScore", "score", "token_f1", "tokens"]

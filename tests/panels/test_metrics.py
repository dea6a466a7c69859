"""ImageCLEF figure-separation accuracy, F1 at IoU 0.5 and the running totals, on hand-made boxes."""
from __future__ import annotations

import pytest

from biomedica_hf.panels.metrics import Scores, imageclef_accuracy, imageclef_matches, iou, iou_matches

A, B = (0, 0, 100, 100), (100, 0, 200, 100)


def test_perfect_split_scores_one():
    assert imageclef_accuracy([A, B], [A, B]) == 1.0


def test_ratio_is_overlap_over_predicted_area():
    # 70% of the predicted box lies in A: correct (>= 0.66) although its IoU with A is only 0.7
    p = (0, 0, 100, 100 + 43)
    assert imageclef_matches([p], [A]) == [0]
    # 60% inside: wrong
    assert imageclef_matches([(0, 0, 100, 167)], [A]) == [None]
    # a tiny box wholly inside A is "correct" by the ImageCLEF rule, but the figure divides by max(#true, #pred)
    assert imageclef_accuracy([(10, 10, 20, 20)], [A, B]) == 0.5


def test_a_true_panel_is_taken_once():
    left_half, right_half = (0, 0, 50, 100), (50, 0, 100, 100)
    assert imageclef_matches([left_half, right_half], [A, B]) == [0, None]
    assert imageclef_accuracy([left_half, right_half], [A, B]) == 0.5


def test_whole_figure_predicted_for_a_compound_one():
    whole = (0, 0, 200, 100)
    assert imageclef_accuracy([whole], [A, B]) == 0.0          # 50% of it in either panel
    assert imageclef_accuracy([whole], [whole]) == 1.0
    assert imageclef_accuracy([], []) == 1.0
    assert imageclef_accuracy([], [A]) == 0.0


def test_iou_and_greedy_matching():
    assert iou(A, A) == 1.0
    assert iou(A, B) == 0.0
    assert iou((0, 0, 100, 50), A) == pytest.approx(0.5)
    assert sorted(iou_matches([B, A, (0, 0, 10, 10)], [A, B])) == [(0, 1), (1, 0)]
    assert iou_matches([(0, 0, 100, 40)], [A]) == []          # IoU 0.4 < 0.5


def test_scores_summary():
    s = Scores()
    s.add([A, B], [A, B], ["A", "b"], ["A", "B"], seconds=0.5)      # compound, one label wrong
    s.add([(0, 0, 200, 100)], [(0, 0, 200, 100)], [None], [None], seconds=0.5)   # single kept whole
    s.add([A, B], [(0, 0, 300, 100)], [None, None], [None], seconds=1.0)         # single cut in two
    out = s.summary()
    assert out["figures"] == 3
    # the cut single: A lies wholly in the true box (correct), B finds it taken: 1 / max(1, 2)
    assert out["imageclef"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert out["imageclef_compound"] == 1.0
    assert out["imageclef_single"] == 0.75
    assert out["singles_whole"] == 0.5
    assert out["label_accuracy"] == 0.5
    assert out["labelled_matched"] == 2
    assert out["figures_per_s"] == pytest.approx(1.5)
    # F1: 3 true-positive pairs (2 + 1 + 0) over 5 predicted and 4 true boxes
    assert out["f1_iou50"] == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))

"""Pure metric functions of the evaluation harness, against hand-computed values (ties included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from biomedica_hf.eval.metrics import (
    classification_report,
    rank_counts_dense,
    ranks_from_counts,
    recall_at_k,
    retrieval_metrics,
    tie_aware_predictions,
    zero_shot_metrics,
)
from biomedica_hf.eval.report import compare_markdown, domain_summary, markdown_report, model_index_yaml
from biomedica_hf.eval.retrieval import chunked_rank_counts, retrieval_scores

# 3 queries x 4 gallery items, correct item of query i is gallery i
SIM = np.array([[0.9, 0.9, 0.1, 0.5],     # tie with one other item           -> higher 0, ties 1
                [0.8, 0.3, 0.3, 0.3],     # one better, tie with two others    -> higher 1, ties 2
                [0.2, 0.1, 0.7, 0.0]])    # clear first                        -> higher 0, ties 0


def test_rank_counts_by_hand():
    higher, ties = rank_counts_dense(SIM)
    assert higher.tolist() == [0, 1, 0]
    assert ties.tolist() == [1, 2, 0]
    assert ranks_from_counts(higher, ties, "pessimistic").tolist() == [2, 4, 1]
    assert ranks_from_counts(higher, ties, "optimistic").tolist() == [1, 2, 1]
    assert ranks_from_counts(higher, ties, "expected").tolist() == [1.5, 3, 1]


@pytest.mark.parametrize("rule,k,expected", [
    ("pessimistic", 1, 1 / 3), ("pessimistic", 2, 2 / 3), ("pessimistic", 4, 1.0),
    ("optimistic", 1, 2 / 3), ("optimistic", 2, 1.0),
    # random tie-break expectation: q0 1/2, q1 (k - 1) / 3 clipped, q2 1
    ("expected", 1, (0.5 + 0 + 1) / 3), ("expected", 2, (1 + 1 / 3 + 1) / 3), ("expected", 3, (1 + 2 / 3 + 1) / 3),
])
def test_recall_at_k_tie_rules(rule, k, expected):
    higher, ties = rank_counts_dense(SIM)
    assert recall_at_k(higher, ties, k, rule) == pytest.approx(expected)


def test_retrieval_metrics_mean_and_median_rank():
    m = retrieval_metrics(*rank_counts_dense(SIM), ks=(1, 2))
    assert m == pytest.approx({"R@1": 1 / 3, "R@2": 2 / 3, "mean_rank": 7 / 3, "median_rank": 2.0, "n_queries": 3})
    assert retrieval_metrics(*rank_counts_dense(SIM), ks=(1,), rule="expected")["mean_rank"] == pytest.approx(5.5 / 3)


def test_chunked_counts_exact_ties_by_hand():
    # dot products 1, 1, 0, 0.5 are exact in float32: the correct item (0) ties with item 1
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    for chunk in (1, 2, 3, 4):
        h, t = chunked_rank_counts(q, g, query_chunk=1, gallery_chunk=chunk, tie_eps=0.0)
        assert (h.tolist(), t.tolist()) == ([0], [1])
    h, t = chunked_rank_counts(q, g, targets=torch.tensor([3]), gallery_chunk=3, tie_eps=0.0)
    assert (h.tolist(), t.tolist()) == ([2], [0])       # 0.5 is beaten by the two 1.0 items


@pytest.mark.parametrize("qc,gc", [(1, 1), (2, 3), (7, 5), (64, 64)])
def test_chunked_counts_match_dense_with_duplicates(qc, gc):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(23, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(23, 8, generator=g), dim=-1)
    txt[5] = txt[9]                  # duplicate captions: a real tie for queries 5 and 9 ...
    img[3] = img[4]                  # ... and duplicate images
    for q, gal in ((img, txt), (txt, img)):
        dense = rank_counts_dense((q.double() @ gal.double().T).numpy())
        h, t = chunked_rank_counts(q, gal, query_chunk=qc, gallery_chunk=gc)
        assert h.tolist() == dense[0].tolist()
        assert t.tolist() == dense[1].tolist()
    h, t = chunked_rank_counts(img, txt)
    assert t[5] == 1
    assert t[9] == 1    # each duplicate ties with the other: pessimistic rank >= 2
    scores = retrieval_scores(img, txt, ks=(1, 100))
    assert scores["image_to_text"]["R@100"] == 1.0
    assert scores["image_to_text"]["n_queries"] == 23


def test_chunked_counts_reject_bad_targets():
    with pytest.raises(ValueError):
        chunked_rank_counts(torch.ones(2, 2), torch.ones(3, 2), targets=torch.tensor([0, 3]))


# -------------------------------------------------------------------------------- classification
SCORES = np.array([[0.5, 0.5, 0.1],    # true 0 ties with 1            -> predicted 1 (error)
                   [0.2, 0.9, 0.9],    # true 2 ties with 1            -> predicted 1 (error)
                   [0.7, 0.1, 0.2],    # true 0, clear                 -> 0
                   [0.3, 0.3, 0.3],    # true 1, three-way tie          -> 0 (lowest other)
                   [0.1, 0.8, 0.2]])   # true 1, clear                 -> 1
LABELS = np.array([0, 2, 0, 1, 1])


def test_tie_aware_predictions_by_hand():
    assert tie_aware_predictions(SCORES, LABELS).tolist() == [1, 1, 0, 0, 1]
    # within tie_eps counts as a tie; exact comparison does not
    near = np.array([[0.5, 0.5 + 1e-9]])
    assert tie_aware_predictions(near, np.array([1])).tolist() == [1]
    assert tie_aware_predictions(near, np.array([1]), tie_eps=1e-6).tolist() == [0]


def test_zero_shot_metrics_by_hand():
    m = zero_shot_metrics(SCORES, LABELS, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(2 / 5)
    # recalls: a 1/2, b 1/2, c 0 ; precisions: a 1/2, b 1/3, c 0 ; F1: a 1/2, b 2/5, c 0
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.4 + 0) / 3)
    pc = {c["class"]: c for c in m["per_class"]}
    assert pc["b"]["precision"] == pytest.approx(1 / 3)
    assert pc["b"]["f1"] == pytest.approx(0.4)
    assert pc["c"] == {"class": "c", "support": 1, "predicted": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 1, 0]]


def test_classification_report_agrees_with_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    m = classification_report(labels, preds, list("wxyz"))
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))


def test_constant_scores_are_never_correct():
    # a model that cannot tell classes apart gets 0 accuracy, not 1/K by argmax order
    m = zero_shot_metrics(np.zeros((4, 2)), np.array([0, 0, 1, 1]), ["x", "y"])
    assert m["accuracy"] == 0.0
    assert m["balanced_accuracy"] == 0.0


def test_absent_options_are_excluded():
    scores = np.array([[0.9, -np.inf, 0.1], [-np.inf, 0.2, 0.3]])
    assert tie_aware_predictions(scores, np.array([0, 1])).tolist() == [0, 2]


# --------------------------------------------------------------------------------------- report
def _result(task, domain, acc, kind="zero-shot"):
    if kind == "retrieval":
        d = {"R@1": acc, "R@5": acc, "R@10": acc, "R@100": 1.0, "mean_rank": 2.0, "median_rank": 1.0, "n_queries": 5}
        metrics = {"image_to_text": d, "text_to_image": d, "mean_recall": acc}
        return {"task": task, "domain": domain, "kind": kind, "n": 5, "metrics": metrics, "primary": acc,
                "primary_metric": "mean_recall", "dataset": {"name": task, "type": "folder", "split": "test"}}
    metrics = {"accuracy": acc, "balanced_accuracy": acc / 2, "macro_f1": acc / 4}
    return {"task": task, "domain": domain, "kind": kind, "n": 10, "metrics": metrics, "primary": acc,
            "primary_metric": "accuracy", "classes": ["a", "b"], "dataset": {"name": task, "type": "x/y", "split": "test"}}


def test_domain_summary_markdown_and_model_index():
    results = [_result("t1", "radiology", 0.5), _result("t2", "radiology", 0.7), _result("t3", "pathology", 0.9),
               _result("r", "retrieval", 0.25, "retrieval")]
    dom = domain_summary(results)
    assert dom["radiology"]["accuracy"] == pytest.approx(0.6)
    assert dom["radiology"]["n_tasks"] == 2
    md = markdown_report("m", results)
    assert "| **average** (2 tasks) | | | | **60.00** | **30.00** | **15.00** |" in md
    # the headline over all zero-shot tasks is balanced accuracy (a constant predictor cannot inflate it)
    assert "| **zero-shot, all tasks** | 3 | balanced accuracy | **35.00** |" in md
    card = yaml.safe_load(model_index_yaml('model "x"', results))
    entry = card["model-index"][0]
    assert entry["name"] == 'model "x"'
    first = entry["results"][0]
    assert first["task"]["type"] == "zero-shot-image-classification"
    assert first["dataset"] == {"name": "t1", "type": "x/y", "split": "test"}
    assert {"type": "accuracy", "value": 50.0, "name": "Accuracy"} in first["metrics"]
    assert entry["results"][-1]["task"]["type"] == "image-text-retrieval"


def test_compare_markdown_deltas():
    a = {"model": "A", "tasks": {"t1": {"domain": "radiology", "primary": 0.5, "primary_metric": "accuracy"},
                                 "t2": {"domain": "radiology", "primary": 0.7, "primary_metric": "accuracy"},
                                 "only_a": {"domain": "x", "primary": 0.1, "primary_metric": "accuracy"}}}
    b = {"model": "B", "tasks": {"t1": {"domain": "radiology", "primary": 0.6, "primary_metric": "accuracy"},
                                 "t2": {"domain": "radiology", "primary": 0.65, "primary_metric": "accuracy"}}}
    md = compare_markdown(a, b)
    # summaries without metrics, kind or split (older runs)
    assert "| t1 | radiology | zero-shot | ? | accuracy | 50.00 | 60.00 | +10.00 | - | - | - |" in md
    assert "| t2 | radiology | zero-shot | ? | accuracy | 70.00 | 65.00 | -5.00 |" in md
    a["tasks"]["t1"]["metrics"] = {"balanced_accuracy": 0.5}
    b["tasks"]["t1"]["metrics"] = {"balanced_accuracy": 0.75}
    assert "| t1 | radiology | zero-shot | ? | accuracy | 50.00 | 60.00 | +10.00 | 50.00 | 75.00 | +25.00 |" \
        in compare_markdown(a, b)
    assert "| radiology | 2 | 60.00 | 62.50 | +2.50 |" in md
    assert "only in A): only_a" in md


def test_compare_labels_its_columns():
    """Each column says whose number it is (A / B named by their models), the protocol and the split scored."""
    a = {"model": "base-clip", "tasks": {"t1@few-shot": {"domain": "cells", "primary": 0.5, "primary_metric":
                                                         "balanced_accuracy", "kind": "few-shot",
                                                         "dataset": {"split": "test"}}}}
    b = {"model": "my-clip", "tasks": {"t1@few-shot": {"domain": "cells", "primary": 0.6, "primary_metric":
                                                       "balanced_accuracy", "kind": "few-shot",
                                                       "dataset": {"split": "all"}}}}
    md = compare_markdown(a, b)
    assert "**A** = `base-clip`, **B** = `my-clip`" in md
    assert "| task | domain | protocol | split | metric | A: primary | B: primary | Δ primary |" in md
    assert "| t1@few-shot | cells | few-shot | A: test; B: all | balanced accuracy | 50.00 | 60.00 | +10.00 |" in md


def test_few_shot_reports_the_k_it_used_and_skips_what_the_data_cannot_support():
    """64 images in 3 classes (38 train, the smallest class 7): k=16 was reported as 16-shot though every seed
    trained on all 38 train images; now k=16 is skipped (with the reason) and each k says its per-class counts."""
    from biomedica_hf.eval.probe import Splits, few_shot, unsupported_shots

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 1, (3, 8))

    def draw(counts):
        y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)])
        return centers[y] + rng.normal(0, 0.6, (len(y), 8)), y

    s = Splits(*draw((20, 11, 7)), *draw((4, 3, 3)), *draw((6, 5, 5)))
    names = ["a", "b", "c"]
    fs = few_shot(s, names, shots=(1, 4, 16), seeds=(0, 1, 2))
    assert sorted(fs, key=int) == ["1", "4"]
    assert fs["4"]["k_per_class"] == {"a": 4, "b": 4, "c": 4}
    assert {r["n_train"] for r in fs["4"]["runs"]} == {12}
    skipped = unsupported_shots(s.y_train, names, (1, 4, 16))
    assert list(skipped) == ["16"]
    assert "c: 7" in skipped["16"]["reason"]
    assert "b: 11" in skipped["16"]["reason"]
    assert skipped["16"]["train_per_class"] == {"a": 20, "b": 11, "c": 7}


def test_quadratic_weighted_kappa_agrees_with_sklearn_and_by_hand():
    from sklearn.metrics import cohen_kappa_score

    from biomedica_hf.eval.metrics import quadratic_weighted_kappa

    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        y = rng.integers(0, k, 300)
        p = np.clip(y + rng.integers(-1, 2, 300), 0, k - 1)
        assert quadratic_weighted_kappa(y, p, k) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"))
    # by hand, K = 3: weights 0, 1/4, 1; y = [0, 1, 2, 2], p = [0, 2, 2, 1]
    # observed weighted disagreement (counts): 1/4 + 1/4 = 0.5; expected r_i c_j / n from marginals (1,1,2)x(1,1,2):
    # (2 * 1/4 * 1 + 2 * 1 * 2 + 2 * 1/4 * 2) / 4 = 5.5 / 4 = 1.375
    assert quadratic_weighted_kappa([0, 1, 2, 2], [0, 2, 2, 1], 3) == pytest.approx(1 - 0.5 / 1.375)
    assert quadratic_weighted_kappa([0, 1, 2], [0, 1, 2], 3) == 1.0
    assert np.isnan(quadratic_weighted_kappa([1, 1], [1, 1], 3))       # no expected disagreement


def test_linear_probe_and_few_shot_on_separable_embeddings():
    """Two Gaussian clusters per class in 8-d: the probe is near perfect, few-shot improves with k on average,
    and the shots drawn are k per class and depend on the seed."""
    from biomedica_hf.eval.probe import Splits, few_shot, linear_probe, sample_shots

    rng = np.random.default_rng(1)
    centers = rng.normal(0, 1, (3, 8))

    def draw(n):
        y = np.repeat(np.arange(3), n)
        return centers[y] + rng.normal(0, 0.6, (len(y), 8)), y

    s = Splits(*draw(40), *draw(10), *draw(30))
    lp = linear_probe(s, ["a", "b", "c"], ordered=True)
    assert lp["balanced_accuracy"] > 0.9
    assert lp["n_train"] == 120
    assert lp["n_test"] == 90
    assert "quadratic_kappa" in lp
    assert lp["C"] in dict(lp["c_curve"])
    idx = sample_shots(s.y_train, 2, seed=0)
    assert np.bincount(s.y_train[idx]).tolist() == [2, 2, 2]
    assert not np.array_equal(idx, sample_shots(s.y_train, 2, seed=1))
    fs = few_shot(s, ["a", "b", "c"], shots=(1, 16), seeds=(0, 1, 2, 3))
    assert fs["16"]["accuracy"] >= fs["1"]["accuracy"] - 0.02
    assert fs["16"]["seeds"] == 4
    assert fs["1"]["accuracy_std"] == pytest.approx(np.std([r["accuracy"] for r in fs["1"]["runs"]], ddof=1))

"""Panels get their subcaptions: by printed label, by position words, by reading order, else the shared part."""
from __future__ import annotations

import json
from pathlib import Path

from biomedica_hf.panels.align import align_panels
from biomedica_hf.panels.captions import label_rank, split_caption
from biomedica_hf.panels.textscore import score

CAPTION = ("Cells respond to the drug. (A) Western blot of lysates. (B) Quantification of the bands (n = 3). "
           "(C) Immunostaining of treated cells.\n*p < 0.05.")


def panel(i, label=None, label_score=0.0, row=0):
    return {"bbox": (100 * i, 100 * row, 100 * i + 90, 100 * row + 90), "score": 0.9, "label": label,
            "label_score": label_score}


def test_by_label_any_order_and_case():
    got = align_panels([panel(0, "b", 0.9), panel(1, "C", 1.0), panel(2, "A", 0.5)], CAPTION)
    assert [p.caption_label for p in got] == ["B", "C", "A"]
    assert [p.method for p in got] == ["label"] * 3
    assert got[0].subcaption == "Quantification of the bands (n = 3)."
    assert got[0].caption == "Cells respond to the drug. Quantification of the bands (n = 3). *p < 0.05."
    assert got[1].confidence == 1.0
    assert got[0].confidence < got[1].confidence   # case differs: a little less sure
    assert got[2].confidence == 0.8


def test_by_reading_order_when_counts_agree():
    got = align_panels([panel(0), panel(1), panel(2)], CAPTION)
    assert [(p.caption_label, p.method, p.confidence) for p in got] == [("A", "order", 0.5), ("B", "order", 0.5),
                                                                          ("C", "order", 0.5)]
    # one label read, the other two by order among what is left
    got = align_panels([panel(0), panel(1, "A", 0.9), panel(2)], CAPTION)
    assert [(p.caption_label, p.method) for p in got] == [("B", "order"), ("A", "label"), ("C", "order")]


def test_shared_only_when_nothing_fits():
    # four panels, three parts, no labels: counts differ
    got = align_panels([panel(i) for i in range(4)], CAPTION)
    assert {p.method for p in got} == {"shared"}
    assert all(p.subcaption is None and p.caption == "Cells respond to the drug. *p < 0.05." for p in got)
    # labels that match no part, counts differ
    got = align_panels([panel(0, "X"), panel(1, "Y")], CAPTION)
    assert [p.method for p in got] == ["shared", "shared"]
    # no markers at all: every panel gets the whole caption, marked shared
    got = align_panels([panel(0), panel(1)], "A plain caption without markers.")
    assert [(p.method, p.caption) for p in got] == [("shared", "A plain caption without markers.")] * 2


def test_single_panel_keeps_the_whole_caption():
    (p,) = align_panels([panel(0, "A", 0.9)], CAPTION)
    assert p.method == "single"
    assert p.confidence == 1.0
    assert p.caption == CAPTION.strip()


def test_positions_by_geometry():
    caption = "Two scans. Top: before treatment. Bottom: after treatment."
    got = align_panels([panel(0, row=1), panel(0, row=0)], caption)     # listed bottom first
    assert [(p.caption_label, p.method) for p in got] == [("bottom", "position"), ("top", "position")]
    caption = "Two curves. Left, all patients. Right, treated patients."
    got = align_panels([panel(0), panel(1)], caption)
    assert [p.subcaption for p in got] == ["all patients.", "treated patients."]


def test_odd_inputs():
    assert align_panels([], CAPTION) == []
    got = align_panels([panel(0), panel(1)], None)
    assert [p.method for p in got] == ["shared", "shared"]
    assert got[0].caption == ""
    assert got[0].to_dict()["bbox"] == [0, 0, 90, 90]


def test_truth_set_through_alignment():
    """Real captions: panels carrying the true labels (OCR right) and panels without labels (reading order)."""
    figures = json.loads(Path(__file__).with_name("subcaptions.json").read_text(encoding="utf-8"))["figures"]
    marked = [f for f in figures if f["parts"]]

    def run(read: bool):
        for f in marked:
            sub = split_caption(f["caption"])
            labels = sorted(f["parts"], key=lambda lab: (label_rank(lab, sub.family or "upper"), lab))
            got = align_panels([panel(i, lab if read else None, 1.0 if read else 0.0) for i, lab in
                                enumerate(labels)], f["caption"])
            yield f["parts"], {lab: p.subcaption for lab, p in zip(labels, got)}
    assert score(run(True)).accuracy >= 0.8
    assert score(run(False)).accuracy >= 0.75


def test_gaps_between_read_labels_are_filled_in_order():
    caption = "Title. (A) One. (B) Two. (C) Three. (D) Four. (E) Five. (F) Six."
    # A and E unread; 5 panels for 6 parts (the splitter merged C and D): the gaps still pin A and E
    panels = [panel(0), panel(1, "B", 0.9), panel(2, "C", 0.9), panel(3, "D", 0.9), panel(4), panel(5, "F", 0.9)]
    got = align_panels(panels[:2] + panels[3:], caption.replace("(C) Three. ", ""))
    assert [(p.caption_label, p.method) for p in got] == [("A", "order"), ("B", "label"), ("D", "label"),
                                                          ("E", "order"), ("F", "label")]
    # a gap with more panels than the labels between its neighbours stays shared
    got = align_panels([panel(0, "A", 0.9), panel(1), panel(2), panel(3, "C", 0.9), panel(4)],
                       "T. (A) a1. (B) b1. (C) c1. (D) d1.")
    assert [(p.caption_label, p.method) for p in got] == [("A", "label"), (None, "shared"), (None, "shared"),
                                                          ("C", "label"), ("D", "order")]

"""Subcaption accuracy on real fixture captions (tests/panels/subcaptions.json, truth written by hand).

    .venv/bin/python benchmarks/bench_subcaptions.py [--json]

Rows (same captions, same run):
  parser            split_caption(caption) alone, no image labels
  aligned, labels   align_panels: one panel per truth label, the panel's printed label read right (OCR ideal)
  aligned, order    align_panels: as many panels as truth labels, no label read (reading order = label order)
  whole caption     baseline: every panel gets the whole caption (Open-PMC-18M's pairing)
A label is right when its text's token F1 with the truth is >= 0.7 (biomedica_hf.panels.textscore). Captions
without markers count as right when left unsplit ("negatives kept").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from biomedica_hf.panels.align import align_panels
from biomedica_hf.panels.captions import label_rank, split_caption
from biomedica_hf.panels.textscore import RIGHT_F1, score

TRUTH = Path(__file__).resolve().parents[1] / "tests" / "panels" / "subcaptions.json"


def _panels(labels: list[str], read: bool) -> list[dict]:
    return [{"bbox": (100 * i, 0, 100 * i + 90, 90), "score": 1.0, "label": lab if read else None,
             "label_score": 1.0 if read else 0.0} for i, lab in enumerate(labels)]


def rows(figures: list[dict]) -> dict[str, dict]:
    out = {}
    t0 = time.perf_counter()
    out["parser"] = score((f["parts"], split_caption(f["caption"]).parts) for f in figures)
    dt = time.perf_counter() - t0

    def aligned(read: bool):
        for f in figures:
            fam = split_caption(f["caption"]).family or "upper"
            labels = sorted(f["parts"], key=lambda lab: (label_rank(lab, fam), lab)) or ["A", "B"]
            got = align_panels(_panels(labels, read), f["caption"])
            if f["parts"]:
                yield f["parts"], {lab: p.subcaption for lab, p in zip(labels, got)}
            else:
                yield {}, {lab: p.subcaption for lab, p in zip(labels, got)}
    out["aligned, labels"] = score(aligned(True))
    out["aligned, order"] = score(aligned(False))
    out["whole caption"] = score((f["parts"], {lab: f["caption"] for lab in f["parts"]} if f["parts"] else {})
                                 for f in figures)
    table = {name: {"labels": s.labels, "right": s.right, "accuracy": round(s.accuracy, 3),
                    "mean_token_f1": round(s.mean_f1, 3), "negatives_kept": f"{s.negatives_kept}/{s.negatives}"}
             for name, s in out.items()}
    table["parser"]["captions_per_s"] = round(len(figures) / dt, 1) if dt else None
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures = json.loads(TRUTH.read_text(encoding="utf-8"))["figures"]
    table = rows(figures)
    if args.json:
        print(json.dumps(table, indent=1))
        return
    n = sum(1 for f in figures if f["parts"])
    print(f"{n} captions with markers ({sum(len(f['parts']) for f in figures)} labels), "
          f"{len(figures) - n} without; right = token F1 >= {RIGHT_F1}")
    print(f"{'row':18} {'right':>9} {'accuracy':>9} {'mean F1':>8} {'negatives kept':>15}")
    for name, r in table.items():
        print(f"{name:18} {r['right']:>4}/{r['labels']:<4} {r['accuracy']:>9.3f} {r['mean_token_f1']:>8.3f} "
              f"{r['negatives_kept']:>15}")


if __name__ == "__main__":
    main()

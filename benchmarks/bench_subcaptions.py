"""Subcaption accuracy on real fixture captions (tests/panels/subcaptions.json, truth written by hand).

    .venv/bin/python benchmarks/bench_subcaptions.py [--json]

Rows (same captions, same run):
  parser            split_caption(caption) alone, no image labels (and its dev / held-out parts: the held-out
                    captions were labelled after the parser was written)
  aligned, labels   align_panels: one panel per truth label, the panel's printed label read right (OCR ideal)
  aligned, order    align_panels: as many panels as truth labels, no label read (reading order = label order)
  whole caption     baseline: every panel gets the whole caption (Open-PMC-18M's pairing)
A label is right when its text's token F1 with the truth is >= 0.7 (biomedica_hf.panels.textscore). Captions
without markers count as right when left unsplit ("negatives kept").

With --pairing, the end-to-end pairing of real figures: the compound figures of tests/panels/truth.json (panel boxes
and printed labels drawn by eye, i25a) whose caption is in the fixture XML. A true panel is paired right when the
panel that covers it (IoU >= 0.5) was given the caption part of its printed label. Rows: true boxes with their true
labels (OCR ideal), true boxes without labels (reading order), and the full pipeline (splitter + OCR labels), timed.
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
    out["parser, dev part"] = score((f["parts"], split_caption(f["caption"]).parts) for f in figures
                                    if not f.get("held_out"))
    out["parser, held-out"] = score((f["parts"], split_caption(f["caption"]).parts) for f in figures
                                    if f.get("held_out"))

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


BOX_TRUTH = TRUTH.with_name("truth.json")
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pmc"


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix
    return ix / union if union else 0.0


def pairing_set(fixtures: Path = FIXTURES) -> list[dict]:
    """The compound, labelled figures of the box truth whose caption the fixture XML holds."""
    from biomedica_hf.ingest.parse import parse_jats

    out = []
    for f in json.loads(BOX_TRUTH.read_text())["figures"]:
        if len(f["panels"]) < 2 or not any(p.get("label") for p in f["panels"]):
            continue
        path = fixtures / f["image"]
        stem = path.stem
        caption = None
        for xml in sorted(path.parent.glob("*.*xml")):
            try:
                parsed = parse_jats(xml)
            except Exception:  # noqa: BLE001 - not an article (a manifest)
                continue
            for art in parsed if isinstance(parsed, list) else [parsed]:
                for fig in art.figures:
                    if any(Path(g).stem == stem or g == stem for g in fig.graphics):
                        caption = fig.caption
        if caption:
            out.append({**f, "path": path, "caption": caption})
    return out


def pairing_rows(figures: list[dict]) -> dict[str, dict]:
    from PIL import Image

    from biomedica_hf.panels.captions import match_label, split_caption
    from biomedica_hf.panels.split import Panel, split_image

    def score(get_panels) -> dict:
        right = total = 0
        t0 = time.perf_counter()
        for f in figures:
            parts = split_caption(f["caption"], [p["label"] for p in f["panels"] if p["label"]]).parts
            panels = get_panels(f)
            got = align_panels(panels, f["caption"], size=(f["width"], f["height"]))
            for tp in f["panels"]:
                want = match_label(tp["label"], parts) if tp["label"] else None
                if want is None:
                    continue        # no printed label, or one the caption does not name
                total += 1
                best = max(got, key=lambda p: _iou(p.bbox, tp["bbox"]), default=None)
                if best is not None and _iou(best.bbox, tp["bbox"]) >= 0.5 and best.caption_label == want:
                    right += 1
        dt = time.perf_counter() - t0
        return {"panels": total, "right": right, "accuracy": round(right / total, 3) if total else None,
                "s_per_figure": round(dt / len(figures), 3)}

    return {
        "true boxes + true labels": score(lambda f: [Panel(tuple(p["bbox"]), 1.0, p["label"], 1.0 if p["label"] else 0)
                                                     for p in f["panels"]]),
        "true boxes, no labels": score(lambda f: [Panel(tuple(p["bbox"]), 1.0) for p in f["panels"]]),
        "splitter + OCR labels": score(lambda f: split_image(Image.open(f["path"]), labels=True)),
        "splitter + OCR + caption": score(lambda f: split_image(Image.open(f["path"]), labels=True,
                                                                caption=f["caption"])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--pairing", action="store_true", help="also the end-to-end pairing on real figures (slow: OCR)")
    args = ap.parse_args()
    print_tables(args.pairing, args.json)


def print_tables(pairing: bool = False, as_json: bool = False) -> None:
    figures = json.loads(TRUTH.read_text(encoding="utf-8"))["figures"]
    table = rows(figures)
    pair_figures = pairing_set() if pairing else []
    pairs = pairing_rows(pair_figures) if pairing else None
    if as_json:
        print(json.dumps({"subcaptions": table, "pairing": pairs}, indent=1))
        return
    n = sum(1 for f in figures if f["parts"])
    print(f"{n} captions with markers ({sum(len(f['parts']) for f in figures)} labels; "
          f"{sum(1 for f in figures if f.get('held_out'))} held out), {len(figures) - n} without; "
          f"right = token F1 >= {RIGHT_F1}")
    print(f"{'row':20} {'right':>9} {'accuracy':>9} {'mean F1':>8} {'negatives kept':>15}")
    for name, r in table.items():
        print(f"{name:20} {r['right']:>4}/{r['labels']:<4} {r['accuracy']:>9.3f} {r['mean_token_f1']:>8.3f} "
              f"{r['negatives_kept']:>15}")
    if pairs:
        n = len(pair_figures)
        print(f"\nPairing on {n} real compound figures (true panels whose printed label the caption names)")
        print(f"{'row':26} {'right':>9} {'accuracy':>9} {'s/figure':>9}")
        for name, r in pairs.items():
            print(f"{name:26} {r['right']:>4}/{r['panels']:<4} {r['accuracy']:>9.3f} {r['s_per_figure']:>9.3f}")


if __name__ == "__main__":
    main()

"""Compound-figure splitting: the panels splitter (with OCR labels) next to a plain recursive XY-cut, in one run.

Two sets:
* real: the figures of tests/panels/truth.json (real PMC fixture figures, panel boxes and labels drawn by eye),
  each decoded from its file inside the timed part, as a build would;
* synthetic: real single-panel fixture figures composed into grids and irregular layouts with printed labels in
  five styles (benchmarks/panels_synth.py, fixed seed), timed from the in-memory image.

Metrics (biomedica_hf/panels/metrics.py): ImageCLEF accuracy (all / compound / single figures), F1 at IoU >= 0.5,
single-panel figures kept whole, label accuracy over matched true panels that carry a printed label, and
figures/s per core = figures / CPU seconds of this process (every thread counted; Tesseract is held to one thread).

    python benchmarks/bench_panels.py [--synthetic 80] [--seed 0] [--json OUT] [--failures] [--ocr]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_THREAD_LIMIT", "1")     # Tesseract: one thread, so CPU time is one core's

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from panels_synth import FIXTURES, TRUTH, make_set  # noqa: E402

from biomedica_hf.panels.metrics import Scores  # noqa: E402
from biomedica_hf.panels.split import split_image, xy_cut_baseline  # noqa: E402


def run_real(method: str, figures: list[dict], fixtures: Path, failures: list) -> Scores:
    s = Scores()
    for entry in figures:
        true = [tuple(p["bbox"]) for p in entry["panels"]]
        true_labels = [p["label"] for p in entry["panels"]]
        t0 = time.process_time()
        with Image.open(fixtures / entry["image"]) as im:
            if method == "splitter":
                panels = split_image(im)
                pred, labels = [p.bbox for p in panels], [p.label for p in panels]
            else:
                pred, labels = xy_cut_baseline(im), None
        dt = time.process_time() - t0
        acc = s.add(pred, true, labels, true_labels if labels is not None else None, seconds=dt)
        if acc < 1.0 or (labels and any(a and a != b for a, b in zip(true_labels, labels))):
            failures.append((method, entry["image"], round(acc, 2), len(true), len(pred), labels))
    return s


def run_synthetic(method: str, figs) -> Scores:
    s = Scores()
    for fig in figs:
        t0 = time.process_time()
        if method == "splitter":
            panels = split_image(fig.image)
            pred, labels = [p.bbox for p in panels], [p.label for p in panels]
        else:
            pred, labels = xy_cut_baseline(fig.image), None
        dt = time.process_time() - t0
        s.add(pred, fig.boxes, labels, fig.labels if labels is not None else None, seconds=dt)
    return s


def compare_ocr(figures: list[dict], fixtures: Path) -> None:
    """Label reading alone, on the TRUE boxes of the labelled real panels, for each OCR backend installed."""
    from biomedica_hf.panels.labels import label_panels, ocr_available
    print("\n| OCR backend | labels right (true boxes) | CPU ms per panel |\n|---|---|---|")
    for backend in ("tesseract", "rapidocr"):
        if not ocr_available(backend):
            print(f"| {backend} | not installed | – |")
            continue
        label_panels(Image.new("RGB", (200, 100), "white"), [(0, 0, 100, 100), (100, 0, 200, 100)], backend=backend)
        right = total = panels = 0
        cpu = 0.0
        for entry in figures:
            labels = [p["label"] for p in entry["panels"]]
            if len(labels) < 2 or not any(labels):
                continue
            with Image.open(fixtures / entry["image"]) as im:
                t0 = time.process_time()
                got = label_panels(im, [tuple(p["bbox"]) for p in entry["panels"]], backend=backend)
                cpu += time.process_time() - t0
            panels += len(got)
            for p, lab in zip(got, labels):
                if lab:
                    total += 1
                    right += p.label == lab
        print(f"| {backend} | {right}/{total} = {right / total:.3f} | {1000 * cpu / panels:.0f} |")


def fmt(v, pct=True) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if pct else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--synthetic", type=int, default=80, help="synthetic figures (default 80)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--truth", type=Path, default=TRUTH)
    ap.add_argument("--fixtures", type=Path, default=FIXTURES)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--failures", action="store_true", help="list the real figures not split perfectly")
    ap.add_argument("--ocr", action="store_true", help="also compare the OCR backends on the true boxes "
                    "(rapidocr needs rapidocr-onnxruntime, not a dependency)")
    args = ap.parse_args(argv)

    figures = json.loads(args.truth.read_text())["figures"]
    synth = make_set(args.synthetic, seed=args.seed)
    split_image(Image.new("RGB", (64, 64), "white"))          # warm-up: imports, OCR model load
    rows, failures = [], []
    for name, figs in (("real", figures), ("synthetic", synth)):
        for method in ("splitter", "xy-cut baseline"):
            s = run_real(method, figs, args.fixtures, failures) if name == "real" else run_synthetic(method, figs)
            rows.append({"set": name, "method": method, **s.summary()})
    head = ("| set | method | figures | ImageCLEF acc | compound | single | F1@IoU.5 | singles whole | labels "
            "(matched) | fig/s/core |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        lab = f"{fmt(r['label_accuracy'])} ({r['labelled_matched']})" if r["label_accuracy"] is not None else "–"
        print(f"| {r['set']} | {r['method']} | {r['figures']} | {fmt(r['imageclef'])} | "
              f"{fmt(r['imageclef_compound'])} | {fmt(r['imageclef_single'])} | {fmt(r['f1_iou50'])} | "
              f"{fmt(r['singles_whole'])} | {lab} | {fmt(r['figures_per_s'], pct=False)} |")
    import bench_subcaptions  # noqa: E402 - subcaption accuracy and panel-subcaption pairing (i25b), same run
    bench_subcaptions.print_tables(pairing=True)
    if args.failures:
        for f in failures:
            print(*f, sep="\t")
    if args.ocr:
        compare_ocr(figures, args.fixtures)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

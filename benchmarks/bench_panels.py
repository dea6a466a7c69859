"""Compound-figure splitting: the panels splitter (with OCR labels) next to a plain recursive XY-cut, in one run.

Two sets:
* real: the figures of tests/panels/truth.json (real PMC fixture figures, panel boxes and labels drawn by eye),
  each decoded from its file inside the timed part, as a build would;
* held-out: tests/panels/heldout.json, real figures from outside the fixtures labelled by eye and never used to
  develop or tune the splitter (report it; do not tune on it);
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


def run_real(method: str, figures: list[dict], fixtures: Path, failures: list,
             captions: dict[str, str] | None = None) -> Scores:
    s = Scores()
    for entry in figures:
        true = [tuple(p["bbox"]) for p in entry["panels"]]
        true_labels = [p["label"] for p in entry["panels"]]
        t0 = time.process_time()
        with Image.open(fixtures / entry["image"]) as im:
            if method.startswith("splitter"):
                panels = split_image(im, caption=(captions or {}).get(entry["image"]))
                pred, labels = [p.bbox for p in panels], [p.label for p in panels]
            else:
                pred, labels = xy_cut_baseline(im), None
        dt = time.process_time() - t0
        acc = s.add(pred, true, labels, true_labels if labels is not None else None, seconds=dt)
        if acc < 1.0 or (labels and any(a and a != b for a, b in zip(true_labels, labels))):
            failures.append((method, entry["image"], round(acc, 2), len(true), len(pred), labels))
    return s


def run_synthetic(method: str, figs, captions: list[str | None] | None = None) -> Scores:
    s = Scores()
    for i, fig in enumerate(figs):
        t0 = time.process_time()
        if method.startswith("splitter"):
            panels = split_image(fig.image, caption=captions[i] if captions else None)
            pred, labels = [p.bbox for p in panels], [p.label for p in panels]
        else:
            pred, labels = xy_cut_baseline(fig.image), None
        dt = time.process_time() - t0
        s.add(pred, fig.boxes, labels, fig.labels if labels is not None else None, seconds=dt)
    return s


def real_captions(figures: list[dict], fixtures: Path) -> dict[str, str]:
    """image path (as in the truth) -> its figure's caption, from the article XML beside it (JATS, parsed by the
    build's parser); figures without XML (images_other/) have none."""
    from biomedica_hf.ingest.parse import parse_jats

    out: dict[str, str] = {}
    parsed_dirs: dict[Path, list] = {}
    for entry in figures:
        path = fixtures / entry["image"]
        if path.parent not in parsed_dirs:
            arts = []
            for xml in sorted(path.parent.glob("*.*xml")):
                try:
                    parsed = parse_jats(xml)
                except Exception:  # noqa: BLE001 - not an article (a manifest)
                    continue
                arts += parsed if isinstance(parsed, list) else [parsed]
            parsed_dirs[path.parent] = arts
        for art in parsed_dirs[path.parent]:
            for fig in art.figures:
                if fig.caption and any(Path(g).stem == path.stem or g == path.stem for g in fig.graphics):
                    out[entry["image"]] = fig.caption
    return out


SYNTH_TEXT = ["Western blot of lysates from treated cells.", "Quantification of the signal in three experiments.",
              "Representative images of the stained sections.", "Survival curves of the two groups.",
              "Dose response of the compound.", "Schematic of the experimental design."]


def synthetic_captions(figs) -> list[str | None]:
    """A caption per synthetic figure: compound figures get markers for their panels (in their labels' style,
    upper-case letters where none is printed), except every third, whose caption has none; every other single
    figure gets a caption with two or three markers (a figure whose panels are separate image files: its single
    image must still stay whole)."""
    out: list[str | None] = []
    n_compound = n_single = 0
    for fig in figs:
        title = "Effect of the treatment on the cells. "
        if len(fig.boxes) > 1:
            n_compound += 1
            if n_compound % 3 == 0:
                out.append(title + " ".join(SYNTH_TEXT[: 3]))
                continue
            labels = [lab or "ABCDEFGHIJKLMNOP"[i] for i, lab in enumerate(fig.labels)]
        else:
            n_single += 1
            if n_single % 2 == 0:
                out.append(title + SYNTH_TEXT[0])
                continue
            labels = list("AB" if n_single % 4 == 1 else "ABC")
        out.append(title + " ".join(f"({lab}) {SYNTH_TEXT[i % len(SYNTH_TEXT)]}" for i, lab in enumerate(labels)))
    return out


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
    ap.add_argument("--heldout", type=Path, default=TRUTH.parent / "heldout.json",
                    help="held-out real set (never tuned on; default tests/panels/heldout.json)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--failures", action="store_true", help="list the real figures not split perfectly")
    ap.add_argument("--ocr", action="store_true", help="also compare the OCR backends on the true boxes "
                    "(rapidocr needs rapidocr-onnxruntime, not a dependency)")
    args = ap.parse_args(argv)

    figures = json.loads(args.truth.read_text())["figures"]
    heldout_doc = json.loads(args.heldout.read_text())
    heldout_root = (Path(__file__).resolve().parents[1] / heldout_doc["fixtures_root"]).resolve()
    if not all((heldout_root / e["image"]).is_file() for e in heldout_doc["figures"]):
        # the held-out figures are publishers' figures of unknown licence: their labels are in the repository, the
        # images are not (they are fetched by whoever measures: see "source" in heldout.json)
        print(f"held-out rows left out: the images of {args.heldout.name} are not in {heldout_root} "
              f"(see its 'source')", file=sys.stderr)
        heldout_doc = {**heldout_doc, "figures": []}
    synth = make_set(args.synthetic, seed=args.seed)
    split_image(Image.new("RGB", (64, 64), "white"))          # warm-up: imports, OCR model load
    rows, failures = [], []
    caps_real = real_captions(figures, args.fixtures)
    caps_synth = synthetic_captions(synth)
    sets = (("real", figures, args.fixtures), ("held-out", heldout_doc["figures"], heldout_root), ("synthetic", synth, None))
    sets = tuple(s for s in sets if s[1])
    for name, figs, root in sets:
        # "splitter + caption": the caption's markers as evidence (real: the JATS caption of the figures whose
        # article XML is in the fixtures; held-out: no captions, so not run; synthetic: synthetic captions)
        methods = ("splitter", "splitter + caption", "xy-cut baseline") if name != "held-out" else \
            ("splitter", "xy-cut baseline")
        for method in methods:
            if root is not None:
                s = run_real(method, figs, root, failures if method != "splitter + caption" else [],
                             caps_real if method == "splitter + caption" else None)
            else:
                s = run_synthetic(method, figs, caps_synth if method == "splitter + caption" else None)
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
    print(f"(captions: {len(caps_real)} of the {len(figures)} real figures have one in the fixture XML, "
          f"{sum('(A)' in c or '(a)' in c for c in caps_real.values())} with '(A)'/'(a)' markers; "
          f"{sum(1 for c in caps_synth if c and '(' in c)} of {len(synth)} synthetic captions have markers)")
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

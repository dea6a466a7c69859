"""Synthetic compound figures with known panel boxes and labels, composed from REAL single-panel fixture figures.

The single-panel figures of the labelled real set (tests/panels/truth.json) are cropped to their content box and
placed into grids (1x2 ... 3x4) and irregular layouts (one tall panel beside a stack, a wide panel over a row),
with gutters of 0-40 px (0: panels abut), and a printed label in one of five styles -- "(a)", "A", "a.", "1",
"i" (roman) -- set above-left of the panel or inside its top-left corner, light on dark where the corner is dark.
Every panel's true box is the placed image plus its label. A share of the figures are single panels (one figure
on a margin). Deterministic for a seed; Pillow's bundled font only, so the set is the same on every machine.

    from panels_synth import make_set
    for fig in make_set(60, seed=0): fig.image, fig.boxes, fig.labels
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageStat

ROOT = Path(__file__).resolve().parents[1]
TRUTH = ROOT / "tests" / "panels" / "truth.json"
FIXTURES = ROOT.parent / "shared" / "fixtures" / "pmc"
STYLES = ("paren", "upper", "dot", "digit", "roman")
_ROMAN = ("i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x", "xi", "xii")


@dataclass
class SyntheticFigure:
    image: Image.Image
    boxes: list[tuple[int, int, int, int]]
    labels: list[str | None]          # the normalised label ("a", "A", "1", "ii"); None when none is printed
    layout: str


def _label_text(style: str, i: int) -> tuple[str, str]:
    """(printed text, normalised label) of the i-th panel."""
    letter = "abcdefghijklmnop"[i]
    if style == "paren":
        return f"({letter})", letter
    if style == "upper":
        return letter.upper(), letter.upper()
    if style == "dot":
        return f"{letter}.", letter
    if style == "digit":
        return str(i + 1), str(i + 1)
    return _ROMAN[i], _ROMAN[i]


def sources(fixtures: Path = FIXTURES, truth: Path = TRUTH) -> list[Image.Image]:
    """The single-panel real figures (not GIF thumbnails), cropped to their labelled box, as RGB."""
    out = []
    for entry in json.loads(truth.read_text())["figures"]:
        if len(entry["panels"]) != 1 or entry["image"].endswith(".gif"):
            continue
        with Image.open(fixtures / entry["image"]) as im:
            rgb = im.convert("RGB")
        out.append(rgb.crop(tuple(entry["panels"][0]["bbox"])))
    return out


def _cells(rng: random.Random, W: int, H: int, gutter: int) -> tuple[str, list[tuple[int, int, int, int]]]:
    kind = rng.choice(["grid", "grid", "grid", "tall-left", "wide-top"])
    if kind == "grid":
        rows, cols = rng.choice([(1, 2), (1, 3), (2, 2), (2, 3), (3, 2), (2, 4), (3, 3), (1, 4), (3, 4)])
        cw, ch = (W - gutter * (cols - 1)) // cols, (H - gutter * (rows - 1)) // rows
        return f"grid{rows}x{cols}", [(c * (cw + gutter), r * (ch + gutter), c * (cw + gutter) + cw,
                                       r * (ch + gutter) + ch) for r in range(rows) for c in range(cols)]
    if kind == "tall-left":
        n = rng.choice([2, 3])
        lw = int(W * rng.uniform(0.4, 0.55))
        rh = (H - gutter * (n - 1)) // n
        return "tall-left", [(0, 0, lw, H)] + [(lw + gutter, k * (rh + gutter), W, k * (rh + gutter) + rh)
                                              for k in range(n)]
    n = rng.choice([2, 3])
    th = int(H * rng.uniform(0.35, 0.5))
    cw = (W - gutter * (n - 1)) // n
    return "wide-top", [(0, 0, W, th)] + [(k * (cw + gutter), th + gutter, k * (cw + gutter) + cw, H)
                                         for k in range(n)]


def _fit(src: Image.Image, cell: tuple[int, int, int, int], fill: bool) -> tuple[Image.Image, tuple[int, int]]:
    cw, ch = cell[2] - cell[0], cell[3] - cell[1]
    if fill:      # photos that abut: fill the cell (crop to its aspect)
        k = max(cw / src.width, ch / src.height)
        im = src.resize((max(1, round(src.width * k)), max(1, round(src.height * k))), Image.BILINEAR)
        left, top = (im.width - cw) // 2, (im.height - ch) // 2
        return im.crop((left, top, left + cw, top + ch)), (cell[0], cell[1])
    k = min(cw / src.width, ch / src.height)
    im = src.resize((max(1, round(src.width * k)), max(1, round(src.height * k))), Image.BILINEAR)
    return im, (cell[0] + (cw - im.width) // 2, cell[1] + (ch - im.height) // 2)


def make_figure(rng: random.Random, pool: list[Image.Image], single: bool = False) -> SyntheticFigure:
    W, H = rng.choice([(700, 500), (800, 600), (900, 700), (1000, 800), (720, 900), (1200, 900)])
    style = rng.choice(STYLES)
    size = rng.randint(14, 30)
    font = ImageFont.load_default(size=size)
    bold = rng.random() < 0.5
    margin = rng.randint(4, 30)
    label_room = size + 6 if rng.random() < 0.5 else 0          # labels above-left (outside) or inside
    canvas = Image.new("RGB", (W + 2 * margin, H + 2 * margin), "white")
    draw = ImageDraw.Draw(canvas)
    if single:
        src = rng.choice(pool)
        im, (x, y) = _fit(src, (0, 0, W, H), fill=False)
        canvas.paste(im, (margin + x, margin + y))
        return SyntheticFigure(canvas, [(margin + x, margin + y, margin + x + im.width, margin + y + im.height)],
                               [None], "single")
    gutter = rng.choice([0, 0, 4, 8, 12, 20, 30, 40]) + label_room
    layout, cells = _cells(rng, W, H, gutter)
    fill = gutter - label_room == 0 and rng.random() < 0.7
    boxes, labels = [], []
    for i, cell in enumerate(cells):
        cell = (cell[0], cell[1] + label_room, cell[2], cell[3])
        im, (x, y) = _fit(rng.choice(pool), cell, fill)
        x, y = x + margin, y + margin
        canvas.paste(im, (x, y))
        text, label = _label_text(style, i)
        if label_room:
            tx, ty = x, y - label_room
        else:
            tx, ty = x + 4, y + 3
        l, t, r, b = draw.textbbox((tx, ty), text, font=font, stroke_width=1 if bold else 0)
        corner = canvas.crop((max(0, l), max(0, t), max(l + 1, r), max(t + 1, b))).convert("L")
        dark = ImageStat.Stat(corner).mean[0] < 110
        ink = (255, 255, 255) if dark else (0, 0, 0)
        draw.text((tx, ty), text, font=font, fill=ink, stroke_width=1 if bold else 0, stroke_fill=ink)
        boxes.append((min(x, l), min(y, t), max(x + im.width, r), max(y + im.height, b)))
        labels.append(label)
    return SyntheticFigure(canvas, boxes, labels, layout)


def make_set(n: int = 60, seed: int = 0, single_share: float = 0.2,
             pool: list[Image.Image] | None = None) -> list[SyntheticFigure]:
    rng = random.Random(seed)
    pool = sources() if pool is None else pool
    return [make_figure(rng, pool, single=rng.random() < single_share) for _ in range(n)]


if __name__ == "__main__":   # write a few to look at: python benchmarks/panels_synth.py OUT_DIR
    import sys
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "synthetic_panels")
    out.mkdir(parents=True, exist_ok=True)
    for k, fig in enumerate(make_set(12)):
        im = fig.image.copy()
        d = ImageDraw.Draw(im)
        for b, lab in zip(fig.boxes, fig.labels):
            d.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=(0, 200, 0), width=2)
            d.text((b[2] - 30, b[3] - 14), str(lab), fill=(255, 0, 255))
        im.save(out / f"synthetic_{k:02d}_{fig.layout}.png")

"""The panel splitter (biomedica_hf/panels/split.py) on synthetic grids, real figures and bad input."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from biomedica_hf.panels.split import Panel, split_image, xy_cut_baseline


def _grid(rows: int, cols: int, cell=(200, 150), gap=20) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    W = cols * cell[0] + (cols + 1) * gap
    H = rows * cell[1] + (rows + 1) * gap
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    rng = np.random.default_rng(0)
    boxes = []
    for r in range(rows):
        for c in range(cols):
            x0, y0 = gap + c * (cell[0] + gap), gap + r * (cell[1] + gap)
            b = (x0, y0, x0 + cell[0], y0 + cell[1])
            d.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], fill=tuple(int(v) for v in rng.integers(0, 180, 3)))
            boxes.append(b)
    return im, boxes


def test_grid_of_photos_gives_its_cells_in_reading_order():
    im, boxes = _grid(2, 3)
    panels = split_image(im, labels=False)
    assert [p.bbox for p in panels] == boxes
    assert all(isinstance(p, Panel) and 0 <= p.score <= 1 for p in panels)
    assert xy_cut_baseline(im) == boxes


@pytest.mark.parametrize("make", [
    lambda: Image.new("RGB", (1, 300), "black"),
    lambda: Image.new("RGB", (400, 300), "white"),
    lambda: Image.new("CMYK", (300, 200), (0, 0, 0, 0)),
    lambda: Image.new("I;16", (300, 200), 40000),
    lambda: Image.new("RGBA", (300, 200), (0, 0, 0, 0)),
    lambda: Image.new("P", (300, 200), 3),
])
def test_bad_input_gives_one_whole_panel(make):
    im = make()
    panels = split_image(im)
    assert len(panels) == 1
    x0, y0, x1, y1 = panels[0].bbox
    assert 0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height

"""``biomedica panels split`` on real figures and bad inputs, and the Python function with the same result."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomedica_hf.panels import split_figure

BIN = Path(sys.executable).with_name("biomedica")
CAPTION = ("Chest x-rays and chest CTs of three patients Case 1: chest x-ray was obtained on Jan 1 (1A). Chest x-ray "
           "on Jan 2 showed worse status (1B). Case 2: chest x-ray obtained on Jan 6 (2A). Chest x-ray on Jan 10 "
           "showed worse status (2B). Case 3: chest CT obtained on Jan 1 (3A). Chest CT on Jan 15 showed improved "
           "status (3B).")


def run(*args, check=True):
    r = subprocess.run([str(BIN), "panels", "split", *map(str, args)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("odd")
    paths = {}
    Image.new("RGB", (400, 300), "white").save(paths.setdefault("white", d / "white.png"))
    Image.new("RGB", (1, 500), "black").save(paths.setdefault("strip", d / "strip.png"))
    Image.new("CMYK", (200, 120), (0, 255, 0, 0)).save(paths.setdefault("cmyk", d / "cmyk.jpg"))
    a = np.tile((np.arange(160, dtype=np.uint32) * 400).astype(np.uint16), (90, 1))     # a smooth 16-bit ramp
    Image.fromarray(a).save(paths.setdefault("sixteen", d / "sixteen.png"))
    (d / "notes.txt").write_text("not an image")
    paths["text"] = d / "notes.txt"
    paths["missing"] = d / "missing.jpg"
    return paths


def test_real_compound_figure_json(articles_dir):
    image = articles_dir / "PMC7135076" / "gr1_lrg.jpg"
    line = json.loads(run(image, "--caption", CAPTION, "--json", "--no-labels").stdout)
    assert line["image"] == str(image)
    assert (line["width"], line["height"]) == Image.open(image).size
    assert len(line["panels"]) == 6
    for p in line["panels"]:
        x0, y0, x1, y1 = p["bbox"]
        assert 0 <= x0 < x1 <= line["width"]
        assert 0 <= y0 < y1 <= line["height"]
        assert set(p) >= {"bbox", "label", "subcaption", "score", "method", "confidence", "caption"}
    # reading order pairs the six crops with 1A..3B (no labels read)
    assert [p["caption_label"] for p in line["panels"]] == ["1A", "1B", "2A", "2B", "3A", "3B"]
    assert line["panels"][5]["subcaption"] == "Chest CT on Jan 15 showed improved status."
    assert line["panels"][0]["method"] == "order"
    # the Python function gives the same result
    assert split_figure(image, CAPTION, labels=False) == {k: v for k, v in line.items() if k != "image"}


def test_manifest_and_bad_inputs(odd_images, articles_dir, tmp_path):
    real = articles_dir / "PMC7135076" / "gr1_lrg.jpg"
    manifest = tmp_path / "m.jsonl"
    rows = [{"image": str(real), "caption": CAPTION}, {"image": str(odd_images["white"]), "caption": None}]
    rows += [{"image": str(odd_images[k]), "caption": "A caption (A) with markers (B) that match no panel."}
             for k in ("strip", "cmyk", "sixteen", "text", "missing")]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = run("--manifest", manifest, "--json", "--no-labels", check=False)
    assert r.returncode == 1
    assert "2 of 7 image(s) could not be read" in r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["image"] for x in lines] == [row["image"] for row in rows]
    by = {Path(x["image"]).name: x for x in lines}
    for name in ("white.png", "strip.png", "cmyk.jpg", "sixteen.png"):      # one panel: the whole image
        x = by[name]
        assert len(x["panels"]) == 1 and x["panels"][0]["method"] == "single", x
        x0, y0, x1, y1 = x["panels"][0]["bbox"]
        assert x1 <= x["width"]
        assert y1 <= x["height"]
    assert by["white.png"]["panels"][0]["subcaption"] is None
    assert "error" in by["notes.txt"]
    assert "error" in by["missing.jpg"]


def test_bad_manifest_and_no_input(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.jpg"}\n{"caption": "no image"}\n')
    r = run("--manifest", bad, check=False)
    assert r.returncode == 2
    assert "line 2" in r.stderr
    r = run(check=False)
    assert r.returncode == 2
    assert "IMAGE" in r.stderr


def test_readable_output_and_help(articles_dir):
    image = articles_dir / "PMC7135076" / "gr1_lrg.jpg"
    out = run(image, "--caption", CAPTION, "--no-labels").stdout
    assert "6 panel(s)" in out
    assert "-> 3B (order" in out
    r = subprocess.run([str(BIN), "panels", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "panels split IMAGE" in r.stdout
    assert "panels DIR" in r.stdout


@pytest.mark.slow
def test_printed_labels_read_by_ocr(articles_dir):
    """With OCR the printed "1A".."3B" labels pair the panels (method label)."""
    pytest.importorskip("rapidocr_onnxruntime")
    image = articles_dir / "PMC7135076" / "gr1_lrg.jpg"
    line = json.loads(run(image, "--caption", CAPTION, "--json").stdout)
    assert [p["caption_label"] for p in line["panels"]] == ["1A", "1B", "2A", "2B", "3A", "3B"]

"""``--detector transformers:PATH``: the mechanics with a tiny random DETR built from a config (no download)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biomedica_hf.panels.detector import load_detector, nms
from biomedica_hf.panels.figure import split_figure

BIN = Path(sys.executable).with_name("biomedica")


@pytest.fixture(scope="module")
def tiny_detr(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    path = tmp_path_factory.mktemp("detr") / "tiny-detr"
    backbone = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8, 8, 16], depths=[1, 1, 1, 1],
                            out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                        backbone_config=backbone, d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
                        decoder_ffn_dim=16, num_queries=6, num_labels=1)
    import torch

    torch.manual_seed(0)
    DetrForObjectDetection(config).save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], float)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.2) == [0, 2]
    assert nms(boxes, np.array([0.5, 0.8, 0.7]), 0.9) == [1, 2, 0]


def test_bad_spec():
    for spec in ("detr:/x", "transformers:", "", "transformers:/no/such/folder"):
        with pytest.raises(ValueError, match="detector"):
            load_detector(spec)


def test_boxes_batched_mapped_back_and_aligned(tiny_detr, articles_dir):
    det = load_detector(f"transformers:{tiny_detr}", threshold=0.0, batch_size=2, device="cpu")
    images = [Image.open(p) for p in sorted(articles_dir.glob("*/*.jpg"))[:3]] + [Image.new("L", (3000, 1200), 255)]
    images = [im.convert("RGB") for im in images]
    boxes = det.detect(images)
    assert len(boxes) == len(images)
    for im, found in zip(images, boxes):
        assert 1 <= len(found) <= 6                           # num_queries, after NMS
        for (x0, y0, x1, y1), score in found:
            assert 0 <= x0 < x1 <= im.width
            assert 0 <= y0 < y1 <= im.height
            assert 0.0 <= score <= 1.0
    # a big image is detected on a reduced copy and its boxes mapped back: a 3x blow-up of a figure (long side over
    # 1333) gives the figure's own boxes times 3
    small = images[0].resize((images[0].width // 2 * 2, images[0].height // 2 * 2))
    small = small.crop((0, 0, min(small.width, 600), min(small.height, 440)))
    big = small.resize((small.width * 3, small.height * 3), Image.NEAREST)
    (got_small,), (got_big,) = det.detect([small]), det.detect([big])
    assert len(got_small) == len(got_big)
    for (bs, ss), (bb, sb) in zip(got_small, got_big):
        assert abs(ss - sb) < 1e-4
        assert all(abs(3 * a - b) <= 3 for a, b in zip(bs, bb)), (bs, bb)
    caption = "Two things. (A) The first. (B) The second."
    result = split_figure(images[0], caption, labels=False, detector=det)
    assert result["width"] == images[0].width
    assert result["panels"]
    assert {p["method"] for p in result["panels"]} <= {"single", "order", "shared"}
    for p in result["panels"]:
        assert p["caption"].startswith("Two things.")
    # a detector that finds nothing above its threshold: the whole image is the one panel
    strict = load_detector(f"transformers:{tiny_detr}", threshold=1.01, device="cpu")
    result = split_figure(images[0], caption, labels=False, detector=strict)
    assert [p["bbox"] for p in result["panels"]] == [[0, 0, images[0].width, images[0].height]]
    assert result["panels"][0]["method"] == "single"


def test_cli_split_with_detector(tiny_detr, articles_dir):
    imgs = [str(p) for p in sorted(articles_dir.glob("*/*.jpg"))[:2]]
    r = subprocess.run([str(BIN), "panels", "split", *imgs, "--json", "--no-labels", "--batch", "2",
                        "--detector", f"transformers:{tiny_detr}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["image"] for x in lines] == imgs
    assert all(x["panels"] for x in lines)
    r = subprocess.run([str(BIN), "panels", "split", imgs[0], "--detector", "yolo:/x"], capture_output=True,
                       text=True)
    assert r.returncode == 2
    assert "transformers:PATH" in r.stderr


@pytest.mark.slow
def test_dataset_stage_with_a_detector(tiny_detr, built_dataset, tmp_path):
    """``biomedica panels DIR --detector``: batched over each shard's figures; new settings split every shard."""
    import shutil

    import pyarrow.parquet as pq

    from biomedica_hf.panels.dataset import PANELS_INDEX, panel_dataset

    out = tmp_path / "ds"
    shutil.copytree(built_dataset, out)
    first = panel_dataset(out, labels=False)
    report = panel_dataset(out, labels=False, detector=f"transformers:{tiny_detr}")
    assert report["split"] == first["split"] + first["kept"]
    assert not report["figures_failed"]
    panels = pq.read_table(out / PANELS_INDEX).to_pylist()
    figures = pq.read_table(out / "figures.parquet", columns=["key", "width", "height"]).to_pylist()
    size = {f["key"]: (f["width"], f["height"]) for f in figures}
    assert {p["parent_key"] for p in panels} == set(size)
    for p in panels:
        w, h = size[p["parent_key"]]
        assert 0 <= p["x0"] < p["x1"] <= w
        assert 0 <= p["y0"] < p["y1"] <= h

"""Compound figures -> panels with subcaptions. Same layer as ``concepts``; the build does not import it.

    raster.py    Panel, reduced_copy  the working copy of a figure and its ink (shared by split and labels)
    split.py     split_image          the CPU splitter: panel boxes in reading order (i25a)
    labels.py    label_panels         the printed panel labels (OCR, weights inside the wheel)
    metrics.py   ImageCLEF figure-separation metrics (benchmarks)
    captions.py  split_caption        a caption -> shared part + one text per panel label
    align.py     align_panels         each panel its subcaption (by label, position, reading order, or shared)
    textscore.py token-F1 scoring of subcaptions against hand-written truth
    figure.py    split_figure         one image (+ caption) -> the JSON result of ``biomedica panels split``
    dataset.py   panel_dataset        a built folder -> panels.parquet + <licence>-panels configs (resumable)
    hooks.py     index_columns ...    image_panel_count, the card's panel configs / section / contact sheet
    detector.py  load_detector        ``--detector transformers:PATH`` (AutoModelForObjectDetection)
    cli.py       COMMANDS             ``biomedica panels split`` / ``biomedica panels DIR``
"""
from __future__ import annotations

from biomedica_hf.panels.align import AlignedPanel, align_panels
from biomedica_hf.panels.captions import Subcaptions, split_caption
from biomedica_hf.panels.figure import split_figure
from biomedica_hf.panels.hooks import register_hooks

register_hooks()   # image_panel_count, the card's panel configs/section/sheet (biomedica_hf.hooks; uninstalled too)

__all__ = ["AlignedPanel", "Subcaptions", "align_panels", "split_caption", "split_figure"]

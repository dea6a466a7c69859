"""Compound figures -> panels with subcaptions. Same layer as ``concepts``; the build does not import it.

    split.py     split_image          the CPU splitter: panel boxes in reading order (i25a)
    labels.py    label_panels         the printed panel labels (OCR, weights inside the wheel)
    metrics.py   ImageCLEF figure-separation metrics (benchmarks)
    captions.py  split_caption        a caption -> shared part + one text per panel label
    align.py     align_panels         each panel its subcaption (by label, position, reading order, or shared)
    textscore.py token-F1 scoring of subcaptions against hand-written truth
"""
from __future__ import annotations

from biomedica_hf.panels.captions import Subcaptions, split_caption

__all__ = ["Subcaptions", "split_caption"]

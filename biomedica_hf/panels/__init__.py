"""Compound figures -> panels with subcaptions (beside ``concepts``; the build never imports this package).

    split.py     split_image          the CPU splitter: panel boxes in reading order
    labels.py    label_panels         the printed panel letters (OCR)
    captions.py  split_caption        a caption -> shared part + one text per panel label
    align.py     align_panels         each panel its subcaption (by label, reading order, or shared only)
"""
from __future__ import annotations

from biomedica_hf.panels.captions import Subcaptions, split_caption

__all__ = ["Subcaptions", "split_caption"]

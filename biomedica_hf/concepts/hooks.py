"""What concept labels add to lower layers, through :mod:`biomedica_hf.hooks` (those layers never import concepts).

* ``figures.parquet`` (``biomedica_hf.ingest.figures``): the label columns, so that an index rebuilt by the build
  keeps the labels;
* the dataset card (``biomedica_hf.dataset.card``): a section (how the concepts were made, the plots, the concept
  subsets), the ``configs:`` of the concept subsets, and the plots the section links to.
Each function does nothing (returns ``None`` / ``[]``) for a folder without labels.

Found two ways (see :mod:`biomedica_hf.hooks`): the entry points this package declares in ``pyproject.toml``
(``[project.entry-points."biomedica_hf.card_sections"]`` etc.), and :func:`register_hooks`, called when
``biomedica_hf.concepts`` is imported (a checkout that is not installed). The modules that do the work are imported
only when a function runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from biomedica_hf import hooks


def index_columns(dataset_dir: str | Path) -> dict[str, pa.Array] | None:
    """``INDEX_COLUMNS``: the label columns of ``figures.parquet`` (aligned with the shard tables); None without
    labels."""
    from biomedica_hf.concepts.label import labels_extra_columns

    return labels_extra_columns(dataset_dir)


def card_section(dataset_dir: str | Path) -> str | None:
    """``CARD_SECTIONS``: the card's "Concepts" section (Markdown), None without labels."""
    from biomedica_hf.concepts.label import has_labels
    from biomedica_hf.concepts.plots import card_markdown

    return card_markdown(dataset_dir) if has_labels(dataset_dir) else None


def card_configs(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """``CARD_CONFIGS``: the ``configs:`` entries of the concept subsets materialised in the folder."""
    from biomedica_hf.concepts.subsets import concept_card_configs

    return concept_card_configs(dataset_dir)


def card_files(dataset_dir: str | Path) -> None:
    """``CARD_FILES``: the concept plots (``card/*.png``) the section links to."""
    from biomedica_hf.concepts.label import has_labels
    from biomedica_hf.concepts.plots import concept_plots

    if has_labels(dataset_dir):
        concept_plots(dataset_dir)


def concept_names() -> list[str]:
    """``CONCEPT_NAMES``: every global and local concept of the shipped taxonomy."""
    from biomedica_hf.concepts.vocab import load_vocabulary

    vocab = load_vocabulary()
    return sorted(vocab.global_concepts | vocab.local_concepts)


HOOKS = {hooks.INDEX_COLUMNS: index_columns, hooks.CARD_SECTIONS: card_section, hooks.CARD_CONFIGS: card_configs,
         hooks.CARD_FILES: card_files, hooks.CONCEPT_NAMES: concept_names}


def register_hooks() -> None:
    """Register every function at run time (idempotent; an installed package also finds them as entry points)."""
    for group, fn in HOOKS.items():
        hooks.register(group, fn)


__all__ = ["HOOKS", "card_configs", "card_files", "card_section", "concept_names", "index_columns", "register_hooks"]

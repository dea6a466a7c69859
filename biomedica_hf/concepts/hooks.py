"""What concepts add to the layers below through :mod:`biomedica_hf.hooks` (they never import concepts).

Declared as entry points in ``pyproject.toml`` (installed package) and registered at import of
:mod:`biomedica_hf.concepts` (a source checkout).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa


def index_columns(dataset_dir: str | Path) -> dict[str, pa.Array] | None:
    """``hooks.INDEX_COLUMNS``: the label columns of ``figures.parquet`` (aligned with the shard tables), so that
    an index rebuilt by the build keeps the labels; None when the folder has none."""
    from biomedica_hf.concepts.label import labels_extra_columns

    return labels_extra_columns(dataset_dir)

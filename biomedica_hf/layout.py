"""Where things are in a built dataset folder: the root tables, the table configs and the shard tables.

One place for the names that the build writes and every reader (loader, card, hub, verify, concepts, search) looks up.
"""
from __future__ import annotations

from pathlib import Path

from biomedica_hf.schema import FIGURES_CONFIG_FIELDS, FIGURES_INDEX_FIELDS, SUBSETS

FIGURES_INDEX = "figures.parquet"
ARTICLES_TABLE = "articles.parquet"
PANELS_INDEX = "panels.parquet"           # written by ``biomedica panels`` (biomedica_hf.panels), read by the loader
# table configs: folder of JSON-row tars -> (parquet source, key column, columns left out)
TABLE_CONFIGS = {
    "articles": (ARTICLES_TABLE, "pmcid", ()),
    "figures": (FIGURES_INDEX, "key",
                tuple(n for n, _, _ in FIGURES_INDEX_FIELDS if n not in {f[0] for f in FIGURES_CONFIG_FIELDS})),
}
ROWS_PER_TABLE_TAR = 100_000
DUP_TABLES = {"near_dup_of": "near_duplicates.parquet", "caption_dup_of": "caption_duplicates.parquet"}


def shard_tables(out: Path) -> list[Path]:
    """Per-shard Parquet files of every subset, in subset then shard order."""
    return [p for s in SUBSETS for p in sorted((Path(out) / s).glob("*.parquet"))]

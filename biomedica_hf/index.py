"""The ``figures.parquet`` index: one row per sample of every shard (key, shard, byte offset and size
in the tar, subset, licence, year, caption length, image size, sha256, ...).

Built from the per-shard Parquet files, so it is always consistent with the shards on disk. The
loader filters on it first: shards without a wanted sample are never opened, and unwanted samples
are never read.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .schema import FIGURES_CONFIG_FIELDS, FIGURES_INDEX_FIELDS, SUBSETS, arrow_schema, safe_key
from .writer import atomic_path, write_json_tar

FIGURES_INDEX = "figures.parquet"
ARTICLES_TABLE = "articles.parquet"
# table configs: folder of JSON-row tars -> (parquet source, key column, columns left out)
TABLE_CONFIGS = {
    "articles": (ARTICLES_TABLE, "pmcid", ()),
    "figures": (FIGURES_INDEX, "key",
                tuple(n for n, _, _ in FIGURES_INDEX_FIELDS if n not in {f[0] for f in FIGURES_CONFIG_FIELDS})),
}
ROWS_PER_TABLE_TAR = 100_000
INDEX_SCHEMA = arrow_schema(FIGURES_INDEX_FIELDS)


def shard_tables(out: Path) -> list[Path]:
    """Per-shard Parquet files of every subset, in subset then shard order."""
    return [p for s in SUBSETS for p in sorted((Path(out) / s).glob("[0-9]*.parquet"))]


def build_figures_index(out: Path, extra_columns: dict[str, pa.Array] | None = None) -> Path:
    """Concatenate the per-shard tables into ``figures.parquet`` (atomic); returns its path."""
    tables = [pq.read_table(p) for p in shard_tables(out)]
    if tables:
        table = pa.concat_tables(tables, promote_options="default")
        table = table.append_column("caption_chars", pc.cast(pc.utf8_length(table["caption"]), pa.int32()))
        table = table.select([f.name for f in INDEX_SCHEMA]).cast(INDEX_SCHEMA)
    else:
        table = INDEX_SCHEMA.empty_table()
    for name, column in (extra_columns or {}).items():
        table = table.append_column(name, column)
    path = Path(out) / FIGURES_INDEX
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=100_000)
    return path


def table_config_columns(out: Path, name: str) -> list[str]:
    source, _, exclude = TABLE_CONFIGS[name]
    return [c for c in pq.read_schema(Path(out) / source).names if c not in exclude]


def write_table_configs(out: Path) -> dict[str, int]:
    """``articles/`` and ``figures/``: the Parquet tables again as WebDataset tars of JSON rows.

    ``datasets`` infers ONE builder for all configs of a folder (from the first config: WebDataset
    here), so ``load_dataset(DIR, "articles")`` can only work if the table is WebDataset too. The
    Parquet files stay the primary form for pyarrow / pandas / DuckDB and for the loader's filters.
    """
    counts = {}
    for name, (source, key_col, _) in TABLE_CONFIGS.items():
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        table = pq.read_table(Path(out) / source, columns=table_config_columns(out, name))
        n_tars = max(1, -(-table.num_rows // ROWS_PER_TABLE_TAR))
        for i in range(n_tars):
            rows = table.slice(i * ROWS_PER_TABLE_TAR, ROWS_PER_TABLE_TAR).to_pylist()
            write_json_tar(folder / f"{i:06d}.tar", ((safe_key(r[key_col]), r) for r in rows))
        for stale in folder.glob("[0-9]*.tar"):
            if int(stale.stem) >= n_tars:
                stale.unlink()
        counts[name] = table.num_rows
    return counts


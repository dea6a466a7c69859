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
INDEX_ROW_GROUP = 4_000      # rows per row group of figures.parquet
BATCH_ROWS = 128            # rows in memory at a time when streaming a table
INDEX_SCHEMA = arrow_schema(FIGURES_INDEX_FIELDS)


def shard_tables(out: Path) -> list[Path]:
    """Per-shard Parquet files of every subset, in subset then shard order."""
    return [p for s in SUBSETS for p in sorted((Path(out) / s).glob("*.parquet"))]


def build_figures_index(out: Path, extra_columns: dict[str, pa.Array] | None = None) -> Path:
    """Stream the per-shard tables into ``figures.parquet`` (atomic); returns its path.

    A few thousand rows are in memory at a time (row groups of ``INDEX_ROW_GROUP`` rows); ``extra_columns``
    (concept labels) are aligned with the concatenation of the shard tables in :func:`shard_tables` order."""
    extra = extra_columns or {}
    maps = _dup_maps(out)
    schema = INDEX_SCHEMA
    for name, column in extra.items():
        schema = schema.append(pa.field(name, column.type))
    path = Path(out) / FIGURES_INDEX
    offset = 0
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            pending: list[pa.Table] = []
            for p in shard_tables(out):
                for batch in pq.ParquetFile(p).iter_batches(batch_size=1_000):   # a row group at a time
                    pending.append(_index_batch(pa.Table.from_batches([batch]), maps, extra, offset))
                    offset += batch.num_rows
                    if sum(t.num_rows for t in pending) >= INDEX_ROW_GROUP:
                        writer.write_table(pa.concat_tables(pending))
                        pending = []
            if pending:
                writer.write_table(pa.concat_tables(pending))
        finally:
            writer.close()
    return path


def _index_batch(table: pa.Table, maps: dict, extra: dict, offset: int) -> pa.Table:
    """One batch of a shard's rows as index rows (schema columns, duplicate maps, extra columns)."""
    table = table.append_column("caption_chars", pc.cast(pc.utf8_length(table["caption"]), pa.int32()))
    for f in INDEX_SCHEMA:
        if f.name not in table.column_names:   # a shard written before the column existed
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    for name, mapping in maps.items():
        keys = table["key"].to_pylist()
        table = table.drop_columns([name]).append_column(name, pa.array([mapping.get(k) for k in keys], pa.string()))
    table = table.select([f.name for f in INDEX_SCHEMA]).cast(INDEX_SCHEMA)
    for name, column in extra.items():
        table = table.append_column(name, column.slice(offset, table.num_rows))
    return table


DUP_TABLES = {"near_dup_of": "near_duplicates.parquet", "caption_dup_of": "caption_duplicates.parquet"}


def _dup_maps(out: Path) -> dict[str, dict[str, str]]:
    """key -> kept key of the near-duplicate tables (only the non-kept members: a few % of the samples)."""
    maps = {}
    for column, name in DUP_TABLES.items():
        path = Path(out) / name
        if path.exists():
            t = pq.read_table(path, columns=["key", column])
            maps[column] = dict(zip(t["key"].to_pylist(), t[column].to_pylist()))
    return maps


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
        pf = pq.ParquetFile(Path(out) / source)
        total = pf.metadata.num_rows
        batches = pf.iter_batches(batch_size=BATCH_ROWS, columns=table_config_columns(out, name))
        n_tars = max(1, -(-total // ROWS_PER_TABLE_TAR))

        def rows(limit: int, batches=batches, key_col=key_col):
            """The next ``limit`` rows, a small batch at a time (the articles carry their full text)."""
            nonlocal pending
            left = limit
            while left > 0:
                if not pending:
                    batch = next(batches, None)
                    if batch is None:
                        return
                    pending = batch.to_pylist()
                take, pending = pending[:left], pending[left:]
                left -= len(take)
                for r in take:
                    yield safe_key(r[key_col]), r

        pending: list[dict] = []
        for i in range(n_tars):
            write_json_tar(folder / f"{name}-{i:06d}.tar", rows(ROWS_PER_TABLE_TAR))
        for stale in folder.glob("*.tar"):
            stem = stale.stem.rsplit("-", 1)[-1]
            if not stale.stem.startswith(f"{name}-") or not stem.isdigit() or int(stem) >= n_tars:
                stale.unlink()
        counts[name] = total
    return counts

"""The ``figures.parquet`` index: one row per sample of every shard (key, shard, byte offset and size
in the tar, subset, licence, year, caption length, image size, sha256, ...).

Built from the per-shard Parquet files, so it is always consistent with the shards on disk. The
loader filters on it first: shards without a wanted sample are never opened, and unwanted samples
are never read.

Upper layers add columns (concept labels) through the ``hooks.INDEX_COLUMNS`` extension point, so that a
rebuilt index keeps them without the build importing them.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf import hooks
from biomedica_hf.io.atomic import atomic_path
from biomedica_hf.layout import DUP_TABLES, FIGURES_INDEX, shard_tables
from biomedica_hf.schema import FIGURES_INDEX_FIELDS, arrow_schema

INDEX_ROW_GROUP = 4_000      # rows per row group of figures.parquet
INDEX_SCHEMA = arrow_schema(FIGURES_INDEX_FIELDS)


def build_figures_index(out: Path, extra_columns: dict[str, pa.Array] | None = None) -> Path:
    """Stream the per-shard tables into ``figures.parquet`` (atomic); returns its path.

    A few thousand rows are in memory at a time (row groups of ``INDEX_ROW_GROUP`` rows). ``extra_columns``
    are aligned with the concatenation of the shard tables in :func:`shard_tables` order; None (the default)
    means the columns of every ``hooks.INDEX_COLUMNS`` provider (concept labels, when the folder has them)."""
    extra = index_hook_columns(out) if extra_columns is None else extra_columns
    n_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shard_tables(out)) if extra else 0
    for name, column in extra.items():
        if name in INDEX_SCHEMA.names:
            raise ValueError(f"extra index column {name!r} is already a column of {FIGURES_INDEX}")
        if len(column) != n_rows:
            raise ValueError(f"extra index column {name!r} has {len(column)} rows; the shards have {n_rows}")
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


def index_hook_columns(out: Path) -> dict[str, pa.Array]:
    """The extra columns of every ``hooks.INDEX_COLUMNS`` provider, merged; two providers of one column
    name are an error (neither may silently win)."""
    merged: dict[str, pa.Array] = {}
    for columns in hooks.run(hooks.INDEX_COLUMNS, Path(out)):
        for name, column in columns.items():
            if name in merged:
                raise ValueError(f"two {hooks.INDEX_COLUMNS} providers add the index column {name!r}")
            merged[name] = column
    return merged


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


def _dup_maps(out: Path) -> dict[str, dict[str, str]]:
    """key -> kept key of the near-duplicate tables (only the non-kept members: a few % of the samples)."""
    maps = {}
    for column, name in DUP_TABLES.items():
        path = Path(out) / name
        if path.exists():
            t = pq.read_table(path, columns=["key", column])
            maps[column] = dict(zip(t["key"].to_pylist(), t[column].to_pylist()))
    return maps



"""Table configs: ``articles/`` and ``figures/``, the root Parquet tables again as WebDataset tars of JSON rows."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.io import plainjson
from biomedica_hf.io.tars import compact_json, write_json_tar
from biomedica_hf.layout import ROWS_PER_TABLE_TAR, TABLE_CONFIGS
from biomedica_hf.schema import safe_key

BATCH_ROWS = 128            # rows in memory at a time when streaming a table


def table_config_columns(out: Path, name: str) -> list[str]:
    source, _, exclude = TABLE_CONFIGS[name]
    return [c for c in pq.read_schema(Path(out) / source).names if c not in exclude]


def _has_floats(t: pa.DataType) -> bool:
    """Whether values of ``t`` (nested types included) can be floats, which orjson spells unlike ``json``."""
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return True
    if pa.types.is_dictionary(t):
        return _has_floats(t.value_type)
    return any(_has_floats(t.field(i).type) for i in range(t.num_fields))


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
        columns = table_config_columns(out, name)
        floats = any(_has_floats(pf.schema_arrow.field(c).type) for c in columns)
        encode = compact_json if floats else plainjson.dumps      # the same bytes; orjson where it can be exact
        for i in range(n_tars):
            write_json_tar(folder / f"{name}-{i:06d}.tar", rows(ROWS_PER_TABLE_TAR), encode)
        for stale in folder.glob("*.tar"):
            stem = stale.stem.rsplit("-", 1)[-1]
            if not stale.stem.startswith(f"{name}-") or not stem.isdigit() or int(stem) >= n_tars:
                stale.unlink()
        counts[name] = total
    return counts

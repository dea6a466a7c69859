"""Turn a folder built now (shards in ``<subset>/sNNN/gNNN/``) into the flat layout that builds made before the
Hub-scale sub-folders: every shard's ``.tar`` / ``.parquet`` / ``_stats.json`` directly in ``<subset>/``, one
``sizes.json`` per subset folder, the ``shard`` paths of the index, the shard tables and the stats flat, the card's
``data_files`` patterns flat (``commercial/commercial-train-*.tar``).

Checked once against a build by the code before the change (``git show`` of that commit, built from the same
input): the published files agree byte for byte but for the stats' timings and the Parquet files' encoding
(the same tables). Tests use it to prove that flat folders keep
loading, verifying, updating and pushing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.io.atomic import atomic_write_json, write_table
from biomedica_hf.layout import FIGURES_INDEX, STATS_SUFFIX, shard_dirs, write_dataset_sizes
from biomedica_hf.schema import SUBSETS


def _flat(rel: str) -> str:
    """``commercial/s000/g000/x.tar`` -> ``commercial/x.tar``."""
    parts = rel.split("/")
    return f"{parts[0]}/{parts[-1]}" if parts[0] in SUBSETS else rel


def _rewrite_shard_column(path: Path) -> None:
    table = pq.read_table(path)
    if "shard" not in table.column_names:
        return
    meta = pq.ParquetFile(path).metadata
    col = pa.array([_flat(s) for s in table["shard"].to_pylist()], table.schema.field("shard").type)
    table = table.set_column(table.schema.get_field_index("shard"), "shard", col)
    write_table(path, table, row_group_size=meta.row_group(0).num_rows if meta.num_row_groups else None)


def flatten(out: Path) -> list[str]:
    """Move ``out``'s shards into the flat layout (module doc); returns the flat tar paths, relative to ``out``."""
    out = Path(out)
    tars = []
    for subset in SUBSETS:
        for d in shard_dirs(out / subset)[1:]:
            for f in sorted(d.iterdir()):
                if f.name == "sizes.json":
                    f.unlink()
                    continue
                dest = out / subset / f.name
                f.rename(dest)
                if f.name.endswith(".parquet"):
                    _rewrite_shard_column(dest)
                elif f.name.endswith(STATS_SUFFIX):
                    stats = json.loads(dest.read_text())
                    for k in ("shard", "revised_from"):
                        if k in stats:
                            stats[k] = _flat(stats[k])
                    atomic_write_json(dest, stats)
                elif f.name.endswith(".tar"):
                    tars.append(dest.relative_to(out).as_posix())
            d.rmdir()
        for snap in sorted((out / subset).glob("s[0-9][0-9][0-9]")) if (out / subset).is_dir() else []:
            snap.rmdir()
    _rewrite_shard_column(out / FIGURES_INDEX)
    write_dataset_sizes(out)                      # now in the subset folders
    card = out / "README.md"
    if card.is_file():                            # the card and the table configs (figures/*.tar) as built then
        from biomedica_hf.dataset.card import write_card

        write_card(out)
        card.write_text(card.read_text().replace("/**/", "/"))
    assert not any(p.is_dir() for s in SUBSETS for p in (out / s).glob("s[0-9][0-9][0-9]"))
    return sorted(tars)

"""Where things are in a built dataset folder: the root tables, the table configs and the shard tables.

One place for the names that the build writes and every reader (loader, card, hub, verify, concepts, search) looks up.
"""
from __future__ import annotations

import json
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


STATS_SUFFIX = "_stats.json"   # a shard's completion marker (biomedica_hf.io.markers.STATS)
SIZES = "sizes.json"


def shard_folders(out: Path) -> list[Path]:
    """Every folder of the dataset that holds WebDataset shards with their stats: the licence subsets, then the
    other configs' folders (concept subsets, ...), by name."""
    root = Path(out)
    others = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SUBSETS and p.name not in TABLE_CONFIGS
                    and not p.name.startswith(("_", ".")) and any(p.glob(f"*{STATS_SUFFIX}"))) if root.is_dir() else []
    return [root / s for s in SUBSETS if (root / s).is_dir()] + others


def dataset_sizes(out: Path) -> dict[str, int]:
    """``{shard base name: samples}`` of every shard of the dataset (all licence subsets and config folders), from
    the shards' stats. Base names are unique across the dataset, so one mapping serves every folder."""
    sizes: dict[str, int] = {}
    for folder in shard_folders(out):
        for p in sorted(folder.glob(f"*{STATS_SUFFIX}")):
            stats = json.loads(p.read_text())
            name = str(stats.get("shard") or p.name.removesuffix(STATS_SUFFIX) + ".tar").rsplit("/", 1)[-1]
            if (folder / name).is_file():
                sizes[name] = int(stats["count"])
    return dict(sorted(sizes.items()))


def write_dataset_sizes(out: Path) -> dict[str, int]:
    """Write :func:`dataset_sizes` as ``sizes.json`` into every shard folder: open_clip (webdataset) looks each shard
    up by base name in the ``sizes.json`` of the *first* shard's folder, so ``::``-joined folders
    (``commercial::noncommercial::other``, a concept config with a licence subset) count without
    ``--train-num-samples`` only when every folder's ``sizes.json`` lists every shard."""
    from biomedica_hf.io.atomic import atomic_write_json

    sizes = dataset_sizes(out)
    for folder in shard_folders(out):
        if any(folder.glob("*.tar")):
            atomic_write_json(folder / SIZES, sizes)
        elif (folder / SIZES).exists():
            (folder / SIZES).unlink()
    return sizes


#: partitions whose shards share one sub-folder in the Hub-scale layout (module ``shard_folder``)
PARTITIONS_PER_FOLDER = 500


def shard_folder(subset: str, snapshot: int, partition: int, nested: bool = True) -> str:
    """The folder of a shard in the Hub-scale layout: ``<subset>/s<snapshot>/g<partition // 500>``
    (``commercial/s000/g003``), so that no folder holds more than ~5,000 entries at PMC scale after a year of
    monthly updates (each snapshot in its own folder; 500 partitions x 3 files per shard, with the validation and
    test partitions beside the first train ones, stays under 5,000 while a partition writes <= 3 shards per subset).
    ``nested=False``: the flat layout (``<subset>``) that folders built so far use, which every reader still reads.

    The grammar of the planned layout, used by ``biomedica build --dry-run`` to project folder sizes; the writer
    still writes the flat layout (see docs/publishing.md)."""
    if not nested:
        return subset
    return f"{subset}/s{snapshot:03d}/g{partition // PARTITIONS_PER_FOLDER:03d}"

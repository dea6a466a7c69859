"""Where things are in a built dataset folder: every file and folder name, the shard path grammar, the configs.

One place for the names that the build writes and every reader (loader, card, hub, verify, concepts, panels,
search, eval) looks up: the root files (:data:`FIGURES_INDEX`, :data:`ARTICLES_TABLE`, :data:`LEDGER`, ...), the
local folders (:data:`WORK_DIR`, :data:`CONCEPTS_DIR`, :data:`PANELS_DIR`), the config folders (licence subsets,
table configs, derived configs: :func:`config_folders`), the shard grammar (:func:`shard_folder`,
:func:`shard_group`, :func:`shard_paths`) and ``sizes.json`` (:func:`write_dataset_sizes`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from biomedica_hf.schema import FIGURES_CONFIG_FIELDS, FIGURES_INDEX_FIELDS, SUBSETS

FIGURES_INDEX = "figures.parquet"
ARTICLES_TABLE = "articles.parquet"
LEDGER = "ledger.parquet"                 # every article, figure and file with its fate
LEDGER_SUMMARY = "ledger_summary.txt"
DUPLICATES = "duplicates.parquet"         # exact duplicate images removed (one row per removed sample)
BUILD_SUMMARY = "build_summary.json"
CARD = "README.md"                        # the dataset card
CARD_DIR = "card"                         # the card's plots
WORK_DIR = "_work"                        # build staging, state and caches: never published
PANELS_INDEX = "panels.parquet"           # written by ``biomedica panels`` (biomedica_hf.panels), read by the loader
PANELS_DIR = "panels"                     # per-shard panel tables and markers (local)
DECONTAMINATION_DIR = "decontamination"   # `biomedica decontaminate`: report.json + exclusions.txt (published)
CONCEPTS_DIR = "concepts"                 # embeddings, clusters, labels, selections (local)
CONCEPT_FILTERED = "concept-filtered"     # the concept selections' folders (biomedica_hf.concepts.subsets)
CONCEPT_BALANCED = "concept-balanced"
CONCEPT_CONFIGS = (CONCEPT_FILTERED, CONCEPT_BALANCED)
PANEL_CONFIG_SUFFIX = "-panels"           # ``<licence>-panels``: the panel crops of one licence subset
# table configs: folder of JSON-row tars -> (parquet source, key column, columns left out)
TABLE_CONFIGS = {
    "articles": (ARTICLES_TABLE, "pmcid", ()),
    "figures": (FIGURES_INDEX, "key",
                tuple(n for n, _, _ in FIGURES_INDEX_FIELDS if n not in {f[0] for f in FIGURES_CONFIG_FIELDS})),
}
ROWS_PER_TABLE_TAR = 100_000
DUP_TABLES = {"near_dup_of": "near_duplicates.parquet", "caption_dup_of": "caption_duplicates.parquet"}
#: the files at the folder root that are part of the published dataset (anything else at the root stays local)
ROOT_FILES = (CARD, ARTICLES_TABLE, FIGURES_INDEX, LEDGER, DUPLICATES, *DUP_TABLES.values(), LEDGER_SUMMARY,
              BUILD_SUMMARY)


def panel_config(subset: str) -> str:
    """The panel config (and folder) of a licence subset: ``commercial-panels``."""
    return f"{subset}{PANEL_CONFIG_SUFFIX}"


def config_folders(out: Path) -> list[Path]:
    """The folders of the derived configs (concept selections, ``<licence>-panels``, ...): every top-level folder
    other than the licence subsets, the table configs, the card's plots and the local ones (``_work``, hidden,
    ``concepts``, ``panels``) that holds tars, flat or in sub-folders; by name. With the licence subsets and
    :data:`TABLE_CONFIGS` these are all the configs a folder has."""
    root = Path(out)
    if not root.is_dir():
        return []
    skip = {*SUBSETS, *TABLE_CONFIGS, CARD_DIR, CONCEPTS_DIR, PANELS_DIR}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip
                  and not p.name.startswith(("_", ".")) and folder_files(p, "*.tar"))


def shard_tables(out: Path) -> list[Path]:
    """Per-shard Parquet files of every subset, in subset then shard order (flat and sub-folder layouts)."""
    return [p for s in SUBSETS for p in folder_files(Path(out) / s, "*.parquet")]


def table_shard(out: Path, table: Path) -> str:
    """The tar of a shard table (``shard_tables``), relative to the dataset folder: ``commercial/s000/g000/<stem>.tar``
    (``commercial/<stem>.tar`` in a flat folder), as the index's ``shard`` column names it."""
    return f"{Path(table).relative_to(out).with_suffix('').as_posix()}.tar"


#: the sub-folders of a shard folder in the Hub-scale layout (:func:`shard_folder`): ``sNNN/gNNN``
SUB_FOLDER_GLOB = "s[0-9][0-9][0-9]/g[0-9][0-9][0-9]"


def shard_dirs(folder: Path) -> list[Path]:
    """The directories of one shard folder (a licence subset, a config folder) that may hold shards: the folder
    itself (the flat layout of folders built before the sub-folder layout, concept configs) and its
    ``sNNN/gNNN`` sub-folders (:func:`shard_folder`), in name order. Only these: a stray ``.cache/`` is never read."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [folder] + sorted(p for p in folder.glob(SUB_FOLDER_GLOB) if p.is_dir())


_GROUP_RE = re.compile(r"(?:^|/)(s[0-9]{3}/g[0-9]{3})/[^/]+$")


def shard_group(shard: str) -> str:
    """The ``sNNN/gNNN`` sub-folder of a shard path (``commercial/s000/g003/x.tar`` -> ``s000/g003``), ``""`` for a
    shard of the flat layout (``commercial/x.tar``). A shard derived from another one (a concept copy, a panel
    shard) goes into its source's group in its own config folder, so a derived folder is bounded like the source's."""
    m = _GROUP_RE.search(shard)
    return m.group(1) if m else ""


def in_group(group: str, name: str) -> str:
    """``name`` in the sub-folder ``group`` (:func:`shard_group`): ``s000/g003/name``, or ``name`` when flat."""
    return f"{group}/{name}" if group else name


def shard_paths(out: Path, name: str) -> tuple[Path, Path, Path]:
    """(tar, parquet, stats) of the build's shard ``name`` (``subset/stem`` or ``subset/sNNN/gNNN/stem``)."""
    base = Path(out) / name
    return base.parent / f"{base.name}.tar", base.parent / f"{base.name}.parquet", \
        base.parent / f"{base.name}{STATS_SUFFIX}"


def folder_files(folder: Path, pattern: str) -> list[Path]:
    """The files matching ``pattern`` (``*.tar``, ``*_stats.json``) of one shard folder, flat and in its
    sub-folders, in relative-path order."""
    return [p for d in shard_dirs(folder) for p in sorted(d.glob(pattern)) if p.is_file()]


def data_files_glob(folder: str, pattern: str = "*.tar") -> str:
    """The ``data_files`` pattern of a config whose shards are in ``folder``, flat or in sub-folders:
    ``commercial/**/*.tar`` (``**`` matches no directory too, so a flat folder matches as well)."""
    return f"{folder}/**/{pattern}"


STATS_SUFFIX = "_stats.json"   # a shard's completion marker (biomedica_hf.io.markers.STATS)
SIZES = "sizes.json"


def shard_folders(out: Path) -> list[Path]:
    """Every folder of the dataset that holds WebDataset shards with their stats: the licence subsets, then the
    derived configs' folders with stats (concept selections; :func:`config_folders`), by name."""
    root = Path(out)
    others = [p for p in config_folders(root) if folder_files(p, f"*{STATS_SUFFIX}")]
    return [root / s for s in SUBSETS if (root / s).is_dir()] + others


def dataset_sizes(out: Path) -> dict[str, int]:
    """``{shard base name: samples}`` of every shard of the dataset (all licence subsets and config folders), from
    the shards' stats. Base names are unique across the dataset, so one mapping serves every folder."""
    sizes: dict[str, int] = {}
    for folder in shard_folders(out):
        for p in folder_files(folder, f"*{STATS_SUFFIX}"):
            stats = json.loads(p.read_text())
            name = str(stats.get("shard") or p.name.removesuffix(STATS_SUFFIX) + ".tar").rsplit("/", 1)[-1]
            if (p.parent / name).is_file():
                sizes[name] = int(stats["count"])
    return dict(sorted(sizes.items()))


def sizes_dirs(out: Path) -> list[Path]:
    """Every directory of the dataset that holds tars (a flat shard folder, each ``sNNN/gNNN`` sub-folder): each
    has its ``sizes.json``."""
    return [d for folder in shard_folders(out) for d in shard_dirs(folder) if any(d.glob("*.tar"))]


def write_dataset_sizes(out: Path) -> dict[str, int]:
    """Write :func:`dataset_sizes` as ``sizes.json`` into every directory that holds tars (:func:`sizes_dirs`):
    open_clip (webdataset) looks each shard up by base name in the ``sizes.json`` of the *first* shard's own
    directory, so ``::``-joined folders (``commercial::noncommercial::other``, a concept config with a licence
    subset) and shards spread over sub-folders count without ``--train-num-samples`` only when every such
    directory's ``sizes.json`` lists every shard. A directory without tars loses its stale ``sizes.json``."""
    from biomedica_hf.io.atomic import atomic_write_json

    sizes = dataset_sizes(out)
    for folder in shard_folders(out):
        for d in shard_dirs(folder):
            if any(d.glob("*.tar")):
                atomic_write_json(d / SIZES, sizes)
            elif (d / SIZES).exists():
                (d / SIZES).unlink()
    return sizes


#: partitions whose shards share one sub-folder in the Hub-scale layout (module ``shard_folder``)
PARTITIONS_PER_FOLDER = 500


def shard_folder(subset: str, snapshot: int, partition: int, nested: bool = True) -> str:
    """The folder of a shard in the Hub-scale layout: ``<subset>/s<snapshot>/g<partition // 500>``
    (``commercial/s000/g003``), so that no folder holds more than ~5,000 entries at PMC scale after a year of
    monthly updates (each snapshot in its own folder; 500 partitions x 3 files per shard, with the validation and
    test partitions beside the first train ones, stays under 5,000 while a partition writes <= 3 shards per subset).
    ``nested=False``: the flat layout (``<subset>``) of folders built before, which every reader still reads.

    The one home of the path grammar: the shard writer (``ingest.shards.shard_name``) writes here, and
    ``biomedica build --dry-run`` projects folder sizes from it (see docs/publishing.md)."""
    if not nested:
        return subset
    return f"{subset}/s{snapshot:03d}/g{partition // PARTITIONS_PER_FOLDER:03d}"

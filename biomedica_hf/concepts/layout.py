"""Where the concept stage keeps its files, and how it reads samples straight out of the shards.

::

    DIR/embeddings/<subset>/NNNNNN.npy          float32 [n, dim], L2-normalised, rows in shard order
    DIR/embeddings/<subset>/NNNNNN.parquet      key (and tar offsets) of each row, same order
    DIR/embeddings/<subset>/NNNNNN_done.json    written last: the shard's completion marker
    DIR/embeddings/info.json                    model, pooling, dim, image size, last run
    DIR/concepts/projected/<subset>/NNNNNN.npy  PCA projection of the embeddings (cluster.py)
    DIR/concepts/cluster_model.npz              PCA components/mean, centroids, params
    DIR/concepts/clusters.parquet               key, shard, cluster, distance (one row group per shard)
    DIR/concepts/sheets/                        contact sheets, index.html, blank annotation file
    DIR/concepts/labels.parquet                 key -> cluster, panel type, global/local concepts
    DIR/concepts/label_report.json              votes, ties and disagreements
    DIR/concepts/<subset-name>.parquet          a concept subset: keys + where they live
    DIR/<subset-name>/*.tar                     the subset materialised as WebDataset shards

Samples are read with the byte offsets the shard writer recorded (``image_offset``/``image_size``, through
``biomedica_hf.io.ranges``; files are written with ``biomedica_hf.io.atomic``):
the per-shard Parquet files hold the same rows as ``figures.parquet`` (which is their concatenation),
one shard at a time, so memory stays bounded by one shard's index.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.layout import CONCEPTS_DIR, FIGURES_INDEX, shard_tables

EMBED_DIR = "embeddings"
PROJECTED_DIR = "projected"
CLUSTER_MODEL = "cluster_model.npz"
CLUSTERS = "clusters.parquet"
LABELS = "labels.parquet"
LABEL_REPORT = "label_report.json"
SHEETS_DIR = "sheets"
LOCATION_COLUMNS = ["key", "shard", "tar_offset", "tar_size", "image_offset", "image_size"]
# columns that labelling adds to figures.parquet and the per-shard Parquet files
LABEL_COLUMNS = ("cluster", "panel_type", "panel_subtype", "concepts", "local_concepts")
LABEL_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("cluster", pa.int32()), ("panel_type", pa.string()),
    ("panel_subtype", pa.string()), ("concepts", pa.list_(pa.string())), ("local_concepts", pa.list_(pa.string())),
])


def concepts_dir(out: Path) -> Path:
    return Path(out) / CONCEPTS_DIR


def shard_stem(shard: str) -> str:
    """``commercial/000000.tar`` -> ``commercial/000000``."""
    return shard.removesuffix(".tar")


def shard_index_files(out: Path) -> list[Path]:
    """The per-shard Parquet files (the figures index, one shard at a time), in index order."""
    return shard_tables(Path(out))


def read_shard_index(path: Path, columns: Iterable[str] = LOCATION_COLUMNS) -> pa.Table:
    """One shard's rows (only ``columns``), in tar order."""
    table = pq.read_table(path, columns=list(columns))
    if "tar_offset" in table.column_names:
        table = table.sort_by("tar_offset")
    return table


def figures_index_path(out: Path) -> Path:
    return Path(out) / FIGURES_INDEX


def image_from_bytes(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data))


def key_priority(keys: Iterable[str], seed: int = 0) -> np.ndarray:
    """A seeded pseudo-random uint64 per key, stable under row order and dataset growth.

    CRC-32 of the key, mixed with the seed through SplitMix64. Sorting by it is a seeded shuffle:
    "the first n by priority" is a deterministic random sample that keeps its members when rows are
    added or reordered.
    """
    import zlib

    x = np.fromiter((zlib.crc32(k.encode()) for k in keys), dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15))
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))

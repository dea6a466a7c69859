"""The index folder: file names and the ``index.json`` manifest (written last: the completion marker).

::

    INDEX/index.json                manifest: format, versions, dataset, encoder, dense + BM25 params, fusion
    INDEX/meta.parquet              one row per figure (row i = vector id i): key, pmcid, caption, references,
                                    subset, licence, year, concepts, shard + byte range, article title/journal
    INDEX/articles.parquet          article metadata (no full text) for /article/{pmcid}
    INDEX/image.faiss               image vectors (if the encoder has an image side)
    INDEX/caption.faiss             caption vectors (if it has a text side)
    INDEX/<name>.f16.npy            float16 vectors for exact re-ranking (IVF-PQ indexes only)
    INDEX/bm25/                     bm25s index + tokenizer vocabulary
    INDEX/embeddings/<name>/NNNNNN.npy + NNNNNN.done.json   embedding chunks (resume state)
    INDEX/README.md                 a short card, so the folder can be pushed to the Hub as is
"""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = "biomedica-search-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
META = "meta.parquet"
ARTICLES = "articles.parquet"
BM25_DIR = "bm25"
EMBED_DIR = "embeddings"
DENSE_NAMES = ("image", "caption")


def faiss_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / f"{name}.faiss"


def vectors_path(index_dir: Path, name: str) -> Path:
    return Path(index_dir) / f"{name}.f16.npy"


def versions() -> dict[str, str | None]:
    """Versions of the packages an index depends on."""
    out: dict[str, str | None] = {}
    for dist in ("biomedica-hf", "faiss-cpu", "bm25s", "torch", "open_clip_torch", "transformers", "numpy", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def read_manifest(index_dir: Path) -> dict[str, Any]:
    path = Path(index_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{index_dir}: no {MANIFEST} (not an index, or `biomedica index` did not finish)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported index format {manifest.get('format')!r} "
                         f"v{manifest.get('format_version')}")
    return manifest


def write_manifest(index_dir: Path, manifest: dict[str, Any]) -> Path:
    from biomedica_hf.io.atomic import atomic_write_bytes

    path = Path(index_dir) / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return path


def resolve_dataset(index_dir: Path, manifest: dict[str, Any], override: Path | None = None) -> Path | None:
    """The dataset folder holding the shards (for image bytes): override, relative path, absolute path."""
    if override is not None:
        return Path(override)
    ds = manifest.get("dataset", {})
    for candidate in (Path(index_dir) / ds["relpath"] if ds.get("relpath") else None,
                      Path(ds["path"]) if ds.get("path") else None):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None

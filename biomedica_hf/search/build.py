"""``biomedica index``: embeddings (resumable chunks), FAISS indexes, BM25, metadata and the manifest.

Embeddings are computed in chunks of ``chunk_size`` rows of ``meta.parquet``; each chunk is saved
(``NNNNNN.npy``) and then marked done (``NNNNNN.done.json``: rows, keys hash, encoder fingerprint), so
a killed run resumes at the first unfinished chunk. Image embeddings that the concept stage already
wrote to ``DATASET/embeddings/`` are reused when they come from the same model and preprocessing.
The manifest is written last.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from biomedica_hf.io.atomic import save_npy, write_table
from biomedica_hf.io.markers import CHUNK_DONE, clear_marker, is_done, marker_path, write_marker
from biomedica_hf.io.ranges import iter_many
from biomedica_hf.layout import ARTICLES_TABLE, FIGURES_INDEX
from biomedica_hf.search import layout
from biomedica_hf.search.bm25 import BM25Index, document_text
from biomedica_hf.search.dense import FLAT_MAX, build_index, choose_params, write_f16
from biomedica_hf.search.encoders import EncoderSet, load_encoders
from biomedica_hf.search.fusion import RRF_K
from biomedica_hf.search.meta import article_table, build_meta_table

log = logging.getLogger(__name__)
DEFAULT_BUDGET = 2 * 1024**3


@dataclass
class IndexConfig:
    """Options of ``biomedica index``."""

    encoder: str = "clip:ViT-B-32"
    memory_budget: int = DEFAULT_BUDGET   # bytes for all dense indexes together (vectors in RAM)
    chunk_size: int = 2048                # rows per embedding chunk (resume granularity)
    batch_size: int = 32
    flat_max: int = FLAT_MAX
    reuse_embeddings: bool = True         # DATASET/embeddings/ from the concept stage, when compatible
    progress: bool = True


def _keys_sha(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _chunk_paths(index_dir: Path, name: str, i: int) -> tuple[Path, Path]:
    base = Path(index_dir) / layout.EMBED_DIR / name / f"{i:06d}"
    return base.with_suffix(".npy"), marker_path(base, CHUNK_DONE)


def embed_in_chunks(index_dir: Path, name: str, keys: Sequence[str], encode: Callable[[int, int], np.ndarray],
                    fingerprint: dict[str, Any], chunk_size: int, progress: bool = True) -> list[np.ndarray]:
    """Memory-mapped embedding chunks for rows ``[0, len(keys))``; finished chunks are not recomputed."""
    from tqdm.auto import tqdm

    chunks = []
    starts = range(0, len(keys), chunk_size)
    for i, start in enumerate(tqdm(starts, desc=f"embed {name}", unit="chunk", disable=not progress)):
        stop = min(start + chunk_size, len(keys))
        npy, done = _chunk_paths(index_dir, name, i)
        marker = {**fingerprint, "start": start, "rows": stop - start, "keys_sha256": _keys_sha(keys[start:stop])}
        if is_done(done, marker, files=[npy]):
            chunks.append(np.load(npy, mmap_mode="r"))
            continue
        clear_marker(done)
        vectors = np.ascontiguousarray(encode(start, stop), dtype=np.float32)
        save_npy(npy, vectors)
        write_marker(done, {**marker, "dim": int(vectors.shape[1])})
        chunks.append(np.load(npy, mmap_mode="r"))
    return chunks


def _image_encode_fn(dataset: Path, meta, encoder, batch_size: int) -> Callable[[int, int], np.ndarray]:
    shards = meta["shard"].to_pylist()
    offsets = meta["image_offset"].to_numpy()
    sizes = meta["image_size"].to_numpy()

    def encode(start: int, stop: int) -> np.ndarray:
        out = []
        datas = iter_many(dataset, shards[start:stop], offsets[start:stop], sizes[start:stop])
        batch: list[bytes] = []
        for data in datas:
            batch.append(data)
            if len(batch) == batch_size:
                out.append(encoder.encode_images(batch))
                batch = []
        if batch:
            out.append(encoder.encode_images(batch))
        return np.concatenate(out)
    return encode


def _text_encode_fn(captions: Sequence[str], encoder, batch_size: int) -> Callable[[int, int], np.ndarray]:
    def encode(start: int, stop: int) -> np.ndarray:
        return np.concatenate([encoder.encode_text([c or "" for c in captions[i:min(i + batch_size, stop)]])
                               for i in range(start, stop, batch_size)])
    return encode


CONCEPT_EMBEDDINGS = "embeddings"   # DATASET/embeddings/ of the concept stage (`biomedica embed`)


def concept_embeddings(dataset: Path) -> tuple[dict[str, Any], Iterator[tuple[list[str], np.ndarray]]]:
    """The concept stage's ``DATASET/embeddings/`` as written on disk: ``info.json`` (model, image size, fit)
    and, for every shard whose ``NNNNNN_done.json`` marker exists, its row keys (``NNNNNN.parquet``) and
    vectors (``NNNNNN.npy``, memory-mapped). Read as a file format, so search does not import ``concepts``."""
    root = Path(dataset) / CONCEPT_EMBEDDINGS
    info_path = root / "info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}

    def shards() -> Iterator[tuple[list[str], np.ndarray]]:
        for done in sorted(root.rglob("*_done.json")):
            base = done.with_name(done.name.removesuffix("_done.json"))
            keys = pq.read_table(base.with_suffix(".parquet"), columns=["key"])["key"].to_pylist()
            emb = np.load(base.with_suffix(".npy"), mmap_mode="r")
            if emb.shape[0] != len(keys):
                raise ValueError(f"{base}.npy: {emb.shape[0]} rows for {len(keys)} keys")
            yield keys, emb
    return info, shards()


def reusable_image_embeddings(dataset: Path, keys: Sequence[str], encoder) -> np.ndarray | None:
    """The concept stage's image embeddings in ``keys`` order, if made by this encoder's model and
    preprocessing and complete; else None."""
    settings = getattr(encoder, "concept_settings", None)
    if settings is None:
        return None
    info, shards = concept_embeddings(dataset)

    def same(key: str) -> bool:
        a, b = info.get(key), settings[key]
        return a == b or (key == "model" and isinstance(a, str) and Path(a).exists()
                          and Path(a).resolve() == Path(b).resolve())
    if not info or not all(same(k) for k in settings):
        return None
    row_of = {k: i for i, k in enumerate(keys)}
    out = np.full((len(keys), encoder.dim), np.nan, np.float32)
    try:
        for shard_keys, emb in shards:
            rows = [row_of.get(k, -1) for k in shard_keys]
            sel = [j for j, r in enumerate(rows) if r >= 0]
            out[[rows[j] for j in sel]] = np.asarray(emb[sel], np.float32)
    except (OSError, ValueError) as exc:
        log.info("concept embeddings not reusable: %s", exc)
        return None
    if np.isnan(out).any():
        return None
    log.info("reusing %d image embeddings from %s/embeddings", len(keys), dataset)
    return out


def _card(manifest: dict[str, Any]) -> str:
    enc = manifest["encoder"]
    dense = ", ".join(f"{n}: {p['factory']} ({p['ntotal']} x {p['dim']})" for n, p in manifest["dense"].items())
    return (f"---\ntags:\n- biomedica\n- faiss\n- bm25\n---\n# BIOMEDICA search index\n\n"
            f"Built by `biomedica index` (biomedica-hf {manifest['versions'].get('biomedica-hf')}) from "
            f"{manifest['dataset']['num_figures']} figures.\n\n"
            f"* encoder: `{enc['spec']}` (joint space: {enc['joint']})\n* dense: {dense or 'none'}\n"
            f"* BM25 over captions + in-text references; RRF k={manifest['fusion']['k']}\n\n"
            "Serve it with `biomedica serve INDEX_DIR --dataset DATASET_DIR` (images are read from the dataset's "
            "shards), or use `biomedica_hf.search.Retriever(INDEX_DIR)`.\n")


def build_search_index(dataset: str | os.PathLike, out: str | os.PathLike | None = None,
                       config: IndexConfig | None = None, encoders: EncoderSet | None = None) -> Path:
    """Build the search index of a dataset folder; returns the index folder (``DATASET/search_index``
    by default). Rerunning resumes finished embedding chunks."""
    cfg = config or IndexConfig()
    dataset = Path(dataset)
    index_dir = Path(out) if out is not None else dataset / "search_index"
    index_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    figures_path = dataset / FIGURES_INDEX
    if not figures_path.exists():
        raise FileNotFoundError(f"{dataset}: no figures.parquet (run `biomedica build` first)")
    figures = pq.read_table(figures_path)
    articles_path = dataset / ARTICLES_TABLE
    articles = pq.read_table(articles_path) if articles_path.exists() else None
    meta = build_meta_table(figures, articles)
    if meta.num_rows == 0:
        raise ValueError(f"{dataset}: figures.parquet has no rows")
    write_table(index_dir / layout.META, meta)
    if articles is not None:
        write_table(index_dir / layout.ARTICLES, article_table(articles))

    encoders = encoders or load_encoders(cfg.encoder)
    keys = meta["key"].to_pylist()
    timings: dict[str, float] = {}
    vector_sets: dict[str, list[np.ndarray]] = {}
    reused_from: str | None = None
    if encoders.image is not None:
        t = time.perf_counter()
        reused = reusable_image_embeddings(dataset, keys, encoders.image) if cfg.reuse_embeddings else None
        fp = {"encoder": encoders.parts.get("image"), "fingerprint": encoders.image.fingerprint}
        encode = (lambda a, b: reused[a:b]) if reused is not None else \
            _image_encode_fn(dataset, meta, encoders.image, cfg.batch_size)
        vector_sets["image"] = embed_in_chunks(index_dir, "image", keys, encode, fp, cfg.chunk_size, cfg.progress)
        timings["embed_image_s"] = round(time.perf_counter() - t, 3)
        reused_from = str(dataset / "embeddings") if reused is not None else None
    if encoders.text is not None:
        t = time.perf_counter()
        fp = {"encoder": encoders.parts.get("text"), "fingerprint": encoders.text.fingerprint}
        encode = _text_encode_fn(meta["caption"].to_pylist(), encoders.text, cfg.batch_size)
        vector_sets["caption"] = embed_in_chunks(index_dir, "caption", keys, encode, fp, cfg.chunk_size, cfg.progress)
        timings["embed_caption_s"] = round(time.perf_counter() - t, 3)

    dense: dict[str, dict[str, Any]] = {}
    per_index_budget = cfg.memory_budget // max(1, len(vector_sets))
    for name, chunks in vector_sets.items():
        t = time.perf_counter()
        dim = int(chunks[0].shape[1])
        params = choose_params(len(keys), dim, per_index_budget, cfg.flat_max)
        index = build_index(chunks, params)
        from biomedica_hf.search.dense import DenseIndex

        DenseIndex(index, params).save(layout.faiss_path(index_dir, name))
        if params.refine:
            write_f16(layout.vectors_path(index_dir, name), chunks, dim)
        else:
            layout.vectors_path(index_dir, name).unlink(missing_ok=True)
        dense[name] = {**params.as_dict(), "file": layout.faiss_path(index_dir, name).name}
        timings[f"index_{name}_s"] = round(time.perf_counter() - t, 3)
    for name in layout.DENSE_NAMES:  # a rebuild with another encoder must not leave stale indexes
        if name not in dense:
            layout.faiss_path(index_dir, name).unlink(missing_ok=True)

    t = time.perf_counter()
    texts = [document_text(c, r) for c, r in zip(meta["caption"].to_pylist(), meta["references"].to_pylist())]
    BM25Index.build(texts).save(index_dir / layout.BM25_DIR)
    timings["bm25_s"] = round(time.perf_counter() - t, 3)

    try:
        relpath = os.path.relpath(dataset.resolve(), index_dir.resolve())
    except ValueError:  # another drive (Windows)
        relpath = None
    manifest = {
        "format": layout.FORMAT, "format_version": layout.FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": layout.versions(),
        "dataset": {"path": str(dataset.resolve()), "relpath": relpath, "num_figures": len(keys),
                    "figures_sha256": _keys_sha(keys)},
        "encoder": {**encoders.describe(), "image_embeddings_reused_from": reused_from},
        "config": asdict(cfg),
        "dense": dense,
        "bm25": {"dir": layout.BM25_DIR, "fields": ["caption", "references"], "stopwords": "en",
                 **json.loads((index_dir / layout.BM25_DIR / "biomedica_bm25.json").read_text())},
        "fusion": {"method": "rrf", "k": RRF_K},
        "timings": {**timings, "total_s": round(time.perf_counter() - t0, 3)},
    }
    (index_dir / "README.md").write_text(_card(manifest))
    layout.write_manifest(index_dir, manifest)
    return index_dir

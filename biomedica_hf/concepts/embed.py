"""Image embeddings for every sample of a dataset folder (DINOv2 by default, any ``AutoModel``).

* **Model.** ``transformers`` ``AutoModel`` + ``AutoImageProcessor`` from a Hub id or a local folder
  (``save_pretrained`` output), or a CLIP model SPEC (``biomedica_hf.clip.model``: its image tower); a
  model object + processor can be passed instead. The default is ``facebook/dinov2-with-registers-large``
  (ViT-L/14 with registers, as BIOMEDICA). Loading, image preparation and pooling live in
  ``biomedica_hf.clip.pixels`` and ``biomedica_hf.clip.backbones`` (shared with search).
* **Feature.** ``pooler_output`` when the model has one, else the CLS token ``last_hidden_state[:, 0]``.
  For DINOv2 both are the same vector (the CLS token after the final layer norm; register tokens
  are never pooled). Cast to float32 and L2-normalised, so a dot product is the cosine similarity.
* **Pixels.** Each image is decoded from its byte range in the shard (``image_offset``/``image_size``
  of the index: nothing else of the tar is read). JPEGs decode at a reduced scale (``draft``) no
  smaller than the target; transparency is flattened onto white; then ``fit``:

  - ``pad`` (default): scale the longest side to ``image_size`` and pad to a square with white, so a
    wide multi-panel figure is seen whole (figures have white backgrounds; cropping would cut panels);
  - ``crop``: shortest side to ``image_size``, centre crop (DINOv2's own recipe);
  - ``squash``: resize to ``image_size`` x ``image_size`` ignoring the aspect ratio.

  The processor then only rescales and normalises (its resize and crop are switched off), with the
  model's own mean/std.
* **Output.** Per shard ``embeddings/<subset>/NNNNNN.npy`` (float32 ``[n, dim]``, rows in tar order),
  ``NNNNNN.parquet`` (key, tar_offset per row) and ``NNNNNN_done.json`` written last (model, image
  size, fit, dim, count, SHA-256 of the keys). A rerun skips every shard whose marker matches the
  settings and the shard's current keys: delete a marker (or change the model) to recompute it.
* **Speed.** Decoding runs in a thread pool one batch ahead of the model; bf16 autocast on CUDA.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.clip.backbones import check_image_model, embed_images, load_image_model
from biomedica_hf.clip.device import pick_device
from biomedica_hf.clip.pixels import FITS, prepare_image
from biomedica_hf.concepts.layout import EMBED_DIR, read_shard_index, shard_index_files, shard_stem
from biomedica_hf.io.atomic import atomic_write_json, save_npy, write_table
from biomedica_hf.io.markers import DONE, clear_marker, is_done, marker_path, read_marker, write_marker
from biomedica_hf.io.ranges import LocalFile

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/dinov2-with-registers-large"
POOLING = "pooler_output (else CLS token of last_hidden_state), float32, L2-normalised"
INFO = "info.json"


@dataclass(frozen=True)
class ShardJob:
    """The samples of one shard, in tar order."""

    shard: str                  # "commercial/000000.tar"
    keys: list[str]
    tar_offsets: np.ndarray
    image_offsets: np.ndarray
    image_sizes: np.ndarray

    @property
    def keys_sha256(self) -> str:
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()


# ------------------------------------------------------------------------------------ files
def embeddings_dir(out: Path) -> Path:
    return Path(out) / EMBED_DIR


def shard_outputs(out: Path, shard: str) -> tuple[Path, Path, Path]:
    """(``.npy``, keys ``.parquet``, ``_done.json``) of one shard's embeddings."""
    base = embeddings_dir(out) / shard_stem(shard)
    return base.with_suffix(".npy"), base.with_suffix(".parquet"), marker_path(base, DONE)


def load_job(index_file: Path) -> ShardJob | None:
    """The samples of one shard from its per-shard Parquet (None for an empty shard)."""
    t = read_shard_index(index_file, ["key", "shard", "tar_offset", "image_offset", "image_size"])
    if t.num_rows == 0:
        return None
    return ShardJob(shard=t["shard"][0].as_py(), keys=t["key"].to_pylist(), tar_offsets=t["tar_offset"].to_numpy(),
                    image_offsets=t["image_offset"].to_numpy(), image_sizes=t["image_size"].to_numpy())


def shard_jobs(out: Path) -> Iterator[ShardJob]:
    """Every non-empty shard of the folder with its samples in tar order, one shard loaded at a time."""
    for path in shard_index_files(out):
        job = load_job(path)
        if job is not None:
            yield job


def marker_matches(out: Path, job: ShardJob, settings: dict[str, Any]) -> bool:
    """True when the shard's embeddings exist and were computed with ``settings`` for its current keys."""
    npy, keys, done = shard_outputs(out, job.shard)
    return is_done(done, {**settings, "keys_sha256": job.keys_sha256, "count": len(job.keys)}, files=[npy, keys])


def iter_embeddings(out: Path, mmap: bool = True) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """(shard, keys, embeddings) for every shard, in index order; fails if a shard is not embedded."""
    for job in shard_jobs(out):
        yield job.shard, job.keys, load_shard_embeddings(out, job.shard, len(job.keys), mmap)


def load_shard_embeddings(out: Path, shard: str, rows: int | None = None, mmap: bool = True) -> np.ndarray:
    """One shard's embedding matrix (memory-mapped by default), checked against its marker."""
    npy, _, done = shard_outputs(out, shard)
    if read_marker(done) is None:
        raise FileNotFoundError(f"{shard} has no embeddings ({done} missing): run `biomedica embed {out}`")
    arr = np.load(npy, mmap_mode="r" if mmap else None)
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"{npy}: {arr.shape[0]} rows for {rows} samples: re-run `biomedica embed`")
    return arr


def embedded_shards(out: Path) -> list[tuple[str, np.ndarray]]:
    """(shard, memory-mapped embeddings) of every shard, without holding any keys in memory."""
    out = Path(out)
    result = []
    for path in shard_index_files(out):
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows:
            shard = pq.read_table(path, columns=["shard"]).slice(0, 1)["shard"][0].as_py()
            result.append((shard, load_shard_embeddings(out, shard, rows)))
    return result


def embedding_keys(out: Path, shard: str) -> list[str]:
    """The keys of one shard's embedding rows, in row order."""
    return pq.read_table(shard_outputs(out, shard)[1], columns=["key"])["key"].to_pylist()


def read_info(out: Path) -> dict[str, Any]:
    path = embeddings_dir(out) / INFO
    return json.loads(path.read_text()) if path.exists() else {}


# ------------------------------------------------------------------------------------ the run
def _decoded_batches(tar: Path, job: ShardJob, batch_size: int, pool: ThreadPoolExecutor, image_size: int,
                     fit: str) -> Iterator[list[Any]]:
    """Decoded images of a shard in batches; the next batch decodes while the caller runs the model."""
    pending: list[Future] | None = None
    with LocalFile(tar) as fh:
        for start in range(0, len(job.keys), batch_size):
            stop = start + batch_size
            datas = fh.ranges(job.image_offsets[start:stop], job.image_sizes[start:stop])
            futures = [pool.submit(prepare_image, d, image_size, fit) for d in datas]
            if pending is not None:
                yield _results(pending, job, start - batch_size)
            pending = futures
    if pending is not None:
        yield _results(pending, job, (len(job.keys) - 1) // batch_size * batch_size)


def _results(futures: list[Future], job: ShardJob, first: int) -> list[Any]:
    images = []
    for i, fut in enumerate(futures):
        try:
            images.append(fut.result())
        except Exception as exc:  # name the sample: a shard of 10,000 must say which one is bad
            raise RuntimeError(f"{job.shard}: cannot decode {job.keys[first + i]}: {exc}") from exc
    return images


_EMBED_WORKER: dict[str, Any] = {}


def _init_embed_worker(model: Any, processor: Any, device: str, batch_size: int, image_size: int, fit: str,
                       settings: dict[str, Any], workers: int | None) -> None:
    """Load the model once per worker process (or once in-process for the local executor)."""
    net, proc, _ = load_image_model(model, processor)
    _EMBED_WORKER.update(net=net.to(device), proc=proc, device=device, batch_size=batch_size,
                         image_size=image_size, fit=fit, settings=settings,
                         workers=workers or min(4, os.cpu_count() or 1))


def _embed_shard_task(args: tuple) -> tuple[str, int, int]:
    """One task unit: embed one shard and write its outputs + completion marker. (shard, count, dim)."""
    out, path, bar = args
    w = _EMBED_WORKER
    job = load_job(path)
    t0 = time.perf_counter()
    parts = []
    with ThreadPoolExecutor(max_workers=w["workers"]) as pool:
        for images in _decoded_batches(out / job.shard, job, w["batch_size"], pool, w["image_size"], w["fit"]):
            parts.append(embed_images(w["net"], w["proc"], images, w["device"]))
            if bar is not None:
                bar.update(len(images))
    emb = np.concatenate(parts)
    dim = int(emb.shape[1])
    npy, keys_path, done = shard_outputs(out, job.shard)
    clear_marker(done)          # a crash while the files are replaced leaves no marker over them
    save_npy(npy, emb)
    write_table(keys_path, pa.table({"key": pa.array(job.keys, pa.string()),
                                     "tar_offset": pa.array(job.tar_offsets, pa.int64())}))
    write_marker(done, {**w["settings"], "shard": job.shard, "count": len(job.keys), "dim": dim,
                        "keys_sha256": job.keys_sha256, "pooling": POOLING, "device": w["device"],
                        "seconds": round(time.perf_counter() - t0, 3)})
    return job.shard, len(job.keys), dim


def embed_dataset(dataset_dir: str | os.PathLike, model: Any = DEFAULT_MODEL, batch_size: int = 32,
                  device: str = "auto", image_size: int = 224, progress: bool = True, *, processor: Any = None,
                  fit: str = "pad", workers: int | None = None, force: bool = False, executor: str = "local",
                  address: str | None = None) -> Path:
    """Embed every sample of ``dataset_dir``; returns the ``embeddings/`` folder.

    Resumable per shard (see module doc); ``force`` recomputes everything. ``model`` is a Hub id or a
    local ``save_pretrained`` folder (or a model object, then ``processor`` is required). One shard is
    one task: ``executor="ray"`` runs them on a Ray cluster (a GPU per task when ``device`` is CUDA),
    with the same outputs and markers as the local run, so either can resume the other.
    """
    from tqdm.auto import tqdm

    out = Path(dataset_dir)
    if fit not in FITS:
        raise ValueError(f"fit={fit!r}: expected one of {FITS}")
    index_files = shard_index_files(out)
    name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else (
        getattr(model.config, "name_or_path", "") or type(model).__name__)
    settings = {"model": name, "image_size": image_size, "fit": fit}
    todo: list[Path] = []          # per-shard index files still to embed (keys are not kept in memory)
    todo_shards, skipped, n_todo, n_all = [], [], 0, 0
    for path in index_files:
        job = load_job(path)
        if job is None:
            continue
        n_all += len(job.keys)
        if force or not marker_matches(out, job, settings):
            todo.append(path)
            todo_shards.append(job.shard)
            n_todo += len(job.keys)
        else:
            skipped.append(job.shard)
    if not n_all:
        raise FileNotFoundError(f"{out}: no shards with samples (run `biomedica build` first)")
    info_path = embeddings_dir(out) / INFO
    info = read_info(out)
    started = time.perf_counter()
    if todo:
        check_image_model(model)        # a missing model: its one-line error before torch's import
    dev = pick_device(device)
    dim = info.get("dim") if info.get("model") == name else None
    compute_started = time.perf_counter()
    if todo:
        if executor == "local":  # the model first: a missing model fails before any progress bar
            _init_embed_worker(model, processor, dev, batch_size, image_size, fit, settings, workers)
        bar = tqdm(total=n_todo, unit="img", desc="embed", disable=not progress)
        if executor == "local":
            results = (_embed_shard_task((out, p, bar)) for p in todo)
        else:
            if not isinstance(model, (str, os.PathLike)):
                raise ValueError("executor='ray' needs model as a Hub id or a local folder (workers load it)")
            from biomedica_hf.executors import make_executor

            ex = make_executor(executor, address=address, workers=os.cpu_count() or 1,
                               num_gpus=1 if dev.startswith("cuda") else 0, initializer=_init_embed_worker,
                               initargs=(os.fspath(model), None, dev, batch_size, image_size, fit, settings, workers))
            results = ex.map(_embed_shard_task, ((out, p, None) for p in todo))
        try:
            for shard, count, shard_dim in results:
                dim = shard_dim
                bar.update(0 if executor == "local" else count)
                bar.set_postfix_str(shard)
        finally:
            if executor != "local":
                ex.close()
            _EMBED_WORKER.clear()
        bar.close()
    seconds = time.perf_counter() - started
    compute_seconds = time.perf_counter() - compute_started if todo else 0.0
    atomic_write_json(info_path, {
        **settings, "dim": dim, "pooling": POOLING, "dtype": "float32", "normalised": "l2",
        "shards": len(todo_shards) + len(skipped), "samples": n_all,
        "last_run": {"computed": todo_shards, "skipped": skipped, "device": dev,
                     "seconds": round(seconds, 3), "compute_seconds": round(compute_seconds, 3),
                     "samples_per_s": round(n_todo / compute_seconds, 2) if n_todo and compute_seconds else None},
    })
    log.info("embeddings: %d shards computed, %d skipped", len(todo), len(skipped))
    return embeddings_dir(out)


__all__ = [
    "DEFAULT_MODEL",
    "embed_dataset",
    "embed_images",
    "embedded_shards",
    "embedding_keys",
    "iter_embeddings",
    "load_image_model",
    "pick_device",
    "prepare_image",
    "read_info",
    "shard_jobs",
    "shard_outputs",
]

"""Image embeddings for every sample of a dataset folder (DINOv2 by default, any ``AutoModel``).

* **Model.** ``transformers`` ``AutoModel`` + ``AutoImageProcessor`` from a Hub id or a local folder
  (``save_pretrained`` output); a model object + processor can be passed instead. The default is
  ``facebook/dinov2-with-registers-large`` (ViT-L/14 with registers, as BIOMEDICA).
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

import contextlib
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.concepts.layout import EMBED_DIR, read_shard_index, shard_index_files, shard_stem
from biomedica_hf.io.atomic import atomic_write_json, save_npy, write_table
from biomedica_hf.io.markers import DONE, clear_marker, is_done, marker_path, read_marker, write_marker
from biomedica_hf.io.ranges import LocalFile

log = logging.getLogger(__name__)

DEFAULT_MODEL = "facebook/dinov2-with-registers-large"
FITS = ("pad", "crop", "squash")
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


# ------------------------------------------------------------------------------------ pure parts
def pick_device(device: str = "auto") -> str:
    """``auto``: cuda > mps > cpu; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def flatten_to_rgb(img):
    """RGB image; transparent pixels become white (figures are drawn on white)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode == "I;16" or img.mode == "I":
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray((arr * (255.0 / hi)).astype(np.uint8), "L")
    return img.convert("RGB")


def prepare_image(data: bytes, image_size: int = 224, fit: str = "pad"):
    """Decode image bytes into an ``image_size`` x ``image_size`` RGB image (see module doc for ``fit``)."""
    from PIL import Image

    if fit not in FITS:
        raise ValueError(f"fit={fit!r}: expected one of {FITS}")
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (image_size, image_size))  # JPEG: decode at 1/2..1/8 scale, never below the target
    img = flatten_to_rgb(img)
    w, h = img.size
    bicubic = Image.Resampling.BICUBIC
    if fit == "squash":
        return img.resize((image_size, image_size), bicubic, reducing_gap=3.0)
    if fit == "crop":
        scale = image_size / min(w, h)
        nw, nh = max(image_size, round(w * scale)), max(image_size, round(h * scale))
        img = img.resize((nw, nh), bicubic, reducing_gap=3.0)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        return img.crop((left, top, left + image_size, top + image_size))
    scale = image_size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    canvas.paste(img.resize((nw, nh), bicubic, reducing_gap=3.0), ((image_size - nw) // 2, (image_size - nh) // 2))
    return canvas


def _raise_missing_weights(name: str, exc: OSError) -> None:
    """A Hub id that is neither cached nor downloadable: say so, and that ``--model PATH`` fixes it."""
    from biomedica_hf.errors import MissingWeightsError, hub_offline, is_local_path, unreachable

    if is_local_path(name) or not (hub_offline() or unreachable(exc)):
        return
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub cannot be reached"
    raise MissingWeightsError(f"embedding model {name!r} is not in the local Hugging Face cache and {why}",
                              "pass --model PATH to a local model folder (save_pretrained layout), or run once "
                              "with network to cache it") from exc


def _fail_fast_when_unreachable(name: str) -> None:
    """A Hub id that is not cached, with a Hub that does not answer: the one-line error now, not after the
    download client's retries."""
    from biomedica_hf.errors import hub_offline, hub_reachable, is_local_path

    if is_local_path(name) or hub_offline():
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(name, local_files_only=True, allow_patterns=["config.json"])
        return                                  # cached: from_pretrained will not need the network
    except Exception:  # noqa: BLE001 - not cached (or not a repo id): ask the network
        pass
    if not hub_reachable():
        _raise_missing_weights(name, ConnectionError(f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} "
                                                     "cannot be reached"))


def load_model(model: Any = DEFAULT_MODEL, processor: Any = None) -> tuple[Any, Any, str]:
    """(model, processor, name): from a Hub id / local folder via ``from_pretrained``, or objects as given."""
    from transformers import AutoImageProcessor, AutoModel

    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        _fail_fast_when_unreachable(name)
        try:
            net = AutoModel.from_pretrained(name)
            if processor is None:
                processor = AutoImageProcessor.from_pretrained(name)
        except OSError as exc:
            _raise_missing_weights(name, exc)
            raise
    else:
        net = model
        if processor is None:
            raise ValueError("a model object needs its image processor (processor=...)")
        name = getattr(net.config, "name_or_path", "") or type(net).__name__
    if isinstance(processor, (str, os.PathLike)):
        processor = AutoImageProcessor.from_pretrained(os.fspath(processor))
    return net.eval(), processor, name


def embed_images(model: Any, processor: Any, images: Sequence[Any], device: str = "cpu") -> np.ndarray:
    """float32 ``[len(images), dim]``, L2-normalised: pooler_output, else the CLS token."""
    import torch

    switches = {k: False for k in ("do_resize", "do_center_crop") if hasattr(processor, k)}
    pixels = processor(images=list(images), return_tensors="pt", **switches)["pixel_values"]
    pixels = pixels.to(device, non_blocking=True)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if str(device).startswith("cuda")
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        out = model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        feats = pooled if pooled is not None else out.last_hidden_state[:, 0]
        feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)


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
    net, proc, _ = load_model(model, processor)
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
            from biomedica_hf.build.executors import make_executor

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
    "load_model",
    "pick_device",
    "prepare_image",
    "read_info",
    "shard_jobs",
    "shard_outputs",
]

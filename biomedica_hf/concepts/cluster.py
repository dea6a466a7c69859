"""PCA + k-means over the image embeddings, streamed shard by shard (BIOMEDICA: PCA 25, k = 2,000).

Three passes over the per-shard embedding files (memory-mapped, never concatenated):

1. ``IncrementalPCA.partial_fit`` on batches of ``batch_size`` rows (the last batch absorbs the
   remainder, so every batch has at least ``pca_dims`` rows as IncrementalPCA requires);
2. each shard is projected once to ``pca_dims`` and kept as ``concepts/projected/<shard>.npy``
   (25 floats a sample: 2.4 GB for 24 M samples), then ``MiniBatchKMeans.partial_fit`` runs
   ``epochs`` passes over the projected batches, shards in a seeded random order each epoch;
3. every sample is assigned to its nearest centroid -> ``concepts/clusters.parquet``
   (key, shard, cluster, distance; one row group per shard, written as it goes).

**Memory bound.** One batch of raw embeddings (at most ``2 x batch_size`` rows when the remainder is
merged) plus the IncrementalPCA state and its SVD workspace (both ``O((batch + pca_dims) x dim)``),
the centroids (``k x pca_dims``) and one shard's projection: ``O(batch x dim + k x pca_dims + shard)``,
independent of the number of samples. For ViT-L (dim 1,024), batch 16,384, k 2,000: about 0.3 GB.

**Why scikit-learn, not faiss.** faiss is not a dependency (nor installed here) and its k-means wants
its training points in one array (it subsamples to 256 points a centroid by default: 512 k points
for k = 2,000); it would be faster on a GPU. scikit-learn is already in the ``ml`` extra, its
``partial_fit`` API streams over the shards with the bound above, and the cost is small next to the
embedding itself (k-means on 24 M x 25 dims with k = 2,000 is ~1.2 TFLOP an epoch: minutes on a
CPU, while DINOv2-L embedding is GPU-hours). A faiss backend could sit behind ``fit_clusters`` later.

Deterministic for a seed: PCA is an exact incremental SVD, batches come in a fixed (seeded) order,
and ``MiniBatchKMeans`` gets ``random_state=seed``.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.concepts.embed import embedded_shards, embedding_keys, read_info
from biomedica_hf.concepts.layout import CLUSTER_MODEL, CLUSTERS, PROJECTED_DIR, concepts_dir, shard_stem
from biomedica_hf.io.atomic import atomic_open, atomic_path, save_npy

log = logging.getLogger(__name__)
PREDICT_CHUNK = 4096


@dataclass
class ClusterModel:
    """A fitted PCA projection + k-means centroids (pure numpy: no scikit-learn object to unpickle)."""

    components: np.ndarray           # (pca_dims, dim)
    mean: np.ndarray                 # (dim,)
    explained_variance_ratio: np.ndarray
    centroids: np.ndarray            # (k, pca_dims)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project embeddings onto the principal components (float32)."""
        return ((np.asarray(x, dtype=np.float32) - self.mean) @ self.components.T).astype(np.float32)

    def predict(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid (int32) and Euclidean distance to it (float32) for projected rows."""
        return nearest_centroid(z, self.centroids)

    def save(self, path: Path) -> Path:
        with atomic_open(path) as fh:
            np.savez(fh, components=self.components, mean=self.mean,
                     explained_variance_ratio=self.explained_variance_ratio, centroids=self.centroids,
                     params=np.array(json.dumps(self.params, sort_keys=True)))
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ClusterModel:
        with np.load(path, allow_pickle=False) as f:
            return cls(components=f["components"], mean=f["mean"], explained_variance_ratio=f["explained_variance_ratio"],
                       centroids=f["centroids"], params=json.loads(str(f["params"])))


def nearest_centroid(z: np.ndarray, centroids: np.ndarray, chunk: int = PREDICT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Index of and distance to the nearest centroid, in chunks of rows (bounded memory)."""
    z = np.asarray(z, dtype=np.float32)
    c = np.asarray(centroids, dtype=np.float32)
    c2 = (c * c).sum(1)
    labels = np.empty(len(z), np.int32)
    dist = np.empty(len(z), np.float32)
    for s in range(0, len(z), chunk):
        part = z[s:s + chunk]
        d2 = (part * part).sum(1, keepdims=True) - 2.0 * part @ c.T + c2
        idx = d2.argmin(1)
        labels[s:s + chunk] = idx
        dist[s:s + chunk] = np.sqrt(np.maximum(d2[np.arange(len(part)), idx], 0.0))
    return labels, dist


def iter_batches(arrays: Sequence[np.ndarray], order: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Rows of ``arrays`` (in ``order``) as batches of ``batch_size`` rows; the last one absorbs the
    remainder (so it has between ``batch_size`` and ``2 x batch_size - 1`` rows; a single batch when
    there are fewer rows than ``batch_size``). Only one batch is materialised at a time."""
    total = sum(len(arrays[i]) for i in order)
    if total == 0:
        return
    n_batches = max(1, total // batch_size)
    cuts = [min(b * batch_size, total) for b in range(n_batches)] + [total]
    pieces: list[np.ndarray] = []
    have = 0
    b = 0
    for i in order:
        arr = arrays[i]
        pos = 0
        while pos < len(arr):
            want = cuts[b + 1] - cuts[b] - have
            take = arr[pos:pos + want]
            pieces.append(np.asarray(take, dtype=np.float32))
            have += len(take)
            pos += len(take)
            if have == cuts[b + 1] - cuts[b]:
                yield pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
                pieces, have, b = [], 0, b + 1


def clamp_params(n: int, dim: int, k: int, pca_dims: int) -> tuple[int, int]:
    """``k`` and ``pca_dims`` that the data allows (warns when they are reduced)."""
    if k > n:
        warnings.warn(f"k={k} > {n} samples: using k={n}", stacklevel=3)
        k = n
    if pca_dims > min(n, dim):
        warnings.warn(f"pca_dims={pca_dims} > min(samples={n}, dim={dim}): using {min(n, dim)}", stacklevel=3)
        pca_dims = min(n, dim)
    return k, pca_dims


def projected_path(out: Path, shard: str) -> Path:
    return concepts_dir(out) / PROJECTED_DIR / f"{shard_stem(shard)}.npy"


def fit_clusters(dataset_dir: str | Path, pca_dims: int = 25, k: int = 2000, batch_size: int = 16384, seed: int = 0,
                 epochs: int = 3, progress: bool = True) -> ClusterModel:
    """Fit PCA + k-means on the embeddings of ``dataset_dir``; write the model and per-sample clusters.

    Writes ``concepts/cluster_model.npz``, ``concepts/clusters.parquet`` and ``concepts/projected/``.
    ``k`` and ``pca_dims`` are clamped to what the data allows (with a warning). ``batch_size`` is
    raised to at least ``k`` (the first k-means batch seeds the centroids with k-means++).
    """
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA
    from tqdm.auto import tqdm

    out = Path(dataset_dir)
    shards = embedded_shards(out)           # (shard, memory-mapped array): no keys held in memory
    if not shards:
        raise FileNotFoundError(f"{out}: no embeddings: run `biomedica embed {out}` first")
    arrays = [a for _, a in shards]
    n, dim = sum(len(a) for a in arrays), int(arrays[0].shape[1])
    k, pca_dims = clamp_params(n, dim, k, pca_dims)
    batch = min(max(batch_size, k, pca_dims), n)
    in_order = list(range(len(arrays)))

    n_batches = max(1, n // batch)
    ipca = IncrementalPCA(n_components=pca_dims)
    for chunk in tqdm(iter_batches(arrays, in_order, batch), total=n_batches, desc="pca", disable=not progress):
        ipca.partial_fit(chunk)
    model = ClusterModel(components=ipca.components_.astype(np.float32), mean=ipca.mean_.astype(np.float32),
                         explained_variance_ratio=ipca.explained_variance_ratio_.astype(np.float32),
                         centroids=np.zeros((0, pca_dims), np.float32))

    projected = []
    for shard, arr in tqdm(shards, desc="project", disable=not progress):
        z = np.concatenate([model.transform(arr[s:s + batch]) for s in range(0, len(arr), batch)])
        save_npy(projected_path(out, shard), z)
        projected.append(np.load(projected_path(out, shard), mmap_mode="r"))

    rng = np.random.default_rng(seed)
    kmeans = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=batch, n_init=1)
    for _ in tqdm(range(epochs), desc="k-means", disable=not progress):
        for chunk in iter_batches(projected, rng.permutation(len(projected)).tolist(), batch):
            kmeans.partial_fit(chunk)
    model.centroids = kmeans.cluster_centers_.astype(np.float32)

    sizes = np.zeros(k, np.int64)
    inertia = 0.0
    path = concepts_dir(out) / CLUSTERS
    schema = pa.schema([("key", pa.string()), ("shard", pa.string()), ("cluster", pa.int32()),
                        ("distance", pa.float32())])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for (shard, _), z in zip(shards, projected):
            keys = embedding_keys(out, shard)
            labels, dist = model.predict(z)
            sizes += np.bincount(labels, minlength=k)
            inertia += float((dist.astype(np.float64) ** 2).sum())
            writer.write_table(pa.table({"key": keys, "shard": [shard] * len(keys), "cluster": labels,
                                         "distance": dist}, schema=schema))
    model.params = {"k": k, "pca_dims": pca_dims, "batch_size": batch, "epochs": epochs, "seed": seed,
                    "n_samples": n, "dim": dim, "inertia": inertia, "sizes": sizes.tolist(),
                    "empty_clusters": int((sizes == 0).sum()), "embedding": read_info(out).get("model"),
                    "pca_explained_variance": float(model.explained_variance_ratio.sum())}
    model.save(concepts_dir(out) / CLUSTER_MODEL)
    log.info("clusters: k=%d over %d samples, %d empty", k, n, model.params["empty_clusters"])
    return model


def load_cluster_model(dataset_dir: str | Path) -> ClusterModel:
    return ClusterModel.load(concepts_dir(Path(dataset_dir)) / CLUSTER_MODEL)


def read_clusters(dataset_dir: str | Path, columns: Sequence[str] = ("key", "shard", "cluster")) -> pa.Table:
    path = concepts_dir(Path(dataset_dir)) / CLUSTERS
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `biomedica cluster {dataset_dir}` first")
    return pq.read_table(path, columns=list(columns))


__all__ = [
    "ClusterModel",
    "fit_clusters",
    "iter_batches",
    "load_cluster_model",
    "nearest_centroid",
    "projected_path",
    "read_clusters",
]

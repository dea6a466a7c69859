"""Dense vector index (FAISS, inner product on L2-normalised vectors) chosen by size and memory budget.

* ``N <= flat_max`` (65,536): ``IndexFlatIP`` - exact, and a scan of N x d floats is only a few ms.
* larger, vectors fit the budget: ``IVF{nlist},Flat``.
* larger, they do not: ``IVF{nlist},PQ{m}x4fs`` (4-bit fast-scan PQ: fast to train and to scan) with
  ``m`` the largest sub-quantizer count whose codes (m/2 bytes + 8 bytes of id per vector) fit the
  budget; a float16 copy of the vectors on disk (memory-mapped, outside the budget) re-ranks the PQ
  candidates exactly.

``nlist`` is the power of two nearest ``2 sqrt(N)``, capped so every list gets >= 39 training points;
``nprobe`` defaults to ``max(8, nlist / 32)``. Filters use FAISS ID selectors (bitmaps), and IVF
probes more lists when a filter keeps only a small fraction of the rows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

FLAT_MAX = 65_536
ID_BYTES = 8  # faiss inverted lists store an int64 id per vector
PQ_DIMS_PER_CODE = (2, 4, 8, 16)  # 4-bit fast-scan PQ: m = dim / this
TRAIN_PER_LIST = 40


@dataclass
class DenseParams:
    """How an index is built and searched (recorded in the manifest)."""

    kind: str                 # "flat" | "ivf_flat" | "ivf_pq"
    dim: int
    ntotal: int
    nlist: int = 0
    m: int = 0
    nprobe: int = 0
    train_size: int = 0
    refine: bool = False      # PQ candidates re-ranked with the float16 vectors file
    factory: str = "Flat"
    estimated_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_params(n: int, dim: int, memory_budget: int, flat_max: int = FLAT_MAX) -> DenseParams:
    """Pick the index type and its parameters for ``n`` vectors of ``dim`` within ``memory_budget`` bytes."""
    flat_bytes = n * dim * 4
    if n <= flat_max:
        return DenseParams("flat", dim, n, factory="Flat", estimated_bytes=flat_bytes)
    nlist = 2 ** round(math.log2(2 * math.sqrt(n)))
    nlist = max(16, min(nlist, n // 39, 65_536))
    nprobe = max(8, nlist // 32)
    train = min(n, TRAIN_PER_LIST * nlist)
    centroids = nlist * dim * 4
    if flat_bytes + n * ID_BYTES + centroids <= memory_budget:
        return DenseParams("ivf_flat", dim, n, nlist=nlist, nprobe=nprobe, train_size=train,
                           factory=f"IVF{nlist},Flat", estimated_bytes=flat_bytes + n * ID_BYTES + centroids)
    for dims_per_code in PQ_DIMS_PER_CODE:
        m = dim // dims_per_code
        if dim % dims_per_code == 0 and m % 2 == 0 and n * (m // 2 + ID_BYTES) + centroids <= memory_budget:
            return DenseParams("ivf_pq", dim, n, nlist=nlist, m=m, nprobe=nprobe, train_size=train, refine=True,
                               factory=f"IVF{nlist},PQ{m}x4fs", estimated_bytes=n * (m // 2 + ID_BYTES) + centroids)
    raise ValueError(f"{n} vectors of dim {dim} do not fit a memory budget of {memory_budget} bytes "
                     f"(smallest: ~{n * (dim // 32 + ID_BYTES) + centroids} bytes)")


def _as_chunks(vectors: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    return [vectors] if isinstance(vectors, np.ndarray) else list(vectors)


def training_sample(chunks: Sequence[np.ndarray], size: int, seed: int = 0) -> np.ndarray:
    """``size`` rows drawn without replacement across chunks (all rows when there are fewer)."""
    lengths = np.array([len(c) for c in chunks])
    total = int(lengths.sum())
    if size >= total:
        return np.concatenate([np.asarray(c, np.float32) for c in chunks])
    rows = np.sort(np.random.default_rng(seed).choice(total, size, replace=False))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    parts = []
    for chunk, start, length in zip(chunks, starts, lengths):
        local = rows[(rows >= start) & (rows < start + length)] - start
        if len(local):
            parts.append(np.asarray(chunk[local], np.float32))
    return np.concatenate(parts)


def build_index(vectors: np.ndarray | Sequence[np.ndarray], params: DenseParams, seed: int = 0):
    """Train (IVF) and fill a FAISS index; row i of the concatenated chunks gets id i.

    ``vectors`` is one float32 array or a list of chunks (memory-mapped ones are read one at a time).
    """
    import faiss

    chunks = _as_chunks(vectors)
    index = faiss.index_factory(params.dim, params.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(training_sample(chunks, params.train_size, seed))
    for chunk in chunks:
        for start in range(0, len(chunk), 65_536):
            index.add(np.ascontiguousarray(chunk[start:start + 65_536], dtype=np.float32))
    if params.nprobe:
        faiss.extract_index_ivf(index).nprobe = params.nprobe
    return index


def write_f16(path: Path, vectors: np.ndarray | Sequence[np.ndarray], dim: int) -> None:
    """The float16 copy used for re-ranking, written chunk by chunk (atomic)."""
    from numpy.lib.format import open_memmap

    from biomedica_hf.io.atomic import atomic_path

    chunks = _as_chunks(vectors)
    with atomic_path(Path(path)) as tmp:
        out = open_memmap(tmp, mode="w+", dtype=np.float16, shape=(sum(len(c) for c in chunks), dim))
        pos = 0
        for chunk in chunks:
            out[pos:pos + len(chunk)] = np.asarray(chunk, np.float16)
            pos += len(chunk)
        out.flush()
        del out


class DenseIndex:
    """A FAISS index plus its parameters; ``search`` takes an optional row mask."""

    def __init__(self, index, params: DenseParams, vectors: np.ndarray | None = None):
        self.index = index
        self.params = params
        self.vectors = vectors  # float16 (memory-mapped) copy for PQ re-ranking, or None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def save(self, path: Path) -> None:
        import faiss

        from biomedica_hf.io.atomic import atomic_path

        with atomic_path(Path(path)) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: Path, params: DenseParams, vectors_path: Path | None = None,
             mmap: bool = False) -> "DenseIndex":
        import faiss

        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap and params.kind != "flat" else 0
        index = faiss.read_index(str(path), flags)
        if params.nprobe:
            faiss.extract_index_ivf(index).nprobe = params.nprobe
        vectors = None
        if params.refine and vectors_path and Path(vectors_path).exists():
            vectors = np.load(vectors_path, mmap_mode="r")
        return cls(index, params, vectors)

    def search(self, query: np.ndarray, k: int, mask: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, row ids) for one query vector; rows where ``mask`` is False are never returned."""
        import faiss

        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        k = min(k, self.ntotal)
        if k <= 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        kwargs: dict[str, Any] = {}
        selector = None
        if mask is not None:
            kept = int(mask.sum())
            if kept == 0:
                return np.empty(0, np.float32), np.empty(0, np.int64)
            if kept < len(mask):
                bits = np.packbits(mask.astype(np.uint8), bitorder="little")
                selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
                selector._bits = bits  # keep the buffer alive while the selector is used
        fetch = k * 4 if self.vectors is not None else k
        if self.params.kind == "flat":
            if selector is not None:
                kwargs["params"] = faiss.SearchParameters(sel=selector)
        else:
            probe = nprobe or self.params.nprobe
            if mask is not None:  # a selective filter: probe more lists so k survivors are found
                frac = max(float(mask.mean()), 1e-6)
                probe = int(min(self.params.nlist, math.ceil(probe / min(1.0, frac * 4))))
            ivf_params = faiss.SearchParametersIVF()
            ivf_params.nprobe = probe
            if selector is not None:
                ivf_params.sel = selector
            kwargs["params"] = ivf_params
        scores, ids = self.index.search(q, fetch, **kwargs)
        scores, ids = scores[0], ids[0]
        keep = ids >= 0
        scores, ids = scores[keep], ids[keep]
        if self.vectors is not None and len(ids):
            exact = np.asarray(self.vectors[np.sort(ids)], dtype=np.float32) @ q[0]
            order = np.argsort(-exact, kind="stable")[:k]
            return exact[order], np.sort(ids)[order]
        return scores[:k], ids[:k]

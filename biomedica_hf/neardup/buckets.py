"""External bucketing: (key, row) records spilled to partition files on disk, then read back one
partition at a time, so memory is bounded by the partition size, not by the number of rows.

Also: a spanning forest per partition (connected components over the partition's edges, emitted as
``node -> smallest node of its component``) and the final components over those forests.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

RECORD = np.dtype([("key", "<u8"), ("row", "<u4")])
EDGE = np.dtype([("a", "<u4"), ("b", "<u4")])
_MIX = np.uint64(0x9E3779B97F4A7C15)


class Spill:
    """``n_parts`` append-only partition files under ``folder``.

    Records are :data:`RECORD` ``(key, row)`` pairs, or with ``packed=True`` single ``uint64`` values whose
    high 32 bits are the key and low 32 bits the row (8 bytes instead of 12, and a plain in-place sort).
    """

    def __init__(self, folder: Path, total_records: int, budget_bytes: int, name: str = "bucket",
                 packed: bool = False) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.packed = packed
        self.itemsize = 8 if packed else RECORD.itemsize
        self.n_parts = max(1, math.ceil(total_records * self.itemsize / max(budget_bytes, 1 << 20)))
        self.paths = [self.folder / f"{name}-{i:05d}.bin" for i in range(self.n_parts)]
        self._handles = [open(p, "wb") for p in self.paths]
        self.records = 0

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Append records; a record's partition is a mix of its key (same key -> same partition)."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        if self.packed:
            if len(keys) and int(keys.max()) >> 32:
                raise ValueError("packed records need keys below 2**32")
            rec = (keys << np.uint64(32)) | np.asarray(rows, dtype=np.uint64)
        else:
            rec = np.empty(len(keys), dtype=RECORD)
            rec["key"], rec["row"] = keys, rows
        self.records += len(rec)
        if self.n_parts == 1:
            rec.tofile(self._handles[0])
            return
        part = ((keys * _MIX) >> np.uint64(33)) % np.uint64(self.n_parts)
        order = np.argsort(part, kind="stable")
        rec, part = rec[order], part[order]
        bounds = np.searchsorted(part, np.arange(self.n_parts + 1, dtype=np.uint64))
        for i in range(self.n_parts):
            if bounds[i + 1] > bounds[i]:
                rec[bounds[i]:bounds[i + 1]].tofile(self._handles[i])

    def close(self) -> None:
        for h in self._handles:
            h.close()

    def partitions(self):
        """Each partition sorted by key, read one at a time (the file is deleted once read).

        Packed: a sorted ``uint64`` array (by key, then row). Otherwise ``RECORD`` sorted by key (rows of
        one key in no particular order: callers only use which rows share a key)."""
        self.close()
        for p in self.paths:
            rec = np.fromfile(p, dtype=np.uint64 if self.packed else RECORD)
            p.unlink()
            if not len(rec):
                continue
            if self.packed:
                rec.sort()
            else:
                rec = rec[np.argsort(rec["key"])]
            yield rec
            del rec


def runs(sorted_keys: np.ndarray, min_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of runs of equal values of length >= ``min_size`` (>= 2) in a sorted array.

    Works on boolean steps only, so a partition of mostly distinct keys costs bytes per record, not the
    two int64 arrays over every (singleton) run."""
    if len(sorted_keys) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    edge = np.zeros(len(sorted_keys) + 1, dtype=np.int8)
    np.equal(sorted_keys[1:], sorted_keys[:-1], out=edge[1:-1].view(bool))   # edge[i]: i - 1 and i equal
    step = np.diff(edge)
    starts, ends = np.flatnonzero(step == 1), np.flatnonzero(step == -1)
    lengths = ends - starts + 1
    keep = lengths >= max(min_size, 2)
    return starts[keep], lengths[keep]


def forest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Edges ``node -> smallest node of its component`` spanning the components of edges (a, b)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(a) == 0:
        return np.zeros(0, dtype=EDGE)
    nodes, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    g = coo_matrix((np.ones(len(a), dtype=np.int8), (inv[:len(a)], inv[len(a):])), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    root = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(root, labels, np.arange(n))          # nodes are sorted: the first index is the smallest node
    out = np.empty(n, dtype=EDGE)
    out["a"], out["b"] = nodes, nodes[root[labels]]
    return out[out["a"] != out["b"]]


def components(edge_file: Path) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, component root) over the forest edges in ``edge_file`` (memory: O(edges), not O(rows))."""
    edges = np.fromfile(edge_file, dtype=EDGE) if edge_file.exists() else np.zeros(0, dtype=EDGE)
    f = forest(edges["a"], edges["b"])
    return f["a"].astype(np.int64), f["b"].astype(np.int64)


def column_batches(paths, offsets, column: str, batch_size: int):
    """``(path, first row id, batch of column)`` over Parquet ``paths`` whose rows are numbered from ``offsets``;
    every part must have ``key``, ``subset`` and ``column`` (a clear error names the part that does not)."""
    import pyarrow.parquet as pq

    needs = ("key", "subset", column)
    for path, off in zip(paths, offsets):
        pf = pq.ParquetFile(path)
        missing = set(needs) - set(pf.schema_arrow.names)
        if missing:
            raise ValueError(f"{path}: needs columns {', '.join(needs)} (missing {sorted(missing)})")
        row = off
        for batch in pf.iter_batches(batch_size=batch_size, columns=[column]):
            yield path, row, batch.column(0)
            row += batch.num_rows

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
    """``n_parts`` append-only partition files of :data:`RECORD` under ``folder``."""

    def __init__(self, folder: Path, total_records: int, budget_bytes: int, name: str = "bucket") -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n_parts = max(1, math.ceil(total_records * RECORD.itemsize / max(budget_bytes, 1 << 20)))
        self.paths = [self.folder / f"{name}-{i:05d}.bin" for i in range(self.n_parts)]
        self._handles = [open(p, "wb") for p in self.paths]
        self.records = 0

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Append records; a record's partition is a mix of its key (same key -> same partition)."""
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
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
        """Each partition's records sorted by (key, row), read one at a time; the file is deleted after."""
        self.close()
        for p in self.paths:
            rec = np.fromfile(p, dtype=RECORD)
            p.unlink()
            if len(rec):
                yield rec[np.lexsort((rec["row"], rec["key"]))]


def runs(sorted_keys: np.ndarray, min_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of runs of equal values of length >= ``min_size`` in a sorted array."""
    if len(sorted_keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [len(sorted_keys)]]))
    keep = lengths >= min_size
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

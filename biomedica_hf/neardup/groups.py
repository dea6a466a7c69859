"""Near-duplicate groups across a whole build, with memory bounded by a budget, not by the row count.

Search: bit-sampling LSH over the 256-bit hash. Four fixed (seeded) permutations of the bits are each cut
into nine disjoint 26-bit keys: 36 tables. Two hashes within ``d`` bits share at least one key of a
permutation when ``d <= 8`` (pigeonhole: exact), and at ``d = 20`` at least one of the 36 with
probability ~0.99 (measured in ``benchmarks/bench_neardup.py``). Records ``(table key, row)`` are
spilled to partition files under ``workdir`` (:mod:`.buckets`), each partition is sorted, rows sharing a
key are verified with the exact Hamming distance (hashes read from a memory-mapped file in
``workdir``), and each partition's verified edges are reduced to a spanning forest. The groups are
the connected components of those forests.

Memory: one partition (``memory_budget`` / 4 of records) plus O(rows that have a near duplicate);
disk: 32 bytes per row for the hashes + 8 bytes per row and table for the records (~7 GB at 24 M,
read once and deleted).

Kept sample of a group: the exact-duplicate policy (most permissive subset, then the smallest key);
every other member maps to it. The output depends only on the rows, never on the order of ``parts``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.neardup.buckets import Spill, column_batches, components, forest, runs
from biomedica_hf.neardup.hashing import HASH_BITS, hamming, hex_to_words
from biomedica_hf.schema import SUBSETS

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 20      # bits of 256; calibration: copies <= 10, distinct figures >= 36 (README.md)
KEY_BITS = 26
PERMUTATIONS = 4
LSH_SEED = 16
BATCH_ROWS = 65_536
KEY_ROWS = 8_192
BIG_RUN = 4_096             # runs longer than this are verified block by block
SUBSET_RANK = {s: i for i, s in enumerate(SUBSETS)}


def lsh_tables(bits: int = HASH_BITS, key_bits: int = KEY_BITS, permutations: int = PERMUTATIONS,
               seed: int = LSH_SEED) -> np.ndarray:
    """(tables, key_bits) bit positions: ``permutations`` seeded permutations cut into disjoint keys."""
    if key_bits > 26 or permutations * (bits // key_bits) > 64:
        raise ValueError("table index (6 bits) + key must fit in 32 bits")
    rng = np.random.default_rng(seed)
    per = bits // key_bits
    return np.concatenate([rng.permutation(bits)[:per * key_bits].reshape(per, key_bits)
                           for _ in range(permutations)])


def table_keys(words: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """(n, tables) keys below 2**32: the table index above the ``key_bits`` sampled bits."""
    raw = words.astype(">u8").view(np.uint8).reshape(len(words), -1)
    bits = np.unpackbits(raw, axis=1)                                    # (n, HASH_BITS), MSB first
    sel = bits[:, tables]                                                # (n, T, K)
    packed = np.packbits(sel, axis=2)                                    # (n, T, ceil(K/8))
    pad = np.zeros((len(words), len(tables), 4), dtype=np.uint8)
    pad[:, :, :packed.shape[2]] = packed
    low = pad.view(">u4").reshape(len(words), len(tables)).astype(np.uint64) >> np.uint64(32 - tables.shape[1])
    return (np.arange(len(tables), dtype=np.uint64) << np.uint64(tables.shape[1])) | low


@dataclass
class GroupStats:
    rows: int = 0
    rows_without_hash: int = 0
    tables: int = 0
    partitions: int = 0
    candidate_pairs: int = 0
    verified_pairs: int = 0
    groups: int = 0
    near_duplicates: int = 0
    seconds: float = 0.0


def expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Every index of the runs [start, start + length), concatenated."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + shift


def _pairs_in_runs(starts: np.ndarray, lengths: np.ndarray):
    """Index pairs (i, i + k) within each run [start, start + length) of a sorted array, for k = 1, 2, ..."""
    pos = expand(starts, lengths)
    end = np.repeat(starts + lengths, lengths)
    k = 1
    while len(pos):
        ok = pos + k < end
        pos, end = pos[ok], end[ok]
        if not len(pos):
            break
        yield pos, pos + k
        k += 1


class _Hashes:
    """Row hashes in a file under the work dir, memory-mapped for the verification."""

    def __init__(self, path: Path, words: int) -> None:
        self.path, self.words, self._fh, self.rows = path, words, open(path, "wb"), 0
        self._map = None

    def append(self, w: np.ndarray) -> None:
        w.astype("<u8").tofile(self._fh)
        self.rows += len(w)

    def get(self, rows: np.ndarray) -> np.ndarray:
        if self._map is None:
            self._fh.close()
            self._map = np.memmap(self.path, dtype="<u8", mode="r", shape=(max(self.rows, 1), self.words))
        return np.asarray(self._map[np.asarray(rows, dtype=np.int64)])


def _fingerprint(h: np.ndarray) -> np.ndarray:
    mix = np.uint64(0x9E3779B97F4A7C15)
    out = np.zeros(len(h), dtype=np.uint64)
    for w in range(h.shape[1]):
        out = (out ^ h[:, w]) * mix
    return out


def _verify_partition(hashes: _Hashes, rec: np.ndarray, threshold: int, stats: GroupStats):
    """Edges (a, b) within ``threshold`` bits between rows sharing a key in one sorted partition."""
    starts, lengths = runs((rec >> np.uint64(32)).astype(np.uint32))
    if not len(starts):
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    idx = expand(starts, lengths)
    keys, rows = rec[idx] >> np.uint64(32), (rec[idx] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    h = hashes.get(rows)
    # identical hashes (blank panels, re-used logos) join their first row directly: a star, not all pairs
    order = np.lexsort((rows, _fingerprint(h), keys))
    keys, rows, h = keys[order], rows[order], h[order]
    fp = _fingerprint(h)
    same = np.concatenate([[False], (keys[1:] == keys[:-1]) & (fp[1:] == fp[:-1])])
    first = np.maximum.accumulate(np.where(~same, np.arange(len(rows)), 0))
    out_a, out_b = [rows[same]], [rows[first[same]]]
    stats.candidate_pairs += int(same.sum())
    keys, rows, h = keys[~same], rows[~same], h[~same]
    starts, lengths = runs(keys)
    small = lengths <= BIG_RUN
    for i, j in _pairs_in_runs(starts[small], lengths[small]):
        stats.candidate_pairs += len(i)
        ok = hamming(h[i], h[j]) <= threshold
        out_a.append(rows[i[ok]])
        out_b.append(rows[j[ok]])
    for s, n in zip(starts[~small], lengths[~small]):
        log.warning("%d distinct hashes share one LSH key: verified block by block", n)
        hh, members = h[s:s + n], rows[s:s + n]
        for lo in range(0, n, 512):
            blk = hh[lo:lo + 512]
            d = hamming(blk[:, None, :], hh[None, :, :])
            ii, jj = np.nonzero((d <= threshold) & (np.arange(lo, lo + len(blk))[:, None] < np.arange(n)[None, :]))
            stats.candidate_pairs += len(blk) * n
            out_a.append(members[ii + lo])
            out_b.append(members[jj])
    a, b = np.concatenate(out_a), np.concatenate(out_b)
    stats.verified_pairs += len(a)
    return a, b


def _read_members(paths: list[Path], offsets: list[int], rows: np.ndarray, columns: list[str]) -> pa.Table:
    """The given global rows' ``columns`` (plus ``row``), read part by part."""
    out = []
    rows = np.sort(rows)
    for path, off, nxt in zip(paths, offsets, [*offsets[1:], None]):
        lo = np.searchsorted(rows, off)
        hi = len(rows) if nxt is None else np.searchsorted(rows, nxt)
        if hi <= lo:
            continue
        t = pq.read_table(path, columns=columns).take(pa.array(rows[lo:hi] - off))
        out.append(t.append_column("row", pa.array(rows[lo:hi], pa.int64())))
    if not out:
        return pa.table({**{c: pa.array([], pa.string()) for c in columns}, "row": pa.array([], pa.int64())})
    return pa.concat_tables(out)


def _pick_kept(members: pa.Table, nodes: np.ndarray, roots: np.ndarray) -> pa.Table:
    """Add ``kept_key`` / ``kept_row``: each group's first member by (subset rank, key)."""
    row = members["row"].to_numpy()
    pos = np.clip(np.searchsorted(nodes, row), 0, max(len(nodes) - 1, 0))
    group = np.where(nodes[pos] == row, roots[pos], row) if len(nodes) else row
    rank = np.array([SUBSET_RANK.get(s, len(SUBSETS)) for s in members["subset"].to_pylist()], dtype=np.int64)
    t = members.append_column("group", pa.array(group)).append_column("rank", pa.array(rank))
    t = t.sort_by([("group", "ascending"), ("rank", "ascending"), ("key", "ascending")])
    g = t["group"].to_numpy()
    first = np.concatenate([[True], g[1:] != g[:-1]]) if len(g) else np.zeros(0, bool)
    first_idx = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0)) if len(g) else np.zeros(0, np.int64)
    return t.append_column("kept_key", t["key"].take(pa.array(first_idx))) \
            .append_column("kept_row", pa.array(t["row"].to_numpy()[first_idx]))


def part_rows(paths: list[Path]) -> list[int]:
    return [pq.ParquetFile(p).metadata.num_rows for p in paths]


def open_parts(parts: Iterable[str | os.PathLike], stats: GroupStats) -> tuple[list[Path], list[int]]:
    """The parts as paths and the global row number of each part's first row; counts ``stats.rows``."""
    paths = [Path(p) for p in parts]
    counts = part_rows(paths)
    stats.rows = int(sum(counts))
    return paths, (list(np.cumsum([0, *counts[:-1]]).tolist()) if paths else [])


def grouped_members(edge_file: Path, paths: list[Path], offsets: list[int], stats: GroupStats) -> pa.Table | None:
    """The members of the groups the forest in ``edge_file`` links, except each group's kept sample, sorted by key
    (columns ``row``, ``key``, ``kept_row``, ``kept_key``, ...); None when nothing is linked. Counts the groups and
    the duplicates in ``stats``."""
    nodes, roots = components(edge_file)
    if not len(nodes):
        return None
    members = _read_members(paths, offsets, np.unique(np.concatenate([nodes, roots])), ["key", "subset"])
    t = _pick_kept(members, nodes, roots)
    t = t.filter(pc.not_equal(t["key"], t["kept_key"])).sort_by([("key", "ascending")])
    stats.groups = len(np.unique(roots))
    stats.near_duplicates = t.num_rows
    return t


def find_near_duplicates(parts: Iterable[str | os.PathLike], workdir: str | os.PathLike,
                         threshold: int = DEFAULT_THRESHOLD, *, memory_budget: int = 512 << 20,
                         stats: GroupStats | None = None) -> Iterator[tuple[str, str, int]]:
    """Near-duplicate groups over Parquet ``parts`` (columns ``key``, ``subset``, ``phash``).

    Yields ``(key, near_dup_of, distance)`` for every member of a group except its kept sample, sorted
    by key; ``distance`` is the Hamming distance to the kept sample's hash (it may exceed ``threshold``
    for a member linked through a chain). Rows with a null ``phash`` are skipped and counted.
    Temporary files live in a fresh folder under ``workdir``, removed at the end.
    """
    stats = stats if stats is not None else GroupStats()
    t0 = time.perf_counter()
    paths, offsets = open_parts(parts, stats)
    tables = lsh_tables()
    stats.tables = len(tables)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="neardup-", dir=workdir))
    try:
        hashes = _Hashes(tmp / "hashes.u64", HASH_BITS // 64)
        spill = Spill(tmp / "records", stats.rows * len(tables), memory_budget // 4, packed=True)
        stats.partitions = spill.n_parts
        for path, row, col in column_batches(paths, offsets, "phash", BATCH_ROWS):
            valid = np.asarray(col.is_valid())
            hexes = col.fill_null("0" * (HASH_BITS // 4)).to_pylist()
            try:
                words = hex_to_words(hexes)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            hashes.append(words)
            ids = np.arange(row, row + len(words), dtype=np.uint32)
            stats.rows_without_hash += int((~valid).sum())
            for lo in range(0, len(words), KEY_ROWS):      # small steps: the bit matrix is 36x the hashes
                v = valid[lo:lo + KEY_ROWS]
                if v.any():
                    keys = table_keys(words[lo:lo + KEY_ROWS][v], tables)
                    spill.add(keys.reshape(-1), np.repeat(ids[lo:lo + KEY_ROWS][v], len(tables)))
        edge_file = tmp / "forest.edges"
        with open(edge_file, "wb") as fh:
            for rec in spill.partitions():
                a, b = _verify_partition(hashes, rec, threshold, stats)
                forest(a, b).tofile(fh)
                del rec, a, b                      # before the next partition is read
        t = grouped_members(edge_file, paths, offsets, stats)
        if t is None:
            stats.seconds = time.perf_counter() - t0
            return
        rows, kept = t["row"].to_numpy(), t["kept_row"].to_numpy()
        dist = hamming(hashes.get(rows), hashes.get(kept)) if len(rows) else np.zeros(0, np.int64)
        t = t.append_column("distance", pa.array(dist))
        stats.seconds = time.perf_counter() - t0
        log.info("near duplicates: %s", json.dumps(asdict(stats)))
        for key, dup_of, d in zip(t["key"].to_pylist(), t["kept_key"].to_pylist(), t["distance"].to_pylist()):
            yield key, dup_of, int(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Caption near-duplicates (templated or boilerplate captions): MinHash LSH over word shingles.

Each caption is lower-cased, reduced to words (``\\w+``) and shingled into word 3-grams (a caption of
fewer than three words is one shingle); the values of ``datasketch.MinHash`` (128 permutations, seed 1, scheme
``affine32``, shingles hashed with CRC-32: 3.4x faster than datasketch's default SHA-1 in Python, measured), computed
here with numpy for a whole batch at once, give its signature, and the signature is cut into the bands ``datasketch`` chooses for the
threshold (0.9 -> 5 bands of 25 rows). Band keys ``(band, hash of its 25 values)`` are spilled to
partition files under ``workdir`` (:mod:`.buckets`, memory bounded by the partition budget), and rows
sharing a band key are linked. A pair of Jaccard similarity s shares a band with probability
1 - (1 - s^25)^5: 0.9 -> 0.98, 0.8 -> 0.17, 0.7 -> 0.007 (no second verification: that would need
the signatures of every row kept on disk, 512 bytes a row). Groups are flagged, never dropped here.

The band keys of a Parquet part depend on its captions only: :func:`write_part_keys` computes them where the part is
written (the build's parallel write phase) into a small file sealed with the part's length and sha256, and the
pass takes them from there (``keys_of``) instead of computing them again; a part whose file is missing or does not
match is computed as before. The groups are the same either way.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from biomedica_hf.io.atomic import atomic_open
from biomedica_hf.io.digest import file_seal
from biomedica_hf.neardup.buckets import Spill, column_batches, forest, runs
from biomedica_hf.neardup.groups import BATCH_ROWS, GroupStats, expand, grouped_members, open_parts

log = logging.getLogger(__name__)

NUM_PERM = 128
MINHASH_SEED = 1
SHINGLE = 3
_WORD = re.compile(r"\w+")


def shingles(caption: str, size: int = SHINGLE) -> list[bytes]:
    """Word ``size``-grams of a caption (lower case, words only); [] for a caption without words."""
    words = _WORD.findall(caption.lower())
    if not words:
        return []
    if len(words) <= size:
        return [" ".join(words).encode()]
    if size == SHINGLE:     # the build's size: one f-string per shingle, no slice and join (~25% of the pass)
        return [f"{a} {b} {c}".encode() for a, b, c in zip(words, words[1:], words[2:])]
    return [" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)]


# (threshold, num_perm) -> (bands, rows): ``datasketch.lsh._optimal_param(threshold, num_perm, 0.5, 0.5)``, a numerical
# integration behind an import of scipy.integrate (~0.5 s a process); the build's own value is kept here, and
# tests/neardup/test_caption_minhash.py checks it against datasketch.
_KNOWN_BAND_PARAMS = {(0.9, 128): (5, 25)}


@functools.lru_cache(maxsize=16)
def band_params(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) that ``datasketch.MinHashLSH`` would use for ``threshold``: the build's default from
    a table, any other computed by datasketch (once per process)."""
    known = _KNOWN_BAND_PARAMS.get((threshold, num_perm))
    if known is not None:
        return known
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: band index in the top byte, a 56-bit mix of the band's values below."""
    mix = np.uint64(0x9E3779B97F4A7C15)
    out = np.empty((len(signatures), bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(len(signatures), ((b + 1) * 0xD6E8FEB86659FD93) % (1 << 64), dtype=np.uint64)
        for r in range(rows):
            h = (h ^ signatures[:, b * rows + r].astype(np.uint64)) * mix
            h ^= h >> np.uint64(29)
        out[:, b] = (np.uint64(b) << np.uint64(56)) | (h & np.uint64((1 << 56) - 1))
    return out


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int = NUM_PERM, seed: int = MINHASH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 of datasketch's ``affine32`` scheme (its default since 2.0): the same draws from
    ``RandomState(seed)`` as ``MinHash._init_permutations``, ``a`` odd."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer (datasketch's pre-mix of every input hash), wrapping uint32 arithmetic."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _shingle_crcs(caption: str, out: list[int]) -> int:
    """Appends the CRC-32 of each of :func:`shingles` (caption) to ``out``; returns how many. The same values,
    without a string and a bytes object per shingle: the words are joined and encoded once and each 3-gram is
    a slice of those bytes (tests/neardup/test_caption_minhash.py checks it against :func:`shingles`)."""
    words = _WORD.findall(caption.lower())
    n = len(words)
    if n <= SHINGLE:
        if n:
            out.append(zlib.crc32(" ".join(words).encode()))
        return min(n, 1)
    data = " ".join(words).encode()
    gaps = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 32)   # the joins: words (\w+) hold no space
    crc = zlib.crc32
    # 3-gram i runs from word i's first byte to the join after word i+2 (the last one to the end)
    out.extend([crc(data[s:e]) for s, e in zip([0, *(gaps[:-1] + 1).tolist()], [*gaps[2:].tolist(), len(data)])])
    return n - SHINGLE + 1


_SLICE_ROWS = 1 << 14      # shingles per (NUM_PERM, shingles) uint32 block: 8 MiB, whatever the captions' lengths
_CHUNK_CAPTIONS = 2048     # captions whose shingle CRCs are held at once (~230 shingles a PMC caption: ~20 MB)


def signatures(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(signatures (n, NUM_PERM) uint64, has_words mask) for a batch of captions.

    The values of ``datasketch.MinHash(num_perm=128, seed=1, hashfunc=zlib.crc32)`` updated with each caption's
    shingles (scheme ``affine32``: CRC-32, MurmurHash3 finalizer, ``a * h + b`` mod 2^32, minimum per permutation),
    computed for many captions at once: their shingles in blocks of ``_SLICE_ROWS`` and a segmented minimum per
    caption, instead of a MinHash object and a dozen numpy calls per caption (the MinHash step ~2x faster; with the
    shingling, which is the same work either way, a part's keys ~10-20 % faster). tests/neardup/test_caption_minhash.py
    checks equality with datasketch. Memory: the CRCs of ``_CHUNK_CAPTIONS`` captions and one block."""
    sigs = np.zeros((len(captions), NUM_PERM), dtype=np.uint64)
    ok = np.zeros(len(captions), dtype=bool)
    for lo in range(0, len(captions), _CHUNK_CAPTIONS):
        chunk = captions[lo:lo + _CHUNK_CAPTIONS]
        sigs[lo:lo + len(chunk)], ok[lo:lo + len(chunk)] = _chunk_signatures(chunk)
    return sigs, ok


def _chunk_signatures(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    crcs: list[int] = []
    counts = np.fromiter((_shingle_crcs(c or "", crcs) for c in captions), dtype=np.int64, count=len(captions))
    ok = counts > 0
    sigs = np.zeros((len(captions), NUM_PERM), dtype=np.uint64)
    total = len(crcs)
    if not total:
        return sigs, ok
    hv = _fmix32(np.array(crcs, dtype=np.uint32))
    del crcs
    owner = np.repeat(np.arange(len(captions)), counts)        # the caption of every shingle, ascending
    a, b = (p[:, None] for p in _permutations())
    mins = np.full((NUM_PERM, len(captions)), np.iinfo(np.uint32).max, dtype=np.uint32)
    buf = np.empty((NUM_PERM, min(total, _SLICE_ROWS)), dtype=np.uint32)    # every block's products, in place
    for lo in range(0, total, _SLICE_ROWS):
        hi = min(lo + _SLICE_ROWS, total)
        block = buf[:, :hi - lo]
        np.multiply(hv[None, lo:hi], a, out=block)  # (NUM_PERM, shingles): wraps mod 2^32 as datasketch's uint32 do
        block += b
        own = owner[lo:hi]
        starts = np.flatnonzero(np.r_[True, own[1:] != own[:-1]])
        cols = own[starts]                     # distinct within the block; a caption cut by the block edge is merged
        mins[:, cols] = np.minimum(mins[:, cols], np.minimum.reduceat(block, starts, axis=1))
    sigs[ok] = mins.T[ok]
    return sigs, ok


DEFAULT_THRESHOLD = 0.9


def caption_keys(captions: list[str | None], threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(band keys (n, bands) uint64, has_words mask) of captions: what the pass spills for each row (rows without
    words have zero keys and are left out)."""
    bands, rows_per_band = band_params(threshold)
    sigs, ok = signatures(captions)
    keys = np.zeros((len(captions), bands), dtype=np.uint64)
    if ok.any():
        keys[ok] = band_keys(sigs[ok], bands, rows_per_band)
    return keys, ok


def write_part_keys(part: str | os.PathLike, dest: str | os.PathLike,
                    threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The band keys of every row of the Parquet ``part`` (its ``caption`` column) into ``dest`` (``.npz``, written
    atomically), sealed with the part's length and sha256 and the band parameters; returns them (keys, mask)."""
    import pyarrow.parquet as pq

    captions = pq.ParquetFile(part).read(columns=["caption"]).column(0).to_pylist()   # (no pyarrow.dataset import)
    keys, ok = caption_keys(captions, threshold)
    size, digest = file_seal(part)
    with atomic_open(Path(dest)) as fh:
        np.savez(fh, keys=keys, ok=ok, seal=np.array([str(size), digest, repr(band_params(threshold))]))
    return keys, ok


def read_part_keys(part: str | os.PathLike, keys_file: str | os.PathLike,
                   threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray] | None:
    """The band keys :func:`write_part_keys` wrote for ``part``: None when the file is missing or damaged, or was
    written for other bytes of the part or other band parameters."""
    try:
        with np.load(keys_file) as z:
            size, digest, params = (str(x) for x in z["seal"])
            if params != repr(band_params(threshold)) or [int(size), digest] != file_seal(part):
                return None
            keys, ok = z["keys"], z["ok"]
    except (OSError, ValueError, KeyError, EOFError):
        return None
    if keys.dtype != np.uint64 or ok.dtype != bool or keys.ndim != 2 or len(keys) != len(ok):
        return None
    return keys, ok


def caption_near_duplicates(parts: Iterable[str | os.PathLike], workdir: str | os.PathLike,
                            threshold: float = DEFAULT_THRESHOLD, *, memory_budget: int = 512 << 20,
                            stats: GroupStats | None = None,
                            keys_of: Callable[[Path], tuple[np.ndarray, np.ndarray] | None] | None = None,
                            ) -> Iterator[tuple[str, str]]:
    """Caption near-duplicate groups over Parquet ``parts`` (columns ``key``, ``subset``, ``caption``).

    Yields ``(key, caption_dup_of)`` for every member of a group except the kept one (the exact-duplicate
    policy: most permissive subset, then the smallest key), sorted by key. Empty captions are skipped.
    ``keys_of(part)``: the part's band keys computed earlier (:func:`read_part_keys`), or None to compute them.
    """
    stats = stats if stats is not None else GroupStats()
    t0 = time.perf_counter()
    paths, offsets = open_parts(parts, stats)
    bands, rows_per_band = band_params(threshold)
    stats.tables = bands
    Path(workdir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="captiondup-", dir=workdir))
    try:
        spill = Spill(tmp / "records", stats.rows * bands, memory_budget // 4)
        stats.partitions = spill.n_parts
        first = dict(zip(paths, offsets))
        n_rows = dict(zip(paths, np.diff([*offsets, stats.rows]).tolist()))
        known: dict[Path, tuple[np.ndarray, np.ndarray] | None] = {}
        for path, row, col in column_batches(paths, offsets, "caption", BATCH_ROWS // 8):
            if path not in known:                  # one part at a time in memory
                found = keys_of(path) if keys_of is not None else None
                known = {path: found if found is not None and found[0].shape == (n_rows[path], bands) else None}
            if known[path] is not None:            # computed where the part was written
                at = row - first[path]
                keys, ok = (a[at:at + len(col)] for a in known[path])
                keys = keys[ok]
            else:
                sigs, ok = signatures(col.to_pylist())
                keys = band_keys(sigs[ok], bands, rows_per_band) if ok.any() else None
            ids = np.arange(row, row + len(col), dtype=np.uint32)[ok]
            stats.rows_without_hash += int((~ok).sum())
            if ok.any():
                spill.add(keys.reshape(-1), np.repeat(ids, bands))
        edge_file = tmp / "forest.edges"
        with open(edge_file, "wb") as fh:
            for rec in spill.partitions():
                starts, lengths = runs(rec["key"])
                if not len(starts):
                    continue
                idx = expand(starts, lengths)          # every row of a run joins the run's first row
                src = np.repeat(starts, lengths)
                idx, src = idx[idx != src], src[idx != src]
                stats.candidate_pairs += len(idx)
                stats.verified_pairs += len(idx)
                forest(rec["row"][idx], rec["row"][src]).tofile(fh)
                del rec, idx, src
        t = grouped_members(edge_file, paths, offsets, stats)
        stats.seconds = time.perf_counter() - t0
        if t is None:
            return
        yield from zip(t["key"].to_pylist(), t["kept_key"].to_pylist())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["band_params", "caption_keys", "caption_near_duplicates", "read_part_keys", "shingles", "signatures",
           "write_part_keys"]

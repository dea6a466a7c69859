"""Partitions of a build: the listing streamed to disk, cut into units of work by a stable hash.

Every article is assigned, by a hash of its PMCID (never of its version), to one of ``FINE_BUCKETS``
fine buckets. A contiguous range of buckets makes a **split** (train / validation / test, by default
98 / 1 / 1 %), and a split's range is cut into **partitions** of about ``target`` articles each. So:

* the split of an article never changes (same PMCID, same bucket, same split), across updates too;
* a partition holds articles of one split only, spread at random over journals, years and concepts;
* the number of partitions is chosen from the listing size and recorded (``Layout``), so a resumed
  build finds the same partitions.

The listing is streamed once into per-bucket spool files (JSON lines, buffered; the driver holds only
the buffers and one counter per bucket), then each partition's manifest is written as Parquet
(``_work/snapshots/sNNN/partitions/<pid>.parquet``): the refs of the partition sorted by PMCID, with the
listing's own duplicates marked. Memory is O(buckets + partitions), never O(articles).

Each manifest's row count and content digest (:func:`manifest_digest`) are recorded in the snapshot's sealed
``layout.json`` (:func:`write_layout`): a manifest that is lost or changed is found before anything trusts it.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.io.atomic import atomic_path
from biomedica_hf.schema import ArticleRef, flat_dict

FINE_BUCKETS = 4096
SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT_FRACTIONS = (0.98, 0.01, 0.01)
DEFAULT_TARGET = 2000           # articles per partition at most (PMC-OA: ~3,000 partitions)
MIN_TARGET = 64                 # articles per partition at least
MIN_PARTITIONS = 64             # a listing this many times MIN_TARGET gets at least this many partitions
SPOOL_FLUSH_LINES = 20_000

MANIFEST_SCHEMA = pa.schema([("pmcid", pa.string()), ("bucket", pa.int32()), ("seq", pa.int64()),
                             ("revision", pa.string()), ("duplicate", pa.bool_()), ("ref", pa.string())])


def bucket_of(pmcid: str) -> int:
    """The fine bucket of an article: stable across runs, machines, versions and updates."""
    digest = hashlib.sha256(pmcid.strip().upper().encode()).digest()
    return int.from_bytes(digest[:8], "big") % FINE_BUCKETS


def split_ranges(fractions: tuple[float, ...] = DEFAULT_SPLIT_FRACTIONS) -> dict[str, tuple[int, int]]:
    """Bucket range [lo, hi) of each split. Fractions are rounded to whole buckets (1/4096)."""
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0,
                                                                                         abs_tol=1e-6):
        raise ValueError(f"split fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions}")
    ranges, lo, acc = {}, 0, 0.0
    for name, f in zip(SPLITS, fractions):
        acc += f
        hi = FINE_BUCKETS if name == SPLITS[-1] else round(acc * FINE_BUCKETS)
        ranges[name] = (lo, hi)
        lo = hi
    return ranges


def split_of_bucket(bucket: int, ranges: dict[str, tuple[int, int]]) -> str:
    for name, (lo, hi) in ranges.items():
        if lo <= bucket < hi:
            return name
    raise ValueError(f"bucket {bucket} outside every split")


def split_of(pmcid: str, fractions: tuple[float, ...] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """train / validation / test of an article (what every panel and figure of it inherits)."""
    return split_of_bucket(bucket_of(pmcid), split_ranges(fractions))


def ref_revision(ref: ArticleRef) -> str:
    """What identifies the article's content in a listing: its version, else its last update."""
    if ref.version is not None:
        return f"v{ref.version}"
    return ref.last_updated or ""


def ref_to_json(ref: ArticleRef) -> str:
    return json.dumps(flat_dict(ref), ensure_ascii=False, default=str)


def ref_from_json(text: str) -> ArticleRef:
    return ArticleRef(**json.loads(text))


@dataclass(frozen=True)
class PartitionId:
    snapshot: int
    split: str
    index: int

    @property
    def name(self) -> str:
        """``s000-train-p00017``: dot-free, sortable, unique across snapshots."""
        return f"s{self.snapshot:03d}-{self.split}-p{self.index:05d}"

    @classmethod
    def parse(cls, name: str) -> PartitionId:
        snap, split, part = name.split("-")
        return cls(int(snap[1:]), split, int(part[1:]))


@dataclass
class Layout:
    """How one snapshot's listing is cut: split ranges and the number of partitions per split."""

    snapshot: int
    fractions: tuple[float, ...] = DEFAULT_SPLIT_FRACTIONS
    partitions: dict[str, int] = field(default_factory=dict)   # split -> number of partitions

    @property
    def ranges(self) -> dict[str, tuple[int, int]]:
        return split_ranges(tuple(self.fractions))

    def partition_of_bucket(self, bucket: int) -> PartitionId:
        split = split_of_bucket(bucket, self.ranges)
        lo, hi = self.ranges[split]
        n = self.partitions.get(split, 1)
        return PartitionId(self.snapshot, split, (bucket - lo) * n // max(1, hi - lo))

    def buckets_of(self, pid: PartitionId) -> range:
        """The fine buckets of a partition: b with (b - lo) * n // width == index."""
        lo, hi = self.ranges[pid.split]
        n, width = self.partitions.get(pid.split, 1), hi - lo
        return range(lo + -(-pid.index * width // n), lo + -(-(pid.index + 1) * width // n))

    def all_partitions(self) -> list[PartitionId]:
        return [PartitionId(self.snapshot, s, i) for s in SPLITS if self.ranges[s][1] > self.ranges[s][0]
                for i in range(self.partitions.get(s, 1))]

    def to_json(self) -> dict:
        return {"snapshot": self.snapshot, "fractions": list(self.fractions), "partitions": self.partitions,
                "fine_buckets": FINE_BUCKETS, "hash": "sha256(upper(pmcid))[:8] big-endian mod fine_buckets"}

    @classmethod
    def from_json(cls, d: dict) -> Layout:
        if d.get("fine_buckets", FINE_BUCKETS) != FINE_BUCKETS:
            raise ValueError("this folder was partitioned with another number of fine buckets")
        return cls(d["snapshot"], tuple(d["fractions"]), dict(d["partitions"]))


def auto_target(n_articles: int) -> int:
    """Articles per partition for a listing of ``n_articles``: ``DEFAULT_TARGET`` at scale, smaller for small
    listings so that a build of a few thousand articles still has enough partitions to keep every worker busy
    (partitions are the unit of parallelism); depends on the listing only, never on the number of workers."""
    return min(DEFAULT_TARGET, max(MIN_TARGET, math.ceil(n_articles / MIN_PARTITIONS)))


def choose_layout(snapshot: int, bucket_counts: list[int], fractions: tuple[float, ...],
                  target: int | None = DEFAULT_TARGET) -> Layout:
    """Partitions per split: ceil(articles / target), at most one per bucket of the split; ``target=None``:
    :func:`auto_target` of the listing's size."""
    if target is None:
        target = auto_target(sum(bucket_counts))
    layout = Layout(snapshot, tuple(fractions))
    for split, (lo, hi) in layout.ranges.items():
        n = sum(bucket_counts[lo:hi])
        layout.partitions[split] = max(1, min(hi - lo, math.ceil(n / max(1, target)))) if hi > lo else 0
    return layout


# ------------------------------------------------------------------------------------------ spool
class ListingSpool:
    """Streams refs into one JSON-lines file per fine bucket (buffered, bounded memory).

    A listing that never fills the buffer (fewer than ``flush_lines`` rows: a build of up to 20,000 articles) ends
    (:meth:`finish`) with its rows still in memory, where they are read (:meth:`rows`): no bucket file is written,
    and none is read back (for 696 articles, ~640 files of one line or two: 0.2 s of a small build)."""

    def __init__(self, folder: Path, flush_lines: int = SPOOL_FLUSH_LINES):
        self.folder = Path(folder)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True)
        self.flush_lines = flush_lines
        self.counts = [0] * FINE_BUCKETS
        self._buf: dict[int, list[str]] = {}
        self._n_buf = 0
        self._spilled = False           # some rows are in the bucket files
        self.seq = 0

    def add(self, ref: ArticleRef) -> None:
        b = bucket_of(ref.pmcid)
        line = json.dumps({"seq": self.seq, "ref": ref_to_json(ref)}, ensure_ascii=False)
        self.seq += 1
        self.counts[b] += 1
        self._buf.setdefault(b, []).append(line)
        self._n_buf += 1
        if self._n_buf >= self.flush_lines:
            self.flush()

    def flush(self) -> None:
        for b, lines in self._buf.items():
            with open(self.folder / f"b{b:04d}.jsonl", "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
        self._spilled = self._spilled or bool(self._buf)
        self._buf.clear()
        self._n_buf = 0

    def finish(self) -> None:
        """The listing is complete: what is buffered joins the bucket files, unless no row ever went there."""
        if self._spilled:
            self.flush()

    def rows(self, bucket: int) -> Iterator[tuple[int, ArticleRef]]:
        """(listing sequence, ref) of every row of ``bucket``, in the order they were added (after :meth:`finish`)."""
        if self._spilled:
            yield from spool_rows(self.folder, bucket)
            return
        for line in self._buf.get(bucket, ()):
            d = json.loads(line)
            yield d["seq"], ref_from_json(d["ref"])


def spool_rows(folder: Path, bucket: int) -> Iterator[tuple[int, ArticleRef]]:
    path = Path(folder) / f"b{bucket:04d}.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    d = json.loads(line)
                    yield d["seq"], ref_from_json(d["ref"])


def write_manifest(path: Path, rows: Iterable[tuple[int, ArticleRef]]) -> int:
    """The partition's refs sorted by PMCID; a PMCID listed twice keeps its first listing and the other
    rows are marked ``duplicate`` (the partition ledgers them as ``duplicate_listing``)."""
    rows = sorted(rows, key=lambda r: (r[1].pmcid, r[0]))
    seen: set[str] = set()
    out = []
    for seq, ref in rows:
        out.append({"pmcid": ref.pmcid, "bucket": bucket_of(ref.pmcid), "seq": seq, "revision": ref_revision(ref),
                    "duplicate": ref.pmcid in seen, "ref": ref_to_json(ref)})
        seen.add(ref.pmcid)
    table = pa.Table.from_pylist(out, schema=MANIFEST_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return len(out)


def read_manifest(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def rows_digest(rows: list[dict]) -> str:
    """The content digest of a manifest's rows (what ``layout.json`` records for it)."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def manifest_digest(path: Path) -> tuple[int, str] | None:
    """(rows, content digest) of a manifest file; None when it is missing or unreadable (cut)."""
    try:
        rows = read_manifest(path)
    except (OSError, ValueError, pa.ArrowException):
        return None
    return len(rows), rows_digest(rows)


def write_layout(path: Path, layout: Layout, extra: dict | None = None) -> None:
    """The snapshot's layout as a sealed record (:func:`biomedica_hf.ingest.state.write_sealed`)."""
    from biomedica_hf.ingest.state import write_sealed

    write_sealed(path, {**layout.to_json(), **(extra or {})})


__all__ = [
    "DEFAULT_SPLIT_FRACTIONS",
    "FINE_BUCKETS",
    "SPLITS",
    "Layout",
    "ListingSpool",
    "PartitionId",
    "bucket_of",
    "choose_layout",
    "manifest_digest",
    "read_manifest",
    "rows_digest",
    "ref_revision",
    "split_of",
    "split_ranges",
    "write_layout",
    "write_manifest",
]

"""Exact duplicate images across the whole build, with memory bounded by one hash bucket.

Every staged partition writes its samples' ``(key, sha256, subset, pmcid, pid)`` into ``n_buckets``
files by the first hex digits of the sha256 (``hashes/h<b>/<pid>.parquet``). Duplicates can only meet
inside one bucket, so the decision pass reads one bucket at a time (a bucket holds about
``samples / n_buckets`` rows) and keeps in Python only the rows whose hash occurs more than once.

Policy (deterministic, whatever order partitions ran in): in each group of identical images the most
permissive subset wins (commercial < noncommercial < other), then the smallest key; samples already
published by an earlier snapshot (``pid`` starting with ``published:``) always win, so an update never
rewrites a published shard to dedup. The others are dropped and their PMCIDs go into the kept sample's
``also_in``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.io.atomic import atomic_path
from biomedica_hf.schema import SUBSETS

SUBSET_RANK = {s: i for i, s in enumerate(SUBSETS)}
HASH_SCHEMA = pa.schema([("key", pa.string()), ("sha256", pa.string()), ("subset", pa.string()),
                         ("pmcid", pa.string()), ("pid", pa.string()), ("phash", pa.string())])
DECISION_SCHEMA = pa.schema([("pid", pa.string()), ("key", pa.string()), ("canonical", pa.string()),
                             ("also_in", pa.list_(pa.string())), ("kind", pa.string())])   # kind: exact | near
PUBLISHED = "published:"
ROWS_PER_BUCKET = 1_000_000


def n_hash_buckets(expected_samples: int) -> int:
    """Enough buckets that one holds about a million rows (~100 MB in the decision pass)."""
    return max(1, min(4096, math.ceil(expected_samples / ROWS_PER_BUCKET)))


def hash_bucket(sha256: str, n_buckets: int) -> int:
    return int(sha256[:8], 16) % n_buckets


def write_hash_rows(folder: Path, pid: str, rows: list[dict], n_buckets: int) -> None:
    """Spill one partition's hash rows into the bucket files (atomic, one file per non-empty bucket)."""
    by_bucket: dict[int, list[dict]] = {}
    for r in rows:
        by_bucket.setdefault(hash_bucket(r["sha256"], n_buckets), []).append(
            {**r, "pid": r.get("pid", pid), "phash": r.get("phash")})
    for b, rs in by_bucket.items():
        path = Path(folder) / f"h{b:04d}" / f"{pid.replace(':', '_').replace('/', '_')}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(rs, schema=HASH_SCHEMA), tmp)


def decide_bucket(table: pa.Table) -> list[dict]:
    """Decision rows for one bucket: ``canonical`` set for dropped keys, ``also_in`` for kept ones."""
    if table.num_rows == 0:
        return []
    counts = table.group_by("sha256").aggregate([("key", "count")])
    dup_hashes = counts.filter(pc.greater(counts["key_count"], 1))["sha256"]
    if len(dup_hashes) == 0:
        return []
    rows = table.filter(pc.is_in(table["sha256"], value_set=dup_hashes)).to_pylist()
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["sha256"], []).append(r)
    out = []
    for group in groups.values():
        group.sort(key=lambda r: (not r["pid"].startswith(PUBLISHED), SUBSET_RANK.get(r["subset"], len(SUBSETS)),
                                  r["key"]))
        canon, rest = group[0], group[1:]
        pmcids = list(dict.fromkeys(r["pmcid"] for r in group))
        out.append({"pid": canon["pid"], "key": canon["key"], "canonical": None,
                    "also_in": [p for p in pmcids if p != canon["pmcid"]], "kind": "exact"})
        out.extend({"pid": r["pid"], "key": r["key"], "canonical": canon["key"], "also_in": [], "kind": "exact"}
                   for r in rest)
    return out


def decide(hash_folder: Path, n_buckets: int, out_path: Path, extra_folders: Iterable[Path] = ()) -> int:
    """Run the decision pass over every bucket; writes ``out_path`` (Parquet); returns dropped samples."""
    dropped = 0
    with atomic_path(out_path) as tmp:
        writer = pq.ParquetWriter(tmp, DECISION_SCHEMA, compression="zstd")
        try:
            for b in range(n_buckets):
                files = [p for folder in (hash_folder, *extra_folders)
                         for p in sorted((Path(folder) / f"h{b:04d}").glob("*.parquet"))]
                if not files:
                    continue
                table = pa.concat_tables([pq.read_table(p, schema=HASH_SCHEMA) for p in files])
                rows = decide_bucket(table)
                dropped += sum(r["canonical"] is not None for r in rows)
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=DECISION_SCHEMA))
        finally:
            writer.close()
    return dropped


def hash_files(folders: Iterable[Path]) -> list[Path]:
    """Every hash-bucket file under ``folders`` (the near-duplicate pass reads them all)."""
    return [p for f in folders for p in sorted(Path(f).glob("h*/*.parquet"))]


def add_decisions(path: Path, rows: list[dict]) -> None:
    """Append decision rows (near-duplicate drops) to a decisions file; kept keys' ``also_in`` merge."""
    old = pq.read_table(path).to_pylist() if Path(path).exists() else []
    merged: dict[tuple[str, str], dict] = {}
    for r in old + rows:
        k = (r["pid"], r["key"])
        if k in merged and r["canonical"] is None and merged[k]["canonical"] is None:
            merged[k]["also_in"] = list(dict.fromkeys(merged[k]["also_in"] + r["also_in"]))
        elif k not in merged or r["canonical"] is not None:
            merged[k] = dict(r)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(list(merged.values()), schema=DECISION_SCHEMA), tmp, compression="zstd")


def decisions_for(path: Path, pid: str) -> tuple[dict[str, tuple[str, str]], dict[str, list[str]]]:
    """(dropped key -> (canonical key, exact | near), kept key -> also_in) for one partition."""
    if not Path(path).exists():
        return {}, {}
    t = pq.read_table(path, filters=[("pid", "==", pid)])
    drop, also = {}, {}
    for r in t.to_pylist():
        if r["canonical"] is not None:
            drop[r["key"]] = (r["canonical"], r.get("kind") or "exact")
        elif r["also_in"]:
            also[r["key"]] = r["also_in"]
    return drop, also


__all__ = ["decide", "decide_bucket", "decisions_for", "hash_bucket", "n_hash_buckets", "write_hash_rows"]

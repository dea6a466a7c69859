"""``biomedica build --rebuild-state``: the resume state of a dataset folder whose ``_work/`` is gone,
reconstructed from its published files, so that an update can diff against it.

What it rebuilds, from ``ledger.parquet``, ``articles.parquet`` and ``build_summary.json``:

* one complete snapshot, numbered after the last one of the summary's history (so new shards never take
  a published shard's name), with empty complete snapshots before it;
* its partition manifests: every article that has a fate in the ledger and was not removed by an update
  (article rows whose id carries no ``@sNNN`` suffix), with its version from ``articles.parquet`` and its
  source location from the ledger;
* its removal records (articles retracted earlier stay removed) and one done marker per partition with the
  articles that failed (``--retry-failed`` retries them).

What it cannot rebuild, and says so: the listing's own metadata (``last_updated``, licence hints, citations)
is not published, so an article whose revision was a date rather than a version, or that failed before its
XML was read (no version known), is processed again by the next update; the exact-duplicate decisions of
earlier snapshots are read from the published index as usual.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.ingest.partition import (
    FINE_BUCKETS,
    Layout,
    bucket_of,
    choose_layout,
    manifest_digest,
    write_layout,
    write_manifest,
)
from biomedica_hf.ingest.sources.base import FatalBuildError
from biomedica_hf.ingest.state import file_seal, write_sealed
from biomedica_hf.io.atomic import atomic_write_json, write_table
from biomedica_hf.layout import ARTICLES_TABLE, BUILD_SUMMARY, FIGURES_INDEX, LEDGER, WORK_DIR, folder_files
from biomedica_hf.schema import FAILED, ArticleRef

log = logging.getLogger("biomedica_hf.ingest")

def _check_published(out: Path) -> None:
    """The published shards are exactly those ``figures.parquet`` lists (an unfinished update's shards, or
    shards it moved out, cannot be told apart from the published state: refused)."""
    index = out / FIGURES_INDEX
    if not index.exists():
        raise FatalBuildError(f"--rebuild-state needs {index}; build into a new folder")
    listed = set(pq.read_table(index, columns=["shard"])["shard"].to_pylist())
    on_disk = {p.relative_to(out).as_posix() for d in sorted(out.iterdir()) if d.is_dir()
               for p in folder_files(d, "*.tar")}
    if listed != on_disk:
        diff = sorted(listed ^ on_disk)
        raise FatalBuildError(f"--rebuild-state: the shards on disk differ from {index.name} ({len(diff)}, e.g. "
                              f"{diff[0]}): an update was interrupted; run `biomedica verify {out}` and restore the "
                              f"folder first")


REMOVED_SCHEMA = pa.schema([("pmcid", pa.string()), ("snapshot", pa.int32()), ("pid", pa.string()),
                            ("reason", pa.string())])


def rebuild_state(out: Path, fractions: tuple[float, ...]) -> list[str]:
    """Write ``OUT/_work`` from the published files; returns what could not be reconstructed (logged too)."""
    out = Path(out)
    work = out / WORK_DIR
    ledger_path, articles_path = out / LEDGER, out / ARTICLES_TABLE
    if not ledger_path.exists() or not articles_path.exists():
        raise FatalBuildError(f"--rebuild-state needs {ledger_path.name} and {articles_path.name} in {out}: "
                              f"without them the published articles are unknown; build into a new folder")
    _check_published(out)
    old = [work / name for name in ("snapshots", "parts", "stage") if (work / name).exists()]
    if old:                                    # damaged state: kept aside, never deleted
        aside = work / f"damaged-{int(time.time())}"
        aside.mkdir(parents=True)
        for p in old:
            p.rename(aside / p.name)
        log.warning("--rebuild-state: the old resume state is kept in %s", aside)
    try:
        summary = json.loads((out / BUILD_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    history = [h.get("snapshot") for h in summary.get("snapshots", []) if isinstance(h.get("snapshot"), int)]
    k = max(history) if history else 0
    fractions = tuple(summary.get("splits", {}).get("fractions") or fractions)
    versions = {}
    for batch in pq.ParquetFile(articles_path).iter_batches(columns=["pmcid", "version"], batch_size=100_000):
        versions.update(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
    current: dict[str, ArticleRef] = {}
    failed: dict[str, set[str]] = {}
    removed_rows, unknown = [], 0
    for batch in pq.ParquetFile(ledger_path).iter_batches(columns=["kind", "id", "pmcid", "state", "reason",
                                                                   "source"], batch_size=100_000):
        for r in batch.to_pylist():
            rid, pmcid = r["id"], r["pmcid"]
            if "@s" in rid:                                  # removed by an update (or its items)
                if r["kind"] == "article" and r["reason"] == "retracted":
                    removed_rows.append({"pmcid": pmcid, "snapshot": int(rid.rsplit("@s", 1)[1] or 0), "pid": "",
                                         "reason": "retracted"})
                continue
            if r["state"] == FAILED and pmcid:
                failed.setdefault(pmcid, set()).add(r["reason"])
            if r["kind"] != "article" or "@" in rid or not pmcid or rid != pmcid:
                continue
            if pmcid not in current:
                v = versions.get(pmcid)
                unknown += v is None
                current[pmcid] = ArticleRef(pmcid=pmcid, location=r["source"] or "", version=v)
    counts = [0] * FINE_BUCKETS
    for pmcid in current:
        counts[bucket_of(pmcid)] += 1
    layout = choose_layout(k, counts, fractions, None)
    snap = work / "snapshots" / f"s{k:03d}"
    for j in range(k):                                        # earlier snapshots: complete and empty
        empty = work / "snapshots" / f"s{j:03d}"
        write_layout(empty / "layout.json", Layout(j, fractions, {}), {"manifests": {}, "reconstructed": True})
        atomic_write_json(empty / "complete.json", {"snapshot": j, "reconstructed": True})
    by_pid: dict[str, list] = {p.name: [] for p in layout.all_partitions()}
    for seq, (pmcid, ref) in enumerate(sorted(current.items())):
        by_pid[layout.partition_of_bucket(bucket_of(pmcid)).name].append((seq, ref))
    manifests = {}
    for pid in layout.all_partitions():
        path = snap / "partitions" / f"{pid.name}.parquet"
        write_manifest(path, by_pid[pid.name])
        manifests[pid.name] = manifest_digest(path)
        fails = sorted(p for _, ref in by_pid[pid.name] for p in [ref.pmcid] if p in failed)
        retry = sorted(p for p in fails if "download_failed" in failed[p])
        write_sealed(work / "parts" / "done" / f"{pid.name}.json",
                     {"pid": pid.name, "manifest": manifests[pid.name][1], "units": manifests[pid.name][0],
                      "failed": fails, "retry": retry, "reconstructed": True})
    write_table(snap / "removed.parquet", pa.Table.from_pylist(removed_rows, schema=REMOVED_SCHEMA),
                compression="snappy")
    write_layout(snap / "layout.json", layout, {
        "listed": len(current), "articles": len(current), "changes": {}, "hash_buckets": 1,
        "manifests": manifests, "removed": file_seal(snap / "removed.parquet"), "parts": {},
        "reconstructed": True})
    atomic_write_json(snap / "complete.json", {"snapshot": k, "reconstructed": True})
    gaps = []
    if unknown:
        gaps.append(f"{unknown} article(s) have no published version: the next update processes them again")
    gaps.append("listing metadata (last-updated dates, licence hints) is not published: articles revised by "
                "date rather than version are processed again by the next update")
    for g in gaps:
        log.warning("--rebuild-state: %s", g)
    log.info("--rebuild-state: %d articles in %d partitions as snapshot %d", len(current),
             len(layout.all_partitions()), k)
    return gaps


__all__ = ["rebuild_state"]

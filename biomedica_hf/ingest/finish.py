"""Finishing a snapshot: every listed article's fate checked, ``articles.parquet`` and ``ledger.parquet``
consolidated from the previous tables and this snapshot's parts, ``sizes.json``, the duplicates tables,
``figures.parquet`` and ``build_summary.json`` (with the snapshot history, and a sealed copy in ``_work/``), and the
:class:`BuildReport` the command line prints.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf import __version__
from biomedica_hf.ingest.duplicates import write_duplicates, write_near_duplicates
from biomedica_hf.ingest.figures import build_figures_index
from biomedica_hf.ingest.options import BuildOptions
from biomedica_hf.ingest.provenance import public_options
from biomedica_hf.ingest.removals import ledger_after_removals
from biomedica_hf.ingest.sources.base import FatalBuildError
from biomedica_hf.ingest.state import checkpoint, file_seal, read_sealed, write_sealed
from biomedica_hf.ingest.task import ARTICLE_SCHEMA
from biomedica_hf.ingest.timings import StageClock, add, rounded
from biomedica_hf.ingest.work import Work, all_parts, done_record, read_done
from biomedica_hf.io.atomic import atomic_path, atomic_write_bytes, atomic_write_json, move_into_place
from biomedica_hf.io.markers import STATS
from biomedica_hf.layout import (
    ARTICLES_TABLE,
    BUILD_SUMMARY,
    LEDGER,
    LEDGER_SUMMARY,
    SIZES,
    folder_files,
    shard_dirs,
    write_dataset_sizes,
)
from biomedica_hf.ledger import LEDGER_SCHEMA, format_summary, ledger_summary, removals
from biomedica_hf.schema import SUBSETS
from biomedica_hf.neardup.hashing import hash_software

log = logging.getLogger("biomedica_hf.ingest")

TABLE_BATCH = 256              # article rows in memory at a time (they carry the full text)


@dataclass
class BuildReport:
    out: Path
    summary: dict
    n_listed: int
    n_staged_now: int
    n_resumed: int
    shards_written: int
    shards_skipped: int
    samples_per_subset: dict[str, int]
    n_duplicates: int
    elapsed_s: float
    snapshot: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    n_near_duplicates: int = 0                    # removed with --near-dedup (the ledger's count, like n_duplicates)

    def text(self) -> str:
        s = [f"Output: {self.out}",
             f"Snapshot {self.snapshot}: " + ", ".join(f"{k} {v}" for k, v in self.changes.items()),
             f"Articles listed: {self.n_listed} (processed now: {self.n_staged_now}, resumed: {self.n_resumed})",
             "Samples: " + ", ".join(f"{k} {v}" for k, v in self.samples_per_subset.items()),
             f"Exact duplicate images removed: {self.n_duplicates}",
             f"Near-duplicate images removed: {self.n_near_duplicates}",
             f"Shards written: {self.shards_written} (already complete: {self.shards_skipped})",
             f"Time: {self.elapsed_s:.1f} s", "", format_summary(self.summary)]
        return "\n".join(s)


def consolidate_tables(work: Work, k: int) -> None:
    """``articles.parquet`` and ``ledger.parquet`` = the previous tables (minus / marking the removed
    articles) + this snapshot's parts, streamed batch by batch; then the parts are deleted, so the
    article text is stored once. Crash-safe: both tables are staged, then moved into place."""
    out, snap = work.out, work.snap(k)
    staged = {ARTICLES_TABLE: snap / ARTICLES_TABLE, LEDGER: snap / LEDGER}
    ready = snap / "finish.ready"
    if not ready.exists():
        removed = pq.read_table(snap / "removed.parquet").to_pylist() if (snap / "removed.parquet").exists() else []
        gone = {r["pmcid"]: r for r in removed}
        gone_set = pa.array(sorted(gone), pa.string())
        for name, schema, kind in ((ARTICLES_TABLE, ARTICLE_SCHEMA, "articles"),
                                   (LEDGER, LEDGER_SCHEMA, "ledger")):
            with atomic_path(staged[name]) as tmp:
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                try:
                    if k > 0 and (out / name).exists():
                        for batch in pq.ParquetFile(out / name).iter_batches(batch_size=TABLE_BATCH):
                            t = pa.Table.from_batches([batch]).cast(schema)
                            if kind == "articles":
                                t = t.filter(pc.invert(pc.is_in(t["pmcid"], value_set=gone_set)))
                            else:
                                t = ledger_after_removals(t, gone)
                            if t.num_rows:
                                writer.write_table(t)
                    for part in all_parts(work, kind):
                        for batch in pq.ParquetFile(part).iter_batches(batch_size=TABLE_BATCH):
                            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                finally:
                    writer.close()
        write_sealed(ready, {"tables": {name: file_seal(path) for name, path in staged.items()}})
    checkpoint("tables_ready")
    for name, path in staged.items():
        if path.exists():
            move_into_place(path, out / name)
    shutil.rmtree(work.root / "parts" / "articles", ignore_errors=True)
    shutil.rmtree(work.root / "parts" / "ledger", ignore_errors=True)


def finish(cfg: BuildOptions, work: Work, k: int, meta: dict, *, n_staged: int, n_removed: int,
           t0: float, clock: StageClock | None = None,
           before_index: Callable[[], object] | None = None) -> BuildReport:
    """The folder's tables, index and summary. ``before_index``: waits for work started beside the tables that
    the index reads (the caption pass's table; its wait is the ``caption_duplicates`` lap)."""
    out = work.out
    # shards: every stats file of the folder (all snapshots)
    shards: dict[str, list[dict]] = {s: [] for s in SUBSETS}
    for s in SUBSETS:
        for p in folder_files(out / s, f"*{STATS}"):
            shards[s].append(json.loads(p.read_text()))
    per_subset = {s: sum(x["count"] for x in shards[s]) for s in SUBSETS}
    _write_sizes(out, shards)
    clashes, dropped, work_timings = [], 0, {}
    _check_fates(work, k, cfg.media.phash)
    for p in sorted((work.root / "parts" / "done").glob("*.json")):
        info = done_record(p)
        if info is None:
            continue                                  # an earlier snapshot's (its fates are in the tables)
        clashes += info.get("clashes", [])
        if p.stem.startswith(f"s{k:03d}-"):           # this snapshot's partitions (this run's and resumed ones)
            dropped += info.get("duplicates_dropped", 0)
            add(work_timings, info.get("timings", {}))
    if clashes:
        raise FatalBuildError(f"ledger has items with more than one fate, e.g. {clashes[:5]}")
    consolidate_tables(work, k)
    if clock:
        clock.lap("tables")
    n_articles = pq.ParquetFile(out / ARTICLES_TABLE).metadata.num_rows
    summary = ledger_summary(out / LEDGER)
    atomic_write_bytes(out / LEDGER_SUMMARY, format_summary(summary).encode())
    write_duplicates(work, out)
    write_near_duplicates(work, k, out)
    if before_index is not None:
        before_index()
        if clock:
            clock.lap("caption_duplicates")
    build_figures_index(out)   # + the hooks' columns (concept labels survive a rebuild)
    checkpoint("index_written")
    if clock:
        clock.lap("index")
    prev = previous_summary(work)
    timings = clock.as_dict(work=work_timings) if clock else {
        "stages": {}, "work": rounded(work_timings, elapsed=False), "elapsed_seconds": round(time.time() - t0, 3)}
    history = [h for h in prev.get("snapshots", []) if h.get("snapshot") != k]
    history.append({"snapshot": k, "date": meta.get("date"), "command": cfg.command, "listed": meta.get("listed"),
                    "articles_processed": meta.get("articles"), **{c: meta.get("changes", {}).get(c, 0) for c in
                    ("added", "replaced", "retried", "retracted", "withdrawn")},
                    "samples_removed": n_removed, "partitions": meta.get("partitions"),
                    "hash_software": hash_software(), "elapsed_seconds": timings["elapsed_seconds"]})
    write_summary(work, {
        "version": __version__, "command": cfg.command, "source": cfg.source.kind,
        "source_opts": public_options(cfg.source.options()),   # local paths by their role: the summary is published
        "executor": cfg.executor, "seed": cfg.seed, "dedup_images": cfg.dedup_images,
        "shard_max_samples": cfg.shard_max_samples, "shard_max_bytes": cfg.shard_max_bytes,
        "media": dataclasses.asdict(cfg.media), "phash": cfg.media.phash, "articles_listed": meta.get("listed"), "articles": n_articles,
        # removals from the ledger: the one source of the console, this summary and the card
        "samples": per_subset, "duplicates_removed": removals(summary)["exact"],
        "near_duplicates_removed": removals(summary)["near"],
        "splits": {"fractions": list(cfg.split_fractions), "by": "sha256 of the PMCID (partition.split_of)"},
        "partitioning": {key: meta[key] for key in ("fine_buckets", "hash", "fractions") if key in meta},
        "snapshots": history,
        "shards": {s: sorted(x["shard"].split("/")[-1] for x in shards[s]) for s in SUBSETS},
        "ledger": summary["counts"],
        "timings": timings,
    })
    n_shards = sum(len(v) for v in shards.values())
    return BuildReport(out=out, summary=summary, n_listed=meta.get("listed") or 0, n_staged_now=n_staged,
                       n_resumed=max(0, (meta.get("articles") or 0) - n_staged), shards_written=n_shards, shards_skipped=0, samples_per_subset=per_subset,
                       n_duplicates=removals(summary)["exact"], elapsed_s=time.time() - t0, snapshot=k,
                       changes=dict(meta.get("changes", {})), n_near_duplicates=removals(summary)["near"])


def _check_fates(work: Work, k: int, phash: str) -> None:
    """The listing is the truth: every partition of snapshot ``k`` with listed articles has a done marker that
    checks and accounts for each of them (one staged unit, with its article fate, per manifest row)."""
    meta = work.meta(k) or {}
    missing = []
    for name, (n, digest) in (meta.get("manifests") or {}).items():
        if not n:
            continue
        info = read_done(work, name, digest, check_parts=False, phash=phash)
        if info is None or info.get("units") != n:
            missing.append(f"{name} ({n} listed, {info.get('units') if info else 'no valid marker'})")
    if missing:
        raise FatalBuildError(f"snapshot {k}: listed articles without a fate in partition(s) {', '.join(missing[:5])}; "
                              f"rerun the build to redo them")


def _write_sizes(out: Path, shards: dict[str, list[dict]]) -> None:
    """``<folder>/sizes.json``: {tar base name: samples} of EVERY shard of the dataset (base names are unique), in
    every shard folder, for open_clip / webdataset: open_clip reads the ``sizes.json`` of the first shard's folder
    for every shard, so ``::``-joined subsets count without ``--train-num-samples`` (``layout.write_dataset_sizes``)."""
    for s in SUBSETS:
        for d in shard_dirs(Path(out) / s) if not shards[s] else []:
            if (d / SIZES).exists():
                (d / SIZES).unlink()
    write_dataset_sizes(out)


SUMMARY_COPY = "build_summary.sealed.json"


def previous_summary(work: Work) -> dict:
    """``build_summary.json`` as the last snapshot wrote it. A cut or damaged one is restored from its sealed
    copy in ``_work/`` (its snapshot history is never dropped silently); without a good copy: a fatal error."""
    path = work.out / BUILD_SUMMARY
    if not path.exists():
        return {}
    try:
        bs = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(bs, dict) and isinstance(bs.get("snapshots", []), list):
            return bs
    except (OSError, ValueError):
        pass
    copy = read_sealed(work.root / SUMMARY_COPY)
    if copy is None or not isinstance(copy.get("summary"), dict):
        raise FatalBuildError(f"{path} is cut or damaged and {work.root / SUMMARY_COPY} cannot replace it: its "
                              f"snapshot history would be lost; restore it from a copy of the dataset")
    log.warning("%s was cut or damaged: restored from %s", path, work.root / SUMMARY_COPY)
    atomic_write_json(path, copy["summary"])
    return copy["summary"]


def write_summary(work: Work, summary: dict) -> None:
    """``build_summary.json`` and its sealed copy in ``_work/`` (what :func:`previous_summary` restores)."""
    write_sealed(work.root / SUMMARY_COPY, {"summary": summary})
    atomic_write_json(work.out / BUILD_SUMMARY, summary)


def up_to_date_report(work: Work, k: int, t0: float) -> BuildReport:
    """The listing holds nothing new: the folder is left exactly as it is."""
    bs = previous_summary(work)
    summary = ledger_summary(work.out / LEDGER)
    n = bs.get("articles_listed") or 0
    log.info("the listing has no new, changed or removed article: nothing to do")
    return BuildReport(out=work.out, summary=summary, n_listed=n, n_staged_now=0, n_resumed=n, shards_written=0,
                       shards_skipped=sum(len(v) for v in bs.get("shards", {}).values()),
                       samples_per_subset=bs.get("samples", {}), n_duplicates=bs.get("duplicates_removed", 0),
                       n_near_duplicates=bs.get("near_duplicates_removed", 0),
                       elapsed_s=time.time() - t0, snapshot=k, changes={"up to date": 1})


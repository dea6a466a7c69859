"""``biomedica build``: a partitioned build whose driver holds O(partitions), never O(articles).

Stages of one **snapshot** (a build, or an update of an earlier build against a newer listing):

1. **list**      the source's listing is streamed into per-bucket spool files, then cut into partition
                 manifests (Parquet) by a stable hash of the PMCID (:mod:`biomedica_hf.build.partition`). An
                 update keeps only new articles, new versions and retried failures, and records the
                 articles that were retracted, withdrawn or superseded.
2. **stage**     per partition (a task on the local pool or Ray): fetch, parse and decode its articles into
                 ``_work/stage/<pid>/`` (resumable article by article; an article that kills its worker
                 twice is ledgered), and spill the samples' hashes into hash buckets.
3. **dedup**     exact duplicate images across the whole build, one hash bucket at a time.
4. **write**     per partition: shuffle its samples (seeded), write its own shards per subset, its
                 article and ledger parts and its completion marker, then delete its staging.
5. **remove**    (updates) shards holding samples of removed articles are copied without them under a new
                 name; untouched shards are never rewritten.
6. **finish**    ``figures.parquet``, ``articles.parquet``, ``ledger.parquet`` streamed from the parts;
                 ``sizes.json``, ``duplicates.parquet``, ``build_summary.json`` (with the snapshot history).

Any exception on one article becomes a ``failed`` ledger row (``internal_error``); a worker that dies gets
its partition retried a bounded number of times; a full disk stops the build with one fatal error and a
rerun repairs what was cut. One build per folder (:mod:`biomedica_hf.build.lock`).
"""
from __future__ import annotations

import ctypes
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from biomedica_hf import __version__
from biomedica_hf.build.article import MediaOptions, PackageResult, process_package
from biomedica_hf.build.dedup import PUBLISHED, decide, decisions_for, n_hash_buckets, write_hash_rows
from biomedica_hf.build.executors import make_executor
from biomedica_hf.build.figures import build_figures_index
from biomedica_hf.build.inputs import nothing_listed
from biomedica_hf.build.lock import BuildLock
from biomedica_hf.build.partition import (
    DEFAULT_SPLIT_FRACTIONS,
    FINE_BUCKETS,
    Layout,
    ListingSpool,
    PartitionId,
    choose_layout,
    manifest_digest,
    read_manifest,
    ref_from_json,
    ref_revision,
    rows_digest,
    spool_rows,
    write_layout,
    write_manifest,
)
from biomedica_hf.build.progress import BuildProgress, bars_on, tick
from biomedica_hf.build.provenance import public_options
from biomedica_hf.build.shards import revise_shard, shard_done, shard_files, shard_name, write_shard
from biomedica_hf.build.sources import make_source
from biomedica_hf.build.sources.base import FatalBuildError, FetchError, Source, fatal_disk_error, is_disk_error
from biomedica_hf.build.staging import PartitionStage
from biomedica_hf.build.state import StateError, checkpoint, file_seal, matches, read_sealed, write_sealed
from biomedica_hf.build.timings import StageClock, add, rounded, timed
from biomedica_hf.errors import InputError
from biomedica_hf.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    move_into_place,
    remove_temporaries,
    write_parquet,
    write_table,
)
from biomedica_hf.io.markers import STATS, read_marker, write_marker
from biomedica_hf.layout import FIGURES_INDEX, folder_files, shard_dirs, shard_folder, write_dataset_sizes
from biomedica_hf.ledger import LEDGER_SCHEMA, check_unique, format_summary, ledger_summary, removals
from biomedica_hf.schema import ARTICLE_FIELDS, FAILED, KEPT, SKIPPED, SUBSETS, ArticleRef, LedgerEntry, arrow_schema

log = logging.getLogger("biomedica_hf.build")

ARTICLE_SCHEMA = arrow_schema(ARTICLE_FIELDS)
# fetch errors that will not change on retry
PERMANENT_FETCH = {"not_open_access": SKIPPED, "retracted": SKIPPED, "not_found": FAILED, "bad_package": FAILED}
TRANSIENT_REASONS = {"download_failed"}
TABLE_BATCH = 256              # article rows in memory at a time (they carry the full text)
MAX_STARTS = 2                  # an article that was started this often without finishing is ledgered


@dataclass
class BuildConfig:
    out: Path
    source: str = "local"                         # cloud | legacy | local
    source_opts: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    limit: int | None = None
    shard_max_samples: int = 10_000
    shard_max_bytes: int = 1_000_000_000
    seed: int = 0
    dedup_images: bool = True                     # exact duplicate images kept once
    media: MediaOptions = field(default_factory=MediaOptions)
    keep_downloads: bool = False
    retry_failed: bool = False                    # re-process articles whose earlier run failed
    executor: str = "local"                       # local (process pool) | ray
    ray_address: str | None = None                # ray: "auto", "ray://host:10001" or "local"
    progress: bool = True
    progress_every: float = 30.0                  # seconds between progress lines when stderr is not a terminal
    command: str = ""
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    partition_target: int | None = None           # articles per partition (None: partition.auto_target)
    max_attempts: int = 3                         # tries of a partition whose worker died
    allow_shrink: bool = False                    # an update may withdraw more than half of the articles
    near_dedup: bool = False                      # drop near-duplicate images too (default: flag them)
    caption_dups: bool = True                     # flag near-duplicate captions (MinHash)
    allow_downgrade: bool = False                 # an update may replace an article by an older version
    rebuild_state: bool = False                   # a folder whose _work/ is gone: reconstruct it first
    preload: tuple[str, ...] = ()                 # modules the caller needs after the build (the card's): imported
                                                  # while the workers stage, off the critical path (see _Preload)

    @property
    def work(self) -> Path:
        return Path(self.out) / "_work"


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


# ------------------------------------------------------------------------------------- fixed costs
class _Preload:
    """Imports the driver (or a pool forked from it later) will need after the stage phase, done in a thread while
    the workers stage: with 2+ workers the driver only waits there, so these fixed costs leave the serial tail of the
    build (the card's ``datasets`` and ``matplotlib``, the caption pass's ``datasketch``: ~1.5 CPU s).

    Started only once the stage pool has forked its workers, and joined before any later pool forks, so no process
    is ever forked while the thread holds an import lock. A module that fails to import is left to its user."""

    def __init__(self, modules: tuple[str, ...]):
        import threading

        self.modules = modules
        self.thread = threading.Thread(target=self._run, name="preload", daemon=True) if modules else None
        self.started = False

    def _run(self) -> None:
        import importlib

        for name in self.modules:
            try:
                if name.startswith("matplotlib"):
                    import matplotlib

                    matplotlib.use("Agg")     # what the card selects; never a GUI backend from a thread
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the module's user imports it again and reports
                log.debug("preload of %s failed", name, exc_info=True)

    def start(self) -> None:
        if self.thread is not None and not self.started:
            self.started = True
            self.thread.start()

    def join(self) -> None:
        if self.started:
            self.thread.join()


def _largest_first(work: Work, pids: list[str]) -> list[str]:
    """Partitions by their number of articles, largest first (stable): the longest tasks start first, so that the
    workers finish together (a small validation/test partition fills a gap at the end instead of a large one
    running alone)."""
    return sorted(pids, key=lambda p: -read_manifest_count(work, PartitionId.parse(p)))


# ------------------------------------------------------------------------------------- paths
class Work:
    """The resume state under ``OUT/_work``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = self.out / "_work"

    def snap(self, k: int) -> Path:
        return self.root / "snapshots" / f"s{k:03d}"

    def manifest(self, pid: PartitionId) -> Path:
        return self.snap(pid.snapshot) / "partitions" / f"{pid.name}.parquet"

    def stage(self, pid: PartitionId) -> PartitionStage:
        return PartitionStage(self.root / "stage" / pid.name)

    def hashes(self, k: int) -> Path:
        return self.snap(k) / "hashes"

    def decisions(self, k: int) -> Path:
        return self.snap(k) / "decisions.parquet"

    def part(self, kind: str, pid_name: str) -> Path:
        return self.root / "parts" / kind / f"{pid_name}.parquet"

    def done(self, pid_name: str) -> Path:
        return self.root / "parts" / "done" / f"{pid_name}.json"

    def snapshots(self) -> list[int]:
        d = self.root / "snapshots"
        return sorted(int(p.name[1:]) for p in d.glob("s[0-9][0-9][0-9]")) if d.is_dir() else []

    def meta(self, k: int) -> dict | None:
        """The snapshot's sealed ``layout.json`` (None when missing, cut or changed). A complete snapshot of a
        folder built before layouts were sealed is read as it is."""
        p = self.snap(k) / "layout.json"
        info = read_sealed(p)
        if info is None and self.complete(k):
            legacy = read_marker(p)
            if legacy is not None and "_seal" not in legacy:
                return legacy
        return info

    def layout(self, k: int) -> Layout | None:
        meta = self.meta(k)
        try:
            return Layout.from_json(meta) if meta is not None else None
        except (KeyError, TypeError, ValueError):
            return None

    def hash_files(self, k: int, pid_name: str) -> list[Path]:
        return sorted(self.hashes(k).glob(f"h*/{pid_name}.parquet"))

    def complete(self, k: int) -> bool:
        return (self.snap(k) / "complete.json").exists()


# ----------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the driver dies, so a killed driver leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


_DRIVER_PID: list[int] = []


def _init_worker(source_kind: str, source_opts: dict, out: str, media: MediaOptions, keep_downloads: bool,
                 n_hash: int, dedup: bool, discard: bool = False) -> None:
    if os.getpid() not in _DRIVER_PID:
        _die_with_parent()
    _WORKER.update(source=make_source(source_kind, **source_opts), work=Work(Path(out)), media=media,
                   keep_downloads=keep_downloads, n_hash=n_hash, dedup=dedup,
                   discard=discard)
    _WORKER["source"].extract_to_disk = keep_downloads    # --keep-downloads: packages extracted into the cache


def _disk_error(e: BaseException) -> BaseException | None:
    """The disk error (ENOSPC, EDQUOT, EROFS) or :class:`FatalBuildError` in ``e``'s chain, None without one."""
    from biomedica_hf.errors import exception_chain

    return next((x for x in exception_chain(e) if isinstance(x, FatalBuildError) or is_disk_error(x)), None)


def _process_ref(ref: ArticleRef, source: Source, work: Work, media: MediaOptions, keep: bool) -> PackageResult:
    """One article -> staged result. Every failure of the article itself ends in its ledger rows."""
    cache = work.root / "cache"
    if _WORKER.get("discard"):      # --retry-failed: a failed package's cached extraction is not reused
        source.discard(ref, cache)
    if ref.retracted:
        return PackageResult(ref.pmcid, ledger=[LedgerEntry("article", ref.pmcid, ref.pmcid, SKIPPED, "retracted",
                                                            "marked retracted in the listing", ref.location)])
    fetch: dict[str, float] = {}
    try:
        with timed(fetch, "fetch"):
            pkg = source.fetch(ref, cache)
    except FetchError as e:
        state = PERMANENT_FETCH.get(e.reason, FAILED)
        return PackageResult(ref.pmcid, ledger=[LedgerEntry("article", ref.pmcid, ref.pmcid, state, e.reason,
                                                            str(e.detail)[:500], ref.location)], timings=fetch)
    try:
        result = reconcile_identity(ref, process_package(pkg, media))
    finally:
        root = Path(pkg.root).resolve()
        if not keep and cache.resolve() in root.parents:
            shutil.rmtree(root, ignore_errors=True)
    add(result.timings, fetch)
    return result


_LISTED_PMCID = re.compile(r"PMC\d+")


def reconcile_identity(ref: ArticleRef, result: PackageResult) -> PackageResult:
    """One identity per article: the listing's PMCID against the ids the package's XML gives its articles.

    An article whose XML names another PMCID than the listing (``PMC…99.1/`` holding another article's XML)
    is not published under either id: the listed id is ledgered ``failed / id_mismatch`` with both ids, and
    nothing of the other article is kept (it has its own listing row, or it is not in this snapshot), so
    neither two fates nor duplicate keys can arise. Listing ids that are not PMCIDs (a local folder's name)
    take the XML's id, as before."""
    if not _LISTED_PMCID.fullmatch(ref.pmcid):
        return result
    listed = ref.pmcid.upper()

    def foreign(pmcid: str | None) -> bool:
        p = (pmcid or listed).upper()
        return p != listed and not p.startswith(listed + "_")

    others = sorted({a["pmcid"] for a in result.articles if foreign(a.get("pmcid"))})
    if not others:
        return result
    detail = f"listed as {ref.pmcid}, the XML names {', '.join(others)}"[:500]
    kept = [a for a in result.articles if not foreign(a.get("pmcid"))]
    ledger = []
    for e in result.ledger:
        if e.kind == "file":
            if not kept and e.state == KEPT:
                e = dataclasses.replace(e, state=SKIPPED, reason="id_mismatch", detail=detail)
            ledger.append(e)
        elif not foreign(e.pmcid):
            ledger.append(e)
    if not kept:
        ledger.append(LedgerEntry("article", ref.pmcid, ref.pmcid, FAILED, "id_mismatch", detail, ref.location))
    else:
        ledger.extend(LedgerEntry("article", f"{p}@{ref.pmcid}", ref.pmcid, SKIPPED, "id_mismatch", detail,
                                  ref.location) for p in others)
    return PackageResult(result.ref_id, articles=kept,
                         samples=[s for s in result.samples if not foreign(s.meta.get("pmcid"))],
                         ledger=ledger, timings=result.timings)


def _fatal(e: BaseException, where: str) -> FatalBuildError:
    """The one-line fatal error for the disk error in ``e``'s chain."""
    found = _disk_error(e)
    if isinstance(found, FatalBuildError):
        return found
    return fatal_disk_error(found, where) if found is not None else FatalBuildError(str(e))


def _internal_error(ref: ArticleRef, e: BaseException, reason: str = "internal_error") -> PackageResult:
    return PackageResult(ref.pmcid, ledger=[LedgerEntry("article", ref.pmcid, ref.pmcid, FAILED, reason,
                                                        f"{type(e).__name__}: {e}"[:500], ref.location)])


def _task(item: str | tuple) -> tuple[str, str | None]:
    """(partition name, manifest digest) of a stage task."""
    return (item, None) if isinstance(item, str) else (item[0], item[1])


def _manifest_rows(work: Work, pid: PartitionId, digest: str | None) -> list[dict]:
    """The partition's manifest, checked against the digest ``layout.json`` recorded for it."""
    try:
        rows = read_manifest(work.manifest(pid))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise StateError(f"the manifest of {pid.name} is missing or cut ({e})") from None
    if digest is not None and rows_digest(rows) != digest:
        raise StateError(f"the manifest of {pid.name} changed since the snapshot was planned")
    return rows


def _open_stage(stage: PartitionStage, digest: str | None) -> set[str]:
    """Open the partition's staging for appending; staging that does not check, or that was made for another
    manifest, is discarded (the partition is redone from its inputs)."""
    bound = read_sealed(stage.folder / "for.json")
    if stage.folder.exists() and (bound is None or bound.get("manifest") != digest):
        if any(stage.folder.iterdir()):
            log.warning("staging of %s was made for another manifest or is damaged: redone", stage.folder.name)
        stage.remove()
    if not stage.folder.exists():
        stage.folder.mkdir(parents=True)
        write_sealed(stage.folder / "for.json", {"manifest": digest})
    try:
        return stage.open()[0]
    except StateError as e:
        log.warning("%s: the partition's staging is redone", e)
        stage.remove()
        return _open_stage(stage, digest)


def stage_partition(item: str | tuple) -> dict:
    """Stage every article of one partition (resumable article by article)."""
    pid_name, digest = _task(item)
    work: Work = _WORKER["work"]
    pid = PartitionId.parse(pid_name)
    stage = work.stage(pid)
    if stage.is_staged(digest) and _hashes_match(work, pid, stage.staged_info()):
        return stage.staged_info()
    rows = _manifest_rows(work, pid, digest)
    for attempt in range(2):
        done = _open_stage(stage, digest)
        try:
            return _stage_rows(work, pid, stage, rows, done, digest)
        except StateError as e:
            if attempt:
                raise FatalBuildError(f"partition {pid_name}: its staging is damaged again after being redone "
                                      f"({e}); is the disk failing?") from e
            log.warning("%s: the partition's staging is redone", e)
            stage.remove()
    raise AssertionError("unreachable")


def _hashes_match(work: Work, pid: PartitionId, info: dict) -> bool:
    """The partition's hash files are the ones its staging wrote (each file's length and sha256)."""
    want = info.get("hashes")
    if want is None:
        return False
    have = {p.relative_to(work.hashes(pid.snapshot)).as_posix(): p for p in work.hash_files(pid.snapshot, pid.name)}
    return set(have) == set(want) and all(matches(have[n], want[n]) for n in want)


def _stage_rows(work: Work, pid: PartitionId, stage: PartitionStage, rows: list[dict], done: set[str],
                digest: str | None) -> dict:
    pid_name = pid.name
    starts = stage.start_counts()
    n_bytes = 0
    for row in rows:
        ref = ref_from_json(row["ref"])
        rid = f"{ref.pmcid}@{ref.location}" if row["duplicate"] else ref.pmcid
        if rid in done:
            continue
        if row["duplicate"]:
            result = PackageResult(rid, ledger=[LedgerEntry("article", rid, ref.pmcid, SKIPPED, "duplicate_listing",
                                                            "", ref.location)])
        elif starts[rid] >= MAX_STARTS:
            result = PackageResult(rid, ledger=[LedgerEntry(
                "article", ref.pmcid, ref.pmcid, FAILED, "worker_died",
                f"the worker processing this article died {starts[rid]} times (out of memory or killed)",
                ref.location)])
        else:
            stage.mark_start(rid)
            try:
                result = _process_ref(ref, _WORKER["source"], work, _WORKER["media"], _WORKER["keep_downloads"])
            except Exception as e:
                if _disk_error(e) is not None:
                    raise FatalBuildError(f"disk full while processing {ref.pmcid} ({e}); free space and rerun: "
                                          "the build resumes and repairs what was cut") from e
                log.exception("internal error on %s", ref.pmcid)
                result = _internal_error(ref, e)
            result.ref_id = rid
        try:
            n_bytes += stage.append(result)
        except Exception as e:
            if _disk_error(e) is not None:
                raise _fatal(e, f"the staging of partition {pid_name}") from e
            log.exception("could not stage %s", rid)
            stage.open()                       # cut back what the failed append wrote
            failed = _internal_error(ref, e)
            failed.ref_id = rid
            stage.append(failed)
        checkpoint("staged_article")
        tick(work.root / "progress", pid_name)   # the driver's bar over articles
    return _finish_stage(work, pid, stage, n_bytes, rows, digest)


def _rids(rows: list[dict]) -> list[str]:
    """The staging unit id of each manifest row (a listing's duplicate row is its own unit)."""
    out = []
    for row in rows:
        ref = ref_from_json(row["ref"])
        out.append(f"{ref.pmcid}@{ref.location}" if row["duplicate"] else ref.pmcid)
    return out


def _finish_stage(work: Work, pid: PartitionId, stage: PartitionStage, n_bytes: int, rows: list[dict],
                  digest: str | None) -> dict:
    hash_rows, n_samples, retry, failed = [], 0, [], []
    seen: Counter = Counter()
    no_fate: list[str] = []
    for unit in stage.units():
        seen[unit["ref_id"]] += 1
        if not any(e["kind"] == "article" for e in unit["ledger"]):
            no_fate.append(unit["ref_id"])
        for s in unit["samples"]:
            n_samples += 1
            hash_rows.append({"key": s["key"], "sha256": s["image"]["sha256"], "subset": s["meta"]["subset"],
                              "pmcid": s["meta"]["pmcid"], "phash": s["meta"].get("phash")})
        for e in unit["ledger"]:
            if e["state"] == FAILED and e["pmcid"]:
                failed.append(e["pmcid"])          # any failed item: --retry-failed re-processes the article
                if e["kind"] == "article" and e["reason"] in TRANSIENT_REASONS:
                    retry.append(e["pmcid"])       # retried by any rerun
    listed = set(_rids(rows))
    if set(seen) != listed or any(n > 1 for n in seen.values()) or no_fate:      # every listed article exactly once, each with its fate
        raise StateError(f"partition {pid.name}: staged articles differ from its manifest (missing "
                         f"{sorted(listed - set(seen))[:5]}, extra {sorted(set(seen) - listed)[:5]}, without an article "
                         f"fate {no_fate[:5]})")
    for old in work.hash_files(pid.snapshot, pid.name):
        old.unlink()
    write_hash_rows(work.hashes(pid.snapshot), pid.name, hash_rows, _WORKER["n_hash"])
    hashes = {p.relative_to(work.hashes(pid.snapshot)).as_posix(): file_seal(p)
              for p in work.hash_files(pid.snapshot, pid.name)}
    info = {"pid": pid.name, "samples": n_samples, "bytes": n_bytes, "failed": sorted(set(failed)),
            "retry": sorted(set(retry)), "manifest": digest, "units": sum(seen.values()), "hashes": hashes,
            "hash_digest": hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()}
    stage.mark_staged(info)
    checkpoint("staged")
    return info


def _give_up_partition(item: str | tuple, attempts: int, error: str) -> dict:
    """A partition whose worker died ``attempts`` times: its unfinished articles are ledgered."""
    pid_name, digest = _task(item)
    work: Work = _WORKER["work"]
    pid = PartitionId.parse(pid_name)
    stage = work.stage(pid)
    done = _open_stage(stage, digest)
    rows = _manifest_rows(work, pid, digest)
    for row in rows:
        ref = ref_from_json(row["ref"])
        rid = f"{ref.pmcid}@{ref.location}" if row["duplicate"] else ref.pmcid
        if rid not in done:
            res = PackageResult(rid, ledger=[LedgerEntry("article", rid, ref.pmcid, FAILED, "worker_died",
                                                         f"partition {pid_name} failed {attempts} times: {error}"[:500],
                                                         ref.location)])
            stage.append(res)
    return _finish_stage(work, pid, stage, 0, rows, digest)


def read_done(work: Work, pid_name: str, digest: str | None = None, check_parts: bool = True) -> dict | None:
    """A partition's done marker when it checks: sealed, for the manifest ``digest`` (when given), with its
    table parts as they were written (``check_parts``: until they are merged into the tables)."""
    info = read_sealed(work.done(pid_name))
    if info is None or (digest is not None and info.get("manifest") != digest):
        return None
    if check_parts and not all(matches(work.part(kind, pid_name), seal)
                               for kind, seal in (info.get("parts") or {}).items()):
        return None
    return info


def write_partition(task: tuple) -> dict:
    """Shuffle, shard and write one staged partition; its parts and marker; then delete its staging.

    A partition whose staging is gone or does not check (a lost done marker, a flipped image) is staged again
    from its inputs first; it must stage the same hash rows that the duplicate decisions were made from."""
    pid_name, digest = task[0], (task[5] if len(task) > 5 else None)
    work: Work = _WORKER["work"]
    finished = read_done(work, pid_name, digest, check_parts=not (work.snap(PartitionId.parse(pid_name).snapshot)
                                                                 / "finish.ready").exists())
    if finished is not None:
        return finished
    pid = PartitionId.parse(pid_name)
    stage = work.stage(pid)
    decided = task[6] if len(task) > 6 else None
    for attempt in range(2):
        if not stage.is_staged(digest):
            stage_partition((pid_name, digest))
        info = stage.staged_info()
        if decided is not None and info.get("hash_digest") != decided:
            raise FatalBuildError(
                f"partition {pid_name} staged other images than when the duplicates were decided (its input "
                f"changed during the build?); remove {work.snap(pid.snapshot)} and the folder's unfinished "
                f"shards, or build into a new folder")
        try:
            return _write_partition(task, work, pid, stage, digest)
        except StateError as e:
            if attempt:
                raise FatalBuildError(f"partition {pid_name}: its staging is damaged again after being redone "
                                      f"({e}); is the disk failing?") from e
            log.warning("%s: partition %s is staged again from its inputs", e, pid_name)
            stage.remove()
    raise AssertionError("unreachable")


def _write_partition(task: tuple, work: Work, pid: PartitionId, stage: PartitionStage, manifest: str | None) -> dict:
    pid_name, seed, max_samples, max_bytes, decisions_path = task[:5]
    marker = work.done(pid_name)
    drop, also = decisions_for(Path(decisions_path), pid_name) if decisions_path else ({}, {})
    samples: list[dict] = []
    ledger: list[dict] = []
    articles_path = work.part("articles", pid_name)
    dropped_per_pmcid: Counter = Counter()
    unit_timings: dict[str, dict[str, float]] = {}      # ref id -> its seconds per stage
    kept_of: Counter = Counter()                          # ref id -> its samples written to shards
    work_timings: dict[str, float] = {}                   # the partition's work: every article, every shard
    with atomic_path(articles_path) as tmp:
        writer = pq.ParquetWriter(tmp, ARTICLE_SCHEMA, compression="zstd")
        batch: list[dict] = []
        n_units = 0
        for unit in stage.units():
            n_units += 1
            unit_timings[unit["ref_id"]] = unit["timings"]
            add(work_timings, unit["timings"])
            for s in unit["samples"]:
                if s["key"] in drop:
                    dropped_per_pmcid[s["meta"]["pmcid"]] += 1
                else:
                    s["meta"]["also_in"] = also.get(s["key"], [])
                    s["meta"]["split"] = pid.split
                    s["ref_id"] = unit["ref_id"]
                    kept_of[unit["ref_id"]] += 1
                    samples.append(s)
            for e in unit["ledger"]:
                if e["kind"] == "figure" and e["state"] == KEPT and e["id"] in drop:
                    canon, kind = drop[e["id"]]
                    if kind == "near":
                        e.update(state=SKIPPED, reason="near_duplicate_image", detail=f"near copy of {canon}")
                    else:
                        e.update(state=SKIPPED, reason="duplicate_image", detail=f"same bytes as {canon}")
                if e["kind"] == "file":
                    e["id"] = f"{unit['ref_id']}/{e['id']}"
                ledger.append(e)
            batch.extend(unit["articles"])
            if len(batch) >= 256:
                _write_articles(writer, batch, dropped_per_pmcid)
                batch = []
        _write_articles(writer, batch, dropped_per_pmcid)
        writer.close()

    expected = stage.staged_info().get("units")
    if expected is not None and n_units != expected:
        raise StateError(f"partition {pid_name}: its staging holds {n_units} articles, {expected} were staged")
    stats: dict[str, Any] = {"pid": pid_name, "shards": [], "samples": {s: 0 for s in SUBSETS}}
    samples.sort(key=lambda s: s["key"])
    for subset in SUBSETS:
        members = [s for s in samples if s["meta"]["subset"] == subset]
        random.Random(f"{seed}:{pid_name}:{subset}").shuffle(members)
        for i, shard in enumerate(_cut(members, max_samples, max_bytes)):
            name = shard_name(subset, pid.split, f"s{pid.snapshot:03d}-p{pid.index:05d}", i,
                              folder=shard_folder(subset, pid.snapshot, pid.index))
            digest = hashlib.sha256(json.dumps([[s["key"], s["image"]["sha256"], s["meta"]["also_in"]]
                                                for s in shard]).encode()).hexdigest()
            if not shard_done(work.out, name, digest):
                shard_timings = _shard_timings(shard, unit_timings, kept_of)
                with timed(work_timings, "shard_write"):
                    write_shard(work.out, name, stage.read_samples(shard), digest, {"partition": pid_name},
                                timings=shard_timings)
                checkpoint("shard_written")
            stats["shards"].append({"name": name, "count": len(shard), "digest": digest})
            stats["samples"][subset] += len(shard)
    write_parquet(work.part("ledger", pid_name), ledger, LEDGER_SCHEMA)
    stats["clashes"] = [f"{kind}:{item}" for kind, item in check_unique(LedgerEntry(**e) for e in ledger)][:5]
    if stats["clashes"]:                 # known here: stop now, not after every other partition
        raise FatalBuildError(f"partition {pid_name}: ledger items with more than one fate, e.g. {stats['clashes']}")
    stats["duplicates_dropped"] = sum(dropped_per_pmcid.values())
    staged_info = stage.staged_info()
    stats["failed"], stats["retry"] = staged_info.get("failed", []), staged_info.get("retry", [])
    stats["timings"] = rounded(work_timings, elapsed=False)
    stats.update(manifest=manifest, units=n_units, hash_digest=staged_info.get("hash_digest"),
                 hashes=staged_info.get("hashes"),
                 parts={kind: file_seal(work.part(kind, pid_name)) for kind in ("articles", "ledger")})
    write_sealed(marker, stats)
    checkpoint("partition_written")
    stage.remove()
    return stats


def _shard_timings(shard: list[dict], unit_timings: dict[str, dict[str, float]], kept_of: Counter) -> dict:
    """The seconds of the articles whose samples are in ``shard``, each article's shared out over its samples
    written to shards (so that the shards of a partition add up to the work of its articles with samples)."""
    out: dict[str, float] = {}
    for s in shard:
        add(out, unit_timings.get(s["ref_id"], {}), 1 / kept_of[s["ref_id"]])
    return out


def _write_articles(writer: pq.ParquetWriter, rows: list[dict], dropped: Counter) -> None:
    if not rows:
        return
    out = []
    for a in rows:
        r = {n: a.get(n) for n, _, _ in ARTICLE_FIELDS}
        if r.get("n_samples") is not None:
            r["n_samples"] = r["n_samples"] - dropped.get(r["pmcid"], 0)
        out.append(r)
    writer.write_table(pa.Table.from_pylist(out, schema=ARTICLE_SCHEMA))


def _cut(members: list[dict], max_samples: int, max_bytes: int) -> Iterator[list[dict]]:
    if max_samples < 1 or max_bytes < 1:
        raise ValueError("shard limits must be positive")
    cur: list[dict] = []
    size = 0
    for s in members:
        n = s["length"] + len(s["caption"].encode()) + 2048
        if cur and (len(cur) >= max_samples or size + n > max_bytes):
            yield cur
            cur, size = [], 0
        cur.append(s)
        size += n
    if cur:
        yield cur


# ------------------------------------------------------------------------- task running
def run_tasks(make: Callable[[], Any], fn: Callable, items: list, *, max_attempts: int, desc: str,
              progress: bool, on_give_up: Callable[[Any, int, str], Any] | None = None) -> Iterator[Any]:
    """Run ``fn`` over ``items``; a dead worker (``BrokenProcessPool``, Ray's crashed worker) restarts the
    pool and the tasks that were in flight are tried again, ``max_attempts`` times at most."""
    attempts: Counter = Counter()
    remaining = list(items)
    bar = tqdm(total=len(items), desc=desc, unit="part", disable=not progress)
    while remaining:
        executor = make()
        finished: set = set()
        try:
            for key, result in executor.map(_keyed, [(fn, it) for it in remaining]):
                finished.add(key)
                bar.update(1)
                yield result
            remaining = []
        except FatalBuildError:
            raise
        except Exception as e:
            if not _worker_died(e):
                raise
            log.warning("a worker died (%s: %s); retrying the unfinished partitions", type(e).__name__, e)
            remaining = [it for it in remaining if _item_key(it) not in finished]
            for it in remaining:
                attempts[_item_key(it)] += 1
            given_up = [it for it in remaining if attempts[_item_key(it)] >= max_attempts]
            for it in given_up:
                if on_give_up is None:
                    raise
                bar.update(1)
                yield on_give_up(it, attempts[_item_key(it)], f"{type(e).__name__}: {e}")
            remaining = [it for it in remaining if it not in given_up]
        finally:
            executor.close()
    bar.close()


def _item_key(item: Any) -> str:
    return item if isinstance(item, str) else item[0]


def _keyed(args: tuple) -> tuple[str, Any]:
    fn, item = args
    return _item_key(item), fn(item)


def _worker_died(e: BaseException) -> bool:
    if isinstance(e, BrokenProcessPool):
        return True
    name = type(e).__name__
    return name in {"WorkerCrashedError", "RayTaskError", "NodeDiedError", "OutOfMemoryError"} and \
        "FatalBuildError" not in str(e)


# ------------------------------------------------------------------------------- listing
def _drain_listing(source: Source, k: int, writer_rows: list[dict]) -> None:
    for path, reason in getattr(source, "unlisted", []) or []:
        writer_rows.append(LedgerEntry("file", f"{path}" + (f"@s{k:03d}" if k else ""), "", SKIPPED, reason, "",
                                       str(path)).as_dict())
    for line, reason in getattr(source, "listing_problems", []) or []:
        writer_rows.append(LedgerEntry("file", f"listing:{line}" + (f"@s{k:03d}" if k else ""), "", FAILED,
                                       "bad_listing_row", str(reason)[:500], "").as_dict())
    if getattr(source, "unlisted", None):
        source.unlisted.clear()
    if getattr(source, "listing_problems", None):
        source.listing_problems.clear()


def list_snapshot(cfg: BuildConfig, work: Work, k: int) -> tuple[ListingSpool, int]:
    """Stream the source's listing into bucket spools; listing-level ledger rows into a part."""
    spool = ListingSpool(work.snap(k) / "spool")
    source = make_source(cfg.source, **cfg.source_opts)
    ledger_rows: list[dict] = []
    n = 0
    path = work.part("ledger", f"s{k:03d}-listing")
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, LEDGER_SCHEMA, compression="zstd")
        try:
            bar = tqdm(desc="listing", unit="art", disable=not bars_on(cfg.progress))
            for ref in source.list_articles():
                if cfg.limit is not None and n >= cfg.limit:
                    break
                spool.add(ref)
                n += 1
                bar.update(1)
                if len(ledger_rows) >= 10_000 or (n % 10_000 == 0):
                    _drain_listing(source, k, ledger_rows)
                    if ledger_rows:
                        writer.write_table(pa.Table.from_pylist(ledger_rows, schema=LEDGER_SCHEMA))
                        ledger_rows = []
            bar.close()
            if n == 0 and k == 0:   # nothing to build: one line naming what was looked for (build() cleans up)
                raise nothing_listed(cfg.source, cfg.source_opts, source)
            _drain_listing(source, k, ledger_rows)
            if ledger_rows:
                writer.write_table(pa.Table.from_pylist(ledger_rows, schema=LEDGER_SCHEMA))
        finally:
            writer.close()
            source.close()
    spool.flush()
    return spool, n


def _old_entries(work: Work, k: int, bucket: int, removed: set[tuple[str, int]],
                 cache: dict[int, tuple[str, dict]]) -> dict[str, dict]:
    """Current (not removed) entries of earlier snapshots for one bucket: pmcid -> row (+ snapshot)."""
    cur: dict[str, dict] = {}
    for j in range(k):
        layout = work.layout(j)
        if layout is None:
            continue
        pid = layout.partition_of_bucket(bucket)
        cached = cache.get(j)
        if cached is None or cached[0] != pid.name:
            path = work.manifest(pid)
            by_bucket: dict[int, list[dict]] = {}
            if path.exists():
                for r in read_manifest(path):
                    by_bucket.setdefault(r["bucket"], []).append(r)
            cache[j] = cached = (pid.name, by_bucket)
        for r in cached[1].get(bucket, []):
            if not r["duplicate"] and (r["pmcid"], j) not in removed:
                cur[r["pmcid"]] = {**r, "snapshot": j, "pid": pid.name}
    return cur


REMOVED_SCHEMA = pa.schema([("pmcid", pa.string()), ("snapshot", pa.int32()), ("pid", pa.string()),
                            ("reason", pa.string())])


def _removed_records(work: Work, upto: int, reason: str | None = None) -> set[tuple[str, int]]:
    """(pmcid, snapshot of the removed entry) of every removal so far (bounded by churn, not corpus)."""
    out = set()
    for j in range(upto):
        p = work.snap(j) / "removed.parquet"
        if p.exists():
            t = pq.read_table(p, columns=["pmcid", "snapshot", "reason"])
            out.update((pm, sn) for pm, sn, why in zip(t["pmcid"].to_pylist(), t["snapshot"].to_pylist(),
                                                      t["reason"].to_pylist()) if reason in (None, why))
    return out


def _done_record(p: Path) -> dict | None:
    """A done marker's record: sealed, or (a folder built before markers were sealed) plain JSON without a seal."""
    info = read_sealed(p)
    if info is None:
        legacy = read_marker(p)
        info = legacy if legacy is not None and "_seal" not in legacy else None
    return info


def _failed_pmcids(work: Work, transient_only: bool) -> set[str]:
    out: set[str] = set()
    d = work.root / "parts" / "done"
    damaged = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        info = _done_record(p)
        if info is None:
            damaged.append(p.name)
            continue
        out.update(info.get("retry" if transient_only else "failed", []))
    if damaged:     # the ledger says the same: its failed rows (those of articles still in the dataset)
        log.warning("done marker(s) %s damaged: the articles to retry are read from the ledger", damaged[:5])
        path = work.out / "ledger.parquet"
        if path.exists():
            t = pq.read_table(path, columns=["kind", "id", "pmcid", "state", "reason"]).to_pylist()
            out.update(r["pmcid"] for r in t if r["state"] == FAILED and r["pmcid"] and "@s" not in r["id"]
                       and (not transient_only or (r["kind"] == "article" and r["reason"] in TRANSIENT_REASONS)))
    return out


def _check_history(work: Work, k: int) -> None:
    """Before an update diffs against them: the manifests and removal records of snapshots ``0..k-1`` are the
    ones their layouts recorded (a lost one would re-add its articles as duplicates)."""
    damaged = []
    for j in range(k):
        meta = work.meta(j)
        if meta is None:
            damaged.append(f"{work.snap(j) / 'layout.json'}")
            continue
        for name, seal in (meta.get("manifests") or {}).items():
            if list(manifest_digest(work.manifest(PartitionId.parse(name))) or ()) != list(seal):
                damaged.append(str(work.manifest(PartitionId.parse(name))))
        if "removed" in meta and not matches(work.snap(j) / "removed.parquet", meta["removed"]):
            damaged.append(str(work.snap(j) / "removed.parquet"))
    if damaged:
        raise FatalBuildError(f"the resume state of this dataset is damaged ({', '.join(damaged[:3])}"
                              f"{' ...' if len(damaged) > 3 else ''} missing or changed): an update would add its "
                              f"articles twice. Rerun with --rebuild-state to reconstruct it from the published files")


def plan_snapshot(cfg: BuildConfig, work: Work, k: int) -> Layout | None:
    """List, diff against earlier snapshots (updates), write the manifests and the layout."""
    spool, n_listed = list_snapshot(cfg, work, k)
    changes = Counter()
    removed_rows: list[dict] = []
    plan_rows: list[dict] = []          # ledger rows of the diff itself (a version going backward)
    if k == 0:
        counts = spool.counts
        source_folder = spool.folder
    else:
        _check_history(work, k)
        removed = _removed_records(work, k)
        retracted_before = _removed_records(work, k, reason="retracted")
        retracted_before = {p for p, _ in retracted_before}
        retry = _failed_pmcids(work, transient_only=not cfg.retry_failed)
        delta = ListingSpool(work.snap(k) / "delta")
        cache: dict[int, tuple[str, dict]] = {}
        n_old = 0
        for b in range(FINE_BUCKETS):
            old = _old_entries(work, k, b, removed, cache)
            n_old += len(old)
            new_seen: set[str] = set()
            for seq, ref in sorted(spool_rows(spool.folder, b), key=lambda r: r[0]):
                if ref.pmcid in new_seen:
                    continue
                new_seen.add(ref.pmcid)
                prev = old.get(ref.pmcid)
                if prev is None and ref.retracted and ref.pmcid in retracted_before:
                    continue                    # still retracted: already removed, nothing to do
                old_version = ref_from_json(prev["ref"]).version if prev is not None else None
                if prev is None:
                    changes["added"] += 1
                    delta.seq = seq
                    delta.add(ref)
                elif (old_version is not None and ref.version is not None and ref.version < old_version
                      and not cfg.allow_downgrade):        # versions only move forward
                    changes["older_version_listed"] += 1
                    plan_rows.append(LedgerEntry(
                        "file", f"listing:{ref.pmcid}.{ref.version}@s{k:03d}", ref.pmcid, SKIPPED,
                        "older_version_listed", f"the listing has version {ref.version}, the dataset version "
                        f"{old_version} (kept; --allow-downgrade replaces it)", ref.location).as_dict())
                elif prev["revision"] != ref_revision(ref) or ref.pmcid in retry:
                    why = "superseded" if prev["revision"] != ref_revision(ref) else "retried"
                    changes["replaced" if why == "superseded" else "retried"] += 1
                    removed_rows.append({"pmcid": ref.pmcid, "snapshot": prev["snapshot"], "pid": prev["pid"],
                                         "reason": why})
                    delta.seq = seq
                    delta.add(ref)
                elif ref.retracted and not ref_from_json(prev["ref"]).retracted:
                    changes["retracted"] += 1
                    removed_rows.append({"pmcid": ref.pmcid, "snapshot": prev["snapshot"], "pid": prev["pid"],
                                         "reason": "retracted"})
            for pmcid, prev in old.items():
                if pmcid not in new_seen:
                    changes["withdrawn"] += 1
                    removed_rows.append({"pmcid": pmcid, "snapshot": prev["snapshot"], "pid": prev["pid"],
                                         "reason": "withdrawn"})
        delta.flush()
        if cfg.limit is None and not cfg.allow_shrink and n_old and changes["withdrawn"] > n_old // 2:
            raise FatalBuildError(
                f"the new listing drops {changes['withdrawn']} of {n_old} articles of this dataset; if PMC really "
                "withdrew them, rerun with --allow-shrink")
        if cfg.limit is not None:   # a truncated listing says nothing about the articles it did not reach
            removed_rows = [r for r in removed_rows if r["reason"] != "withdrawn"]
            changes.pop("withdrawn", None)
        counts = delta.counts
        source_folder = delta.folder
        if not sum(counts) and not removed_rows and not plan_rows:
            shutil.rmtree(work.snap(k), ignore_errors=True)   # nothing changed: no snapshot
            return None
    layout = choose_layout(k, counts, tuple(cfg.split_fractions), cfg.partition_target)
    if k == 0:
        changes["added"] = sum(counts)
    manifests = {}
    for pid in layout.all_partitions():
        rows = [r for b in layout.buckets_of(pid) for r in spool_rows(source_folder, b)]
        write_manifest(work.manifest(pid), rows)
        manifests[pid.name] = manifest_digest(work.manifest(pid))
    n_articles = sum(counts)
    if sum(n for n, _ in manifests.values()) != n_articles:    # the listing is the truth: every row planned
        raise FatalBuildError(f"snapshot {k}: the partition manifests hold {sum(n for n, _ in manifests.values())} "
                              f"articles but the listing gave {n_articles}; rerun the build")
    write_table(work.snap(k) / "removed.parquet", pa.Table.from_pylist(removed_rows, schema=REMOVED_SCHEMA),
                compression="snappy")
    if plan_rows:
        write_parquet(work.part("ledger", f"s{k:03d}-plan"), plan_rows, LEDGER_SCHEMA)
    else:
        work.part("ledger", f"s{k:03d}-plan").unlink(missing_ok=True)
    checkpoint("listed")
    extra = {"listed": n_listed, "articles": n_articles, "changes": dict(changes),
             "hash_buckets": n_hash_buckets(4 * n_articles),
             "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "manifests": manifests, "removed": file_seal(work.snap(k) / "removed.parquet"),
             "parts": {name: file_seal(work.part("ledger", name)) for name in (f"s{k:03d}-listing", f"s{k:03d}-plan")
                       if work.part("ledger", name).exists()}}
    write_layout(work.snap(k) / "layout.json", layout, extra)
    checkpoint("planned")
    shutil.rmtree(spool.folder, ignore_errors=True)
    shutil.rmtree(work.snap(k) / "delta", ignore_errors=True)
    return layout


# ------------------------------------------------------------------------------- removal
def apply_removals(work: Work, k: int) -> int:
    """Remove the samples of articles removed by snapshot ``k`` from the shards; returns how many.

    The plan (which shard loses which keys, and its new name) is sealed in ``removals.json`` before anything
    is written, so a resumed update counts and revises exactly the same, wherever it was stopped. Each shard
    is copied without the keys under a new name (``-rNNN``; none when nothing of it is left); only then are
    the old files moved out of the dataset into ``_work/snapshots/sNNN/retired/`` (deleted once the snapshot is
    complete: never before the new shards and the index are in place)."""
    path = work.snap(k) / "removed.parquet"
    if not path.exists():
        return 0
    plan_path = work.snap(k) / "removals.json"
    retired = work.snap(k) / "retired"
    plan = read_sealed(plan_path)
    if plan is None:
        if retired.exists() and any(retired.rglob("*")):
            raise FatalBuildError(f"{plan_path} is damaged after shards were retired; restore the folder from a "
                                  f"copy or rerun with --rebuild-state")
        plan = _removal_plan(work, k, pq.read_table(path).to_pylist())
        write_sealed(plan_path, plan)
    for old, new, keys, digest in plan["shards"]:
        if new is not None and not shard_done(work.out, new, digest):
            revise_shard(work.out, old, new, set(keys), digest)
            checkpoint("revised")
    for old, *_ in plan["shards"]:
        for f in sorted(shard_files(work.out, old), key=lambda f: not f.name.endswith(STATS)):   # stats first
            if f.exists():
                move_into_place(f, retired / f.relative_to(work.out))
    if plan["shards"]:
        checkpoint("retired")
    return plan["samples"]


def _removal_plan(work: Work, k: int, removed: list[dict]) -> dict:
    """``{"shards": [[old, new or None, keys, digest]], "samples": n}`` from the published index."""
    index = work.out / FIGURES_INDEX
    shards, n = [], 0
    if removed and index.exists():
        import pyarrow.dataset as ds

        pmcids = pa.array(sorted({r["pmcid"] for r in removed}), pa.string())
        t = ds.dataset(index).to_table(columns=["key", "shard", "pmcid"], filter=pc.is_in(pc.field("pmcid"),
                                                                                          value_set=pmcids))
        by_shard: dict[str, set[str]] = {}
        for key, shard in zip(t["key"].to_pylist(), t["shard"].to_pylist()):
            by_shard.setdefault(shard.removesuffix(".tar"), set()).add(key)
        for old, keys in sorted(by_shard.items()):
            base = old.rsplit("-r", 1)[0] if "-r" in old.rsplit("/", 1)[-1][-5:] else old
            stats = read_marker(shard_files(work.out, old)[2]) or {}
            left = stats.get("count", len(keys) + 1) - len(keys)
            digest = hashlib.sha256(json.dumps([old, sorted(keys)]).encode()).hexdigest()
            shards.append([old, f"{base}-r{k:03d}" if left > 0 else None, sorted(keys), digest])
            n += len(keys)
    return {"shards": shards, "samples": n}


def _ledger_after_removals(batch: pa.Table, gone: dict[str, dict]) -> pa.Table:
    """Ledger rows of removed articles: skipped with the removal reason, ids suffixed ``@sNNN`` (the
    snapshot they came from) so that a new version's rows never clash with the old ones."""
    if not gone or not pc.any(pc.is_in(batch["pmcid"], value_set=pa.array(sorted(gone), pa.string()))).as_py():
        return batch
    rows = batch.to_pylist()
    for r in rows:
        g = gone.get(r["pmcid"])
        if g is None or r["id"].endswith(f"@s{g['snapshot']:03d}"):
            continue
        r["detail"] = f"was {r['state']}/{r['reason']}; {g['reason']} in a later snapshot"[:500]
        r["id"] = f"{r['id']}@s{g['snapshot']:03d}"
        r["state"], r["reason"] = SKIPPED, (g["reason"] if r["kind"] == "article" else f"article_{g['reason']}")
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


def consolidate_tables(work: Work, k: int) -> None:
    """``articles.parquet`` and ``ledger.parquet`` = the previous tables (minus / marking the removed
    articles) + this snapshot's parts, streamed batch by batch; then the parts are deleted, so the
    article text is stored once. Crash-safe: both tables are staged, then moved into place."""
    out, snap = work.out, work.snap(k)
    staged = {"articles.parquet": snap / "articles.parquet", "ledger.parquet": snap / "ledger.parquet"}
    ready = snap / "finish.ready"
    if not ready.exists():
        removed = pq.read_table(snap / "removed.parquet").to_pylist() if (snap / "removed.parquet").exists() else []
        gone = {r["pmcid"]: r for r in removed}
        gone_set = pa.array(sorted(gone), pa.string())
        for name, schema, kind in (("articles.parquet", ARTICLE_SCHEMA, "articles"),
                                   ("ledger.parquet", LEDGER_SCHEMA, "ledger")):
            with atomic_path(staged[name]) as tmp:
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                try:
                    if k > 0 and (out / name).exists():
                        for batch in pq.ParquetFile(out / name).iter_batches(batch_size=TABLE_BATCH):
                            t = pa.Table.from_batches([batch]).cast(schema)
                            if kind == "articles":
                                t = t.filter(pc.invert(pc.is_in(t["pmcid"], value_set=gone_set)))
                            else:
                                t = _ledger_after_removals(t, gone)
                            if t.num_rows:
                                writer.write_table(t)
                    for part in _all_parts(work, kind):
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


# ---------------------------------------------------------------------------------- build
def build(cfg: BuildConfig) -> BuildReport:
    fresh = [p for p in (Path(cfg.out), cfg.work) if not p.exists()]   # what an input error must not leave behind
    try:
        with BuildLock(Path(cfg.out)):
            return _build(cfg)
    except InputError:
        if fresh:
            shutil.rmtree(fresh[0], ignore_errors=True)
        raise


def _current_snapshot(work: Work) -> tuple[int, bool]:
    """(snapshot to work on, whether it is a resumed one)."""
    snaps = work.snapshots()
    if not snaps:
        return 0, False
    last = snaps[-1]
    for j in snaps:
        if work.complete(j) and work.layout(j) is None:
            raise FatalBuildError(f"the resume state of snapshot {j} is damaged ({work.snap(j) / 'layout.json'} "
                                  f"is missing or cut); rerun with --rebuild-state to reconstruct it from the "
                                  f"published files")
    if work.layout(last) is not None and not work.complete(last):
        return last, True
    if work.layout(last) is None:          # killed while listing, or its layout is damaged: list again
        discard_snapshot(work, last)
        return last, False
    return last + 1, False


def discard_snapshot(work: Work, k: int) -> None:
    """Forget every piece of the unfinished snapshot ``k``: its folder, the staging, parts and done markers of
    its partitions, and the shards its partitions wrote (never a shard of an earlier snapshot)."""
    log.warning("snapshot %d is redone from its listing", k)
    retired = work.snap(k) / "retired"
    for f in sorted(retired.rglob("*")) if retired.is_dir() else []:
        if f.is_file():                          # the previous snapshot's shards go back first
            move_into_place(f, work.out / f.relative_to(retired))
    for subset in SUBSETS:
        for folder in shard_dirs(work.out / subset):
            for p in sorted(q for q in folder.iterdir() if q.is_file()):
                stem = p.name.removesuffix(STATS).removesuffix(".tar").removesuffix(".parquet")
                if stem.endswith(f"-r{k:03d}"):
                    p.unlink()
    shutil.rmtree(work.snap(k), ignore_errors=True)
    prefix = f"s{k:03d}-"
    stage_root = work.root / "stage"
    for d in sorted(stage_root.iterdir()) if stage_root.is_dir() else []:
        if d.name.startswith(prefix):
            shutil.rmtree(d, ignore_errors=True)
    for kind in ("done", "articles", "ledger"):
        for p in sorted((work.root / "parts" / kind).glob(f"{prefix}*")) if (work.root / "parts" / kind).is_dir() \
                else []:
            p.unlink()
    shutil.rmtree(work.root / "published_hashes", ignore_errors=True)
    for subset in SUBSETS:
        for folder in shard_dirs(work.out / subset):
            for p in sorted(q for q in folder.iterdir() if q.is_file()):
                if f"-s{k:03d}-p" in p.name and not p.name.startswith("."):
                    p.unlink()


def _check_ready(work: Work, k: int) -> bool:
    """Whether snapshot ``k``'s tables are staged and check (``finish.ready``: each table's length and sha256,
    staged or already moved into place). Damaged staged tables are made again from the partitions, which are
    redone for their parts; once a table of an update replaced the previous one that is no longer possible."""
    ready = work.snap(k) / "finish.ready"
    if not ready.exists():
        return False
    info = read_sealed(ready)
    tables = (info or {}).get("tables", {})
    moved = [n for n, seal in tables.items() if not (work.snap(k) / n).exists() and matches(work.out / n, seal)]
    if info is not None and all(n in moved or matches(work.snap(k) / n, seal) for n, seal in tables.items()):
        return True
    if k > 0 and moved:
        raise FatalBuildError(f"snapshot {k}: {work.snap(k) / 'finish.ready'} or a staged table is damaged after "
                              f"{moved[0]} was already replaced; restore the folder from a copy or rerun with "
                              f"--rebuild-state")
    log.warning("snapshot %d: its staged tables are damaged: the partitions are written again", k)
    ready.unlink()
    for name in ("articles.parquet", "ledger.parquet"):
        (work.snap(k) / name).unlink(missing_ok=True)
    for p in sorted((work.root / "parts" / "done").glob(f"s{k:03d}-*.json")):
        p.unlink()
    return False


def _check_snapshot(cfg: BuildConfig, work: Work, k: int) -> Layout | None:
    """A resumed snapshot: every piece of its state is checked before anything trusts it.

    A lost or changed manifest is planned again from the listing (the listing is the truth): when the new
    manifests are the recorded ones the snapshot goes on, else it is redone. A partition whose done marker,
    parts or hash files do not check loses them and is redone from its staging or from its inputs; damaged
    duplicate decisions are decided again."""
    meta = work.meta(k)
    layout = work.layout(k)
    if layout is None or "manifests" not in meta:
        discard_snapshot(work, k)
        return plan_snapshot(cfg, work, k)
    ready = _check_ready(work, k)
    bad = [name for name, seal in meta["manifests"].items()
           if list(manifest_digest(work.manifest(PartitionId.parse(name))) or ()) != list(seal)]
    if not matches(work.snap(k) / "removed.parquet", meta.get("removed")):
        bad.append("removed.parquet")
    if not ready:
        bad += [name for name, seal in meta.get("parts", {}).items() if not matches(work.part("ledger", name), seal)]
    if bad:
        log.warning("snapshot %d: %s missing or damaged: planned again from the listing", k, ", ".join(bad[:5]))
        again = plan_snapshot(cfg, work, k)
        if again is None or work.meta(k)["manifests"] != meta["manifests"]:
            discard_snapshot(work, k)
            return plan_snapshot(cfg, work, k)
        meta, layout = work.meta(k), again
    dedup = read_sealed(work.snap(k) / "dedup.json")
    if dedup is None or not all(matches(work.snap(k) / name, seal) for name, seal in dedup["files"].items()):
        for name in ("dedup.json", "decisions.parquet", "near.parquet"):
            (work.snap(k) / name).unlink(missing_ok=True)
        dedup = None
    for pid in layout.all_partitions():
        n, digest = meta["manifests"][pid.name]
        if not n:
            continue
        stage = work.stage(pid)
        done = read_done(work, pid.name, digest, check_parts=not ready)
        if done is None or done.get("units") != n:
            if done is not None or work.done(pid.name).exists():
                log.warning("partition %s: its done marker or parts do not check: redone", pid.name)
            work.done(pid.name).unlink(missing_ok=True)
            if not ready:
                for kind in ("articles", "ledger"):
                    work.part(kind, pid.name).unlink(missing_ok=True)
            done = None
        if dedup is None and not ready:        # the decisions are made again: from hash files that check
            info = done if done is not None else stage.staged_info()
            if not _hashes_match(work, pid, info):
                work.done(pid.name).unlink(missing_ok=True)
                stage.marker.unlink(missing_ok=True)
    return layout


def _build(cfg: BuildConfig) -> BuildReport:
    t0 = time.time()
    out = Path(cfg.out)
    work = Work(out)
    work.root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)   # a killed run's temporaries are never complete: safe to drop
    if cfg.rebuild_state or (not work.snapshots() and ((out / FIGURES_INDEX).exists()
                                                       or (out / "build_summary.json").exists())):
        if not cfg.rebuild_state:
            raise FatalBuildError(f"{out} holds a built dataset but its resume state {work.root} is gone: building "
                                  f"into it would publish its articles twice. Rerun with --rebuild-state to "
                                  f"reconstruct the state from the published files, or build into a new folder")
        from biomedica_hf.build.rebuild_state import rebuild_state

        rebuild_state(work.out, tuple(cfg.split_fractions))
    prog = BuildProgress(cfg.progress, cfg.progress_every)
    clock = prog.clock()
    k, resumed = _current_snapshot(work)
    layout = _check_snapshot(cfg, work, k) if resumed else plan_snapshot(cfg, work, k)
    clock.lap("list")
    if layout is None:
        return _up_to_date_report(work, k - 1, t0)
    meta = work.meta(k)
    seals = {name: seal[1] for name, seal in meta["manifests"].items() if seal[0]}
    pids = [p.name for p in layout.all_partitions() if p.name in seals]
    n_hash = meta["hash_buckets"]
    ready = (work.snap(k) / "finish.ready").exists()

    def is_done(p: str) -> bool:
        return read_done(work, p, seals[p], check_parts=not ready) is not None

    def init_args(slots: int) -> tuple:
        opts = dict(cfg.source_opts)
        if opts.get("rate"):  # the politeness limit is for the whole build: split it across task slots
            opts["rate"] = opts["rate"] / slots
        return (cfg.source, opts, str(out), cfg.media, cfg.keep_downloads, n_hash, cfg.dedup_images,
                cfg.retry_failed and k > 0)

    def make():
        return make_executor(cfg.executor, workers=cfg.workers, address=cfg.ray_address,
                             initializer=_init_worker, initargs=init_args)

    _DRIVER_PID[:] = [os.getpid()]
    _init_worker(*init_args(1))   # the driver runs give-up bookkeeping itself
    try:
        # ---- stage
        todo = [(p, seals[p]) for p in pids if not work.stage(PartitionId.parse(p)).is_staged(seals[p])
                and not is_done(p)]
        n_now = sum(read_manifest_count(work, PartitionId.parse(p)) - _n_finished(work.stage(PartitionId.parse(p)))
                    for p, _ in todo)
        preload = _Preload((*cfg.preload, *(("datasketch",) if cfg.caption_dups else ()))
                           if cfg.workers > 1 else ())

        def make_stage():
            preload.join()              # a pool restarted after a dead worker never forks mid-import
            return make()

        order = {p: i for i, p in enumerate(_largest_first(work, [p for p, _ in todo]))}
        todo.sort(key=lambda t: order[t[0]])
        prog.line(f"stage: {n_now} of {meta.get('listed')} listed article(s) to process, in {len(todo)} partition(s)")
        try:
            with prog.articles(n_now, work.root / "progress"):   # one bar over articles, not partitions
                for _ in run_tasks(make_stage, stage_partition, todo, max_attempts=cfg.max_attempts, desc="stage",
                                   progress=False, on_give_up=lambda p, n, err: _give_up_partition(p, n, err)):
                    preload.start()     # the pool's workers exist now: no fork while the thread imports
        finally:
            preload.join()
        clock.lap("stage")
        # ---- dedup: exact (same bytes), then near-duplicate images (perceptual hash)
        decisions = work.decisions(k)
        near = work.snap(k) / "near.parquet"
        published = work.root / "published_hashes"
        if k > 0 and not (decisions.exists() and near.exists()):
            _spill_published(work, k, n_hash)
        dedup_path = work.snap(k) / "dedup.json"
        dedup = read_sealed(dedup_path)
        if dedup is None:
            for p in (decisions, near):
                p.unlink(missing_ok=True)
            if k > 0:
                _spill_published(work, k, n_hash)
        if cfg.dedup_images and not decisions.exists():
            decide(work.hashes(k), n_hash, decisions, extra_folders=[published] if k > 0 else [])
        clock.lap("dedup")
        if not near.exists():   # in a worker: its memory is bounded, but not the driver's business
            folders = [str(work.hashes(k))] + ([str(published)] if k > 0 else [])
            list(run_tasks(make, _near_task, [("near", k, folders, str(decisions), str(near), cfg.near_dedup)],
                           max_attempts=cfg.max_attempts, desc="near-duplicates", progress=False))
        if dedup is None:
            inputs = {}
            for p in pids:
                info = read_done(work, p, seals[p], check_parts=False) or work.stage(PartitionId.parse(p)).staged_info()
                inputs[p] = info.get("hash_digest")
            dedup = {"files": {p.name: file_seal(p) for p in (decisions, near) if p.exists()}, "inputs": inputs}
            write_sealed(dedup_path, dedup)
            checkpoint("deduped")
        clock.lap("near_duplicates")
        # ---- write
        tasks = [(p, cfg.seed, cfg.shard_max_samples, cfg.shard_max_bytes, str(decisions) if decisions.exists()
                  else None, seals[p], dedup["inputs"].get(p)) for p in pids]
        pending = [t for t in tasks if not is_done(t[0])]
        order = {p: i for i, p in enumerate(_largest_first(work, [t[0] for t in pending]))}
        pending.sort(key=lambda t: order[t[0]])
        for _ in run_tasks(make, write_partition, pending, max_attempts=cfg.max_attempts, desc="write",
                           progress=prog.bars):
            pass
    except FatalBuildError:
        raise
    except OSError as e:
        if _disk_error(e) is not None:
            raise _fatal(e, str(out)) from e
        raise
    finally:
        if "source" in _WORKER:
            _WORKER["source"].close()
        _WORKER.clear()
    clock.lap("write")
    # ---- remove (updates)
    n_removed = apply_removals(work, k)
    clock.lap("remove")
    if cfg.caption_dups:    # over every shard's Parquet, in a worker (bounded there, never in the driver)
        list(run_tasks(make, _caption_task, [("captions",)], max_attempts=cfg.max_attempts, desc="captions",
                       progress=False))
        _WORKER.clear()
        clock.lap("caption_duplicates")
    # ---- finish
    report = finish(cfg, work, k, meta, n_staged=n_now, n_removed=n_removed, t0=t0, clock=clock)
    checkpoint("summary_written")
    atomic_write_json(work.snap(k) / "complete.json", {"snapshot": k, "finished": time.time()})
    shutil.rmtree(work.snap(k) / "retired", ignore_errors=True)     # the old shards: after the commit only
    shutil.rmtree(work.root / "stage", ignore_errors=True)
    shutil.rmtree(work.hashes(k), ignore_errors=True)
    shutil.rmtree(work.root / "published_hashes", ignore_errors=True)
    return report


SUMMARY_COPY = "build_summary.sealed.json"


def _previous_summary(work: Work) -> dict:
    """``build_summary.json`` as the last snapshot wrote it. A cut or damaged one is restored from its sealed
    copy in ``_work/`` (its snapshot history is never dropped silently); without a good copy: a fatal error."""
    path = work.out / "build_summary.json"
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


def _write_summary(work: Work, summary: dict) -> None:
    """``build_summary.json`` and its sealed copy in ``_work/`` (what :func:`_previous_summary` restores)."""
    write_sealed(work.root / SUMMARY_COPY, {"summary": summary})
    atomic_write_json(work.out / "build_summary.json", summary)


def _up_to_date_report(work: Work, k: int, t0: float) -> BuildReport:
    """The listing holds nothing new: the folder is left exactly as it is."""
    bs = _previous_summary(work)
    summary = ledger_summary(work.out / "ledger.parquet")
    n = bs.get("articles_listed") or 0
    log.info("the listing has no new, changed or removed article: nothing to do")
    return BuildReport(out=work.out, summary=summary, n_listed=n, n_staged_now=0, n_resumed=n, shards_written=0,
                       shards_skipped=sum(len(v) for v in bs.get("shards", {}).values()),
                       samples_per_subset=bs.get("samples", {}), n_duplicates=bs.get("duplicates_removed", 0),
                       n_near_duplicates=bs.get("near_duplicates_removed", 0),
                       elapsed_s=time.time() - t0, snapshot=k, changes={"up to date": 1})


def _n_finished(stage: PartitionStage) -> int:
    try:
        return len(stage.finished()[0])
    except StateError:
        return 0


def read_manifest_count(work: Work, pid: PartitionId) -> int:
    p = work.manifest(pid)
    return pq.ParquetFile(p).metadata.num_rows if p.exists() else 0


NEAR_SCHEMA = pa.schema([("key", pa.string()), ("near_dup_of", pa.string()), ("distance", pa.int32())])
CAPTION_SCHEMA = pa.schema([("key", pa.string()), ("caption_dup_of", pa.string())])


def _near_task(args: tuple) -> int:
    _, k, folders, decisions, near, drop = args
    return near_duplicates_pass(_WORKER["work"], k, [Path(f) for f in folders], Path(decisions), Path(near), drop=drop)


def _caption_task(args: tuple) -> int:
    return caption_duplicates_pass(_WORKER["work"], _WORKER["work"].out)


def near_duplicates_pass(work: Work, k: int, folders: list[Path], decisions: Path, near: Path, *,
                         drop: bool) -> int:
    """Group near-duplicate images over every hash file (this snapshot + the published samples), with the
    bounded-memory grouping of :mod:`biomedica_hf.neardup`; writes ``near.parquet`` (key -> kept key).

    Samples dropped as exact duplicates are left out. With ``drop`` (``--near-dedup``) the new (not yet
    published) members are dropped like exact duplicates: the kept sample gets their PMCIDs in ``also_in``."""
    from biomedica_hf.build.dedup import add_decisions, hash_files
    from biomedica_hf.neardup import find_near_duplicates

    files = hash_files(folders)
    exact = set()
    if decisions.exists():
        t = pq.read_table(decisions, columns=["key", "canonical"])
        exact = {key for key, c in zip(t["key"].to_pylist(), t["canonical"].to_pylist()) if c is not None}
    rows = []
    if files:
        for key, kept, dist in find_near_duplicates(files, work.root / "neardup"):
            if key not in exact and kept not in exact:
                rows.append({"key": key, "near_dup_of": kept, "distance": int(dist)})
    if drop and rows:
        wanted = pa.array(sorted({r["key"] for r in rows} | {r["near_dup_of"] for r in rows}), pa.string())
        info = {}
        for p in files:
            t = pq.read_table(p, columns=["key", "pmcid", "pid"])
            t = t.filter(pc.is_in(t["key"], value_set=wanted))
            info.update({r["key"]: r for r in t.to_pylist()})
        extra, dropped = [], set()
        for r in rows:
            member, kept = info.get(r["key"]), info.get(r["near_dup_of"])
            if member is None or kept is None or member["pid"].startswith(PUBLISHED):
                continue                                      # a published sample is never rewritten
            extra.append({"pid": member["pid"], "key": r["key"], "canonical": r["near_dup_of"], "also_in": [],
                          "kind": "near"})
            extra.append({"pid": kept["pid"], "key": r["near_dup_of"], "canonical": None,
                          "also_in": [member["pmcid"]] if member["pmcid"] != kept["pmcid"] else [], "kind": "near"})
            dropped.add(r["key"])
        add_decisions(decisions, [e for e in extra if not e["pid"].startswith(PUBLISHED)])
        rows = [r for r in rows if r["key"] not in dropped]
    write_parquet(near, rows, NEAR_SCHEMA)
    shutil.rmtree(work.root / "neardup", ignore_errors=True)
    return len(rows)


def caption_duplicates_pass(work: Work, out: Path) -> int:
    """``caption_duplicates.parquet``: MinHash near-duplicate captions over every shard's Parquet (flagged,
    never dropped)."""
    from biomedica_hf.layout import shard_tables
    from biomedica_hf.neardup import caption_near_duplicates

    rows = [{"key": key, "caption_dup_of": kept}
            for key, kept in caption_near_duplicates(shard_tables(out), work.root / "captiondup")]
    write_parquet(out / "caption_duplicates.parquet", rows, CAPTION_SCHEMA)
    shutil.rmtree(work.root / "captiondup", ignore_errors=True)
    return len(rows)


def _spill_published(work: Work, k: int, n_hash: int) -> Path:
    """The hashes of samples already published (earlier snapshots), into hash buckets, streaming."""
    folder = work.root / "published_hashes"
    shutil.rmtree(folder, ignore_errors=True)
    index = work.out / FIGURES_INDEX
    if not index.exists():
        return folder
    removed = pq.read_table(work.snap(k) / "removed.parquet", columns=["pmcid"])["pmcid"]
    pf = pq.ParquetFile(index)
    cols = ["key", "sha256", "subset", "pmcid", "shard"] + (["phash"] if "phash" in pf.schema_arrow.names else [])
    for i, batch in enumerate(pf.iter_batches(batch_size=200_000, columns=cols)):
        t = pa.Table.from_batches([batch])
        t = t.filter(pc.invert(pc.is_in(t["pmcid"], value_set=removed)))
        rows = [{"key": r["key"], "sha256": r["sha256"], "subset": r["subset"], "pmcid": r["pmcid"],
                 "pid": PUBLISHED + r["shard"], "phash": r.get("phash")} for r in t.to_pylist()]
        write_hash_rows(folder, f"published-{i:06d}", rows, n_hash)
    return folder


def _all_parts(work: Work, kind: str) -> list[Path]:
    d = work.root / "parts" / kind
    return sorted(d.glob("*.parquet")) if d.is_dir() else []


def finish(cfg: BuildConfig, work: Work, k: int, meta: dict, *, n_staged: int, n_removed: int,
           t0: float, clock: StageClock | None = None) -> BuildReport:
    out = work.out
    # shards: every stats file of the folder (all snapshots)
    shards: dict[str, list[dict]] = {s: [] for s in SUBSETS}
    for s in SUBSETS:
        for p in folder_files(out / s, f"*{STATS}"):
            shards[s].append(json.loads(p.read_text()))
    per_subset = {s: sum(x["count"] for x in shards[s]) for s in SUBSETS}
    _write_sizes(out, shards)
    clashes, dropped, work_timings = [], 0, {}
    _check_fates(work, k)
    for p in sorted((work.root / "parts" / "done").glob("*.json")):
        info = _done_record(p)
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
    n_articles = pq.ParquetFile(out / "articles.parquet").metadata.num_rows
    summary = ledger_summary(out / "ledger.parquet")
    atomic_write_bytes(out / "ledger_summary.txt", format_summary(summary).encode())
    _write_duplicates(work, out)
    _write_near_duplicates(work, k, out)
    build_figures_index(out)   # + the hooks' columns (concept labels survive a rebuild)
    checkpoint("index_written")
    if clock:
        clock.lap("index")
    prev = _previous_summary(work)
    timings = clock.as_dict(work=work_timings) if clock else {
        "stages": {}, "work": rounded(work_timings, elapsed=False), "elapsed_seconds": round(time.time() - t0, 3)}
    history = [h for h in prev.get("snapshots", []) if h.get("snapshot") != k]
    history.append({"snapshot": k, "date": meta.get("date"), "command": cfg.command, "listed": meta.get("listed"),
                    "articles_processed": meta.get("articles"), **{c: meta.get("changes", {}).get(c, 0) for c in
                    ("added", "replaced", "retried", "retracted", "withdrawn")},
                    "samples_removed": n_removed, "partitions": meta.get("partitions"),
                    "elapsed_seconds": timings["elapsed_seconds"]})
    _write_summary(work, {
        "version": __version__, "command": cfg.command, "source": cfg.source,
        "source_opts": public_options(cfg.source_opts),   # local paths by their role: the summary is published
        "executor": cfg.executor, "seed": cfg.seed, "dedup_images": cfg.dedup_images,
        "shard_max_samples": cfg.shard_max_samples, "shard_max_bytes": cfg.shard_max_bytes,
        "media": dataclasses.asdict(cfg.media), "articles_listed": meta.get("listed"), "articles": n_articles,
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


def _check_fates(work: Work, k: int) -> None:
    """The listing is the truth: every partition of snapshot ``k`` with listed articles has a done marker that
    checks and accounts for each of them (one staged unit, with its article fate, per manifest row)."""
    meta = work.meta(k) or {}
    missing = []
    for name, (n, digest) in (meta.get("manifests") or {}).items():
        if not n:
            continue
        info = read_done(work, name, digest, check_parts=False)
        if info is None or info.get("units") != n:
            missing.append(f"{name} ({n} listed, {info.get('units') if info else 'no valid marker'})")
    if missing:
        raise FatalBuildError(f"snapshot {k}: listed articles without a fate in partition(s) {', '.join(missing[:5])}; "
                              f"rerun the build to redo them")


def _count_duplicates(out: Path) -> int:
    p = out / "duplicates.parquet"
    if not p.exists():
        return 0
    t = pq.read_table(p, columns=["duplicate_keys"])
    return int(pc.sum(pc.list_value_length(t["duplicate_keys"])).as_py() or 0) if t.num_rows else 0


def _write_duplicates(work: Work, out: Path) -> None:
    """``duplicates.parquet``: per kept key, the dropped keys and the PMCIDs that used the image."""
    schema = pa.schema([("key", pa.string()), ("duplicate_keys", pa.list_(pa.string())),
                        ("pmcids", pa.list_(pa.string()))])
    groups: dict[str, dict] = {}
    for k in work.snapshots():
        p = work.decisions(k)
        if not p.exists():
            continue
        for r in pq.read_table(p).to_pylist():
            if r.get("kind") == "near":
                continue                         # duplicates.parquet is for exact duplicates
            if r["canonical"] is None:
                g = groups.setdefault(r["key"], {"key": r["key"], "duplicate_keys": [], "pmcids": []})
                g["pmcids"] = list(dict.fromkeys(g["pmcids"] + r["also_in"]))
            else:
                g = groups.setdefault(r["canonical"], {"key": r["canonical"], "duplicate_keys": [], "pmcids": []})
                g["duplicate_keys"] = sorted(set(g["duplicate_keys"]) | {r["key"]})
    rows = [groups[key] for key in sorted(groups) if groups[key]["duplicate_keys"]]
    write_parquet(out / "duplicates.parquet", rows, schema)


def _write_near_duplicates(work: Work, k: int, out: Path) -> None:
    """``near_duplicates.parquet``: the snapshot's near-duplicate map. It covers every sample of the folder:
    the pass saw this snapshot's samples and every published one (less the removed articles), and left out
    the samples dropped as duplicates."""
    near = work.snap(k) / "near.parquet"
    if near.exists():
        with atomic_path(out / "near_duplicates.parquet") as tmp:
            shutil.copyfile(near, tmp)


def _write_sizes(out: Path, shards: dict[str, list[dict]]) -> None:
    """``<folder>/sizes.json``: {tar base name: samples} of EVERY shard of the dataset (base names are unique), in
    every shard folder, for open_clip / webdataset: open_clip reads the ``sizes.json`` of the first shard's folder
    for every shard, so ``::``-joined subsets count without ``--train-num-samples`` (``layout.write_dataset_sizes``)."""
    for s in SUBSETS:
        for d in shard_dirs(Path(out) / s) if not shards[s] else []:
            if (d / "sizes.json").exists():
                (d / "sizes.json").unlink()
    write_dataset_sizes(out)


def shard_paths(out: Path, subset: str) -> list[Path]:
    """The tar files of one subset (flat and in its ``sNNN/gNNN`` sub-folders), in relative-path order."""
    return folder_files(Path(out) / subset, "*.tar")


__all__ = ["BuildConfig", "BuildReport", "FatalBuildError", "build", "shard_paths"]

"""The per-partition work of a build as a picklable task object (:class:`PartitionTask`) that an executor runs:
**stage** (fetch, parse and decode every article of the partition into its staging, resumable article by article;
an article that kills its worker twice is ledgered), **write** (shuffle, shard and write its samples, its table
parts and its done marker, then drop its staging) and **give up** (a partition whose worker died too often: its
unfinished articles are ledgered). The task carries its options (:class:`PartitionJob`); a worker process opens
each source once and keeps it (:func:`source_for`, keyed by the :class:`SourceSpec`).

Any exception on one article becomes a ``failed`` ledger row (``internal_error``); a full disk stops the build with
one fatal error.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.ingest.article import MediaOptions, PackageResult, process_package
from biomedica_hf.ingest.dedup import decisions_for, write_hash_rows
from biomedica_hf.ingest.duplicates import write_caption_keys
from biomedica_hf.ingest.partition import PartitionId, read_manifest, ref_from_json, rows_digest
from biomedica_hf.ingest.progress import tick
from biomedica_hf.ingest.shards import partition_shards_glob, shard_done, shard_name, write_shard
from biomedica_hf.ingest.sources import SourceSpec, make_source
from biomedica_hf.ingest.sources.base import FatalBuildError, FetchError, Source, fatal_disk_error, is_disk_error
from biomedica_hf.ingest.staging import PartitionStage
from biomedica_hf.ingest.state import StateError, checkpoint, file_seal, read_sealed, write_sealed
from biomedica_hf.ingest.timings import add, rounded, timed
from biomedica_hf.ingest.work import Work, hashes_match, read_done
from biomedica_hf.io.atomic import atomic_path, write_parquet
from biomedica_hf.layout import shard_folder, shard_paths
from biomedica_hf.ledger import LEDGER_SCHEMA, check_unique
from biomedica_hf.neardup.hashing import recorded_hash_name
from biomedica_hf.schema import ARTICLE_FIELDS, FAILED, KEPT, SKIPPED, SUBSETS, ArticleRef, LedgerEntry, arrow_schema

log = logging.getLogger("biomedica_hf.ingest")

ARTICLE_SCHEMA = arrow_schema(ARTICLE_FIELDS)
# fetch errors that will not change on retry
PERMANENT_FETCH = {"not_open_access": SKIPPED, "retracted": SKIPPED, "not_found": FAILED, "bad_package": FAILED}
TRANSIENT_REASONS = {"download_failed"}
MAX_STARTS = 2                  # an article that was started this often without finishing is ledgered


@dataclass(frozen=True, kw_only=True)
class PartitionJob:
    """What every partition task of a snapshot shares: the folder, the source, the media policy, the shard limits
    (the build's options, :class:`~biomedica_hf.ingest.options.BuildOptions`, as one snapshot uses them)."""

    out: str
    source: SourceSpec
    media: MediaOptions
    keep_downloads: bool
    n_hash: int                                   # hash buckets of the snapshot (its layout.json)
    discard: bool                                 # --retry-failed on an update: cached extractions are not reused
    seed: int
    shard_max_samples: int
    shard_max_bytes: int
    caption_keys: bool                            # each shard's caption band keys for the caption pass (write)

    @property
    def work(self) -> Work:
        return Work(Path(self.out))


@dataclass(frozen=True)
class PartitionTask:
    """One partition of a snapshot: its name, the digest of its manifest (``layout.json``'s), its job, and for
    the write, the duplicate decisions and the hash digest they were made from."""

    pid: str
    manifest: str | None
    job: PartitionJob
    decisions: str | None = None
    decided: str | None = None
    rows: tuple[int, int] | None = None           # stage only: a slice, manifest rows [start, end) (stage_slice)

    @property
    def key(self) -> str:
        return self.pid if self.rows is None else f"{self.pid}[{self.rows[0]}:{self.rows[1]}]"

    def shared(self, slots: int) -> "PartitionTask":
        """The task as one of ``slots`` running at the same time (the source's request rate split)."""
        return dataclasses.replace(self, job=dataclasses.replace(self.job, source=self.job.source.shared(slots)))

    def stage(self) -> dict:
        """Stage every article of the partition, or of its slice (resumable article by article); its staged
        info (a slice's: ``pid``, ``rows``, ``units``)."""
        return stage_partition(self) if self.rows is None else stage_slice(self)

    def write(self) -> dict:
        """Shuffle, shard and write the staged partition; its done marker's record."""
        return write_partition(self)

    def give_up(self, attempts: int, error: str) -> dict:
        """The partition's worker died ``attempts`` times: its unfinished articles are ledgered."""
        return give_up_partition(self, attempts, error)


# ------------------------------------------------------------------------ per process
_SOURCES: dict[SourceSpec, Source] = {}           # this process's open sources (a worker opens each once)


def source_for(spec: SourceSpec) -> Source:
    """The source ``spec`` describes, opened once per process."""
    src = _SOURCES.get(spec)
    if src is None:
        src = _SOURCES[spec] = make_source(spec)
    return src


def close_sources() -> None:
    """Close the sources this process opened (the driver, after a build that staged inline)."""
    while _SOURCES:
        _SOURCES.popitem()[1].close()


def init_worker(driver_pid: int) -> None:
    """A worker process's start: it dies with the driver (an inline 'worker' is the driver itself)."""
    if os.getpid() != driver_pid:
        _die_with_parent()


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when the driver dies, so a killed driver leaves no orphans."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def disk_error_in(e: BaseException) -> BaseException | None:
    """The disk error (ENOSPC, EDQUOT, EROFS) or :class:`FatalBuildError` in ``e``'s chain, None without one."""
    from biomedica_hf.errors import exception_chain

    return next((x for x in exception_chain(e) if isinstance(x, FatalBuildError) or is_disk_error(x)), None)


def fatal_error(e: BaseException, where: str) -> FatalBuildError:
    """The one-line fatal error for the disk error in ``e``'s chain."""
    found = disk_error_in(e)
    if isinstance(found, FatalBuildError):
        return found
    return fatal_disk_error(found, where) if found is not None else FatalBuildError(str(e))


def internal_error(ref: ArticleRef, e: BaseException, reason: str = "internal_error") -> PackageResult:
    return PackageResult(ref.pmcid, ledger=[LedgerEntry("article", ref.pmcid, ref.pmcid, FAILED, reason,
                                                        f"{type(e).__name__}: {e}"[:500], ref.location)])


def process_ref(ref: ArticleRef, source: Source, work: Work, media: MediaOptions, keep: bool,
                discard: bool = False) -> PackageResult:
    """One article -> staged result. Every failure of the article itself ends in its ledger rows."""
    cache = work.root / "cache"
    source.extract_to_disk = keep      # --keep-downloads: packages extracted into the cache, else read in memory
    if discard:      # --retry-failed: a failed package's cached extraction is not reused
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


def _manifest_rows(work: Work, pid: PartitionId, digest: str | None) -> list[dict]:
    """The partition's manifest, checked against the digest ``layout.json`` recorded for it."""
    try:
        rows = read_manifest(work.manifest(pid))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise StateError(f"the manifest of {pid.name} is missing or cut ({e})") from None
    if digest is not None and rows_digest(rows) != digest:
        raise StateError(f"the manifest of {pid.name} changed since the snapshot was planned")
    return rows


def _bound_to(stage: PartitionStage, digest: str | None, phash: str) -> bool:
    """The staging was made for this manifest, with this hash definition's phash values (its sealed ``for.json``)."""
    bound = read_sealed(stage.folder / "for.json")
    return bound is not None and bound.get("manifest") == digest and recorded_hash_name(bound) == phash


def _open_stage(stage: PartitionStage, digest: str | None, phash: str) -> set[str]:
    """Open the partition's staging for appending; staging that does not check, or that was made for another
    manifest, is discarded (the partition is redone from its inputs)."""
    if stage.folder.exists() and not _bound_to(stage, digest, phash):
        if any(stage.folder.iterdir()):
            log.warning("staging of %s was made for another manifest or hash definition, or is damaged: redone",
                        stage.folder.name)
        stage.remove()
    if not stage.folder.exists():
        stage.folder.mkdir(parents=True)
        write_sealed(stage.folder / "for.json", {"manifest": digest, "phash": phash})
    try:
        return stage.open()[0]
    except StateError as e:
        log.warning("%s: the staging of %s is redone", e, stage.folder.name)
        stage.remove()
        return _open_stage(stage, digest, phash)


def _stage_rows(job: PartitionJob, pid: PartitionId, stage: PartitionStage, rows: list[dict], done: set[str],
                digest: str | None) -> dict:
    n_bytes = _stage_units(job, pid, stage, rows, done)
    return _finish_stage(job, pid, stage, n_bytes, rows, digest)


def _stage_units(job: PartitionJob, pid: PartitionId, stage: PartitionStage, rows: list[dict], done: set[str]) -> int:
    """Stage the manifest ``rows`` not ``done`` yet into ``stage`` (a partition's or a slice's), in their order;
    the image bytes written."""
    work = job.work
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
                result = process_ref(ref, source_for(job.source), work, job.media, job.keep_downloads, job.discard)
            except Exception as e:
                if disk_error_in(e) is not None:
                    raise FatalBuildError(f"disk full while processing {ref.pmcid} ({e}); free space and rerun: "
                                          "the build resumes and repairs what was cut") from e
                log.exception("internal error on %s", ref.pmcid)
                result = internal_error(ref, e)
            result.ref_id = rid
        try:
            n_bytes += stage.append(result)
        except Exception as e:
            if disk_error_in(e) is not None:
                raise fatal_error(e, f"the staging of partition {pid_name}") from e
            log.exception("could not stage %s", rid)
            stage.open()                       # cut back what the failed append wrote
            failed = internal_error(ref, e)
            failed.ref_id = rid
            stage.append(failed)
        checkpoint("staged_article")
        tick(work.root / "progress", pid_name)   # the driver's bar over articles
    return n_bytes


def _rids(rows: list[dict]) -> list[str]:
    """The staging unit id of each manifest row (a listing's duplicate row is its own unit)."""
    out = []
    for row in rows:
        ref = ref_from_json(row["ref"])
        out.append(f"{ref.pmcid}@{ref.location}" if row["duplicate"] else ref.pmcid)
    return out


def _finish_stage(job: PartitionJob, pid: PartitionId, stage: PartitionStage, n_bytes: int, rows: list[dict],
                  digest: str | None) -> dict:
    return _seal_partition(job, pid, stage, _scan(stage), n_bytes, rows, digest)


def _scan(stage: PartitionStage) -> dict:
    """What a partition's (or a slice's) sealing needs from its staged units: the unit ids in order, those without
    an article fate, the samples' hash rows, the failed and the retried articles (JSON: a slice's marker keeps it)."""
    hash_rows, retry, failed, seen, no_fate = [], [], [], [], []
    for unit in stage.units():
        seen.append(unit["ref_id"])
        if not any(e["kind"] == "article" for e in unit["ledger"]):
            no_fate.append(unit["ref_id"])
        for s in unit["samples"]:
            hash_rows.append({"key": s["key"], "sha256": s["image"]["sha256"], "subset": s["meta"]["subset"],
                              "pmcid": s["meta"]["pmcid"], "phash": s["meta"].get("phash")})
        for e in unit["ledger"]:
            if e["state"] == FAILED and e["pmcid"]:
                failed.append(e["pmcid"])          # any failed item: --retry-failed re-processes the article
                if e["kind"] == "article" and e["reason"] in TRANSIENT_REASONS:
                    retry.append(e["pmcid"])       # retried by any rerun
    return {"seen": seen, "no_fate": no_fate, "hash_rows": hash_rows, "failed": failed, "retry": retry}


def _check_scan(name: str, scan: dict, rows: list[dict]) -> None:
    """Every listed article (of ``rows``) staged exactly once, each with its fate."""
    seen, listed, no_fate = Counter(scan["seen"]), set(_rids(rows)), scan["no_fate"]
    if set(seen) != listed or any(n > 1 for n in seen.values()) or no_fate:
        raise StateError(f"{name}: staged articles differ from its manifest (missing "
                         f"{sorted(listed - set(seen))[:5]}, extra {sorted(set(seen) - listed)[:5]}, without an article "
                         f"fate {no_fate[:5]})")


def _seal_partition(job: PartitionJob, pid: PartitionId, stage: PartitionStage, scan: dict, n_bytes: int,
                    rows: list[dict], digest: str | None) -> dict:
    """Check the partition's staged units (``scan``) against its manifest, write their hash rows and seal it."""
    work = job.work
    _check_scan(f"partition {pid.name}", scan, rows)
    for old in work.hash_files(pid.snapshot, pid.name):
        old.unlink()
    write_hash_rows(work.hashes(pid.snapshot), pid.name, scan["hash_rows"], job.n_hash)
    hashes = {p.relative_to(work.hashes(pid.snapshot)).as_posix(): file_seal(p)
              for p in work.hash_files(pid.snapshot, pid.name)}
    info = {"pid": pid.name, "samples": len(scan["hash_rows"]), "bytes": n_bytes, "failed": sorted(set(scan["failed"])),
            "retry": sorted(set(scan["retry"])), "manifest": digest, "units": len(scan["seen"]), "hashes": hashes,
            "phash": job.media.phash,
            "hash_digest": hashlib.sha256(json.dumps(sorted(hashes.items())).encode()).hexdigest()}
    stage.mark_staged(info)
    checkpoint("staged")
    return info


def _write_partition(task: PartitionTask, work: Work, pid: PartitionId, stage: PartitionStage,
                     manifest: str | None) -> dict:
    pid_name, decisions_path = task.pid, task.decisions
    seed, max_samples, max_bytes = task.job.seed, task.job.shard_max_samples, task.job.shard_max_bytes
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
        for i, shard in enumerate(cut_shards(members, max_samples, max_bytes)):
            name = shard_name(subset, pid.split, _pid_tail(pid), i,
                              folder=shard_folder(subset, pid.snapshot, pid.index))
            digest = hashlib.sha256(json.dumps([[s["key"], s["image"]["sha256"], s["meta"]["also_in"]]
                                                for s in shard]).encode()).hexdigest()
            if not shard_done(work.out, name, digest):
                shard_timings = _shard_timings(shard, unit_timings, kept_of)
                with timed(work_timings, "shard_write"):
                    write_shard(work.out, name, stage.read_samples(shard), digest, {"partition": pid_name},
                                timings=shard_timings)
                    if task.job.caption_keys:     # the caption pass's MinHash work, here in parallel (issue 28)
                        write_caption_keys(work, shard_paths(work.out, name)[1])
                checkpoint("shard_written")
            stats["shards"].append({"name": name, "count": len(shard), "digest": digest})
            stats["samples"][subset] += len(shard)
    _remove_other_shards(work.out, pid, {sh["name"] for sh in stats["shards"]})
    write_parquet(work.part("ledger", pid_name), ledger, LEDGER_SCHEMA)
    stats["clashes"] = [f"{kind}:{item}" for kind, item in check_unique(LedgerEntry(**e) for e in ledger)][:5]
    if stats["clashes"]:                 # known here: stop now, not after every other partition
        raise FatalBuildError(f"partition {pid_name}: ledger items with more than one fate, e.g. {stats['clashes']}")
    stats["duplicates_dropped"] = sum(dropped_per_pmcid.values())
    staged_info = stage.staged_info()
    stats["failed"], stats["retry"] = staged_info.get("failed", []), staged_info.get("retry", [])
    stats["timings"] = rounded(work_timings, elapsed=False)
    stats.update(manifest=manifest, units=n_units, hash_digest=staged_info.get("hash_digest"),
                 hashes=staged_info.get("hashes"), phash=staged_info.get("phash"),
                 parts={kind: file_seal(work.part(kind, pid_name)) for kind in ("articles", "ledger")})
    write_sealed(marker, stats)
    checkpoint("partition_written")
    stage.remove()
    return stats


def _pid_tail(pid: PartitionId) -> str:
    """The partition's part of its shards' names (``s000-p00017``)."""
    return f"s{pid.snapshot:03d}-p{pid.index:05d}"


def _remove_other_shards(out: Path, pid: PartitionId, written: set[str]) -> None:
    """Shards of partition ``pid`` that this write did not produce: left by an earlier write of the partition
    under another name (flat, by code of before the sub-folders) and now redone, e.g. because their perceptual hashes
    were of another definition. Left in place they would be indexed beside the new ones (every sample twice).
    Revisions (``-rNNN``, written by later snapshots) are not the partition's own shards and are never matched."""
    for subset in SUBSETS:
        for folder in dict.fromkeys((subset, shard_folder(subset, pid.snapshot, pid.index))):
            for tar in sorted((out / folder).glob(partition_shards_glob(subset, pid.split, _pid_tail(pid)))):
                name = f"{folder}/{tar.stem}"
                if name not in written:
                    log.warning("partition %s: %s.tar of an earlier write of it removed", pid.name, name)
                    for path in shard_paths(out, name):
                        path.unlink(missing_ok=True)


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


def cut_shards(members: list[dict], max_samples: int, max_bytes: int) -> Iterator[list[dict]]:
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


def stage_partition(task: PartitionTask) -> dict:
    """Stage every article of one partition (resumable article by article)."""
    pid_name, digest = task.pid, task.manifest
    work = task.job.work
    pid = PartitionId.parse(pid_name)
    stage = work.stage(pid)
    if stage.is_staged(digest) and hashes_match(work, pid, stage.staged_info(), phash=task.job.media.phash):
        return stage.staged_info()
    rows = _manifest_rows(work, pid, digest)
    return _staged_twice(f"partition {pid_name}", stage, digest, task.job.media.phash,
                         lambda done: _stage_rows(task.job, pid, stage, rows, done, digest))


def _staged_twice(name: str, stage: PartitionStage, digest: str | None, phash: str, run) -> dict:
    """``run(done)`` on the opened staging (``done``: its finished units); a staging found damaged on the way is
    removed and staged once more from the inputs, and damaged again it is a fatal error (the disk)."""
    for attempt in range(2):
        done = _open_stage(stage, digest, phash)
        try:
            return run(done)
        except StateError as e:
            if attempt:
                raise FatalBuildError(f"{name}: its staging is damaged again after being redone ({e}); is the disk "
                                      f"failing?") from e
            log.warning("%s: the staging of %s is redone", e, name)
            stage.remove()
    raise AssertionError("unreachable")


def stage_slice(task: PartitionTask) -> dict:
    """Stage one slice of a partition (manifest rows ``task.rows``) into its own staging, resumable article by
    article like a partition; :func:`combine_slices` appends the slices to the partition's staging in manifest
    order once all are staged. A slice is only staging: it writes no hash rows and nothing the output depends on."""
    pid_name, digest = task.pid, task.manifest
    work = task.job.work
    pid = PartitionId.parse(pid_name)
    stage = work.slice_stage(pid, task.rows)
    if _slice_ready(stage, digest, task.job.media.phash):
        return {k: v for k, v in stage.staged_info().items() if k != "scan"}
    rows = _manifest_rows(work, pid, digest)[slice(*task.rows)]

    def run(done: set[str]) -> dict:
        _stage_units(task.job, pid, stage, rows, done)
        return _seal_slice(task, stage, rows)

    return _staged_twice(task.key, stage, digest, task.job.media.phash, run)


def _slice_ready(stage: PartitionStage, digest: str | None, phash: str) -> bool:
    """A slice staged for this manifest, with this hash definition's values, its ``images.bin`` as long as its log
    says (a flipped byte is found later: a record's by its sha256 when the slices are combined, an image's by its
    CRC-32 when the partition is written)."""
    if not (_bound_to(stage, digest, phash) and stage.is_staged(digest)):
        return False
    try:
        stage.finished()
    except StateError:
        return False
    return True


def _seal_slice(task: PartitionTask, stage: PartitionStage, rows: list[dict]) -> dict:
    """Check a slice's staged units against its manifest rows (as a partition's are), and seal it with what the
    partition's sealing needs from them (:func:`_scan`), so that combining the slices reads no record again."""
    scan = _scan(stage)
    _check_scan(task.key, scan, rows)
    info = {"pid": task.pid, "rows": list(task.rows), "manifest": task.manifest, "units": len(scan["seen"]),
            "scan": scan}
    stage.mark_staged(info)
    checkpoint("slice_staged")
    return {k: v for k, v in info.items() if k != "scan"}


def combine_slices(task: PartitionTask, slices: list[tuple[int, int]]) -> dict:
    """Copy the staged slices of a partition (rows ``slices``, which tile its manifest) into the partition's own
    staging in manifest order (:meth:`~biomedica_hf.ingest.staging.PartitionStage.append_staging`: byte ranges, no
    record decoded), then seal the partition from the slices' scans, as if one task had staged it: the same checks,
    hash rows and marker, the same samples for the write. The slices are removed after. The partition's staging is
    made anew (a killed combine is simply done again). A slice that is missing or does not check raises
    :class:`StateError` (the caller stages the partition as a whole)."""
    pid_name, digest = task.pid, task.manifest
    work = task.job.work
    pid = PartitionId.parse(pid_name)
    rows = _manifest_rows(work, pid, digest)
    slices = sorted(slices)
    parts = [work.slice_stage(pid, r) for r in slices]
    for r, part in zip(slices, parts):
        if not _slice_ready(part, digest, task.job.media.phash):
            raise StateError(f"{pid_name}[{r[0]}:{r[1]}]: the slice is not staged, or its staging is damaged")
    stage = work.stage(pid)
    stage.remove()
    _open_stage(stage, digest, task.job.media.phash)
    scan: dict[str, list] = {"seen": [], "no_fate": [], "hash_rows": [], "failed": [], "retry": []}
    n_bytes = 0
    for i, part in enumerate(parts):
        n_bytes += stage.append_staging(part, move=i == 0)     # the first slice's images are renamed, not copied
        for name, values in part.staged_info()["scan"].items():
            scan[name].extend(values)
    info = _seal_partition(task.job, pid, stage, scan, n_bytes, rows, digest)
    for part in parts:
        part.remove()
    return info


def give_up_partition(task: PartitionTask, attempts: int, error: str) -> dict:
    """A partition (or a slice) whose worker died ``attempts`` times: its unfinished articles are ledgered."""
    pid_name, digest = task.pid, task.manifest
    work = task.job.work
    pid = PartitionId.parse(pid_name)
    stage = work.stage(pid) if task.rows is None else work.slice_stage(pid, task.rows)
    done = _open_stage(stage, digest, task.job.media.phash)
    rows = _manifest_rows(work, pid, digest)
    if task.rows is not None:
        rows = rows[slice(*task.rows)]
    for row in rows:
        ref = ref_from_json(row["ref"])
        rid = f"{ref.pmcid}@{ref.location}" if row["duplicate"] else ref.pmcid
        if rid not in done:
            res = PackageResult(rid, ledger=[LedgerEntry("article", rid, ref.pmcid, FAILED, "worker_died",
                                                         f"partition {pid_name} failed {attempts} times: {error}"[:500],
                                                         ref.location)])
            stage.append(res)
    if task.rows is not None:
        return _seal_slice(task, stage, rows)
    return _finish_stage(task.job, pid, stage, 0, rows, digest)


def write_partition(task: PartitionTask) -> dict:
    """Shuffle, shard and write one staged partition; its parts and marker; then delete its staging.

    A partition whose staging is gone or does not check (a lost done marker, a flipped image) is staged again
    from its inputs first; it must stage the same hash rows that the duplicate decisions were made from."""
    pid_name, digest = task.pid, task.manifest
    work = task.job.work
    finished = read_done(work, pid_name, digest, check_parts=not (work.snap(PartitionId.parse(pid_name).snapshot)
                                                                 / "finish.ready").exists(),
                         phash=task.job.media.phash)
    if finished is not None:
        return finished
    pid = PartitionId.parse(pid_name)
    stage = work.stage(pid)
    decided = task.decided
    for attempt in range(2):
        if not stage.is_staged(digest):
            stage_partition(task)
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



__all__ = ["PartitionJob", "PartitionTask", "close_sources", "combine_slices", "init_worker", "process_ref",
           "reconcile_identity", "source_for"]

"""Planning a snapshot, and checking a resumed one.

**Planning**: the source's listing is streamed into per-bucket spool files (kept in memory when it is small), then
cut into partition manifests (Parquet) by a stable hash of the PMCID (:mod:`biomedica_hf.ingest.partition`). An
update keeps only new articles, new versions and retried failures, and records the articles that were retracted,
withdrawn or superseded (``removed.parquet``). The snapshot's sealed ``layout.json`` commits the plan.

**Resuming**: which snapshot a run works on, and every piece of a resumed snapshot's state checked before anything
trusts it (a damaged piece is planned again, or the snapshot is discarded and redone).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from biomedica_hf.ingest.dedup import n_hash_buckets
from biomedica_hf.ingest.inputs import nothing_listed
from biomedica_hf.ingest.media import PNG_STRATEGIES, png_strategy_available
from biomedica_hf.ingest.options import BuildOptions
from biomedica_hf.ingest.partition import (
    FINE_BUCKETS,
    Layout,
    ListingSpool,
    PartitionId,
    choose_layout,
    manifest_digest,
    read_manifest,
    ref_from_json,
    ref_revision,
    write_layout,
    write_manifest,
)
from biomedica_hf.ingest.progress import bars_on
from biomedica_hf.ingest.sources import make_source
from biomedica_hf.ingest.sources.base import FatalBuildError, Source
from biomedica_hf.ingest.state import checkpoint, file_seal, matches, read_sealed
from biomedica_hf.ingest.task import TRANSIENT_REASONS
from biomedica_hf.ingest.work import Work, done_record, hashes_match, read_done
from biomedica_hf.io.atomic import atomic_path, move_into_place, write_parquet, write_table
from biomedica_hf.io.markers import STATS
from biomedica_hf.layout import ARTICLES_TABLE, LEDGER, shard_dirs
from biomedica_hf.ledger import LEDGER_SCHEMA
from biomedica_hf.neardup.hashing import DEFINITIONS, HASH_NAME, hash_software_changes, recorded_hash_name
from biomedica_hf.schema import FAILED, SKIPPED, SUBSETS, LedgerEntry

log = logging.getLogger("biomedica_hf.ingest")


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


def list_snapshot(cfg: BuildOptions, work: Work, k: int) -> tuple[ListingSpool, int]:
    """Stream the source's listing into bucket spools; listing-level ledger rows into a part."""
    spool = ListingSpool(work.snap(k) / "spool")
    source = make_source(cfg.source)
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
                raise nothing_listed(cfg.source.kind, cfg.source.options(), source)
            _drain_listing(source, k, ledger_rows)
            if ledger_rows:
                writer.write_table(pa.Table.from_pylist(ledger_rows, schema=LEDGER_SCHEMA))
        finally:
            writer.close()
            source.close()
    spool.finish()
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


def removed_records(work: Work, upto: int, reason: str | None = None) -> set[tuple[str, int]]:
    """(pmcid, snapshot of the removed entry) of every removal so far (bounded by churn, not corpus)."""
    out = set()
    for j in range(upto):
        p = work.snap(j) / "removed.parquet"
        if p.exists():
            t = pq.read_table(p, columns=["pmcid", "snapshot", "reason"])
            out.update((pm, sn) for pm, sn, why in zip(t["pmcid"].to_pylist(), t["snapshot"].to_pylist(),
                                                      t["reason"].to_pylist()) if reason in (None, why))
    return out


def failed_pmcids(work: Work, transient_only: bool) -> set[str]:
    out: set[str] = set()
    d = work.root / "parts" / "done"
    damaged = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        info = done_record(p)
        if info is None:
            damaged.append(p.name)
            continue
        out.update(info.get("retry" if transient_only else "failed", []))
    if damaged:     # the ledger says the same: its failed rows (those of articles still in the dataset)
        log.warning("done marker(s) %s damaged: the articles to retry are read from the ledger", damaged[:5])
        path = work.out / LEDGER
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


def folder_options(cfg: BuildOptions, work: Work, k: int) -> BuildOptions:
    """The options snapshot ``k`` builds with: a fresh build uses ``cfg``'s. An update keeps two choices of the folder
    it updates, so that no folder mixes two of either and what its card says of them holds for every sample:

    * the definition of the folder's published ``phash`` values, so that a folder built by older code is updated in
      place (never rebuilt for a new hash) and ``figures.parquet`` never mixes two definitions. A definition this
      code does not know (a folder of newer code) is refused by :func:`check_hash_definition` once the listing
      shows changes;
    * the encoding of converted figures (``media.png_strategy``, e.g. ``paeth-rle`` or ``up-igzip`` of a folder
      built before ``up-rle``), when this code writes it: then an identical TIFF in an old and a new snapshot still
      has the same bytes (``up-igzip``: almost always, see ``media.PNG_STRATEGIES``), so the same sha256 for the
      exact de-duplication.

    A resumed snapshot keeps the encoding its layout recorded when it began (snapshots begun by code older than the
    record: ``cfg``'s)."""
    from biomedica_hf.ingest.finish import previous_summary

    media = cfg.media
    png = None
    if k > 0:
        summary = previous_summary(work)
        have = recorded_hash_name(summary)
        if have != media.phash and have in DEFINITIONS:
            media = dataclasses.replace(media, phash=have)
        recorded = summary.get("media") if isinstance(summary.get("media"), dict) else {}
        png, whose, keeper = recorded.get("png_strategy"), "folder", "update"
    begun = work.meta(k)                    # a resumed snapshot's layout, None for a new one
    if begun is not None:
        png, whose, keeper = begun.get("png_strategy"), "snapshot", "resume"
    if png in PNG_STRATEGIES and png != media.png_strategy:
        if png_strategy_available(png):
            log.info("this %s's converted figures are PNGs of png_strategy %r: the %s keeps it", whose, png, keeper)
            media = dataclasses.replace(media, png_strategy=png)
        else:
            log.warning("this %s's converted figures are PNGs of png_strategy %r, which needs python-isal: the new "
                        "ones are %r (pip install isal keeps the %s's)", whose, png, media.png_strategy, whose)
    return cfg if media is cfg.media else dataclasses.replace(cfg, media=media)


def check_hash_definition(cfg: BuildOptions, work: Work, k: int) -> None:
    """An update (``k > 0``, once the listing shows changes, before anything is planned or published): refused when
    the folder's definition (``build_summary.json`` ``phash``) is one this code does not compute; said in one line
    when it is not today's, and when the versions that compute it differ from those of the folder's snapshots."""
    if k == 0:
        return
    from biomedica_hf.ingest.finish import previous_summary

    summary = previous_summary(work)
    have = recorded_hash_name(summary)          # none recorded: the legacy definition
    if have not in DEFINITIONS:
        raise FatalBuildError(f"{work.out}: its published samples carry perceptual hashes of the definition {have!r}, "
                              f"which this code does not compute ({', '.join(map(repr, DEFINITIONS))}): update it "
                              f"with the code that built it, or build the listing into a new folder")
    if cfg.media.phash != HASH_NAME:
        log.warning("this folder's samples carry %s hashes: the update keeps that definition (a fresh build uses %s)",
                 cfg.media.phash, HASH_NAME)
    changed = hash_software_changes(summary.get("snapshots", []))
    if changed:
        log.warning("this folder's perceptual hashes were computed with %s; this update computes its new samples' with "
                    "%s: near-duplicate distances between new and published samples can differ by a few bits (e.g. "
                    "Pillow 13's resize of tall figures); build with the folder's versions to compare like with like",
                    ", ".join(f"{n} {'/'.join(sorted(v))}" for n, (v, _) in sorted(changed.items())),
                    ", ".join(f"{n} {now}" for n, (_, now) in sorted(changed.items())))


def plan_snapshot(cfg: BuildOptions, work: Work, k: int) -> Layout | None:
    """List, diff against earlier snapshots (updates), write the manifests and the layout."""
    spool, n_listed = list_snapshot(cfg, work, k)
    changes = Counter()
    removed_rows: list[dict] = []
    plan_rows: list[dict] = []          # ledger rows of the diff itself (a version going backward)
    if k == 0:
        counts = spool.counts
        planned = spool
    else:
        _check_history(work, k)
        removed = removed_records(work, k)
        retracted_before = removed_records(work, k, reason="retracted")
        retracted_before = {p for p, _ in retracted_before}
        retry = failed_pmcids(work, transient_only=not cfg.retry_failed)
        delta = ListingSpool(work.snap(k) / "delta")
        cache: dict[int, tuple[str, dict]] = {}
        n_old = 0
        for b in range(FINE_BUCKETS):
            old = _old_entries(work, k, b, removed, cache)
            n_old += len(old)
            new_seen: set[str] = set()
            for seq, ref in sorted(spool.rows(b), key=lambda r: r[0]):
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
        delta.finish()
        if cfg.limit is None and not cfg.allow_shrink and n_old and changes["withdrawn"] > n_old // 2:
            raise FatalBuildError(
                f"the new listing drops {changes['withdrawn']} of {n_old} articles of this dataset; if PMC really "
                "withdrew them, rerun with --allow-shrink")
        if cfg.limit is not None:   # a truncated listing says nothing about the articles it did not reach
            removed_rows = [r for r in removed_rows if r["reason"] != "withdrawn"]
            changes.pop("withdrawn", None)
        counts = delta.counts
        planned = delta
        if not sum(counts) and not removed_rows and not plan_rows:
            shutil.rmtree(work.snap(k), ignore_errors=True)   # nothing changed: no snapshot
            return None
        try:
            check_hash_definition(cfg, work, k)
        except FatalBuildError:
            shutil.rmtree(work.snap(k), ignore_errors=True)   # refused: no snapshot
            raise
    layout = choose_layout(k, counts, tuple(cfg.split_fractions), cfg.partition_target)
    if k == 0:
        changes["added"] = sum(counts)
    manifests = {}
    for pid in layout.all_partitions():
        rows = [r for b in layout.buckets_of(pid) for r in planned.rows(b)]
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
             "png_strategy": cfg.media.png_strategy,          # a resume keeps it (folder_options)
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


def current_snapshot(work: Work) -> tuple[int, bool]:
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


def check_ready(work: Work, k: int) -> bool:
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
    for name in (ARTICLES_TABLE, LEDGER):
        (work.snap(k) / name).unlink(missing_ok=True)
    for p in sorted((work.root / "parts" / "done").glob(f"s{k:03d}-*.json")):
        p.unlink()
    return False


def _forget_other_definition(work: Work, k: int, layout: Layout, phash: str) -> None:
    """Partitions staged or written by code of another hash definition (older code records none): their phash
    values must not meet this code's, so the decisions made from them (duplicates, staged tables) are made again;
    the partitions themselves are redone by the checks of :func:`check_snapshot` (``read_done``, ``hashes_match``)."""
    def other(pid: PartitionId) -> bool:
        info = read_sealed(work.done(pid.name)) or work.stage(pid).staged_info()
        return bool(info) and recorded_hash_name(info) != phash

    stale = [pid.name for pid in layout.all_partitions() if other(pid)]
    if not stale:
        return
    log.warning("snapshot %d: %d partition(s) (%s) were hashed with another perceptual hash definition than %s: "
                "redone, with the duplicate decisions", k, len(stale), ", ".join(stale[:3]), phash)
    for name in ("dedup.json", "decisions.parquet", "near.parquet", "finish.ready", ARTICLES_TABLE, LEDGER):
        (work.snap(k) / name).unlink(missing_ok=True)


def check_snapshot(cfg: BuildOptions, work: Work, k: int) -> Layout | None:
    """A resumed snapshot: every piece of its state is checked before anything trusts it.

    A lost or changed manifest is planned again from the listing (the listing is the truth): when the new
    manifests are the recorded ones the snapshot goes on, else it is redone. A partition whose done marker,
    parts or hash files do not check loses them and is redone from its staging or from its inputs; damaged
    duplicate decisions are decided again."""
    check_hash_definition(cfg, work, k)
    meta = work.meta(k)
    layout = work.layout(k)
    if layout is None or "manifests" not in meta:
        discard_snapshot(work, k)
        return plan_snapshot(cfg, work, k)
    _forget_other_definition(work, k, layout, cfg.media.phash)
    ready = check_ready(work, k)
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
        done = read_done(work, pid.name, digest, check_parts=not ready, phash=cfg.media.phash)
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
            if not hashes_match(work, pid, info, phash=cfg.media.phash):
                work.done(pid.name).unlink(missing_ok=True)
                stage.marker.unlink(missing_ok=True)
    return layout


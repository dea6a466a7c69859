"""``biomedica build``: a partitioned build whose driver holds O(partitions), never O(articles).

Stages of one **snapshot** (a build, or an update of an earlier build against a newer listing):

1. **list**      the source's listing is streamed into per-bucket spool files, then cut into partition
                 manifests (Parquet) by a stable hash of the PMCID (:mod:`biomedica_hf.ingest.partition`). An
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
rerun repairs what was cut. One build per folder (:mod:`biomedica_hf.ingest.lock`).

The rooms: :mod:`~biomedica_hf.ingest.options` (what the build is asked), :mod:`~biomedica_hf.ingest.snapshots`
(planning, resuming), :mod:`~biomedica_hf.ingest.task` (the per-partition work, a task object for the executors of
:mod:`biomedica_hf.executors`), :mod:`~biomedica_hf.ingest.duplicates`, :mod:`~biomedica_hf.ingest.removals`,
:mod:`~biomedica_hf.ingest.finish` (tables, summary); this module keeps the orchestration only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

from biomedica_hf.ingest.dedup import decide
from biomedica_hf.ingest.duplicates import CaptionTask, NearTask, spill_published
from biomedica_hf.ingest.finish import BuildReport, finish, up_to_date_report
from biomedica_hf.ingest.lock import BuildLock
from biomedica_hf.ingest.media import warm_up
from biomedica_hf.ingest.options import BuildConfig, BuildOptions
from biomedica_hf.ingest.partition import PartitionId
from biomedica_hf.ingest.progress import BuildProgress
from biomedica_hf.ingest.removals import apply_removals
from biomedica_hf.ingest.snapshots import check_snapshot, current_snapshot, folder_options, plan_snapshot
from biomedica_hf.ingest.sources.base import FatalBuildError
from biomedica_hf.ingest.state import StateError, checkpoint, file_seal, read_sealed, write_sealed
from biomedica_hf.ingest.task import (
    PartitionJob,
    PartitionTask,
    close_sources,
    combine_slices,
    disk_error_in,
    fatal_error,
    init_worker,
)
from biomedica_hf.ingest.work import Work, n_finished, read_done, read_manifest_count
from biomedica_hf.errors import InputError
from biomedica_hf.executors import StartedTask, executor_session, make_executor, run_tasks
from biomedica_hf.io.atomic import atomic_write_json, remove_temporaries
from biomedica_hf.layout import BUILD_SUMMARY, FIGURES_INDEX, folder_files

log = logging.getLogger("biomedica_hf.ingest")


# ------------------------------------------------------------------------------------- fixed costs
class _Preload:
    """Imports the driver (or a pool forked from it later) will need after the stage phase, done in a thread while
    the workers stage: with 2+ workers the driver only waits there, so these fixed costs leave the serial tail of the
    build (the card's ``matplotlib``, ``jinja2``, YAML; the passes' scipy).

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

                    matplotlib.use("Agg")     # the card draws PNGs with Agg; never a GUI backend from a thread
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


# what the near-duplicate and caption passes import, each in a worker forked from the driver after the stage phase
# (scipy's connected components, zipfile's codec for the keys' .npz): imported there twice, ~0.1 s each, unless the
# driver has them already
_PASS_IMPORTS = ("scipy.sparse.csgraph", "encodings.cp437")


SLICES = 4            # a partition staged in slices: into this many
MIN_SLICE = 8         # articles per slice at least
MAX_SLICED = 256      # articles of a partition staged in slices at most (the driver copies each slice once)


def stage_units(work: Work, todo: list[PartitionTask], workers: int, sliced: int | None = None,
                counts: dict[str, int] | None = None) -> tuple[list[PartitionTask], dict[str, list[tuple[int, int]]]]:
    """The stage phase's tasks, longest first, and the partitions staged in slices (pid -> the slices' rows).

    Partitions are the output's layout; with a few hundred articles each, a small build has too few of them to
    end the phase evenly: the last one runs alone while the other workers idle (~0.5 s of 7 at 2,000 figures on
    2 workers). So the ``sliced`` partitions staged last (``None``: one per worker with 2+ workers, none with one)
    are staged as :data:`SLICES` slices of their manifest each, run after every whole partition, and
    :func:`~biomedica_hf.ingest.task.combine_slices` appends them in manifest order: the partition's staging, and
    so everything written from it, is the same as one task's. Only partitions that nothing has staged yet are
    cut, of :data:`MAX_SLICED` articles at most (at PMC scale the tail is one partition in thousands); a
    partition whose slices a killed run left (the same rows, tiling its manifest) is staged in those again.
    ``counts``: each partition's manifest rows, when the caller has them (the snapshot's sealed manifests), else
    read from the manifests."""
    if counts is None:
        counts = {t.pid: read_manifest_count(work, PartitionId.parse(t.pid)) for t in todo}
    budget = (workers if workers > 1 else 0) if sliced is None else sliced
    plan: dict[str, list[tuple[int, int]]] = {}
    found = work.slice_stages()
    for t in sorted(todo, key=lambda t: counts[t.pid]):          # smallest first: the ones staged last
        pid, n = PartitionId.parse(t.pid), counts[t.pid]
        left = sorted(found.get(t.pid, {}))
        if left and left[0][0] == 0 and left[-1][1] == n and all(a[1] == b[0] for a, b in zip(left, left[1:])):
            plan[t.pid] = left                                   # a killed run's slices: go on with them
        elif budget > 0 and 2 * MIN_SLICE <= n <= MAX_SLICED and not work.stage(pid).folder.exists():
            m = min(SLICES, n // MIN_SLICE)
            plan[t.pid] = [(n * i // m, n * (i + 1) // m) for i in range(m)]
            budget -= 1
        for rows in set(left) - set(plan.get(t.pid, ())):              # another run's slicing: not used
            work.slice_stage(pid, rows).remove()
    units = [t for t in todo if t.pid not in plan]
    units += [dataclasses.replace(t, rows=r) for t in todo if t.pid in plan for r in plan[t.pid]]
    units.sort(key=lambda u: -(u.rows[1] - u.rows[0] if u.rows else counts[u.pid]))   # stable: largest first
    return units, plan


# ---------------------------------------------------------------------------------- build
def build(cfg: BuildOptions) -> BuildReport:
    """Build (or update, or resume) the dataset folder ``cfg.out`` (module doc)."""
    fresh = [p for p in (Path(cfg.out), cfg.work) if not p.exists()]   # what an input error must not leave behind
    try:
        with BuildLock(Path(cfg.out)), contextlib.ExitStack() as session:
            return _build(cfg, session)
    except InputError:
        if fresh:
            shutil.rmtree(fresh[0], ignore_errors=True)
        raise


def _build(cfg: BuildOptions, session: contextlib.ExitStack) -> BuildReport:
    """The build; ``session`` holds the executors' session (:func:`~biomedica_hf.executors.executor_session`, one Ray
    instance for every phase), entered by the first executor made (an up-to-date folder starts none) and left by
    the caller."""
    t0 = time.time()
    out = Path(cfg.out)
    work = Work(out)
    work.root.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)   # a killed run's temporaries are never complete: safe to drop
    if cfg.rebuild_state or (not work.snapshots() and ((out / FIGURES_INDEX).exists()
                                                       or (out / BUILD_SUMMARY).exists())):
        if not cfg.rebuild_state:
            raise FatalBuildError(f"{out} holds a built dataset but its resume state {work.root} is gone: building "
                                  f"into it would publish its articles twice. Rerun with --rebuild-state to "
                                  f"reconstruct the state from the published files, or build into a new folder")
        from biomedica_hf.ingest.rebuild_state import rebuild_state

        rebuild_state(work.out, tuple(cfg.split_fractions))
    prog = BuildProgress(cfg.progress, cfg.progress_every)
    clock = prog.clock()
    k, resumed = current_snapshot(work)
    cfg = folder_options(cfg, work, k)     # the folder's pHash definition; the folder's (the snapshot's) PNGs
    layout = check_snapshot(cfg, work, k) if resumed else plan_snapshot(cfg, work, k)
    clock.lap("list")
    if layout is None:
        return up_to_date_report(work, k - 1, t0)
    meta = work.meta(k)
    seals = {name: seal[1] for name, seal in meta["manifests"].items() if seal[0]}
    counts = {name: seal[0] for name, seal in meta["manifests"].items()}     # manifest rows (checked on a resume)
    pids = [p.name for p in layout.all_partitions() if p.name in seals]
    n_hash = meta["hash_buckets"]
    ready = (work.snap(k) / "finish.ready").exists()

    def is_done(p: str) -> bool:
        return read_done(work, p, seals[p], check_parts=not ready, phash=cfg.media.phash) is not None

    job = PartitionJob(out=str(out), source=cfg.source, media=cfg.media, keep_downloads=cfg.keep_downloads,
                       n_hash=n_hash, discard=cfg.retry_failed and k > 0, seed=cfg.seed,
                       shard_max_samples=cfg.shard_max_samples, shard_max_bytes=cfg.shard_max_bytes,
                       caption_keys=cfg.caption_dups)

    in_session: list[bool] = []

    def make():
        if not in_session:          # the first executor: Ray (a local instance) started once for every phase
            session.enter_context(executor_session(cfg.executor, workers=cfg.workers, address=cfg.ray_address))
            in_session.append(True)
        return make_executor(cfg.executor, workers=cfg.workers, address=cfg.ray_address,
                             initializer=init_worker, initargs=(os.getpid(),))

    try:
        # ---- stage
        todo = [PartitionTask(p, seals[p], job) for p in pids
                if not work.stage(PartitionId.parse(p)).is_staged(seals[p]) and not is_done(p)]
        units, sliced = stage_units(work, todo, cfg.workers, cfg.sliced_partitions, counts)   # (other slices: removed)
        n_now = sum(counts[t.pid]
                    - n_finished(work.stage(PartitionId.parse(t.pid)),
                                 *(work.slice_stage(PartitionId.parse(t.pid), r) for r in sliced.get(t.pid, ())))
                    for t in todo)
        preload = _Preload((*cfg.preload, *_PASS_IMPORTS) if cfg.workers > 1 else ())

        def make_stage():
            preload.join()              # a pool restarted after a dead worker never forks mid-import
            if cfg.executor == "local" and cfg.workers > 1:
                warm_up()               # the first figure's imports, once here before the fork, not in every worker
            return make()

        def staged(items: list[PartitionTask]):
            return run_tasks(make_stage, PartitionTask.stage, items, max_attempts=cfg.max_attempts, desc="stage",
                             progress=False, on_give_up=PartitionTask.give_up,
                             bind=PartitionTask.shared)    # the request rate is the build's: split

        left = {p: set(rows) for p, rows in sliced.items()}      # slices not staged yet, per partition
        whole = {t.pid: t for t in todo}
        redo: list[PartitionTask] = []          # sliced partitions whose slices did not combine: staged whole
        prog.line(f"stage: {n_now} of {meta.get('listed')} listed article(s) to process, in {len(todo)} partition(s)")
        try:
            with prog.articles(n_now, work.root / "progress"):   # one bar over articles, not partitions
                for info in staged(units):
                    preload.start()     # the pool's workers exist now: no fork while the thread imports
                    if "rows" in info:                          # a slice: the last one combines its partition
                        pid = info["pid"]
                        left[pid].discard(tuple(info["rows"]))
                        if not left[pid]:
                            try:
                                combine_slices(whole[pid], sliced[pid])
                            except StateError as e:
                                log.warning("%s: partition %s is staged again as a whole", e, pid)
                                redo.append(whole[pid])
                for _ in staged(redo):
                    pass
        finally:
            preload.join()
        clock.lap("stage")
        # ---- dedup: exact (same bytes), then near-duplicate images (perceptual hash)
        decisions = work.decisions(k)
        near = work.snap(k) / "near.parquet"
        published = work.root / "published_hashes"
        if k > 0 and not (decisions.exists() and near.exists()):
            spill_published(work, k, n_hash)
        dedup_path = work.snap(k) / "dedup.json"
        dedup = read_sealed(dedup_path)
        if dedup is None:
            for p in (decisions, near):
                p.unlink(missing_ok=True)
            if k > 0:
                spill_published(work, k, n_hash)
        if cfg.dedup_images and not decisions.exists():
            decide(work.hashes(k), n_hash, decisions, extra_folders=[published] if k > 0 else [])
        clock.lap("dedup")
        if not near.exists():   # in a worker: its memory is bounded, but not the driver's business
            folders = [str(work.hashes(k))] + ([str(published)] if k > 0 else [])
            list(run_tasks(make, NearTask.run, [NearTask(str(out), k, tuple(folders), str(decisions), str(near),
                                                          cfg.near_dedup)],
                           max_attempts=cfg.max_attempts, desc="near-duplicates", progress=False))
        if dedup is None:
            inputs = {}
            for p in pids:
                info = read_done(work, p, seals[p], check_parts=False, phash=cfg.media.phash) or work.stage(PartitionId.parse(p)).staged_info()
                inputs[p] = info.get("hash_digest")
            dedup = {"files": {p.name: file_seal(p) for p in (decisions, near) if p.exists()}, "inputs": inputs}
            write_sealed(dedup_path, dedup)
            checkpoint("deduped")
        clock.lap("near_duplicates")
        # ---- write
        tasks = [PartitionTask(p, seals[p], job, str(decisions) if decisions.exists() else None,
                               dedup["inputs"].get(p)) for p in pids]
        pending = [t for t in tasks if not is_done(t.pid)]
        # largest first (stable): the longest tasks start first, so that the workers finish together (a small
        # validation/test partition fills a gap at the end instead of a large one running alone)
        pending.sort(key=lambda t: -counts[t.pid])
        for _ in run_tasks(make, PartitionTask.write, pending, max_attempts=cfg.max_attempts, desc="write",
                           progress=prog.bars, bind=PartitionTask.shared):
            pass
    except FatalBuildError:
        raise
    except OSError as e:
        if disk_error_in(e) is not None:
            raise fatal_error(e, str(out)) from e
        raise
    finally:
        close_sources()             # those opened here: a pool of one worker runs its tasks in the driver
    clock.lap("write")
    # ---- remove (updates)
    n_removed = apply_removals(work, k)
    clock.lap("remove")
    # ---- finish, the caption pass beside its tables: over every shard's Parquet, in a worker (bounded there,
    # never in the driver), while the driver consolidates the articles and ledger tables; the index, which reads
    # its table, waits for it (with one worker it runs first, in the driver)
    with (StartedTask(make, CaptionTask.run, CaptionTask(str(out)), max_attempts=cfg.max_attempts, desc="captions")
          if cfg.caption_dups else contextlib.nullcontext()) as captions:
        if captions is not None and captions.done:      # run here (one worker): its own lap, not the tables'
            clock.lap("caption_duplicates")
        report = finish(cfg, work, k, meta, n_staged=n_now, n_removed=n_removed, t0=t0, clock=clock,
                        before_index=captions.result if captions is not None and not captions.done else None)
    checkpoint("summary_written")
    atomic_write_json(work.snap(k) / "complete.json", {"snapshot": k, "finished": time.time()})
    shutil.rmtree(work.snap(k) / "retired", ignore_errors=True)     # the old shards: after the commit only
    shutil.rmtree(work.root / "stage", ignore_errors=True)
    shutil.rmtree(work.hashes(k), ignore_errors=True)
    shutil.rmtree(work.root / "published_hashes", ignore_errors=True)
    return report


def shard_paths(out: Path, subset: str) -> list[Path]:
    """The tar files of one subset (flat and in its ``sNNN/gNNN`` sub-folders), in relative-path order."""
    return folder_files(Path(out) / subset, "*.tar")


__all__ = ["BuildConfig", "BuildOptions", "BuildReport", "FatalBuildError", "build", "shard_paths"]

"""``biomedica build``: source -> parse -> media -> plan -> shard writer -> dataset folder.

Stages, each resumable:

1. **list**   the source names the articles (file list, PMCIDs, S3 listing or a local folder).
2. **stage**  per article (a process pool): fetch, parse, decode images -> ``_work/staged/<id>``.
              Finished units are skipped on rerun; transient fetch failures are retried on rerun.
3. **plan**   dedup exact image duplicates across the whole build, shuffle, cut into shards.
4. **write**  per shard (a process pool): tar + parquet + stats JSON (completion marker).
5. **finish** ``articles.parquet``, ``ledger.parquet``, ``duplicates.parquet``, ``sizes.json``,
              ``build_summary.json`` and ``ledger_summary.txt``.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from . import __version__
from .concepts.label import labels_extra_columns
from .executors import make_executor
from .index import build_figures_index
from .ledger import check_unique, format_summary, write_ledger
from .plan import Plan, PlannedSample, make_plan
from .samples import MediaOptions, PackageResult, process_package
from .schema import (ARTICLE_FIELDS, FAILED, KEPT, SKIPPED, SUBSETS, ArticleRef, LedgerEntry, arrow_schema)
from .sources import make_source
from .sources.base import FatalBuildError, FetchError, Source, is_disk_error
from .staging import is_staged, iter_samples, read_unit, unit_ledger, unit_paths, write_unit
from .writer import atomic_write_json, shard_done, write_parquet, write_shard

log = logging.getLogger("biomedica_hf.build")

ARTICLE_SCHEMA = arrow_schema(ARTICLE_FIELDS)
# fetch errors that will not change on retry: staged, so reruns do not ask again
PERMANENT_FETCH = {"not_open_access": SKIPPED, "retracted": SKIPPED, "not_found": FAILED, "bad_package": FAILED}


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
    retry_failed: bool = False                    # re-process staged articles that have failed items
    executor: str = "local"                       # local (process pool) | ray
    ray_address: str | None = None                # ray: "auto", "ray://host:10001" or "local"
    progress: bool = True
    command: str = ""

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

    def text(self) -> str:
        s = [f"Output: {self.out}",
             f"Articles listed: {self.n_listed} (processed now: {self.n_staged_now}, resumed: {self.n_resumed})",
             "Samples: " + ", ".join(f"{k} {v}" for k, v in self.samples_per_subset.items()),
             f"Exact duplicate images removed: {self.n_duplicates}",
             f"Shards written: {self.shards_written} (already complete: {self.shards_skipped})",
             f"Time: {self.elapsed_s:.1f} s", "", format_summary(self.summary)]
        return "\n".join(s)


# ----------------------------------------------------------------------------------- workers
_WORKER: dict[str, Any] = {}


def _init_worker(source_kind: str, source_opts: dict, work: str, media: MediaOptions, keep_downloads: bool) -> None:
    _WORKER.update(source=make_source(source_kind, **source_opts), work=Path(work), media=media,
                   keep_downloads=keep_downloads)


def _stage_ref(ref: ArticleRef) -> dict:
    """Fetch + process one article and stage it. Returns a small report for the driver."""
    source: Source = _WORKER["source"]
    work: Path = _WORKER["work"]
    cache = work / "cache"
    try:
        pkg = source.fetch(ref, cache)
    except FetchError as e:
        entry = LedgerEntry("article", ref.pmcid, ref.pmcid, PERMANENT_FETCH.get(e.reason, FAILED),
                            e.reason, str(e.detail)[:500], ref.location)
        if e.reason in PERMANENT_FETCH:
            write_unit(work, PackageResult(ref.pmcid, ledger=[entry]))
            return {"ref_id": ref.pmcid, "staged": True, "samples": 0, "bytes": 0}
        return {"ref_id": ref.pmcid, "staged": False, "transient": entry.as_dict()}
    try:
        result = process_package(pkg, _WORKER["media"])
    except Exception as e:  # noqa: BLE001 - one article's bug must not sink the build; it is ledgered
        if isinstance(e, FatalBuildError) or is_disk_error(e):
            raise
        log.exception("internal error on %s", ref.pmcid)
        entry = LedgerEntry("article", ref.pmcid, ref.pmcid, FAILED, "internal_error",
                            f"{type(e).__name__}: {e}"[:500], ref.location)
        return {"ref_id": ref.pmcid, "staged": False, "transient": entry.as_dict()}
    write_unit(work, result)
    root = Path(pkg.root).resolve()
    if not _WORKER["keep_downloads"] and cache.resolve() in root.parents:
        shutil.rmtree(root, ignore_errors=True)
    return {"ref_id": ref.pmcid, "staged": True, "samples": len(result.samples),
            "bytes": sum(len(s.image.data) for s in result.samples)}


def _write_shard_task(args: tuple) -> dict:
    out, work, subset, index, keys, locations, also_in, digest = args

    def samples():
        for s in iter_samples(Path(work), keys, locations):
            s.meta["also_in"] = also_in.get(s.key, [])
            yield s

    return write_shard(Path(out), subset, index, samples(), digest)


# ----------------------------------------------------------------------------------- stages
def list_refs(source: Source, limit: int | None) -> tuple[list[ArticleRef], list[LedgerEntry]]:
    """Listed refs (first occurrence of each id, in listing order) and ledger rows for the rest."""
    refs, entries, seen = [], [], set()
    for ref in source.list_articles():
        if limit is not None and len(refs) >= limit:
            break
        if ref.pmcid in seen:
            entries.append(LedgerEntry("article", f"{ref.pmcid}@{ref.location}", ref.pmcid, SKIPPED,
                                       "duplicate_listing", "", ref.location))
            continue
        seen.add(ref.pmcid)
        refs.append(ref)
    for path, reason in getattr(source, "unlisted", []) or []:
        entries.append(LedgerEntry("file", str(path), "", SKIPPED, reason, "", str(path)))
    for line, reason in getattr(source, "listing_problems", []) or []:
        entries.append(LedgerEntry("file", f"listing:{line}", "", FAILED, "bad_listing_row", str(reason), ""))
    return refs, entries


def collect(work: Path, refs: list[ArticleRef]) -> tuple[list[dict], list[PlannedSample], list[LedgerEntry]]:
    """Read every staged unit of the listing: articles, sample descriptors and ledger rows.

    The same PMCID reached through two units (e.g. a folder and an archive of one article) is kept
    from the first unit in sorted order; the other copy is ledgered as ``duplicate_article``.
    """
    articles: list[dict] = []
    planned: list[PlannedSample] = []
    ledger: list[LedgerEntry] = []
    owner: dict[str, str] = {}
    for ref in sorted(refs, key=lambda r: r.pmcid):
        meta_path = unit_paths(work, ref.pmcid)[0]
        if not meta_path.exists():
            continue
        doc = read_unit(meta_path)
        dup_pmcids = set()
        for a in doc["articles"]:
            if owner.setdefault(a["pmcid"], ref.pmcid) != ref.pmcid:
                dup_pmcids.add(a["pmcid"])
            else:
                articles.append(a)
        for e in unit_ledger(doc):
            if e.pmcid in dup_pmcids and e.kind in ("article", "figure"):
                e.id = f"{e.id}@{ref.pmcid}"
                e.state, e.reason, e.detail = SKIPPED, "duplicate_article", f"also listed as {owner[e.pmcid]}"
            if e.kind == "file":
                e.id = f"{ref.pmcid}/{e.id}"
            ledger.append(e)
        for s in doc["samples"]:
            if s["meta"]["pmcid"] in dup_pmcids:
                continue
            size = s["length"] + len(s["caption"].encode()) + 2048
            planned.append(PlannedSample(s["key"], s["meta"]["pmcid"], s["meta"]["subset"],
                                         s["image"]["sha256"], size, ref.pmcid))
    return articles, planned, ledger


def _has_failures(work: Path, ref_id: str) -> bool:
    return any(e["state"] == FAILED for e in read_unit(unit_paths(work, ref_id)[0])["ledger"])


def _mark_duplicates(ledger: list[LedgerEntry], plan: Plan) -> None:
    for e in ledger:
        if e.kind == "figure" and e.state == KEPT and e.id in plan.duplicates:
            e.state, e.reason, e.detail = SKIPPED, "duplicate_image", f"same bytes as {plan.duplicates[e.id]}"


def _remove_stale_shards(out: Path, plan: Plan) -> None:
    """Delete shard files of an earlier, larger plan so the folder holds exactly this plan."""
    wanted = {s.name for s in plan.shards}
    for subset in SUBSETS:
        d = Path(out) / subset
        if not d.is_dir():
            continue
        for f in d.iterdir():
            stem = f.name.split(".")[0].removesuffix("_stats")
            if stem.isdigit() and f"{subset}/{stem}" not in wanted:
                f.unlink()


def _duplicate_rows(plan: Plan) -> list[dict]:
    rows = defaultdict(list)
    for dup, canon in plan.duplicates.items():
        rows[canon].append(dup)
    return [{"key": c, "duplicate_keys": sorted(d), "pmcids": plan.duplicate_groups.get(c, [])}
            for c, d in sorted(rows.items())]


def _remove_partial_files(out: Path) -> None:
    """Temporary files of a killed run (``.<name>.tmp-<pid>``): never complete, safe to drop."""
    for p in Path(out).rglob(".*.tmp-*"):
        if p.is_file():
            p.unlink()


def build(cfg: BuildConfig) -> BuildReport:
    t0 = time.time()
    out, work = Path(cfg.out), cfg.work
    work.mkdir(parents=True, exist_ok=True)
    _remove_partial_files(out)
    source = make_source(cfg.source, **cfg.source_opts)
    try:
        refs, listing_entries = list_refs(source, cfg.limit)
    finally:
        source.close()
    log.info("listed %d articles", len(refs))

    # ---- stage
    todo = [r for r in refs if not is_staged(work, r.pmcid)
            or (cfg.retry_failed and _has_failures(work, r.pmcid))]
    n_resumed = len(refs) - len(todo)
    if cfg.retry_failed:  # a failed package's cached extraction / download would be reused as it is
        for r in todo:
            if is_staged(work, r.pmcid):
                source.discard(r, work / "cache")
    transient: list[LedgerEntry] = []
    def init_args(slots: int) -> tuple:
        opts = dict(cfg.source_opts)
        if opts.get("rate"):  # the politeness limit is for the whole build: split it across task slots
            opts["rate"] = opts["rate"] / slots
        return cfg.source, opts, str(work), cfg.media, cfg.keep_downloads

    executor = make_executor(cfg.executor, workers=cfg.workers, address=cfg.ray_address,
                             initializer=_init_worker, initargs=init_args)
    n_samples = n_bytes = 0
    t_stage = time.time()
    try:
        bar = tqdm(total=len(todo), desc="articles", unit="art", disable=not cfg.progress)
        for r in executor.map(_stage_ref, todo):
            if not r["staged"]:
                transient.append(LedgerEntry(**r["transient"]))
            n_samples += r.get("samples", 0)
            n_bytes += r.get("bytes", 0)
            mbps = n_bytes / 1e6 / max(time.time() - t_stage, 1e-6)
            bar.set_postfix(figures=n_samples, MBps=f"{mbps:.1f}", failed=len(transient))
            bar.update(1)
        bar.close()

        # ---- plan
        articles, planned, ledger = collect(work, refs)
        plan = make_plan(planned, max_samples=cfg.shard_max_samples, max_bytes=cfg.shard_max_bytes, seed=cfg.seed,
                         dedup_images=cfg.dedup_images)
        _mark_duplicates(ledger, plan)

        # ---- write shards
        tasks = [(str(out), str(work), s.subset, s.index, s.keys, {k: plan.location[k] for k in s.keys},
                  s.also_in, s.digest)
                 for s in plan.shards if not shard_done(out, s.subset, s.index, s.digest)]
        skipped = len(plan.shards) - len(tasks)
        bar = tqdm(total=len(tasks), desc="shards", unit="shard", disable=not cfg.progress)
        for _ in executor.map(_write_shard_task, tasks):
            bar.update(1)
        bar.close()
    finally:
        executor.close()
        if "source" in _WORKER:
            _WORKER["source"].close()
        _WORKER.clear()
    _remove_stale_shards(out, plan)

    # ---- finish
    entries = listing_entries + ledger + transient
    clashes = check_unique(entries)
    if clashes:
        raise RuntimeError(f"ledger has items with more than one fate, e.g. {clashes[:5]}")
    articles.sort(key=lambda a: a["pmcid"])
    write_parquet(out / "articles.parquet", [{n: a.get(n) for n, _, _ in ARTICLE_FIELDS} for a in articles],
                  ARTICLE_SCHEMA)
    summary = write_ledger(out, entries)
    _write_duplicates(out, plan)
    per_subset = _write_sizes(out, plan)
    build_figures_index(out, extra_columns=labels_extra_columns(out))  # concept labels survive a rebuild
    report = BuildReport(out=out, summary=summary, n_listed=len(refs), n_staged_now=len(todo) - len(transient),
                         n_resumed=n_resumed, shards_written=len(tasks), shards_skipped=skipped,
                         samples_per_subset=per_subset, n_duplicates=len(plan.duplicates),
                         elapsed_s=time.time() - t0)
    atomic_write_json(out / "build_summary.json", {
        "version": __version__, "command": cfg.command, "source": cfg.source,
        "source_opts": {k: str(v) for k, v in cfg.source_opts.items()},
        "executor": cfg.executor, "seed": cfg.seed, "dedup_images": cfg.dedup_images, "shard_max_samples": cfg.shard_max_samples, "shard_max_bytes": cfg.shard_max_bytes,
        "media": dataclasses.asdict(cfg.media), "articles_listed": len(refs), "articles": len(articles),
        "samples": per_subset, "duplicates_removed": len(plan.duplicates),
        "shards": {s: [x.name + ".tar" for x in plan.shards if x.subset == s] for s in SUBSETS},
        "ledger": summary["counts"],
    })
    return report


def _write_duplicates(out: Path, plan: Plan) -> None:
    import pyarrow as pa

    schema = pa.schema([("key", pa.string()), ("duplicate_keys", pa.list_(pa.string())),
                        ("pmcids", pa.list_(pa.string()))])
    write_parquet(out / "duplicates.parquet", _duplicate_rows(plan), schema)


def _write_sizes(out: Path, plan: Plan) -> dict[str, int]:
    """``<subset>/sizes.json`` ({tar name: samples}) as open_clip / webdataset users expect."""
    per_subset = {}
    for subset in SUBSETS:
        shards = [s for s in plan.shards if s.subset == subset]
        per_subset[subset] = sum(len(s.keys) for s in shards)
        sizes = Path(out) / subset / "sizes.json"
        if shards:
            atomic_write_json(sizes, {f"{s.index:06d}.tar": len(s.keys) for s in shards})
        elif sizes.exists():
            sizes.unlink()
    return per_subset


def shard_paths(out: Path, subset: str) -> list[Path]:
    """The tar files of one subset, in order."""
    return sorted(p for p in (Path(out) / subset).glob("[0-9]*.tar"))


__all__ = ["BuildConfig", "BuildReport", "build", "shard_paths"]

"""``biomedica build --dry-run``: the plan of a build, before fetching anything.

The source's listing is streamed once (any source: a local folder is scanned, a file list read, the Cloud bucket
listed) and each article is counted in its fine bucket (:func:`biomedica_hf.ingest.partition.bucket_of`) and its
licence subset (from the listing's licence hint when it states one): memory is O(buckets), never O(articles). The
partitions are the ones the build would choose (:func:`~biomedica_hf.ingest.partition.choose_layout`), and from
them, with rates measured on a real build, the plan says:

* articles, partitions per split, expected samples per licence subset;
* expected shards (each shard is 3 files: ``.tar``, ``.parquet``, ``_stats.json``) and the entries of the largest
  folder of the layout the build writes (``<subset>/sNNN/gNNN/``, :func:`biomedica_hf.layout.shard_folder`: each
  snapshot in its own folder, groups of partitions, a ``sizes.json`` in each), now and after ``updates`` monthly
  updates of ``update_articles`` articles each (an update writes its partitions' shards in its own snapshot
  folder); the flat layout of folders built before (every shard in ``<subset>/``) is shown for comparison;
* files in the repository, commits (< 100 files each) and hours of pushing at the Hub's 128 commits per hour;
* expected bytes and hours of building at ``workers`` processes;

each against the Hub's limits (< 10,000 entries per folder, 5,000 recommended here; < 100,000 files per repo;
< 20 GB per file). Rates come from ``OUT/build_summary.json`` and the shard stats when OUT already holds a build
(``measured on OUT``), else from the defaults below (``DEFAULT_RATES``, with where each number comes from).
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from biomedica_hf.ingest.options import default
from biomedica_hf.ingest.partition import FINE_BUCKETS, SPLITS, auto_target, bucket_of, choose_layout
from biomedica_hf.layout import BUILD_SUMMARY, PARTITIONS_PER_FOLDER, STATS_SUFFIX, folder_files, shard_folder
from biomedica_hf.licenses import normalize_license
from biomedica_hf.schema import SUBSETS

#: the Hub's limits (its repository recommendations)
HUB_FOLDER_ENTRIES = 10_000
FOLDER_TARGET = 5_000                   # what this project aims at per folder (half the Hub's limit)
HUB_REPO_FILES = 100_000
HUB_FILE_BYTES = 20_000_000_000
HUB_FILES_PER_COMMIT = 100
HUB_COMMITS_PER_HOUR = 128
FILES_PER_SHARD = 3                     # .tar, .parquet, _stats.json

#: PMC-OA's licence split (field notes §10: ~4.2 M commercial / 1.6 M non-commercial / 0.4 M other articles),
#: used for articles whose listing states no licence
PMC_SUBSET_SHARES = {"commercial": 4.2 / 6.2, "noncommercial": 1.6 / 6.2, "other": 0.4 / 6.2}


@dataclass
class Rates:
    samples_per_article: float
    bytes_per_sample: float
    article_seconds_per_worker: float   # wall seconds per article for one worker process
    source: str                         # where the numbers come from


DEFAULT_RATES = Rates(
    samples_per_article=24_050_423 / 6_361_064,   # BIOMEDICA's index: captions / articles (field notes §11)
    bytes_per_sample=150_000,                     # ~150 kB per figure in the shards (JPEG/PNG as published)
    article_seconds_per_worker=2.0,               # BIOMEDICA's ETL: ~2 pairs/s per core, ~3.8 pairs per article
    source="defaults (BIOMEDICA's published counts and ETL rate; no build in OUT to measure)")


def measured_rates(out: Path) -> Rates | None:
    """Rates of the build already in ``out`` (its build_summary.json and shard stats), None without one."""
    path = Path(out) / BUILD_SUMMARY
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
        articles = int(summary.get("articles") or 0)
        samples = sum(int(v) for v in summary.get("samples", {}).values())
        nbytes = sum(json.loads(p.read_text()).get("tar_bytes", 0) for s in SUBSETS
                     for p in folder_files(Path(out) / s, f"*{STATS_SUFFIX}"))
        elapsed = float((summary.get("timings") or {}).get("elapsed_seconds") or 0)
        workers = max(1, int(summary.get("workers") or 1))
    except (OSError, ValueError, TypeError):
        return None
    if not articles or not samples:
        return None
    return Rates(samples / articles, nbytes / samples, elapsed * workers / articles if elapsed else
                 DEFAULT_RATES.article_seconds_per_worker, f"measured on {Path(out).name}/ ({articles:,} articles)")


@dataclass
class FolderPlan:
    folder: str
    shards: int
    entries: int                         # files of the subset (shards x 3 + a sizes.json per sub-folder)
    entries_after_updates: int
    sub_folders: int = 1                 # its sNNN/gNNN folders (the layout the build writes)
    sub_folders_after_updates: int = 1
    flat_entries: int = 0                # the entries of the one folder of the flat layout (folders built before)
    flat_entries_after_updates: int = 0


@dataclass
class BuildPlan:
    source: str
    articles: int
    listing_seconds: float
    partition_target: int
    partitions: dict[str, int]
    subset_articles: dict[str, int]
    subset_from_hint: int                 # articles whose listing stated a licence
    rates: dict[str, Any]
    samples: dict[str, int]
    shards: dict[str, int]
    folders: list[FolderPlan]
    files_total: int
    files_total_after_updates: int
    bytes_total: int
    largest_shard_bytes: int
    commits: int
    push_hours: float
    build_hours: float
    workers: int
    updates: int
    update_articles: int
    update_partitions: int
    nested_folder_example: str = ""          # the sub-folder layout the build writes (layout.shard_folder)
    nested_folders: int = 0                  # shard folders after the updates in that layout
    nested_max_entries: int = 0              # entries of its largest folder after the updates
    nested_max_entries_now: int = 0          # ... of the first build alone
    checks: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)

    def text(self) -> str:
        from biomedica_hf.io.sizes import human_size

        lines = [f"Build plan (dry run: nothing fetched or written) for {self.source}",
                 f"Articles listed: {self.articles:,} (listing read in {self.listing_seconds:.1f} s)",
                 "Partitions: " + ", ".join(f"{s} {n:,}" for s, n in self.partitions.items())
                 + f" (about {self.partition_target:,} articles each)",
                 "Articles per licence subset: " + ", ".join(f"{s} {n:,}" for s, n in self.subset_articles.items())
                 + f" ({self.subset_from_hint:,} from the listing's licence, the rest at PMC-OA's shares)",
                 f"Rates: {self.rates['samples_per_article']:.2f} samples/article, "
                 f"{human_size(self.rates['bytes_per_sample'])}/sample, "
                 f"{self.rates['article_seconds_per_worker']:.2f} s/article/worker — {self.rates['source']}",
                 "Expected samples: " + ", ".join(f"{s} {n:,}" for s, n in self.samples.items()),
                 "Expected shards: " + ", ".join(f"{s} {n:,}" for s, n in self.shards.items()),
                 "", f"{'subset':<16}{'shards':>10}{'files':>10}{'sub-folders':>13}{'after ' + str(self.updates) + ' updates':>20}"
                     f"{'flat folder':>13}{'flat after':>12}"]
        lines += [f"{f.folder:<16}{f.shards:>10,}{f.entries:>10,}{f.sub_folders:>13,}"
                  f"{f'{f.entries_after_updates:,} in {f.sub_folders_after_updates:,}':>20}{f.flat_entries:>13,}"
                  f"{f.flat_entries_after_updates:>12,}" for f in self.folders]
        lines += ["", f"Files in the repository: {self.files_total:,} (after {self.updates} monthly updates of "
                      f"{self.update_articles:,} articles, {self.update_partitions} partitions each: "
                      f"{self.files_total_after_updates:,})",
                  f"Expected bytes: {human_size(self.bytes_total)} (largest shard ~{human_size(self.largest_shard_bytes)})",
                  f"Push: {self.commits:,} commits of <= {HUB_FILES_PER_COMMIT} files, >= {self.push_hours:.1f} h at "
                  f"{HUB_COMMITS_PER_HOUR} commits/hour",
                  f"Build time: ~{self.build_hours:.1f} h with {self.workers} worker(s)",
                  f"Sub-folder layout the build writes ({self.nested_folder_example}/...): {self.nested_folders:,} "
                  f"shard folders after the updates, the largest with {self.nested_max_entries:,} entries "
                  f"(a flat folder of a build made before it: "
                  f"{max((f.flat_entries_after_updates for f in self.folders), default=0):,})",
                  "", f"Hub limits (the sub-folder layout the build writes, {self.nested_folder_example}/...):"]
        lines += [f"  [{'ok' if c['ok'] else 'OVER'}] {c['what']}: {c['value']:,} (limit {c['limit']:,})"
                  for c in self.checks]
        return "\n".join(lines)


def _group_partitions(partitions: dict[str, int]) -> Counter:
    """Partitions per group folder of one snapshot (``layout.shard_folder``: partition index // 500, every split's
    partitions of that index range together): ``{group: partitions}``."""
    groups: Counter = Counter()
    for count in partitions.values():
        for i in range(count):
            groups[i // PARTITIONS_PER_FOLDER] += 1
    return groups


def _shards_per_partition(samples: float, rates: Rates, max_samples: int, max_bytes: int) -> int:
    if samples <= 0:
        return 0
    return max(1, math.ceil(samples / max_samples), math.ceil(samples * rates.bytes_per_sample / max_bytes))


def plan_build(source: Any, *, source_name: str = "", out: Path | None = None, limit: int | None = None,
               fractions: tuple[float, ...] = default("split_fractions"), partition_target: int | None = None,
               shard_max_samples: int = default("shard_max_samples"),
               shard_max_bytes: int = default("shard_max_bytes"), workers: int = 1,
               updates: int = 12, update_articles: int = 50_000, rates: Rates | None = None,
               progress: bool = False) -> BuildPlan:
    """List ``source`` (a :class:`~biomedica_hf.ingest.sources.base.Source`) and plan the build (module doc)."""
    buckets = [0] * FINE_BUCKETS
    subsets: Counter = Counter()
    unknown = 0
    t0 = time.perf_counter()
    n = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="listing", unit="art")
    hints: dict[str, str] = {}                    # a listing repeats a few licence strings: decide each once
    for ref in source.list_articles():
        if limit is not None and n >= limit:
            break
        n += 1
        if bar is not None and n % 10_000 == 0:
            bar.update(10_000)
        buckets[bucket_of(ref.pmcid)] += 1
        hint = ref.license_hint
        if hint:
            subset = hints.get(hint)
            if subset is None:
                code, subset = normalize_license(hint=hint)
                subset = subset if code != "unknown" else ""
                hints[hint] = subset
            if subset:
                subsets[subset] += 1
                continue
        unknown += 1
    if bar is not None:
        bar.close()
    listing_seconds = time.perf_counter() - t0
    rates = rates or (measured_rates(out) if out is not None else None) or DEFAULT_RATES
    from_hint = sum(subsets.values())
    subset_articles = {s: round(subsets[s] + unknown * PMC_SUBSET_SHARES[s]) for s in SUBSETS}
    target = partition_target or auto_target(n)
    layout = choose_layout(0, buckets, fractions, target)
    n_parts = sum(layout.partitions.values())
    samples = {s: round(subset_articles[s] * rates.samples_per_article) for s in SUBSETS}
    shards, folders = {}, []
    # an update's own partitions (the build partitions each snapshot's new articles by itself)
    upd_layout = choose_layout(1, [update_articles // FINE_BUCKETS] * FINE_BUCKETS, fractions,
                               auto_target(update_articles)).partitions if updates else {}
    upd_parts = sum(upd_layout.values())
    total_after = 0
    # the layout the build writes: per snapshot, groups of PARTITIONS_PER_FOLDER partition indexes (all splits)
    group_parts, upd_group_parts = _group_partitions(layout.partitions), _group_partitions(upd_layout)
    upd_groups = len(upd_group_parts)
    for s in SUBSETS:
        per_part = samples[s] / max(1, n_parts)
        k = n_parts * _shards_per_partition(per_part, rates, shard_max_samples, shard_max_bytes)
        share = subset_articles[s] / max(1, n)
        upd_per_part = update_articles * share * rates.samples_per_article / max(1, upd_parts)
        k_upd = updates * upd_parts * _shards_per_partition(upd_per_part, rates, shard_max_samples, shard_max_bytes)
        shards[s] = k
        subs = len(group_parts) if k else 0
        subs_after = subs + (updates * upd_groups if k_upd else 0)
        entries = k * FILES_PER_SHARD + subs                       # a sizes.json in each sub-folder
        after = (k + k_upd) * FILES_PER_SHARD + subs_after
        folders.append(FolderPlan(f"{s}/", k, entries, after, subs, subs_after,
                                  k * FILES_PER_SHARD + (1 if k else 0),
                                  (k + k_upd) * FILES_PER_SHARD + (1 if k + k_upd else 0)))
        total_after += after
    n_samples = sum(samples.values())
    root_files = 10 + 8 + 2 * max(1, math.ceil(n_samples / 100_000))   # tables, card + plots, table-config tars
    files = sum(f.entries for f in folders) + root_files
    files_after = total_after + root_files + 2 * updates
    nbytes = int(n_samples * rates.bytes_per_sample * 1.03)            # + Parquet index and stats
    largest = int(min(shard_max_samples * rates.bytes_per_sample, shard_max_bytes))
    commits = math.ceil(files / HUB_FILES_PER_COMMIT)
    plan = BuildPlan(
        source=source_name or getattr(source, "name", "source"), articles=n, listing_seconds=listing_seconds,
        partition_target=target, partitions={sp: layout.partitions.get(sp, 0) for sp in SPLITS},
        subset_articles=subset_articles, subset_from_hint=from_hint, rates=asdict(rates), samples=samples,
        shards=shards, folders=folders, files_total=files, files_total_after_updates=files_after, bytes_total=nbytes,
        largest_shard_bytes=largest, commits=commits, push_hours=commits / HUB_COMMITS_PER_HOUR,
        build_hours=n * rates.article_seconds_per_worker / max(1, workers) / 3600, workers=workers,
        updates=updates, update_articles=update_articles, update_partitions=upd_parts)
    # the largest folder of the sub-folder layout: a group folder of the first build or of an update
    per_part = {s: _shards_per_partition(samples[s] / max(1, n_parts), rates, shard_max_samples, shard_max_bytes)
                for s in SUBSETS}
    worst = max(per_part.values(), default=0)
    plan.nested_max_entries_now = max((c * worst * FILES_PER_SHARD + 1 for c in group_parts.values()), default=0)
    upd_worst = max((_shards_per_partition(update_articles * subset_articles[s] / max(1, n)
                                           * rates.samples_per_article / max(1, upd_parts), rates, shard_max_samples,
                                           shard_max_bytes) for s in SUBSETS), default=0)
    plan.nested_max_entries = max([plan.nested_max_entries_now, *(c * upd_worst * FILES_PER_SHARD + 1
                                                                  for c in upd_group_parts.values())])
    plan.nested_folders = sum(f.sub_folders_after_updates for f in folders)
    plan.nested_folder_example = shard_folder("commercial", 0, 0)
    biggest, biggest_after = plan.nested_max_entries_now, plan.nested_max_entries
    # a subset folder holds its snapshot folders (sNNN/), a snapshot folder its groups (gNNN/): a few entries each
    plan.checks = [
        {"what": "entries in the largest folder", "value": biggest, "limit": FOLDER_TARGET, "ok": biggest <= FOLDER_TARGET},
        {"what": f"entries in the largest folder after {updates} updates", "value": biggest_after,
         "limit": FOLDER_TARGET, "ok": biggest_after <= FOLDER_TARGET},
        {"what": f"snapshot folders in a subset folder after {updates} updates", "value": 1 + updates,
         "limit": FOLDER_TARGET, "ok": 1 + updates <= FOLDER_TARGET},
        {"what": "files in the repository", "value": files, "limit": HUB_REPO_FILES, "ok": files < HUB_REPO_FILES},
        {"what": f"files in the repository after {updates} updates", "value": files_after, "limit": HUB_REPO_FILES,
         "ok": files_after < HUB_REPO_FILES},
        {"what": "bytes of the largest shard", "value": largest, "limit": HUB_FILE_BYTES, "ok": largest < HUB_FILE_BYTES},
    ]
    return plan


__all__ = ["DEFAULT_RATES", "BuildPlan", "FolderPlan", "Rates", "measured_rates", "plan_build"]

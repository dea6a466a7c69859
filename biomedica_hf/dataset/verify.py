"""``biomedica verify DIR``: every shard of a dataset folder against its stats, ``sizes.json`` and the index.

Fast (default; reads only tar headers and the small JSON / Parquet files):

* shard files are found by globbing ``<subset>/*.tar`` and ``<subset>/sNNN/gNNN/*.tar`` (the sub-folder layout,
  ``layout.shard_dirs``) and paired by stem with ``<stem>.parquet`` and
  ``<stem>_stats.json`` (any naming: ``000000.tar`` or ``commercial-train-s000-p00017-000.tar``);
* each shard has its stats marker and Parquet; the tar's size equals the stats' ``tar_bytes``;
  the stats' ``count`` equals the samples the index lists in it;
* the ``sizes.json`` of every directory holding tars lists each of its shards with its sample count (and may list
  the dataset's other shards, never one the dataset lacks);
* ``figures.parquet`` lists only shards that exist (paths inside the dataset), no key twice, and no
  shard on disk is missing from it (a stale or duplicated shard left by a killed rebuild);
* the tar structure: walking the headers, every member is where the index says (key, ``tar_offset``,
  ``tar_size``, ``image_offset``, ``image_size``), three members per sample, nothing after the last sample
  but the end-of-archive blocks.

The derived configs (concept selections, ``<licence>-panels``; ``layout.config_folders``), flat or in sub-folders:
every tar is whole, its stats (where it has them) record its size, and its directory's ``sizes.json`` lists it with
its samples (the ``sizes.json`` of another tool's config folder may be absent).

``--deep`` also reads every image and checks its sha256 against the index.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from biomedica_hf.io.markers import STATS
from biomedica_hf.io.ranges import read_range
from biomedica_hf.io.tars import scan_file
from biomedica_hf.layout import (
    CONCEPT_CONFIGS,
    FIGURES_INDEX,
    SIZES,
    config_folders,
    folder_files,
    panel_config,
    shard_dirs,
)
from biomedica_hf.schema import SUBSETS

MAX_LISTED = 50


@dataclass
class VerifyReport:
    """What :func:`verify_folder` checked and the problems it found (empty: the folder is consistent)."""

    folder: Path
    deep: bool
    shards: int = 0
    samples: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        mode = "deep (sha256 of every image)" if self.deep else "fast (sizes, counts, tar headers)"
        head = f"verify {self.folder}: {self.shards} shard(s), {self.samples} sample(s), {mode}"
        if self.ok:
            return f"{head}\nOK: every shard agrees with its stats, sizes.json and {FIGURES_INDEX}."
        shown = self.problems[:MAX_LISTED]
        more = len(self.problems) - len(shown)
        return "\n".join([head, f"{len(self.problems)} problem(s):", *(f"  - {p}" for p in shown),
                          *([f"  ... and {more} more"] if more else [])])


def files_by_shard(folder: Path, subsets: tuple[str, ...] = SUBSETS) -> dict[str, dict[str, Path]]:
    """``{"<subset>/<stem>": {".tar"|".parquet"|"_stats.json": path}}`` of the subset folders, paired by stem
    (``<subset>/sNNN/gNNN/<stem>`` for shards in the sub-folder layout, ``layout.shard_dirs``)."""
    out: dict[str, dict[str, Path]] = defaultdict(dict)
    for subset in subsets:
        for d in shard_dirs(folder / subset):
            rel = d.relative_to(folder).as_posix()
            for p in d.iterdir():
                name = p.name
                if name.startswith(".") or p.is_symlink() or not p.is_file():   # links are never published
                    continue
                for suffix in (STATS, ".tar", ".parquet"):
                    if name.endswith(suffix):
                        out[f"{rel}/{name[:-len(suffix)]}"][suffix] = p
                        break
    return dict(sorted(out.items()))


def verify_folder(folder: str | os.PathLike, deep: bool = False) -> VerifyReport:
    """Check every shard of ``folder`` (see the module doc); never writes."""
    import pyarrow.parquet as pq

    from biomedica_hf.dataset.loader import check_shard_path

    folder = Path(folder)
    report = VerifyReport(folder=folder, deep=deep)
    problems = report.problems
    index_path = folder / FIGURES_INDEX
    if not index_path.is_file():
        problems.append(f"no {FIGURES_INDEX}: not a finished `biomedica build` folder")
        return report
    cols = ["key", "shard", "tar_offset", "tar_size", "image_offset", "image_size", "image_ext"]
    names = pq.read_schema(index_path).names
    if deep:
        cols.append("sha256")
    missing_cols = [c for c in cols if c not in names]
    if missing_cols:
        problems.append(f"{FIGURES_INDEX} lacks column(s) {missing_cols}: rebuild it with `biomedica build`")
        return report
    rows = pq.read_table(index_path, columns=cols).to_pylist()
    by_shard: dict[str, list[dict]] = defaultdict(list)
    seen_keys: dict[str, str] = {}
    for r in rows:
        try:
            check_shard_path(r["shard"])
        except ValueError as e:
            problems.append(str(e))
            continue
        by_shard[r["shard"]].append(r)
        if r["key"] in seen_keys:
            problems.append(f"key {r['key']} is listed twice in {FIGURES_INDEX} ({seen_keys[r['key']]} and "
                            f"{r['shard']})")
        seen_keys[r["key"]] = r["shard"]
    report.samples = len(rows)
    subsets = tuple(dict.fromkeys([*SUBSETS, *(s.split("/", 1)[0] for s in by_shard)]))
    files = files_by_shard(folder, subsets)
    report.shards = sum(".tar" in parts for parts in files.values())
    on_disk = {f"{base}.tar" for base, parts in files.items() if ".tar" in parts}
    for rel in sorted(set(by_shard) - on_disk):
        problems.append(f"{rel} is listed in {FIGURES_INDEX} ({len(by_shard[rel])} samples) but missing")
    for rel in sorted(on_disk - set(by_shard)):
        problems.append(f"{rel} is not in {FIGURES_INDEX}: a stale or duplicated shard (left by an interrupted "
                        f"rebuild?); rerun `biomedica build` or remove it")
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for base, parts in files.items():
        subset = base.rsplit("/", 1)[0]          # the directory holding the shard: its sizes.json lists it
        if ".tar" not in parts:
            problems.append(f"{', '.join(p.relative_to(folder).as_posix() for p in parts.values())} without "
                            f"{base}.tar: an unfinished shard")
            continue
        tar = parts[".tar"]
        rel = f"{base}.tar"
        for suffix, what in ((STATS, "completion marker"), (".parquet", "per-shard index")):
            if suffix not in parts:
                problems.append(f"{rel} has no {what} {base}{suffix}: the build did not finish")
        stats = _json(parts.get(STATS), folder, problems)
        size = tar.stat().st_size
        if isinstance(stats, dict):
            if stats.get("tar_bytes") is not None and stats["tar_bytes"] != size:
                problems.append(f"{rel} is {size:,} bytes but its stats record {stats['tar_bytes']:,} (truncated or "
                                f"changed)")
            if stats.get("count") is not None and rel in by_shard and stats["count"] != len(by_shard[rel]):
                problems.append(f"{rel}: stats count {stats['count']} but {FIGURES_INDEX} lists "
                                f"{len(by_shard[rel])} samples")
        counts[subset][tar.name] = stats.get("count") if isinstance(stats, dict) else None
        if rel in by_shard:
            _check_tar(folder, tar, rel, by_shard[rel], deep, report)
    for subset, tars in counts.items():
        sizes_path = folder / subset / SIZES
        if not sizes_path.is_file():
            problems.append(f"{subset}/sizes.json is missing")
            continue
        listed = _json(sizes_path, folder, problems)
        if not isinstance(listed, dict):
            continue
        # every shard of the folder must be listed; it may list the dataset's other shards too (names are unique:
        # open_clip reads one folder's sizes.json for ::-joined folders), but no shard the dataset lacks
        known = {p.name for d in sorted(folder.iterdir()) if d.is_dir() for p in folder_files(d, "*.tar")}
        if not set(tars) <= set(listed) or not set(listed) <= known:
            extra, gone = sorted(set(listed) - known), sorted(set(tars) - set(listed))
            problems.append(f"{subset}/sizes.json disagrees with the folder: " + "; ".join(
                x for x in (f"lists missing {extra}" if extra else "", f"omits {gone}" if gone else "") if x))
        for name, n in tars.items():
            if name in listed and n is not None and listed[name] != n:
                problems.append(f"{subset}/sizes.json says {name} holds {listed[name]} samples, its stats {n}")
    _check_config_folders(folder, report)
    return report


def _check_config_folders(folder: Path, report: VerifyReport) -> None:
    """The derived configs' folders (``layout.config_folders``: concept selections, ``<licence>-panels``), flat or
    in sub-folders: every tar is whole (its headers walk to the end-of-archive blocks), its stats (where it has
    them) record its size, and the ``sizes.json`` of its directory lists it with its samples (3 members each)."""
    problems = report.problems
    ours = {*CONCEPT_CONFIGS, *(panel_config(s) for s in SUBSETS)}   # a folder of another tool has no sizes.json
    for config in config_folders(folder):
        for d in shard_dirs(config):
            tars = sorted(d.glob("*.tar"))
            if not tars:
                continue
            where = d.relative_to(folder).as_posix()
            listed = _json(d / SIZES, folder, problems) if (d / SIZES).is_file() else None
            if listed is None and config.name in ours:
                problems.append(f"{where}/{SIZES} is missing or unreadable")
            for tar in tars:
                rel = tar.relative_to(folder).as_posix()
                scan = scan_file(tar)
                if scan.problem:
                    problems.append(f"{rel}: {scan.problem}")
                    continue
                n = len(scan.members) // 3
                stats = _json(d / f"{tar.name.removesuffix('.tar')}{STATS}", folder, problems) \
                    if (d / f"{tar.name.removesuffix('.tar')}{STATS}").is_file() else None
                if isinstance(stats, dict) and stats.get("tar_bytes") not in (None, tar.stat().st_size):
                    problems.append(f"{rel} is {tar.stat().st_size:,} bytes but its stats record "
                                    f"{stats['tar_bytes']:,} (truncated or changed)")
                if isinstance(listed, dict) and n and listed.get(tar.name) != n:
                    problems.append(f"{where}/{SIZES} says {tar.name} holds {listed.get(tar.name)} samples, its "
                                    f"tar {n}")


def _check_tar(folder: Path, tar: Path, rel: str, rows: list[dict], deep: bool, report: VerifyReport) -> None:
    problems = report.problems
    scan = scan_file(tar)                    # io.tars: the one tar reader (headers only)
    members, error = scan.members, scan.problem
    if error:
        problems.append(f"{rel}: {error}")
    at = {m.header: i for i, m in enumerate(members)}
    rows = sorted(rows, key=lambda r: r["tar_offset"])
    for r in rows:
        i = at.get(r["tar_offset"])
        group = members[i:i + 3] if i is not None else []
        names = [m.name for m in group]
        image_name = f"{r['key']}.{r['image_ext']}"
        if (i is None or len(group) != 3 or any(n.partition(".")[0] != r["key"] for n in names)
                or image_name not in names):
            problems.append(f"{rel}: sample {r['key']} is not at byte {r['tar_offset']} as {FIGURES_INDEX} says "
                            f"(found {names or 'no member'}): the index is stale")
            continue
        span = group[-1].end - r["tar_offset"]
        image = group[names.index(image_name)]
        if span != r["tar_size"] or image.offset != r["image_offset"] or image.size != r["image_size"]:
            problems.append(f"{rel}: sample {r['key']} spans {span} bytes, image at {image.offset} "
                            f"({image.size} bytes); "
                            f"{FIGURES_INDEX} says {r['tar_size']}, {r['image_offset']} ({r['image_size']})")
            continue
        if deep:
            try:
                data = read_range(tar, image.offset, image.size)
            except OSError as e:
                problems.append(f"{rel}: sample {r['key']}: image unreadable ({e})")
                continue
            report.bytes_checked += len(data)
            if hashlib.sha256(data).hexdigest() != r["sha256"]:
                problems.append(f"{rel}: sample {r['key']}: image sha256 differs from {FIGURES_INDEX} "
                                f"(corrupted bytes at {image.offset}..{image.offset + image.size})")
    if not error and len(members) != 3 * len(rows):
        problems.append(f"{rel} holds {len(members)} members but {FIGURES_INDEX} lists {len(rows)} samples "
                        f"({3 * len(rows)} members)")


def _json(path: Path | None, folder: Path, problems: list[str]) -> object:
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        problems.append(f"{path.relative_to(folder).as_posix()} is unreadable ({e})")
        return None

"""Shard writer: WebDataset tar + per-sample Parquet + stats JSON (the completion marker).

Layout per shard folder (img2dataset style), in the Hub-scale sub-folder of its subset, snapshot and partition
group (``biomedica_hf.layout.shard_folder``; folders built before hold the same files flat in ``commercial/``)::

    commercial/s000/g000/commercial-train-s000-p00017-000.tar          <key>.jpg|png, <key>.txt, <key>.json
    commercial/s000/g000/commercial-train-s000-p00017-000.parquet      one row per sample + byte offsets
    commercial/s000/g000/commercial-train-s000-p00017-000_stats.json   written last: the shard is complete

Shard names are unique across the whole dataset (subset, split, snapshot, partition, number), so tools
that look shards up by base name (open_clip's ``sizes.json``) never confuse two of them.

Tars are byte-reproducible (fixed mtime, owner and mode; members in plan order), so a resumed
build produces exactly the shards of an uninterrupted one. Every file is written to a temporary
name in the same folder and renamed into place.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from biomedica_hf.ingest.timings import rounded
from biomedica_hf.io.atomic import atomic_open, write_parquet
from biomedica_hf.io.markers import clear_marker, is_done, write_marker
from biomedica_hf.io.ranges import copy_ranges
from biomedica_hf.io.tars import TarWriter, end_of_archive, room_json
from biomedica_hf.layout import shard_paths
from biomedica_hf.schema import SAMPLE_FIELDS, SHARD_INDEX_FIELDS, Sample, arrow_schema

SHARD_SCHEMA = arrow_schema(SAMPLE_FIELDS, SHARD_INDEX_FIELDS)


SHARD_ROW_GROUP = 1_000   # rows per row group of a shard's Parquet: readers stream it in small batches


def shard_name(subset: str, split: str, pid_tail: str, index: int, revision: int | None = None,
               folder: str | None = None) -> str:
    """``commercial/s000/g000/commercial-train-s000-p00017-000`` with ``folder`` (``layout.shard_folder``), else
    the flat ``commercial/commercial-train-s000-p00017-000`` (``-r001`` when revised by snapshot 1): the shard's
    path relative to the dataset folder, without suffix."""
    name = f"{folder or subset}/{subset}-{split}-{pid_tail}-{index:03d}"
    return name + (f"-r{revision:03d}" if revision else "")


def partition_shards_glob(subset: str, split: str, pid_tail: str) -> str:
    """The glob of the tars :func:`shard_name` gives a partition's own shards in one folder (never a revision's
    ``-rNNN``)."""
    return f"{subset}-{split}-{pid_tail}-[0-9][0-9][0-9].tar"


def shard_done(out: Path, name: str, digest: str) -> bool:
    """A shard is finished when its stats file exists and was written for the same digest."""
    tar, parquet, stats = shard_paths(out, name)
    return is_done(stats, {"digest": digest}, files=[tar, parquet])


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The members of one sample, in the order they are written."""
    ordered = {n: sample.meta.get(n) for n, _, _ in SAMPLE_FIELDS}  # same keys, same order, every sample
    meta = room_json(ordered)      # with room for the labels the concept stage writes in place later
    return [
        (f"{sample.key}.{sample.image.ext}", sample.image.data),
        (f"{sample.key}.txt", sample.caption.encode()),
        (f"{sample.key}.json", meta),
    ]


def write_shard(out: Path, name: str, samples: Iterable[Sample], digest: str, extra_stats: dict | None = None,
                timings: dict[str, float] | None = None) -> dict:
    """Write one complete shard ``name`` (``subset/stem``) atomically and return its stats.

    With ``timings`` (the seconds per stage of the shard's samples), the stats get ``timings``: those, the
    seconds of this write (``shard_write``) and ``elapsed`` (see :mod:`biomedica_hf.ingest.timings`)."""
    t0 = time.perf_counter()
    tar_path, parquet_path, stats_path = shard_paths(out, name)
    rel = f"{name}.tar"
    subset = name.split("/")[0]
    rows: list[dict] = []
    formats: Counter[str] = Counter()
    image_bytes = caption_chars = 0
    clear_marker(stats_path)
    with atomic_open(tar_path) as fh:
        tar = TarWriter(fh)
        for sample in samples:
            start = tar.offset
            image_offset = None
            for member, data in sample_members(sample):
                data_start = tar.add(member, data)
                if image_offset is None:
                    image_offset = data_start
            row = {n: sample.meta.get(n) for n, _, _ in SAMPLE_FIELDS}
            row.update(shard=rel, tar_offset=start, tar_size=tar.offset - start,
                       image_offset=image_offset, image_size=len(sample.image.data))
            rows.append(row)
            formats[sample.image.ext] += 1
            image_bytes += len(sample.image.data)
            caption_chars += len(sample.caption)
        tar.close()
    write_parquet(parquet_path, rows, SHARD_SCHEMA, SHARD_ROW_GROUP)
    stats = {
        "shard": rel,
        "subset": subset,
        "count": len(rows),
        "tar_bytes": tar_path.stat().st_size,
        "image_bytes": image_bytes,
        "caption_chars": caption_chars,
        "image_ext": dict(sorted(formats.items())),
        "digest": digest,
        **(extra_stats or {}),
    }
    if timings is not None:
        stats["timings"] = rounded({**timings, "shard_write": time.perf_counter() - t0})
    write_marker(stats_path, stats)
    return stats


def revise_shard(out: Path, old: str, new: str, drop_keys: set[str], digest: str,
                 extra_stats: dict | None = None) -> dict:
    """Copy shard ``old`` to ``new`` without the samples in ``drop_keys`` (raw byte ranges: the kept
    samples' members are bit-identical), with its Parquet and stats. ``old``'s files are left in place: the
    caller retires them once the new ones exist (an update killed here still has every old file).

    Used by updates (retracted / withdrawn / superseded articles): untouched shards are never rewritten,
    and a revised shard gets a new name so that mirrors and the Hub see a new file. The old shard's
    ``timings`` are kept for the kept samples' share, with the seconds of this copy as ``shard_write``.
    """
    t0 = time.perf_counter()
    old_tar, old_parquet, old_stats = shard_paths(out, old)
    tar_path, parquet_path, stats_path = shard_paths(out, new)
    try:
        old_timings = json.loads(old_stats.read_text()).get("timings")
    except (OSError, ValueError):
        old_timings = None
    all_rows = pq.read_table(old_parquet).to_pylist()
    rows = [r for r in all_rows if r["key"] not in drop_keys]
    rows.sort(key=lambda r: r["tar_offset"])
    rel = f"{new}.tar"
    formats: Counter[str] = Counter()
    image_bytes = caption_chars = 0
    clear_marker(stats_path)
    with atomic_open(tar_path) as dst:
        end = copy_ranges(old_tar, [r["tar_offset"] for r in rows], [r["tar_size"] for r in rows], dst)
        dst.write(end_of_archive(end))
    start = 0
    for r in rows:                                        # the kept samples, back to back from byte 0
        r["image_offset"] += start - r["tar_offset"]
        r["tar_offset"], r["shard"] = start, rel
        start += r["tar_size"]
        formats[r["image_ext"]] += 1
        image_bytes += r["image_size"]
        caption_chars += len(r["caption"] or "")
    write_parquet(parquet_path, rows, SHARD_SCHEMA, SHARD_ROW_GROUP)
    stats = {"shard": rel, "subset": new.split("/")[0], "count": len(rows), "tar_bytes": tar_path.stat().st_size,
             "image_bytes": image_bytes, "caption_chars": caption_chars, "image_ext": dict(sorted(formats.items())),
             "digest": digest, "revised_from": f"{old}.tar", **(extra_stats or {})}
    if old_timings is not None:
        share = len(rows) / len(all_rows) if all_rows else 0.0
        kept = {k: v * share for k, v in old_timings.items() if k not in ("shard_write", "elapsed")}
        stats["timings"] = rounded({**kept, "shard_write": time.perf_counter() - t0})
    write_marker(stats_path, stats)
    return stats

"""Write each sample's concept labels into the ``json`` member of its licence shard, in place.

The licence configs (``commercial``, ``noncommercial``, ``other``) are the shards the build wrote before any
labelling. The build leaves room in every sample's ``json`` member (``io.tars.JSON_ROOM`` bytes of trailing
spaces, up to whole 512-byte blocks), so labelling rewrites only those bytes: the member keeps its size, every
byte offset (``figures.parquet``, search indexes, the concept subsets' sources) stays valid, and the image and
caption members are not touched. ``datasets.load_dataset(DIR, "commercial")`` rows then carry ``panel_type``,
``concepts`` and ``local_concepts`` in their ``json``, as the concept configs' rows do (:data:`JSON_LABELS`).

One shard at a time (its per-shard Parquet, with the label columns ``propagate`` wrote): memory is one shard's
rows. Only the caption and json members are read (from ``image_offset`` + ``image_size``, the member after the
image), never the image. Resumable: a shard's marker (``concepts/stamped/<subset>/<stem>_done.json``) records the
digest of its build (its ``_stats.json`` digest) and labels; a shard the build rewrote, or whose labels changed,
is stamped again. A marker is cleared before its shard is touched, and a sample already holding its labels is
not rewritten. A ``json`` member that no longer parses (a write cut by a crash) is rebuilt from the Parquet row.

A sample whose labels do not fit its member (a shard built before the room was reserved, or an extreme number of
concepts) is not changed, and nor is the rest of its shard, so that a shard's rows have one set of fields: the
shard is reported (``no_room``) with its sample count, and its labels stay in ``figures.parquet``, the
``load_biomedica`` rows and the concept configs. Do not stream a folder while it is being labelled: members
change under a reader.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from biomedica_hf.io.markers import DONE, clear_marker, is_done, marker_path, read_marker, write_marker
from biomedica_hf.io.ranges import LocalFile
from biomedica_hf.io.tars import compact_json, member_spans, refill_json
from biomedica_hf.layout import shard_paths
from biomedica_hf.schema import SAMPLE_FIELDS

from .layout import concepts_dir, shard_index_files, shard_stem
from .subsets import JSON_LABELS

log = logging.getLogger(__name__)

STAMPED_DIR = "stamped"
_BLOCK = 512


def stamp_marker(out: Path, shard: str) -> Path:
    return marker_path(concepts_dir(out) / STAMPED_DIR / shard_stem(shard), DONE)


def _labels(row: dict[str, Any]) -> dict[str, Any]:
    """The row's :data:`JSON_LABELS` (an unlabelled sample: null panel type, empty concept lists)."""
    return {c: row.get(c) if c == "panel_type" else list(row.get(c) or []) for c in JSON_LABELS}


def _digest(build_digest: Any, rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256(f"{build_digest}\n".encode())
    for r in rows:
        h.update(f"{r['key']}\t{r['tar_offset']}\t{r['tar_size']}\t".encode())
        h.update(compact_json(_labels(r)) + b"\n")
    return h.hexdigest()


def _tail_start(row: dict[str, Any]) -> int:
    """Where the members after the image begin (the image is the sample's first member): the end of its padded
    data, or the sample's start when the row has no image location."""
    if row.get("image_offset") is None or row.get("image_size") is None:
        return int(row["tar_offset"])
    return int(row["image_offset"]) + -(-int(row["image_size"]) // _BLOCK) * _BLOCK


def _planned_writes(f: LocalFile, rows: list[dict[str, Any]]) -> tuple[list[tuple[int, bytes]], int]:
    """``([(file position, new json bytes)], samples without room)`` for one shard."""
    writes, no_room = [], 0
    for r in rows:
        start, end = _tail_start(r), int(r["tar_offset"]) + int(r["tar_size"])
        tail = f.read(start, end - start)
        spans = [s for s in member_spans(tail) if s[0].endswith(".json")]
        if len(spans) != 1:
            raise ValueError(f"{f.url}: sample {r['key']} at {r['tar_offset']} has {len(spans)} json members")
        _, at, size = spans[0]
        old = tail[at:at + size]
        try:
            meta = json.loads(old)
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError:        # cut by a crash mid-write: the row holds the same fields
            meta = {n: r.get(n) for n, _, _ in SAMPLE_FIELDS}
        meta.update(_labels(r))
        new = refill_json(meta, size)
        if new is None:
            no_room += 1
        elif new != old:
            writes.append((start + at, new))
    return writes, no_room


def stamp_shard(out: Path, table_path: Path) -> dict[str, Any]:
    """Stamp one shard (see the module doc); returns ``{"shard", "samples", "written", "state"}`` with state
    ``stamped``, ``kept`` (already done for these labels), ``no_room``, ``unlabelled`` (no label columns) or
    ``failed`` (the shard is missing, cut short or not the tar its index describes; ``error`` says how; nothing
    was written to it)."""
    table = pq.read_table(table_path)
    if "concepts" not in table.column_names or not table.num_rows:
        return {"shard": str(table_path), "samples": table.num_rows, "written": 0, "state": "unlabelled"}
    rows = table.sort_by("tar_offset").to_pylist()
    shard = rows[0]["shard"]
    tar = Path(out) / shard
    build = read_marker(shard_paths(Path(out), shard_stem(shard))[2]) or {}
    digest = _digest(build.get("digest"), rows)
    marker = stamp_marker(Path(out), shard)
    info = {"shard": shard, "samples": len(rows), "written": 0}
    if is_done(marker, {"digest": digest}, files=[tar]):
        return {**info, "written": (read_marker(marker) or {}).get("written", 0), "state": "kept"}
    clear_marker(marker)
    try:
        with LocalFile(tar) as f:
            writes, no_room = _planned_writes(f, rows)
    except (OSError, ValueError, tarfile.TarError) as e:   # a missing, cut or malformed shard: reported, not fatal
        log.warning("%s: not labelled: %s", shard, e)
        return {**info, "error": f"{type(e).__name__}: {e}", "state": "failed"}
    if no_room:
        log.warning("%s: %d of %d samples have no room for their labels in their json member (built before the "
                    "room was reserved?); the shard is left as it is, its labels are in figures.parquet",
                    shard, no_room, len(rows))
        return {**info, "no_room": no_room, "state": "no_room"}
    if writes:
        fd = os.open(tar, os.O_WRONLY)
        try:
            for pos, data in writes:
                if os.pwrite(fd, data, pos) != len(data):
                    raise OSError(f"{tar}: short write at {pos}")
            os.fsync(fd)
        finally:
            os.close(fd)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_marker(marker, {"shard": shard, "digest": digest, "samples": len(rows), "written": len(writes)})
    return {**info, "written": len(writes), "state": "stamped"}


def _stamp_task(task: tuple[str, str]) -> dict[str, Any]:
    return stamp_shard(Path(task[0]), Path(task[1]))


def stamp_labels(dataset_dir: str | Path, progress: bool = False, workers: int = 1, executor: str = "local",
                 address: str | None = None) -> dict[str, Any]:
    """Stamp every licence shard of a labelled folder, ``workers`` shards at a time (``executor``: ``local``
    processes, or ``ray`` tasks on the cluster at ``address``: shards are independent); returns counts per state,
    samples rewritten, and the shards left without room or failed, with the reason (also logged): one bad shard
    does not stop the others."""
    from tqdm.auto import tqdm

    from biomedica_hf.executors import make_executor

    out = Path(dataset_dir)
    report: dict[str, Any] = {"shards": {}, "samples_written": 0, "no_room": [], "failed": []}
    tasks = [(str(out), str(p)) for p in shard_index_files(out)]
    with make_executor(executor, workers=max(1, workers), address=address) as pool:   # closed: no leaked workers
        results = pool.map(_stamp_task, tasks)
        for r in tqdm(results, total=len(tasks), desc="labels into shards", unit="shard", disable=not progress):
            report["shards"][r["state"]] = report["shards"].get(r["state"], 0) + 1
            report["samples_written"] += r["written"] if r["state"] == "stamped" else 0
            if r["state"] == "no_room":
                report["no_room"].append({"shard": r["shard"], "samples": r["samples"],
                                          "without_room": r["no_room"]})
            if r["state"] == "failed":
                report["failed"].append({"shard": r["shard"], "samples": r["samples"], "error": r["error"]})
    log.info("labels into shards: %s, %d json members rewritten", report["shards"], report["samples_written"])
    return report

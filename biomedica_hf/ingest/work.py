"""The resume state of a build folder, by path: ``OUT/_work`` (:class:`Work`: snapshots, partition manifests,
staging, hash buckets, table parts, done markers) and the checks of what a rerun finds there (a partition's done
marker and hash files, the parts of the tables).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from biomedica_hf.ingest.partition import Layout, PartitionId
from biomedica_hf.ingest.staging import PartitionStage
from biomedica_hf.ingest.state import StateError, matches, read_sealed
from biomedica_hf.io.markers import read_marker
from biomedica_hf.layout import WORK_DIR
from biomedica_hf.neardup.hashing import recorded_hash_name


class Work:
    """The resume state under ``OUT/_work``."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = self.out / WORK_DIR

    def snap(self, k: int) -> Path:
        return self.root / "snapshots" / f"s{k:03d}"

    def manifest(self, pid: PartitionId) -> Path:
        return self.snap(pid.snapshot) / "partitions" / f"{pid.name}.parquet"

    def stage(self, pid: PartitionId) -> PartitionStage:
        return PartitionStage(self.root / "stage" / pid.name)

    def slice_stage(self, pid: PartitionId, rows: tuple[int, int]) -> PartitionStage:
        """The staging of manifest rows ``[start, end)`` of a partition staged in slices (``<pid>~<start>-<end>``)."""
        return PartitionStage(self.root / "stage" / f"{pid.name}~{rows[0]}-{rows[1]}")

    def slice_stages(self) -> dict[str, dict[tuple[int, int], PartitionStage]]:
        """The slice stagings that exist (one listing of ``stage/``): partition name -> rows -> staging."""
        found: dict[str, dict[tuple[int, int], PartitionStage]] = {}
        folder = self.root / "stage"
        for p in folder.iterdir() if folder.is_dir() else []:
            name, _, rows = p.name.rpartition("~")
            start, _, end = rows.partition("-")
            if name and start.isdigit() and end.isdigit() and p.is_dir():
                found.setdefault(name, {})[(int(start), int(end))] = PartitionStage(p)
        return found

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


def read_done(work: Work, pid_name: str, digest: str | None = None, check_parts: bool = True, *,
              phash: str) -> dict | None:
    """A partition's done marker when it checks: sealed, for the manifest ``digest`` (when given), written with
    the perceptual hash definition ``phash`` (the snapshot's: ``BuildOptions.media.phash``), with its table parts
    as they were written (``check_parts``: until they are merged into the tables)."""
    info = read_sealed(work.done(pid_name))
    if info is None or (digest is not None and info.get("manifest") != digest):
        return None
    if recorded_hash_name(info) != phash:    # its shards and hash files hold another hash definition
        return None
    if check_parts and not all(matches(work.part(kind, pid_name), seal)
                               for kind, seal in (info.get("parts") or {}).items()):
        return None
    return info


def done_record(p: Path) -> dict | None:
    """A done marker's record: sealed, or (a folder built before markers were sealed) plain JSON without a seal."""
    info = read_sealed(p)
    if info is None:
        legacy = read_marker(p)
        info = legacy if legacy is not None and "_seal" not in legacy else None
    return info


def hashes_match(work: Work, pid: PartitionId, info: dict, *, phash: str) -> bool:
    """The partition's hash files are the ones its staging wrote (each file's length and sha256), of the
    snapshot's perceptual hash definition ``phash`` (none recorded = the legacy one; another one: the partition is
    redone)."""
    want = info.get("hashes")
    if want is None or recorded_hash_name(info) != phash:
        return False
    have = {p.relative_to(work.hashes(pid.snapshot)).as_posix(): p for p in work.hash_files(pid.snapshot, pid.name)}
    return set(have) == set(want) and all(matches(have[n], want[n]) for n in want)


def read_manifest_count(work: Work, pid: PartitionId) -> int:
    p = work.manifest(pid)
    return pq.ParquetFile(p).metadata.num_rows if p.exists() else 0


def n_finished(*stages: PartitionStage) -> int:
    """Articles finished in a partition's staging (and its slices' stagings, when given: each counted once)."""
    done: set[str] = set()
    for stage in stages:
        try:
            done |= stage.finished()[0]
        except StateError:
            pass
    return len(done)


def all_parts(work: Work, kind: str) -> list[Path]:
    d = work.root / "parts" / kind
    return sorted(d.glob("*.parquet")) if d.is_dir() else []


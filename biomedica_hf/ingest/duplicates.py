"""The build's duplicate passes over the whole folder: near-duplicate images (perceptual hashes of this snapshot
and of every published sample), near-duplicate captions (MinHash, flagged only), the hashes of the published
samples spilled into hash buckets for an update, and the published ``duplicates.parquet`` /
``near_duplicates.parquet``. The two folder-wide passes run as task objects in a worker (bounded memory there,
never in the driver).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.ingest.dedup import PUBLISHED, write_hash_rows
from biomedica_hf.ingest.work import Work
from biomedica_hf.io.atomic import atomic_path, write_parquet
from biomedica_hf.layout import DUP_TABLES, DUPLICATES, FIGURES_INDEX


NEAR_SCHEMA = pa.schema([("key", pa.string()), ("near_dup_of", pa.string()), ("distance", pa.int32())])
CAPTION_SCHEMA = pa.schema([("key", pa.string()), ("caption_dup_of", pa.string())])


def near_duplicates_pass(work: Work, k: int, folders: list[Path], decisions: Path, near: Path, *,
                         drop: bool) -> int:
    """Group near-duplicate images over every hash file (this snapshot + the published samples), with the
    bounded-memory grouping of :mod:`biomedica_hf.neardup`; writes ``near.parquet`` (key -> kept key).

    Samples dropped as exact duplicates are left out. With ``drop`` (``--near-dedup``) the new (not yet
    published) members are dropped like exact duplicates: the kept sample gets their PMCIDs in ``also_in``."""
    from biomedica_hf.ingest.dedup import add_decisions, hash_files
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


CAPTION_KEYS = "captionkeys"    # _work/captionkeys/<shard path>.npz: a shard's caption band keys (kept for updates)


def caption_keys_path(work: Work, table: Path) -> Path:
    """Where the caption band keys of the shard table ``table`` (``<out>/<subset>/.../<stem>.parquet``) are kept."""
    return work.root / CAPTION_KEYS / Path(table).relative_to(work.out).with_suffix(".npz")


def write_caption_keys(work: Work, table: Path) -> None:
    """The caption band keys of one shard table, computed where the shard is written (the partitions' parallel
    write phase) so that the caption pass only groups them (:func:`biomedica_hf.neardup.captions.write_part_keys`)."""
    from biomedica_hf.neardup.captions import write_part_keys

    write_part_keys(table, caption_keys_path(work, table))


def caption_duplicates_pass(work: Work, out: Path) -> int:
    """``caption_duplicates.parquet``: MinHash near-duplicate captions over every shard's Parquet (flagged,
    never dropped). A shard's band keys come from its keys file when it matches the shard (written with the shard,
    or by an earlier pass), else they are computed and kept for the next update; keys files of shards that no
    longer exist are removed."""
    from biomedica_hf.layout import shard_tables
    from biomedica_hf.neardup import caption_near_duplicates
    from biomedica_hf.neardup.captions import read_part_keys, write_part_keys

    tables = shard_tables(out)

    def keys_of(table: Path):
        found = read_part_keys(table, caption_keys_path(work, table))
        return found if found is not None else write_part_keys(table, caption_keys_path(work, table))  # kept

    rows = [{"key": key, "caption_dup_of": kept}
            for key, kept in caption_near_duplicates(tables, work.root / "captiondup", keys_of=keys_of)]
    write_parquet(out / DUP_TABLES["caption_dup_of"], rows, CAPTION_SCHEMA)
    shutil.rmtree(work.root / "captiondup", ignore_errors=True)
    current = {caption_keys_path(work, t) for t in tables}
    for f in (work.root / CAPTION_KEYS).rglob("*.npz") if (work.root / CAPTION_KEYS).is_dir() else []:
        if f not in current:
            f.unlink(missing_ok=True)
    return len(rows)


def spill_published(work: Work, k: int, n_hash: int) -> Path:
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


def write_duplicates(work: Work, out: Path) -> None:
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
    write_parquet(out / DUPLICATES, rows, schema)


def write_near_duplicates(work: Work, k: int, out: Path) -> None:
    """``near_duplicates.parquet``: the snapshot's near-duplicate map. It covers every sample of the folder:
    the pass saw this snapshot's samples and every published one (less the removed articles), and left out
    the samples dropped as duplicates."""
    near = work.snap(k) / "near.parquet"
    if near.exists():
        with atomic_path(out / DUP_TABLES["near_dup_of"]) as tmp:
            shutil.copyfile(near, tmp)



@dataclass(frozen=True)
class NearTask:
    """:func:`near_duplicates_pass` as a task for an executor (its memory bounded in a worker)."""

    out: str
    snapshot: int
    folders: tuple[str, ...]
    decisions: str
    near: str
    drop: bool
    key: str = "near"

    def run(self) -> int:
        return near_duplicates_pass(Work(Path(self.out)), self.snapshot, [Path(f) for f in self.folders],
                                    Path(self.decisions), Path(self.near), drop=self.drop)


@dataclass(frozen=True)
class CaptionTask:
    """:func:`caption_duplicates_pass` as a task for an executor."""

    out: str
    key: str = "captions"

    def run(self) -> int:
        return caption_duplicates_pass(Work(Path(self.out)), Path(self.out))

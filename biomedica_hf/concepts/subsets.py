"""Concept subsets: selections of the figures index, materialised as WebDataset shards + card configs.

* ``concept-filtered``: every labelled sample except those carrying an excluded global (or local)
  concept. By default ``Plots and Charts`` is excluded, BIOMEDICA's over-represented concept (~51%
  of pairs); the paper's best training set filtered over-represented concepts. Samples whose cluster
  has no global concept are kept unless ``keep_unlabelled=False``.
* ``concept-balanced``: at most ``cap`` samples per concept, chosen deterministically. Concepts are
  filled rarest first; each takes its samples in seeded priority order (``layout.key_priority``),
  counting samples already taken through a co-occurring concept, so a rare concept keeps all its
  samples and a frequent one is cut to ``cap``. A concept can exceed ``cap`` only through samples
  taken for a rarer co-occurring concept. ``cap`` defaults to the median concept size.

Each selection is written as ``concepts/<name>.parquet`` (key, subset, source shard and offsets,
labels, and ``out_shard`` / ``out_offset`` in the materialised copy) and materialised as
``<name>/sNNN/gNNN/<name>-<subset>-<split>-NNNNNN.tar`` (the ``sNNN/gNNN`` group of the source shards the copy
was cut from, ``layout.shard_group``, so no folder outgrows its source's; flat for sources of the flat layout):
``tar[tar_offset : tar_offset + tar_size]`` of a source shard is a self-contained run of the sample's three tar members: the image and caption members are copied byte for byte (no
re-encoding) and the ``json`` member gains the sample's labels (:data:`JSON_LABELS`: ``panel_type``, ``concepts``,
``local_concepts``), so that ``datasets.load_dataset(repo, "concept-filtered")`` rows show the concepts they were
selected by (the card declares these fields, typed from ``figures.parquet``). ``out_offset`` is the sample's
offset in the written copy. Shards never mix licence subsets (the file name says which: ``concept-filtered-commercial-train-000000.tar``),
so ``<name>/**/<name>-commercial-*.tar`` is the commercially usable part, and the card has one config per selection
and licence subset (``commercial-concept-filtered``, ``noncommercial-concept-filtered``, ...: a config never
mixes licences; the card's concept section names each one's licences). ``datasets`` infers one builder per
folder (WebDataset here), which is why a config's data files must be tars and not the Parquet list.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.concepts.layout import concepts_dir, figures_index_path, key_priority
from biomedica_hf.concepts.vocab import PLOTS_AND_CHARTS
from biomedica_hf.io.atomic import atomic_open, atomic_write_json, write_table
from biomedica_hf.io.markers import STATS, clear_marker, is_done, marker_path, piece_stem, read_marker, write_marker
from biomedica_hf.io.ranges import ShardFiles
from biomedica_hf.io.tars import END_OF_ARCHIVE, compact_json, member_bytes, range_members
from biomedica_hf.layout import (
    CONCEPT_BALANCED,
    CONCEPT_FILTERED,
    SIZES,
    data_files_glob,
    folder_files,
    in_group,
    shard_dirs,
    shard_group,
    write_dataset_sizes,
)
from biomedica_hf.schema import SUBSETS

log = logging.getLogger(__name__)
FILTERED = CONCEPT_FILTERED
BALANCED = CONCEPT_BALANCED
DEFAULT_EXCLUDE = (PLOTS_AND_CHARTS,)
SHARD_SAMPLES = 10_000
SHARD_BYTES = 1_000_000_000
SELECTION_COLUMNS = ["key", "subset", "shard", "tar_offset", "tar_size", "image_offset", "image_size",
                     "cluster", "panel_type", "concepts", "local_concepts", "split"]
SPLITS = ("train", "validation", "test")
JSON_LABELS = ("panel_type", "concepts", "local_concepts")   # added to each sample's json member in the copies


# ------------------------------------------------------------------------------------ selections (pure)
def _flat(lists: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(row index, value code, value names) of every element of a list<string> column (vectorised:
    dictionary-encoded, no Python object per element)."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    rows = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(pc.list_flatten(arr))
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return rows, codes, encoded.dictionary.to_pylist()


def has_any(lists: pa.Array | pa.ChunkedArray, values: Iterable[str]) -> np.ndarray:
    """Per row: does the list contain any of ``values``."""
    rows, codes, names = _flat(lists)
    out = np.zeros(len(lists), bool)
    wanted = [i for i, name in enumerate(names) if name in set(values)]
    if wanted:
        out[rows[np.isin(codes, wanted)]] = True
    return out


def filtered_mask(concepts: pa.Array | pa.ChunkedArray, exclude: Iterable[str] = DEFAULT_EXCLUDE,
                  local_concepts: pa.Array | pa.ChunkedArray | None = None, exclude_local: Iterable[str] = (),
                  keep_unlabelled: bool = True) -> np.ndarray:
    """Rows kept by ``concept-filtered``: no excluded global / local concept."""
    keep = ~has_any(concepts, exclude)
    if local_concepts is not None and exclude_local:
        keep &= ~has_any(local_concepts, exclude_local)
    if not keep_unlabelled:
        keep &= pc.list_value_length(concepts).to_numpy(zero_copy_only=False) > 0
    return keep


def default_cap(concepts: pa.Array | pa.ChunkedArray) -> int:
    """The median number of samples per concept (concepts present at least once)."""
    _, codes, _ = _flat(concepts)
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    return int(np.median(counts)) if len(counts) else 0


def balanced_mask(concepts: pa.Array | pa.ChunkedArray, keys: Sequence[str], cap: int | None = None, seed: int = 0,
                  keep_unlabelled: bool = False) -> np.ndarray:
    """Rows kept by ``concept-balanced`` (module doc): rarest concept first, seeded order, ``cap`` each.

    With ``keep_unlabelled`` the samples without a concept form one more group, capped the same way.
    """
    n = len(keys)
    rows, codes, names = _flat(concepts)
    if keep_unlabelled:
        empty = np.flatnonzero(pc.list_value_length(concepts).to_numpy(zero_copy_only=False) == 0)
        rows = np.concatenate([rows, empty])
        codes = np.concatenate([codes, np.full(len(empty), len(names), np.int64)])
        names = names + ["\0unlabelled"]
    cap = default_cap(concepts) if cap is None else int(cap)
    prio = key_priority(keys, seed)
    selected = np.zeros(n, bool)
    counts = np.bincount(codes, minlength=len(names))
    order = sorted((c for c in range(len(names)) if counts[c]), key=lambda c: (counts[c], names[c]))
    by_code = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[by_code], np.arange(len(names) + 1))
    for code in order:                                   # rarest first, ties by name
        members = rows[by_code[starts[code]:starts[code + 1]]]
        room = cap - int(selected[members].sum())
        if room <= 0:
            continue
        candidates = members[~selected[members]]
        candidates = candidates[np.lexsort((candidates, prio[candidates]))][:room]
        selected[candidates] = True
    return selected


# ------------------------------------------------------------------------------------ files
def read_index(out: Path) -> pa.Table:
    """The columns of ``figures.parquet`` a selection needs; fails clearly before labelling."""
    path = figures_index_path(out)
    names = pq.read_schema(path).names
    if "concepts" not in names:
        raise ValueError(f"{path} has no `concepts` column: run `biomedica label {out} --annotations ...` first")
    return pq.read_table(path, columns=[c for c in SELECTION_COLUMNS if c in names])


def plan_shards(selection: pa.Table, shard_samples: int = SHARD_SAMPLES, shard_bytes: int = SHARD_BYTES,
                prefix: str = "") -> pa.Table:
    """``selection`` with ``out_shard`` / ``out_offset``: per licence subset (and split, when the index has
    splits), runs of at most ``shard_samples`` samples / ``shard_bytes`` bytes, in index order, a run never crossing
    the ``sNNN/gNNN`` group of its source shards (``layout.shard_group``). ``out_shard`` is the copy's path in the
    selection's folder: ``s000/g000/<prefix><subset>-<split>-NNNNNN.tar`` beside the group of the shards it was cut
    from (flat ``<prefix><subset>-<split>-NNNNNN.tar`` for sources of the flat layout), so a derived folder holds no
    more entries per directory than its source; ``prefix`` = the selection's name, numbers count on across groups:
    names are unique across the dataset."""
    subsets = selection["subset"].to_pylist()
    splits = selection["split"].to_pylist() if "split" in selection.column_names else [None] * len(subsets)
    groups_of = ([shard_group(s) for s in selection["shard"].to_pylist()] if "shard" in selection.column_names
                 else [""] * len(subsets))
    sizes = selection["tar_size"].to_numpy()
    out_shard: list[str] = [""] * len(subsets)
    out_offset = np.zeros(len(subsets), np.int64)
    groups = sorted(set(zip(subsets, splits)), key=lambda g: (
        SUBSETS.index(g[0]) if g[0] in SUBSETS else len(SUBSETS), g[0],
        SPLITS.index(g[1]) if g[1] in SPLITS else len(SPLITS), g[1] or ""))
    for subset, split in groups:
        index, count, offset, group = 0, 0, 0, None
        stem = f"{prefix}{subset}-{split}" if split else f"{prefix}{subset}"
        for i in (i for i, g in enumerate(zip(subsets, splits)) if g == (subset, split)):
            if count and (count >= shard_samples or offset + sizes[i] > shard_bytes or groups_of[i] != group):
                index, count, offset = index + 1, 0, 0
            group = groups_of[i]
            out_shard[i] = in_group(group, f"{stem}-{index:06d}.tar")
            out_offset[i] = offset
            count += 1
            offset += int(sizes[i])
    return selection.append_column("out_shard", pa.array(out_shard, pa.string())) \
                    .append_column("out_offset", pa.array(out_offset, pa.int64()))


def _digest(rows: list[dict]) -> str:
    """What a written copy depends on: the samples, where they come from and their labels (a relabelled sample is
    written again)."""
    h = hashlib.sha256()
    for r in rows:
        labels = json.dumps([r.get(c) for c in JSON_LABELS], ensure_ascii=False, separators=(",", ":"))
        h.update(f"{r['key']}\t{r['shard']}\t{r['tar_offset']}\t{r['tar_size']}\t{labels}\n".encode())
    return h.hexdigest()


def labelled_sample(data: bytes, labels: dict[str, Any], where: str = "") -> bytes:
    """A sample's tar range with ``labels`` added to its ``json`` member; the other members byte for byte."""
    if len(data) % tarfile.BLOCKSIZE:
        raise OSError(f"{where}: bad sample range of {len(data)} bytes (not whole 512-byte tar blocks)")
    out = []
    for name, payload in range_members(data):              # io.tars: the one tar reader
        content = bytes(payload)
        if name.endswith(".json"):
            meta = json.loads(content)
            meta.update(labels)
            content = compact_json(meta)
        out.append(member_bytes(name, content))
    return b"".join(out)


def write_subset_tar(root: Path, rows: list[dict], dest: Path) -> tuple[int, list[int]]:
    """Write ``dest`` (atomic): each row's sample from its source tar with its labels in the ``json`` member
    (:func:`labelled_sample`), then the end-of-archive blocks; returns the bytes written and each sample's offset."""
    offsets = []
    files = ShardFiles(root)
    try:
        with atomic_open(dest) as fh:
            pos = 0
            for r in rows:
                data = files.read(r["shard"], int(r["tar_offset"]), int(r["tar_size"]))
                sample = labelled_sample(data, {c: r.get(c) for c in JSON_LABELS},
                                         f"{r['shard']} ({r['key']} at {r['tar_offset']})")
                fh.write(sample)
                offsets.append(pos)
                pos += len(sample)
            fh.write(END_OF_ARCHIVE)
    finally:
        files.close()
    return pos + len(END_OF_ARCHIVE), offsets


def materialise(dataset_dir: str | Path, name: str, selection: pa.Table) -> dict[str, Any]:
    """Copy the planned selection (with ``out_shard``) into ``DIR/<name>/``; resumable: a tar whose ``_stats.json``
    marker's digest matches its planned samples (and labels) is kept as is. Returns the summary and the selection
    with ``out_offset`` set to each sample's offset in its copy."""
    root = Path(dataset_dir)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    order = pc.sort_indices(selection, [("out_shard", "ascending"), ("out_offset", "ascending")]).to_numpy()
    columns = ["key", "shard", "tar_offset", "tar_size", "out_shard", *(c for c in JSON_LABELS if c in
                                                                       selection.column_names)]
    ordered = selection.select(columns).take(pa.array(order))
    out_offsets = np.zeros(selection.num_rows, np.int64)
    names = ordered["out_shard"].to_numpy(zero_copy_only=False)
    bounds = np.flatnonzero(np.r_[True, names[1:] != names[:-1], True]) if len(names) else np.array([0])
    planned = set()
    sizes, written, kept = {}, 0, 0
    for start, stop in itertools.pairwise(bounds):           # one output shard at a time
        rows = ordered.slice(int(start), int(stop - start)).to_pylist()
        out_shard = rows[0]["out_shard"]
        planned.add(out_shard)
        tar = folder / out_shard
        tar.parent.mkdir(parents=True, exist_ok=True)
        stats_path = marker_path(folder / out_shard.removesuffix(".tar"), STATS)
        digest = _digest(rows)
        done = is_done(stats_path, {"digest": digest}, files=[tar])
        offsets = (read_marker(stats_path) or {}).get("offsets") if done else None
        if done and offsets is not None and len(offsets) == len(rows):
            kept += 1
        else:
            clear_marker(stats_path)
            size, offsets = write_subset_tar(root, rows, tar)
            write_marker(stats_path, {"shard": f"{name}/{out_shard}", "count": len(rows), "tar_bytes": size,
                                      "digest": digest, "offsets": offsets})
            written += 1
        out_offsets[order[int(start):int(stop)]] = offsets
        sizes[out_shard] = len(rows)
    remove_stale_copies(folder, planned)
    write_dataset_sizes(root)   # every folder's sizes.json lists every shard of the dataset (open_clip joins)
    stats = {"name": name, "samples": selection.num_rows, "shards": len(planned), "written": written, "kept": kept}
    i = selection.column_names.index("out_offset")
    return stats, selection.set_column(i, "out_offset", pa.array(out_offsets, pa.int64()))


def remove_stale_copies(folder: Path, planned: set[str]) -> list[str]:
    """Delete the tars (and their stats markers, first) of a selection's folder that the plan no longer names
    (``planned``: paths relative to ``folder``), flat or in sub-folders: a re-run over a folder written before
    (flat, or with other groups) leaves no stale copy; emptied sub-folders and their ``sizes.json`` go too.
    Returns the removed tars, relative to ``folder``."""
    removed = []
    for stale in folder_files(folder, f"*{STATS}") + folder_files(folder, "*.tar"):   # markers first
        rel = stale.relative_to(folder).as_posix()
        tar_rel = (Path(rel).parent / f"{piece_stem(rel, STATS)}.tar").as_posix() if rel.endswith(STATS) else rel
        if tar_rel not in planned:
            stale.unlink()
            if rel.endswith(".tar"):
                removed.append(rel)
    for d in reversed(shard_dirs(folder)[1:]):           # sub-folders left without tars
        if not any(d.glob("*.tar")):
            (d / SIZES).unlink(missing_ok=True)
            for p in (d, d.parent):
                if p != folder and p.is_dir() and not any(p.iterdir()):
                    p.rmdir()
    return removed


def card_config(name: str, root: Path | None = None) -> list[dict[str, Any]]:
    """The ``configs:`` entries of the dataset card for a materialised subset: one per licence subset present
    (``commercial-concept-filtered``, ``noncommercial-concept-filtered``, ...), so that a config never mixes
    licences, each with one data-files entry per split present (shards of an index without splits are all
    ``train``). Patterns reach the sub-folders (``concept-filtered/**/concept-filtered-commercial-train-*.tar``;
    ``**`` matches no folder too, so a flat folder of before matches as well)."""
    tars = [p.name for p in folder_files(Path(root) / name, "*.tar")] if root is not None else []
    configs = []
    for subset in SUBSETS:
        mine = [t for t in tars if t.startswith(f"{name}-{subset}-")]
        if not mine:
            continue
        present = [sp for sp in SPLITS if any(t.startswith(f"{name}-{subset}-{sp}-") for t in mine)]
        if not present or any(not any(t.startswith(f"{name}-{subset}-{sp}-") for sp in SPLITS) for t in mine):
            files = [{"split": "train", "path": data_files_glob(name, f"{name}-{subset}-*.tar")}]
        else:
            files = [{"split": sp, "path": data_files_glob(name, f"{name}-{subset}-{sp}-*.tar")} for sp in present]
        configs.append({"config_name": f"{subset}-{name}", "data_files": files})
    return configs


def concept_card_configs(dataset_dir: str | Path) -> list[dict[str, Any]]:
    """Card configs of the concept subsets materialised in the folder (for ``write_card(extra_configs=)``): one per
    selection and licence subset."""
    root = Path(dataset_dir)
    summary = concepts_dir(root) / "subsets.json"
    names = list(json.loads(summary.read_text())) if summary.exists() else []
    names.sort(key=lambda n: ([FILTERED, BALANCED] + [n]).index(n))
    return [c for n in names for c in card_config(n, root)]


def licence_counts(dataset_dir: str | Path, name: str) -> dict[str, dict[str, int]]:
    """``{licence subset: {license_code: samples}}`` of a materialised selection (from ``concepts/<name>.parquet``
    joined with ``figures.parquet`` on ``key``)."""
    root = Path(dataset_dir)
    path = concepts_dir(root) / f"{name}.parquet"
    if not path.exists():
        return {}
    sel = pq.read_table(path, columns=["key", "subset"])
    idx = pq.read_table(figures_index_path(root), columns=["key", "license_code"])
    joined = sel.join(idx, "key", join_type="left outer")
    out: dict[str, dict[str, int]] = {}
    for row in joined.group_by(["subset", "license_code"]).aggregate([("key", "count")]).to_pylist():
        out.setdefault(row["subset"], {})[row["license_code"] or "unknown"] = row["key_count"]
    return {s: dict(sorted(v.items(), key=lambda kv: -kv[1])) for s, v in out.items()}


def write_selection(dataset_dir: str | Path, name: str, mask: np.ndarray, index: pa.Table,
                    shard_samples: int = SHARD_SAMPLES, shard_bytes: int = SHARD_BYTES,
                    params: dict | None = None) -> dict[str, Any]:
    """Plan, save (``concepts/<name>.parquet``) and materialise one selection; returns its summary."""
    root = Path(dataset_dir)
    selection = plan_shards(index.filter(pa.array(mask)), shard_samples, shard_bytes, prefix=f"{name}-")
    stats, selection = materialise(root, name, selection)
    write_table(concepts_dir(root) / f"{name}.parquet", selection)
    counts = _concept_counts(selection["concepts"]) if selection.num_rows else {}
    by_subset = dict(zip(*_value_counts(selection["subset"]))) if selection.num_rows else {}
    summary = {**stats, "params": params or {}, "concept_counts": counts, "by_subset": by_subset}
    return summary


def _value_counts(column: pa.ChunkedArray) -> tuple[list, list]:
    vc = pc.value_counts(column.combine_chunks())
    return vc.field("values").to_pylist(), vc.field("counts").to_pylist()


def _concept_counts(concepts: pa.ChunkedArray) -> dict[str, int]:
    flat = pc.list_flatten(concepts.combine_chunks())
    if not len(flat):
        return {}
    values, counts = _value_counts(pa.chunked_array([flat]))
    return dict(sorted(zip(values, counts), key=lambda kv: (-kv[1], kv[0])))


def build_concept_subsets(dataset_dir: str | Path, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                          exclude_local: Sequence[str] = (), cap: int | None = None, seed: int = 0,
                          keep_unlabelled: bool = True, shard_samples: int = SHARD_SAMPLES,
                          shard_bytes: int = SHARD_BYTES) -> list[dict[str, Any]]:
    """Write ``concept-filtered`` and ``concept-balanced``; returns their card configs.

    Also writes ``concepts/subsets.json`` (parameters, sizes, concept counts per subset).
    """
    root = Path(dataset_dir)
    index = read_index(root)
    keys = index["key"].to_pylist()
    cap_used = default_cap(index["concepts"]) if cap is None else int(cap)
    masks = {
        FILTERED: (filtered_mask(index["concepts"], exclude, index["local_concepts"], exclude_local, keep_unlabelled),
                   {"exclude": list(exclude), "exclude_local": list(exclude_local), "keep_unlabelled": keep_unlabelled}),
        BALANCED: (balanced_mask(index["concepts"], keys, cap_used, seed),
                   {"cap": cap_used, "cap_rule": "given" if cap is not None else "median concept size", "seed": seed,
                    "column": "concepts"}),
    }
    summary = {"source_samples": index.num_rows, "source_concept_counts": _concept_counts(index["concepts"])}
    subsets = {}
    for name, (mask, params) in masks.items():
        subsets[name] = write_selection(root, name, mask, index, shard_samples, shard_bytes, params)
        log.info("%s: %d of %d samples", name, int(mask.sum()), index.num_rows)
    atomic_write_json(concepts_dir(root) / "subsets.json", {n: {**s, **summary} for n, s in subsets.items()})
    write_dataset_sizes(root)   # now that every selection is written: each folder's sizes.json lists them all
    empty = [n for n, s in subsets.items() if not s["samples"]]
    if empty:
        log.warning("empty concept subset(s) %s: no card config", ", ".join(empty))
    return [c for n in masks if n not in empty for c in card_config(n, Path(dataset_dir))]


__all__ = [
    "BALANCED",
    "DEFAULT_EXCLUDE",
    "FILTERED",
    "JSON_LABELS",
    "balanced_mask",
    "build_concept_subsets",
    "card_config",
    "concept_card_configs",
    "default_cap",
    "filtered_mask",
    "labelled_sample",
    "licence_counts",
    "materialise",
    "plan_shards",
    "write_subset_tar",
]

"""``load_biomedica``: filter on ``figures.parquet`` first, then stream only the wanted samples.

1. **Index** - ``figures.parquet`` is read with pyarrow (only the columns the filters need, row
   groups pruned by the scalar filters). The result is, per shard file, the sorted byte ranges
   ``(tar_offset, tar_size)`` of the wanted samples. Shards without a wanted sample are never opened.
2. **Work units** - one unit per shard file (its URL + its wanted ranges), the list given to
   ``IterableDataset.from_generator(gen_kwargs={"shards": units})``: ``datasets`` shuffles, splits
   across nodes (``split_dataset_by_node``) and DataLoader workers by unit. With ``world_size`` /
   ``num_workers`` (or env ``WORLD_SIZE``) units are cut into contiguous runs of samples until their
   number is a multiple of ``world_size * max(1, num_workers)``, so that every rank gets whole units
   (``split_dataset_by_node`` otherwise makes every rank read everything and keep 1 example in
   ``world_size``) and no worker idles; a warning says when that is impossible.
3. **Read** - the generator reads each unit's wanted ranges with :func:`biomedica_hf.io.ranges.read_files`
   (the same code for a local folder and ``hf://datasets/...``): ranges are coalesced across gaps
   smaller than ``latency x bandwidth / in_flight`` (local: only adjacent ones), long runs are cut into
   pieces fetched as plain range requests, ``in_flight`` at a time, and no byte outside the planned
   pieces is requested. Members are parsed from the tar headers; images are decoded by
   ``datasets.Image`` on a thread pool (``decode_threads``) only when ``decode=True``.
4. **Checks** - shard paths from the index must stay inside the dataset; a missing or truncated shard
   raises; with ``verify=True`` every image's sha256 is checked against the index.

Resume: ``ds.state_dict()`` is ``datasets``' ``{"shard_idx", "shard_example_idx"}`` (unit index and
examples yielded within it). ``load_state_dict`` restarts the current unit and skips what was already
yielded: those samples are read again but not decoded, so the cost is bounded by the unit size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import json
import os
import sys
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from biomedica_hf.dataset.locations import check_shard_path, dataset_file_url, is_local
from biomedica_hf.errors import BiomedicaError
from biomedica_hf.filters import (  # noqa: F401 - NEAR_DUPLICATES, SPLITS, read_keys: re-exported, as before
    CONCEPT_COLUMNS, FIELDS, NEAR_DUPLICATES, SPLITS, NoMatchWarning, Selection, Years, read_keys)
from biomedica_hf.io.ranges import HF_URL, ReadOptions, read_files
from biomedica_hf.io.tars import range_members
from biomedica_hf.layout import FIGURES_INDEX

if TYPE_CHECKING:
    from datasets import Dataset, Features, IterableDataset
from biomedica_hf.schema import sample_json_features

INDEX_COLUMNS = ["shard", "tar_offset", "tar_size"]
#: Index columns copied into each row's ``metadata`` when the index has them.
EXTRA_COLUMNS = ("panel_type", "concepts", "local_concepts", "split", "near_dup_of")
DEFAULT_DECODE_THREADS = 8


class DatasetNotFoundError(BiomedicaError, FileNotFoundError):
    """``path_or_repo_id`` is neither an existing local folder nor a Hub dataset repo (exit 2 in the CLI and the
    recipes); the message names both tries: the folder resolved against the working directory, and the Hub id."""

    exit_code = 2


def _not_found(root: str, hub: str) -> DatasetNotFoundError:
    folder = os.path.abspath(os.path.expanduser(root))
    where = ("" if os.path.isabs(os.path.expanduser(root))
             else f" (relative paths resolve against the working directory {os.getcwd()})")
    return DatasetNotFoundError(f"dataset {root!r} not found: no folder {folder}{where}, and {hub}",
                                "give a `biomedica build` output folder or a Hub dataset id (owner/name)")


def check_dataset_path(path_or_repo_id: str | os.PathLike) -> None:
    """Raise :class:`DatasetNotFoundError` when ``path_or_repo_id`` is no local folder and cannot be a Hub dataset
    id (``owner/name``); a well-formed id is looked up on the Hub when the index is read. No network here."""
    root = os.fspath(path_or_repo_id)
    if is_local(root):
        return
    if os.path.exists(root):
        raise DatasetNotFoundError(f"dataset {root!r}: {os.path.abspath(root)} is a file, not a dataset folder",
                                   "give the folder `biomedica build --out` wrote")
    if not _REPO_ID.fullmatch(root):
        raise _not_found(root, f"{root!r} is not a Hub dataset id (owner/name)")


_REPO_ID = __import__("re").compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")



class ShardRanges(NamedTuple):
    """One unit of work: a shard file and the sorted byte ranges of its wanted samples."""

    url: str
    ranges: np.ndarray        # int64, shape (n, 2): (tar_offset, tar_size), sorted by offset
    # per-range index values, as Arrow arrays (no Python object per sample): EXTRA_COLUMNS present, key/sha256 to verify
    columns: dict[str, pa.Array] = {}   # noqa: RUF012 - NamedTuple default, never mutated


#: the index columns a filter can read: everything but the text (captions, references), which is most of the bytes
FILTER_COLUMNS = ("key", "subset", "license_code", "year", "caption_chars", "split", "near_dup_of", "shard",
                  "tar_offset", "tar_size", "panel_type", "concepts", "local_concepts")


#: index columns read as Arrow dictionaries (a few distinct values repeated on every row)
DICTIONARY_COLUMNS = ("shard", "split", "panel_type", "subset", "license_code")


def index_cache_dir() -> Path:
    """Where sparse copies of Hub indexes are kept: ``$BIOMEDICA_CACHE/index``, else ``biomedica/index`` beside
    the Hugging Face hub cache (``~/.cache/huggingface/biomedica/index``)."""
    from huggingface_hub import constants

    root = os.environ.get("BIOMEDICA_CACHE")
    return Path(root) / "index" if root else Path(constants.HF_HUB_CACHE).parent / "biomedica" / "index"


def index_file(index_url: str, storage_options: dict[str, Any] | None = None,
               columns: Sequence[str] = ()) -> tuple[Any, str]:
    """``(filesystem, path)`` of the figures index to scan for the :data:`FILTER_COLUMNS` (and ``columns``)."""
    fs, path, _ = index_source(index_url, storage_options, columns)
    return fs, path


def index_source(index_url: str, storage_options: dict[str, Any] | None = None,
                 columns: Sequence[str] = ()) -> tuple[Any, str, str | None]:
    """``(filesystem, path, commit)`` of the figures index to scan for the :data:`FILTER_COLUMNS` (and ``columns``):
    ``commit`` is the Hub commit sha the index was read from (``None`` for a local folder), the revision every
    shard of the same stream must be read at (:func:`load_biomedica` pins it).

    A Hub index is read through a sparse local copy (:class:`biomedica_hf.io.sparse_parquet.SparseParquet`): one
    metadata request, the footer, then the filter columns' chunks of every row group fetched in parallel and kept
    (per ETag: a new commit of the index is a new copy; the ranks of a machine share it). The text columns, most
    of the index's bytes, are never fetched. A missing index is a ``FileNotFoundError`` naming the fix; a repo
    that does not exist, or a Hub that cannot be reached (offline), is a :class:`DatasetNotFoundError` naming the
    local folder tried too; authentication errors surface as themselves.
    """
    m = HF_URL.match(index_url)
    if m:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        from biomedica_hf.io.sparse_parquet import SparseParquet

        repo, rev = m["repo"], unquote(m["rev"])
        try:
            sparse = SparseParquet(index_url, index_cache_dir(), (storage_options or {}).get("token"))
        except EntryNotFoundError:
            raise _no_index(index_url) from None
        except RevisionNotFoundError:
            raise FileNotFoundError(f"dataset repo {repo} has no revision {rev!r}") from None
        except RepositoryNotFoundError:
            raise _not_found(repo, f"no dataset repo {repo!r} on the Hub (a private or gated repo needs token=)"
                             ) from None
        except Exception as exc:
            from biomedica_hf.errors import unreachable

            if unreachable(exc):    # neither a folder nor a Hub repo we could see: say both, with the reason
                raise _not_found(repo, f"the Hub could not be asked about dataset repo {repo!r} "
                                 f"({' '.join(str(exc).split())[:160]})") from exc
            raise
        names = set(sparse.schema.names)
        path = sparse.ensure([c for c in (*FILTER_COLUMNS, *columns) if c in names])
        return fsspec.filesystem("file"), str(path), sparse.commit
    fs, path = fsspec.core.url_to_fs(index_url, **(storage_options or {}))
    try:
        fs.info(path)   # not fs.exists: offline / auth errors must surface as themselves
    except FileNotFoundError:
        raise _no_index(index_url) from None
    return fs, path, None


def _no_index(index_url: str) -> FileNotFoundError:
    folder = index_url.rsplit("/", 1)[0] if index_url.startswith("hf://") else os.path.dirname(index_url)
    return FileNotFoundError(f"{folder} has no {FIGURES_INDEX}: build the dataset with `biomedica build` "
                             f"(or regenerate the index and card of an existing folder with `biomedica card`)")


# ------------------------------------------------------------------------------------ index filters
def _distinct(dataset: pads.Dataset, column: str) -> list[str]:
    """The distinct non-null values of a string (or list<string>) column of the index."""
    values: set[str] = set()
    for batch in dataset.to_batches(columns=[column]):
        col = batch.column(0)
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.list_flatten(col)
        values.update(v for v in pc.unique(col).to_pylist() if v is not None)
    return sorted(values)


def select_ranges(index_url: str, selection: Selection | str | Sequence[str] | None = None,
                  storage_options: dict[str, Any] | None = None, *, columns: Sequence[str] = (),
                  with_columns: bool = False, index: tuple[Any, str] | None = None, notes: list[str] | None = None,
                  **filters: Any) -> dict[str, np.ndarray] | dict[str, tuple[np.ndarray, dict[str, pa.Array]]]:
    """Wanted samples per shard (``shard`` relpath -> sorted ``(tar_offset, tar_size)``), in index order.

    ``selection``: a :class:`biomedica_hf.filters.Selection` (or, as before, a subset with the other filters as
    keywords ``filters``, which make one). With ``with_columns``: ``shard -> (ranges, {column: Arrow array aligned
    with ranges})`` for the :data:`EXTRA_COLUMNS` the index has, plus ``columns`` (e.g. ``key``, ``sha256``).
    ``index``: the ``(filesystem, path)`` :func:`index_file` already resolved for ``index_url`` (else it is
    resolved here). ``notes``: receives a line per valid licence code / concept that this build lacks (they select
    nothing).
    """
    selection = as_selection(selection, filters)
    fs, path = index if index is not None else index_file(index_url, storage_options, columns)
    # repetitive string columns read as dictionaries: a shard name per row would be ~60 B x 24 M rows
    dataset = pads.dataset(path, filesystem=fs, format=pads.ParquetFileFormat(
        read_options=pads.ParquetReadOptions(dictionary_columns=list(DICTIONARY_COLUMNS))))
    names = set(dataset.schema.names)
    selection.check_columns(names, index_url)
    missing = [c for c, used in selection.columns().items() if used and c not in names]
    missing += [c for c in (*INDEX_COLUMNS, *columns) if c not in names]
    if missing:
        raise ValueError(f"{index_url} lacks column(s) {missing}: rebuild it with `biomedica build`")
    concept_cols = [c for c in CONCEPT_COLUMNS if c in names] if selection.concept_filters else []
    selection, missing_notes = selection.resolved(   # the index's spelling: matched case-insensitively
        lambda: _distinct(dataset, "license_code"), lambda: {v for c in concept_cols for v in _distinct(dataset, c)},
        index_url)
    if notes is not None:
        notes += missing_notes
    extra = [c for c in EXTRA_COLUMNS if c in names] if with_columns else []
    wanted_cols = list(dict.fromkeys([*INDEX_COLUMNS, *concept_cols, *extra, *columns]))
    table = dataset.to_table(columns=wanted_cols, filter=selection.expression())
    keep = selection.concept_mask(table, concept_cols)
    if keep is not None:
        table = table.filter(pa.array(keep))
    if pa.types.is_dictionary(table.schema.field("shard").type):
        shard = table.unify_dictionaries()["shard"].combine_chunks()
    else:
        shard = pc.dictionary_encode(table["shard"]).combine_chunks()
    codes = shard.indices.to_numpy(zero_copy_only=False)
    offsets = table["tar_offset"].to_numpy()
    sizes = table["tar_size"].to_numpy()
    order = np.lexsort((offsets, codes))
    codes, ranges = codes[order], np.stack([offsets[order], sizes[order]], axis=1).astype(np.int64)
    bounds = np.flatnonzero(np.diff(codes)) + 1
    groups = [(shard.dictionary[int(g[0])].as_py(), r, idx) for g, r, idx in
              zip(np.split(codes, bounds), np.split(ranges, bounds), np.split(order, bounds)) if len(r)]
    for rel, _, _ in groups:
        check_shard_path(rel)
    if not with_columns:
        return {rel: r for rel, r, _ in groups}
    cols = {c: table[c] for c in dict.fromkeys([*extra, *columns])}
    return {rel: (r, {c: col.take(pa.array(idx)).combine_chunks() for c, col in cols.items()})
            for rel, r, idx in groups}


# ------------------------------------------------------------------------------------ work units
def split_units(units: list[ShardRanges], readers: int) -> list[ShardRanges]:
    """Cut units into contiguous runs of samples until their number is a multiple of ``readers``.

    The fewest extra cuts are made, each on the unit with the most samples per piece, so pieces stay
    balanced. When no multiple of ``readers`` lies between ``len(units)`` and the number of samples,
    the units are returned unchanged.
    """
    n_samples = sum(len(u.ranges) for u in units)
    target = -(-len(units) // readers) * readers
    if not units or target == len(units) or target > n_samples:
        return units
    pieces = [1] * len(units)
    heap = [(-len(u.ranges), i) for i, u in enumerate(units) if len(u.ranges) > 1]
    heapq.heapify(heap)
    for _ in range(target - len(units)):
        _, i = heapq.heappop(heap)
        pieces[i] += 1
        if pieces[i] < len(units[i].ranges):
            heapq.heappush(heap, (-len(units[i].ranges) / pieces[i], i))
    out = []
    for u, k in zip(units, pieces):
        for idx in np.array_split(np.arange(len(u.ranges)), k):
            lo, hi = (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 0)
            out.append(ShardRanges(u.url, u.ranges[lo:hi], {c: v[lo:hi] for c, v in u.columns.items()}))
    return out


#: samples per group of units (:func:`group_units`): one reader's prefetch window spans a group's shards
GROUP_SAMPLES = 1024


def n_groups(n_units: int, n_samples: int, readers: int = 1) -> int:
    """How many groups to make of ``n_units`` units: about one per :data:`GROUP_SAMPLES` samples, a multiple of
    ``readers`` (so ranks x workers still get whole groups), at most ``n_units`` (then every unit is a group)."""
    if n_units <= readers:
        return n_units
    per_reader = max(1, min(n_units // readers, round(n_samples / (readers * GROUP_SAMPLES))))
    return readers * per_reader


def group_units(units: list[ShardRanges], groups: int) -> list[list[ShardRanges]]:
    """``groups`` contiguous runs of ``units`` (every one non-empty), balanced by samples.

    ``datasets`` calls the generator once per element of the ``shards`` list it is given (that list is what it
    splits among ranks and DataLoader workers, and what ``shuffle`` reorders); giving it groups of units lets one
    prefetch window span a group's shards, so a selective filter (a few samples per shard) and the end of every
    shard no longer wait a request latency each. ``ds.n_shards`` is the number of groups.
    """
    n = len(units)
    groups = max(1, min(groups, n)) if n else 0
    if groups == n:
        return [[u] for u in units]
    counts = np.cumsum([len(u.ranges) for u in units])
    ends: list[int] = []
    for k in range(1, groups):   # group k-1 ends where the running count passes k/groups of the samples
        end = int(np.searchsorted(counts, counts[-1] * k / groups, side="left")) + 1
        end = max(end, (ends[-1] if ends else 0) + 1)      # non-empty
        ends.append(min(end, n - (groups - k)))           # leave one unit for each later group
    bounds = [0, *ends, n]
    return [units[a:b] for a, b in itertools.pairwise(bounds)]


def balanced_sizes(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` sizes that differ by at most one (the larger ones first)."""
    q, r = divmod(int(total), max(1, int(parts)))
    return [q + (i < r) for i in range(max(1, int(parts)))]


def cut_samples(units: Sequence[ShardRanges], sizes: Sequence[int]) -> list[list[ShardRanges]]:
    """The units' samples (in order) cut into consecutive runs of ``sizes`` samples, each run a list of unit
    slices (a run may end inside one shard and go on in the next; a slice is read by its byte ranges only)."""
    out: list[list[ShardRanges]] = []
    u, pos = 0, 0                          # current unit, first sample of it not yet given
    for size in sizes:
        run, need = [], int(size)
        while need > 0 and u < len(units):
            unit = units[u]
            take = min(need, len(unit.ranges) - pos)
            if take > 0:
                run.append(ShardRanges(unit.url, unit.ranges[pos:pos + take],
                                       {c: v[pos:pos + take] for c, v in unit.columns.items()}))
            pos, need = pos + take, need - take
            if pos >= len(unit.ranges):
                u, pos = u + 1, 0
        out.append(run)
    return out


def plan_rank(units: Sequence[ShardRanges], world_size: int, rank: int,
              num_workers: int = 0) -> list[list[ShardRanges]]:
    """The groups of units (:func:`group_units`' shape) rank ``rank`` of ``world_size`` reads: the selected
    samples, in index order, cut into ``world_size`` contiguous runs whose sizes differ by at most one sample
    (:func:`balanced_sizes`); the rank's run is cut again into groups of equal size (+-1 sample), about one per
    :data:`GROUP_SAMPLES`, their number a multiple of ``max(1, num_workers)`` so that the DataLoader workers get
    the same number of groups. A rank without a sample (fewer samples than ranks) gets one empty group."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    n = sum(len(u.ranges) for u in units)
    sizes = balanced_sizes(n, world_size)
    start = sum(sizes[:rank])
    mine = cut_samples(units, [start, sizes[rank]])[1]
    n_rank = sizes[rank]
    if n_rank == 0:
        return [[]]
    workers = max(1, num_workers)
    per_worker = max(1, round(n_rank / (workers * GROUP_SAMPLES)))
    groups = min(n_rank, workers * per_worker)
    return cut_samples(mine, balanced_sizes(n_rank, groups))


def _readers(world_size: int | None, num_workers: int | None) -> tuple[int, int] | None:
    """(ranks, DataLoader workers per rank) to divide the units among; None when not distributed."""
    if world_size is None and os.environ.get("WORLD_SIZE"):
        world_size = int(os.environ["WORLD_SIZE"])
    if world_size is None and num_workers is None:
        return None
    return max(1, world_size or 1), max(1, num_workers or 0)


def _warn_uneven(n_units: int, n_samples: int, world_size: int, num_workers: int) -> None:
    """Say what happens when the units do not divide among ranks x workers."""
    readers = world_size * num_workers
    consequences = []
    if n_units % world_size:
        consequences.append(f"split_dataset_by_node(world_size={world_size}) will make every rank read all "
                            f"{n_samples} samples and keep 1 in {world_size}")
    per_rank = n_units / world_size if n_units % world_size == 0 else n_units
    if per_rank % num_workers:
        consequences.append(f"the {num_workers} DataLoader workers of a rank get unequal numbers of units"
                            + (" and some stay idle" if per_rank < num_workers else ""))
    warnings.warn(f"load_biomedica: {n_units} work unit(s) ({n_samples} wanted samples) cannot be made a multiple of "
                  f"world_size x num_workers = {world_size} x {num_workers} = {readers}: "
                  + "; ".join(consequences) + ".", UserWarning, stacklevel=3)


# ------------------------------------------------------------------------------------ reading
def _sample(data: memoryview, shard: str) -> dict[str, Any]:
    """The sample of one wanted range: ``<key>.<image ext>``, ``<key>.txt``, ``<key>.json``.

    The image's ``path`` is ``<shard>/<member>``: the member's name under its shard's path or URL, which can
    never be a file (a path below a tar file). A bare ``<key>.<ext>`` would be looked up in the working
    directory by ``datasets.Image``, which drops the shard's bytes for any file of that name it finds there."""
    key, members = None, {}
    for name, payload in range_members(data):   # io.tars: the one tar reader
        k, _, ext = name.partition(".")
        if key is not None and k != key:
            raise tarfile.ReadError(f"range holds members of two samples ({key}, {k})")
        key, members[ext] = k, payload
    image_ext = [e for e in members if e not in ("txt", "json")]
    if key is None or len(image_ext) != 1 or "txt" not in members or "json" not in members:
        raise tarfile.ReadError(f"range is not one whole sample (members: {sorted(members)})")
    ext = image_ext[0]
    return {"key": key, "image": {"bytes": bytes(members[ext]), "path": f"{shard}/{key}.{ext}"},
            "caption": bytes(members["txt"]).decode(), "metadata": json.loads(bytes(members["json"]))}


def generate_samples(shards: list[list[ShardRanges]], storage_options: dict[str, Any],
                     read_options: ReadOptions | None = None, verify: bool = False) -> Iterator[dict[str, Any]]:
    """The ``from_generator`` generator: every wanted sample of every unit of the given groups of units
    (:func:`group_units`), in order, read through one prefetch window.

    Index columns carried by the unit (:data:`EXTRA_COLUMNS`) are added to each row's ``metadata``.
    """
    shards = [unit for group in shards for unit in group]
    token = (storage_options or {}).get("token")
    extras = [{c: v for c, v in unit.columns.items() if c in EXTRA_COLUMNS} for unit in shards]
    # one prefetch window over all units: the next shard's first ranges are fetched while this one ends
    for u, i, data in read_files([(unit.url, unit.ranges) for unit in shards], read_options, token):
        unit, extra = shards[u], extras[u]
        offset, size = int(unit.ranges[i, 0]), int(unit.ranges[i, 1])
        try:
            sample = _sample(data, unit.url)
        except (tarfile.TarError, UnicodeDecodeError, ValueError):
            sample = None
        key = unit.columns["key"][i].as_py() if "key" in unit.columns else None
        if sample is None or (key is not None and sample["key"] != key):
            raise ValueError(f"{unit.url}: bytes {offset}..{offset + size} do not hold the sample "
                             f"{key or ''} that {FIGURES_INDEX} lists there; the index is stale, rebuild the "
                             f"dataset (or run `biomedica verify`)")
        if verify:
            digest = hashlib.sha256(sample["image"]["bytes"]).hexdigest()
            expected = unit.columns["sha256"][i].as_py()
            if digest != expected:
                raise ValueError(f"{unit.url}: sample {sample['key']} (bytes {offset}..{offset + size}) has image "
                                 f"sha256 {digest}, but {FIGURES_INDEX} records {expected}: the shard is "
                                 f"corrupted (run `biomedica verify --deep` on the dataset)")
        for c, values in extra.items():
            sample["metadata"][c] = values[i].as_py()
        yield sample


def features(decode: bool = True, extra_columns: Sequence[str] = ()) -> Features:
    """``datasets.Features`` of the loaded samples: key, image, caption and the per-sample metadata
    (plus the index columns ``extra_columns`` among :data:`EXTRA_COLUMNS`)."""
    from datasets import Features, Image, List, Value

    metadata = dict(sample_json_features())
    for c in extra_columns:
        metadata[c] = List(Value("string")) if c in CONCEPT_COLUMNS else Value("string")
    return Features({"key": Value("string"), "image": Image(decode=decode), "caption": Value("string"),
                     "metadata": metadata})


def _caller() -> tuple[str, int, str]:
    """(filename, line, module) of the first frame outside this package: where a warning should point."""
    frame = sys._getframe(1)
    package = os.path.dirname(os.path.abspath(__file__))
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame = frame.f_back
    if frame is None:   # pragma: no cover
        return "<unknown>", 0, "<unknown>"
    return frame.f_code.co_filename, frame.f_lineno, frame.f_globals.get("__name__", "<unknown>")


def _warn_no_match(where: str, selection: Selection, notes: Sequence[str] = ()) -> None:
    """Warn at the caller's line, on every call (``warn_explicit`` without a once-per-line registry); ``notes``
    name the asked values this build lacks and what it has."""
    asked = selection.describe() or "no filter"
    filename, lineno, module = _caller()
    why = "".join(f"; {n}" for n in notes)
    warnings.warn_explicit(f"load_biomedica: no sample of {where} matches the filters ({asked}); the dataset is "
                           f"empty{why}", NoMatchWarning, filename, lineno, module=module, registry=None)


#: ``load_biomedica``'s filter keywords and their defaults (each a field of :class:`Selection`)
FILTER_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(Selection)}


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and isinstance(value, (str, int)) and value == default)


def as_selection(selection: Selection | str | Sequence[str] | None, filters: dict[str, Any]) -> Selection:
    """The :class:`Selection` of a call that gave ``selection=`` or the filter keywords (``filters``; a
    ``selection`` that is not a Selection is the ``subset``), not both."""
    unknown = sorted(set(filters) - set(FIELDS))
    if unknown:
        raise TypeError(f"unexpected filter keyword(s) {unknown}; the filters are {list(FIELDS)}")
    if isinstance(selection, Selection):
        given = sorted(k for k, v in filters.items() if not _is_default(v, FILTER_DEFAULTS[k]))
        if given:
            raise TypeError(f"give either selection= or the filter keywords, not both (got selection= and {given}): "
                            f"selection.replace({given[0]}=...) makes a changed copy")
        return selection
    if selection is not None:
        filters = {**filters, "subset": selection}
    return Selection(**filters)


# ------------------------------------------------------------------------------------ entry point
def load_biomedica(path_or_repo_id: str | os.PathLike, subset: str | Sequence[str] = "commercial",
                   concepts: str | Sequence[str] | None = None, exclude_concepts: str | Sequence[str] | None = None,
                   licenses: str | Sequence[str] | None = None, years: Years | None = None,
                   min_caption_chars: int | None = None, streaming: bool = True, *, split: str | None = None,
                   level: str = "figure",
                   exclude: str | os.PathLike | Iterable[str] | None = None, near_duplicates: str = "keep",
                   revision: str | None = None, decode: bool = True, decode_threads: int | None = None,
                   verify: bool = False, read_options: ReadOptions | None = None, world_size: int | None = None,
                   num_workers: int | None = None, token: str | bool | None = None, rank: int | None = None,
                   selection: Selection | None = None, **load_dataset_kwargs: Any) -> IterableDataset | Dataset:
    """Load a BIOMEDICA dataset folder or Hub repo, filtered on its ``figures.parquet`` index.

    The filters (``subset`` to ``near_duplicates``) are the fields of one :class:`biomedica_hf.filters.Selection`:
    give them as keywords, or a ``selection=Selection(...)`` (the search API, eval and the recipes share it), not
    both.

    Args:
        path_or_repo_id: a local dataset folder, or a Hub dataset repo id (``owner/name``).
        subset: ``"commercial"``, ``"noncommercial"``, ``"other"``, ``"all"`` or a list of subsets.
        concepts: keep samples having any of these in ``concepts`` or ``local_concepts``.
        exclude_concepts: drop samples having any of these (same columns).
        licenses: licence code(s) of ``license_code`` (``"CC BY"``, ``"cc0"``, ...), matched case-insensitively.
        years: a year, a list of years, or an inclusive ``(min, max)`` tuple (``None``: open end).
        min_caption_chars: keep captions of at least this many characters.
        streaming: ``True``: a ``datasets.IterableDataset``; ``False``: a ``datasets.Dataset`` (cached).
        split: ``"train"``, ``"validation"`` or ``"test"``: the index's ``split`` column (by a stable hash of the
            PMCID); ``None``: every split.
        level: ``"figure"`` (the default: one row per figure image) or ``"panel"``: one row per panel that
            ``biomedica panels`` cut out (``panels.parquet`` + the ``<licence>-panels`` shards; ``subset``, ``split``,
            ``streaming``, ``decode``, ``revision`` and ``token`` apply, the other filters do not; see
            :func:`biomedica_hf.dataset.panel_loader.load_panels`).
        exclude: keys to leave out: an iterable of keys, or a ``.txt`` (one key per line), ``.parquet`` or ``.json``
            file with a ``key`` column (e.g. an evaluation set's contamination list).
        near_duplicates: ``"keep"`` or ``"drop"`` (samples whose ``near_dup_of`` is set).
        revision: Hub branch, tag or commit (default ``main``); a branch is resolved once, to the commit the
            index is read from, and every shard is read at that commit (``resolve/<sha>``).
        decode: decode images to PIL (``False``: ``{"bytes", "path"}``, the path being ``<shard>/<member>``, the
            member's name under its shard's path or ``hf://`` URL).
        decode_threads: threads decoding images ahead of the consumer (default 8; 0: in the main thread).
        verify: check every image's sha256 against the index (a mismatch raises ``ValueError``).
        read_options: :class:`biomedica_hf.io.ranges.ReadOptions`: requests in flight (64, at most 64 MiB), the
            largest request (8 MiB), the gap read through between wanted samples (remote: latency x bandwidth /
            in flight, assuming 30 ms and 100 MB/s, i.e. ~94 kB; local: 0).
        world_size, num_workers: ranks and DataLoader workers per rank (``WORLD_SIZE`` from the
            environment by default); work units are split so that their number is a multiple of
            ``world_size * max(1, num_workers)`` when there are enough samples, else a warning is issued.
        selection: the filters as one :class:`~biomedica_hf.filters.Selection` (instead of the keywords above).
        rank: with ``world_size``, return only this rank's share (no ``split_dataset_by_node`` afterwards): the
            selected *samples* are cut into ``world_size`` contiguous runs whose sizes differ by at most one
            (:func:`plan_rank`), read by byte range like any other unit, so an epoch of every rank covers every
            sample exactly once. ``ds.info.splits["train"].num_examples`` is the rank's number of samples.
        token: Hub token.
        **load_dataset_kwargs: with ``streaming=False``, forwarded to ``Dataset.from_generator`` (``cache_dir``,
            ``keep_in_memory``, ``num_proc``, ...); a streaming load takes none.

    Rows: ``key``, ``image``, ``caption`` and ``metadata`` (the ``SAMPLE_FIELDS`` of the sample's JSON, plus
    ``panel_type``, ``concepts``, ``local_concepts``, ``split`` and ``near_dup_of`` when the index has them:
    the index's values, which the labelled shards' JSON also carries).

    Raises:
        ValueError: an unknown subset, licence code, concept or split (the message names the closest valid values;
            a licence code or concept of the vocabulary that this build lacks is no error: it selects nothing),
            a filter on a column the index lacks, a shard path outside the dataset; while reading: a stale
            index or (``verify=True``) a corrupted image.
        FileNotFoundError: no index; while reading: a shard the index lists is missing.
        biomedica_hf.io.ranges.ShardTruncatedError: while reading, a shard shorter than the index says.
    """
    args = locals()
    selection = as_selection(selection, {name: args[name] for name in FIELDS})   # the keywords are its fields
    if level != "figure":
        from biomedica_hf.dataset.panel_loader import load_panels

        if level != "panel":
            raise ValueError(f"unknown level {level!r}; valid: figure, panel")
        return load_panels(path_or_repo_id, selection.subset, split=selection.split, streaming=streaming,
                           decode=decode, revision=revision, token=token)
    from datasets import Dataset
    from datasets.fingerprint import Hasher

    check_dataset_path(path_or_repo_id)
    local = is_local(path_or_repo_id)
    storage_options = {} if local or token is None else {"token": token}
    index_url = dataset_file_url(path_or_repo_id, FIGURES_INDEX, revision)
    checked = ("key", "sha256") if verify else ()
    index_fs, index_path, commit = index_source(index_url, storage_options, checked)   # a Hub index: one request
    index = (index_fs, index_path)
    notes: list[str] = []
    wanted = select_ranges(index_url, selection, storage_options, columns=checked, with_columns=True, index=index,
                           notes=notes)
    # every shard is read at the commit the index came from: a commit pushed mid-stream (an update renaming or
    # rewriting shards) never mixes into a stream, which finishes from the commit it started on
    pinned = commit or revision
    units = [ShardRanges(_shard_url(path_or_repo_id, shard, pinned), r, cols)
             for shard, (r, cols) in wanted.items()]
    extra = [c for c in EXTRA_COLUMNS if units and c in units[0].columns]
    n_samples = sum(len(u.ranges) for u in units)
    if not units:
        _warn_no_match(os.fspath(path_or_repo_id), selection, notes)
    readers = _readers(world_size, num_workers)
    n_readers = 1
    if rank is not None:
        if not streaming or world_size is None:
            raise ValueError("rank= needs world_size= and streaming=True")
        groups = plan_rank(units, int(world_size), int(rank), num_workers or 0)
        n_rank = sum(len(u.ranges) for g in groups for u in g)
        gen_kwargs = {"shards": groups, "storage_options": storage_options, "read_options": read_options,
                      "verify": verify}
        if load_dataset_kwargs:
            raise TypeError(f"load_biomedica(streaming=True) got unexpected keyword argument(s) "
                            f"{sorted(load_dataset_kwargs)}")
        ds = _iterable_dataset(features(decode, extra), gen_kwargs, n_rank)
        threads = DEFAULT_DECODE_THREADS if decode_threads is None else decode_threads
        return ds.decode(True, num_threads=threads) if decode and threads > 0 else ds
    if streaming and readers is not None and units:
        n_readers = readers[0] * readers[1]
        units = split_units(units, n_readers)
        if len(units) % n_readers:
            _warn_uneven(len(units), n_samples, *readers)
            n_readers = 1
    groups = group_units(units, n_groups(len(units), n_samples, n_readers))
    gen_kwargs = {"shards": groups, "storage_options": storage_options, "read_options": read_options,
                  "verify": verify}
    feats = features(decode, extra)
    if streaming:
        if load_dataset_kwargs:
            raise TypeError(f"load_biomedica(streaming=True) got unexpected keyword argument(s) "
                            f"{sorted(load_dataset_kwargs)} (only a streaming=False load forwards keywords, to "
                            f"Dataset.from_generator)")
        ds = _iterable_dataset(feats, gen_kwargs)
        threads = DEFAULT_DECODE_THREADS if decode_threads is None else decode_threads
        return ds.decode(True, num_threads=threads) if decode and threads > 0 else ds
    if not units:   # Dataset.from_generator refuses an empty split
        return Dataset.from_dict({name: [] for name in feats}, features=feats)
    fs, path = index
    load_dataset_kwargs.setdefault("fingerprint", Hasher.hash([fs.ukey(path), groups, decode, verify]))
    return Dataset.from_generator(generate_samples, features=feats, gen_kwargs=gen_kwargs, **load_dataset_kwargs)


def _keyed_samples(**gen_kwargs: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    for sample in generate_samples(**gen_kwargs):
        yield sample["key"], sample


def _iterable_dataset(feats: Features, gen_kwargs: dict[str, Any], n_examples: int | None = None) -> IterableDataset:
    """What ``IterableDataset.from_generator(generate_samples, feats, gen_kwargs)`` returns (the same
    examples iterable: one generator call per element of ``gen_kwargs["shards"]``, the same ``state_dict``), built
    directly: ``from_generator`` goes through a builder whose config id pickles and hashes every ``gen_kwargs``,
    i.e. every wanted sample's range and index values (about 1 s per 2.4 M samples, in every process that
    loads), for a fingerprint a streaming dataset never uses."""
    from datasets import DatasetInfo, IterableDataset, NamedSplit

    try:
        from datasets.iterable_dataset import ExamplesIterable

        examples = ExamplesIterable(_keyed_samples, gen_kwargs)
    except (ImportError, TypeError):      # pragma: no cover - a datasets release that reshaped its internals
        return IterableDataset.from_generator(generate_samples, features=feats, gen_kwargs=gen_kwargs)
    info = DatasetInfo(features=feats)
    if n_examples is not None:       # a rank's share (load_biomedica(rank=)): its number of samples is known
        from datasets.splits import SplitDict, SplitInfo

        info.splits = SplitDict({"train": SplitInfo(name="train", num_examples=int(n_examples))})
    return IterableDataset(examples, info=info, split=NamedSplit("train"))


def _shard_url(path_or_repo_id: str | os.PathLike, rel: str, revision: str | None) -> str:
    """The URL of a shard, its index path checked to stay inside the dataset (links the folder's owner made,
    e.g. subset folders on another disk, are followed: the check is on what the index says)."""
    return dataset_file_url(path_or_repo_id, check_shard_path(rel), revision)

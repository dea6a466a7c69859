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
3. **Read** - the generator opens each unit's file with ``fsspec.open`` (the same code for a local
   folder and ``hf://datasets/...``), reads each run of contiguous wanted ranges in one read (at most
   ``READ_BLOCK`` bytes) and parses the members with ``tarfile``. Unwanted samples are never read;
   images are decoded by ``datasets.Image`` only when ``decode=True``.

Resume: ``ds.state_dict()`` is ``datasets``' ``{"shard_idx", "shard_example_idx"}`` (unit index and
examples yielded within it). ``load_state_dict`` restarts the current unit and skips what was already
yielded: those samples are read again but not decoded, so the cost is bounded by the unit size.
"""
from __future__ import annotations

import functools
import heapq
import io
import json
import numbers
import operator
import os
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from .index import FIGURES_INDEX

if TYPE_CHECKING:
    from datasets import Dataset, Features, IterableDataset
from .schema import SUBSETS, sample_json_features

READ_BLOCK = 32 * 2**20       # largest single read of contiguous wanted samples
CONCEPT_COLUMNS = ("concepts", "local_concepts")
INDEX_COLUMNS = ["shard", "tar_offset", "tar_size"]

Years = int | Sequence[int] | tuple[int | None, int | None]


class ShardRanges(NamedTuple):
    """One unit of work: a shard file and the sorted byte ranges of its wanted samples."""

    url: str
    ranges: np.ndarray        # int64, shape (n, 2): (tar_offset, tar_size), sorted by offset


# ------------------------------------------------------------------------------------ locations
def is_local(path_or_repo_id: str | os.PathLike) -> bool:
    """A local dataset folder (else a Hub dataset repo id)."""
    return os.path.isdir(path_or_repo_id)


def dataset_file_url(path_or_repo_id: str | os.PathLike, relpath: str, revision: str | None = None) -> str:
    """Where ``relpath`` of the dataset lives: a local path, or ``hf://datasets/{repo}@{revision}/{relpath}``.

    Revisions are percent-encoded (``refs/pr/1`` -> ``refs%2Fpr%2F1``), as ``HfFileSystem`` expects.
    """
    root = os.fspath(path_or_repo_id)
    if is_local(root):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos; {root} is a local folder")
        return os.path.join(os.path.abspath(root), *relpath.split("/"))
    if os.path.isabs(root) or root.startswith((".", "~")) or root.count("/") > 1:
        raise FileNotFoundError(f"{root}: no such folder (and not a Hub dataset repo id like 'owner/name')")
    return f"hf://datasets/{root}@{quote(revision or 'main', safe='')}/{relpath}"


# ------------------------------------------------------------------------------------ index filters
def _subsets(subset: str | Sequence[str]) -> list[str]:
    names = list(SUBSETS) if subset == "all" else [subset] if isinstance(subset, str) else list(subset)
    unknown = sorted(set(names) - set(SUBSETS))
    if unknown or not names:
        raise ValueError(f"subset must be 'all' or among {SUBSETS} (or a list of them), got {subset!r}")
    return names


def _years_expr(years: Years) -> pc.Expression:
    """int: that year; list: any of them; tuple (min, max): inclusive range, None for an open end."""
    field = pc.field("year")
    if isinstance(years, numbers.Integral):
        return field == int(years)
    if not isinstance(years, tuple):
        return field.isin([int(y) for y in years])
    if len(years) != 2 or years == (None, None):
        raise ValueError(f"years as a tuple is a (min, max) range with at least one bound, got {years!r}")
    lo, hi = years
    bounds = []
    if lo is not None:
        bounds.append(field >= lo)
    if hi is not None:
        bounds.append(field <= hi)
    return functools.reduce(operator.and_, bounds)


def _has_any(column: pa.ChunkedArray, values: Sequence[str]) -> np.ndarray:
    """Boolean mask: rows of a list<string> column containing any of ``values``."""
    mask = np.zeros(len(column), dtype=bool)
    offset = 0
    for chunk in column.chunks:
        hit = pc.is_in(pc.list_flatten(chunk), value_set=pa.array(list(values), pa.string()))
        rows = pc.filter(pc.list_parent_indices(chunk), hit).to_numpy()
        mask[offset + rows] = True
        offset += len(chunk)
    return mask


def _as_list(value: str | Sequence[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def select_ranges(index_url: str, subset: str | Sequence[str] = "commercial", concepts: Sequence[str] | None = None,
                  exclude_concepts: Sequence[str] | None = None, licenses: str | Sequence[str] | None = None,
                  years: Years | None = None, min_caption_chars: int | None = None,
                  storage_options: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Wanted samples per shard (``shard`` relpath -> sorted ``(tar_offset, tar_size)``), in index order."""
    fs, path = fsspec.core.url_to_fs(index_url, **(storage_options or {}))
    try:
        fs.info(path)   # not fs.exists: offline / auth errors must surface as themselves
    except FileNotFoundError:
        folder = index_url.rsplit("/", 1)[0] if index_url.startswith("hf://") else os.path.dirname(index_url)
        raise FileNotFoundError(f"{folder} has no {FIGURES_INDEX}: build the dataset with `biomedica build` "
                                f"(or regenerate the index and card of an existing folder with `biomedica card`)"
                                ) from None
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    names = set(dataset.schema.names)
    exprs = []
    if set(_subsets(subset)) != set(SUBSETS):
        exprs.append(pc.field("subset").isin(_subsets(subset)))
    if licenses is not None:
        exprs.append(pc.field("license_code").isin(_as_list(licenses)))
    if years is not None:
        exprs.append(_years_expr(years))
    if min_caption_chars is not None:
        exprs.append(pc.field("caption_chars") >= min_caption_chars)
    list_filters = [(v, keep) for v, keep in ((concepts, True), (exclude_concepts, False)) if v is not None]
    if list_filters and "concepts" not in names:
        raise ValueError(f"{index_url} has no `concepts` column: concepts= / exclude_concepts= need the concept "
                         f"annotation stage to have been run on this dataset")
    concept_cols = [c for c in CONCEPT_COLUMNS if c in names] if list_filters else []
    used = {"subset": subset, "license_code": licenses, "year": years, "caption_chars": min_caption_chars}
    missing = [c for c, value in used.items() if value is not None and c not in names]
    missing += [c for c in INDEX_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{index_url} lacks column(s) {missing}: rebuild it with `biomedica build`")
    expr = functools.reduce(operator.and_, exprs) if exprs else None
    table = dataset.to_table(columns=INDEX_COLUMNS + concept_cols, filter=expr)
    if list_filters:
        keep = np.ones(table.num_rows, dtype=bool)
        for values, include in list_filters:
            hit = np.zeros(table.num_rows, dtype=bool)
            for col in concept_cols:
                hit |= _has_any(table[col], _as_list(values))
            keep &= hit if include else ~hit
        table = table.filter(pa.array(keep))
    shard = pc.dictionary_encode(table["shard"]).combine_chunks()
    codes = shard.indices.to_numpy(zero_copy_only=False)
    offsets = table["tar_offset"].to_numpy()
    sizes = table["tar_size"].to_numpy()
    order = np.lexsort((offsets, codes))
    codes, ranges = codes[order], np.stack([offsets[order], sizes[order]], axis=1).astype(np.int64)
    bounds = np.flatnonzero(np.diff(codes)) + 1
    return {shard.dictionary[int(group[0])].as_py(): r
            for group, r in zip(np.split(codes, bounds), np.split(ranges, bounds)) if len(r)}


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
    return [ShardRanges(u.url, part) for u, k in zip(units, pieces) for part in np.array_split(u.ranges, k)]


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
def _reads(ranges: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(start, length, n_samples) reads: contiguous ranges joined, up to ``READ_BLOCK`` bytes."""
    start = end = n = 0
    for offset, size in ranges.tolist():
        if n and offset == end and end + size - start <= READ_BLOCK:
            end, n = end + size, n + 1
            continue
        if n:
            yield start, end - start, n
        start, end, n = offset, offset + size, 1
    if n:
        yield start, end - start, n


def _sample(key: str, members: dict[str, bytes]) -> dict[str, Any]:
    ext = next(e for e in members if e not in ("txt", "json"))
    return {"key": key, "image": {"bytes": members[ext], "path": f"{key}.{ext}"},
            "caption": members["txt"].decode(), "metadata": json.loads(members["json"])}


def _parse(data: bytes) -> Iterator[dict[str, Any]]:
    """Samples of a tar stream made of whole samples (``<key>.<ext>``, ``<key>.txt``, ``<key>.json``)."""
    key, members = None, {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            name, _, ext = member.name.partition(".")
            if name != key and members:
                yield _sample(key, members)
                members = {}
            key = name
            members[ext] = tar.extractfile(member).read()
    if members:
        yield _sample(key, members)


def generate_samples(shards: list[ShardRanges], storage_options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The ``from_generator`` generator: every wanted sample of every unit, in order."""
    for unit in shards:
        with fsspec.open(unit.url, "rb", **storage_options) as f:
            for start, length, n in _reads(unit.ranges):
                f.seek(start)
                data = f.read(length)
                try:
                    samples = list(_parse(data)) if len(data) == length else []
                except tarfile.TarError:
                    samples = []
                if len(samples) != n:
                    raise ValueError(f"{unit.url}: bytes {start}..{start + length} do not hold the {n} samples "
                                     f"{FIGURES_INDEX} lists there; the index is stale, rebuild the dataset")
                yield from samples


def features(decode: bool = True) -> Features:
    """``datasets.Features`` of the loaded samples: key, image, caption and the per-sample metadata."""
    from datasets import Features, Image, Value

    return Features({"key": Value("string"), "image": Image(decode=decode), "caption": Value("string"),
                     "metadata": sample_json_features()})


# ------------------------------------------------------------------------------------ entry point
def load_biomedica(path_or_repo_id: str | os.PathLike, subset: str | Sequence[str] = "commercial",
                   concepts: str | Sequence[str] | None = None, exclude_concepts: str | Sequence[str] | None = None,
                   licenses: str | Sequence[str] | None = None, years: Years | None = None,
                   min_caption_chars: int | None = None, streaming: bool = True, *, revision: str | None = None,
                   decode: bool = True, world_size: int | None = None, num_workers: int | None = None,
                   token: str | bool | None = None, **load_dataset_kwargs: Any) -> IterableDataset | Dataset:
    """Load a BIOMEDICA dataset folder or Hub repo, filtered on its ``figures.parquet`` index.

    Args:
        path_or_repo_id: a local dataset folder, or a Hub dataset repo id (``owner/name``).
        subset: ``"commercial"``, ``"noncommercial"``, ``"other"``, ``"all"`` or a list of subsets.
        concepts: keep samples having any of these in ``concepts`` or ``local_concepts``.
        exclude_concepts: drop samples having any of these (same columns).
        licenses: licence code(s), exact match on ``license_code`` (``"CC BY"``, ``"CC0"``, ...).
        years: a year, a list of years, or an inclusive ``(min, max)`` tuple (``None``: open end).
        min_caption_chars: keep captions of at least this many characters.
        streaming: ``True``: a ``datasets.IterableDataset``; ``False``: a ``datasets.Dataset`` (cached).
        revision: Hub branch, tag or commit (default ``main``).
        decode: decode images to PIL (``False``: ``{"bytes", "path"}``).
        world_size, num_workers: ranks and DataLoader workers per rank (``WORLD_SIZE`` from the
            environment by default); work units are split so that their number is a multiple of
            ``world_size * max(1, num_workers)`` when there are enough samples, else a warning is issued.
        token: Hub token.
        **load_dataset_kwargs: forwarded to ``IterableDataset.from_generator`` (``split``) or, with
            ``streaming=False``, ``Dataset.from_generator`` (``cache_dir``, ``keep_in_memory``, ``num_proc``, ...).

    Rows: ``key``, ``image``, ``caption`` and ``metadata`` (the ``SAMPLE_FIELDS`` of the sample's JSON).
    """
    from datasets import Dataset, IterableDataset
    from datasets.fingerprint import Hasher

    local = is_local(path_or_repo_id)
    storage_options = {} if local or token is None else {"token": token}
    index_url = dataset_file_url(path_or_repo_id, FIGURES_INDEX, revision)
    wanted = select_ranges(index_url, subset, concepts, exclude_concepts, licenses, years, min_caption_chars,
                           storage_options)
    units = [ShardRanges(dataset_file_url(path_or_repo_id, shard, revision), r) for shard, r in wanted.items()]
    n_samples = sum(len(u.ranges) for u in units)
    if not units:
        warnings.warn(f"load_biomedica: no sample of {os.fspath(path_or_repo_id)} matches the filters", UserWarning,
                      stacklevel=2)
    readers = _readers(world_size, num_workers)
    if streaming and readers is not None and units:
        units = split_units(units, readers[0] * readers[1])
        if len(units) % (readers[0] * readers[1]):
            _warn_uneven(len(units), n_samples, *readers)
    gen_kwargs = {"shards": units, "storage_options": storage_options}
    if streaming:
        return IterableDataset.from_generator(generate_samples, features=features(decode), gen_kwargs=gen_kwargs,
                                              **load_dataset_kwargs)
    if not units:   # Dataset.from_generator refuses an empty split
        feats = features(decode)
        return Dataset.from_dict({name: [] for name in feats}, features=feats)
    fs, path = fsspec.core.url_to_fs(index_url, **storage_options)
    load_dataset_kwargs.setdefault("fingerprint", Hasher.hash([fs.ukey(path), units, decode]))
    return Dataset.from_generator(generate_samples, features=features(decode), gen_kwargs=gen_kwargs,
                                  **load_dataset_kwargs)

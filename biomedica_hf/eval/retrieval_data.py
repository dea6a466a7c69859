"""Image-caption pairs for retrieval: a dataset folder built by this project, or a Parquet table.

A dataset folder is read through its ``figures.parquet`` index (``key``, ``caption``, ``shard``,
``image_offset``, ``image_size``, ``subset``): an image's bytes are
``DIR/shard[image_offset:image_offset + image_size]`` (``io.ranges.read_many``), so only the images
are read, never whole shards.
A Parquet file or folder with ``image`` (bytes or ``{bytes, path}``) and ``caption`` (or ``text``)
columns works too.

Configs: a licence subset (``commercial``, ...) filters the ``subset`` column; ``all`` takes every row;
any other config (``concept-filtered``, ``concept-balanced``, ..., or the card's per-licence
``commercial-concept-filtered``: that folder's ``commercial`` tars) lives in its own shard folder
``DIR/<config>/*.tar`` (its samples are copies, so their ``subset`` column still says ``commercial`` etc.,
which is why filtering ``figures.parquet`` by the config's name found nothing): its tars are read directly
(member offsets from the tar headers) and captions come from the tars' ``.txt`` members.

Splits: when ``figures.parquet`` has a ``split`` column with ``test`` rows, ``split="auto"`` (the default)
keeps only those (the held-out split of a partitioned build); ``"all"`` keeps everything. A dataset folder's rows
are chosen by one :class:`~biomedica_hf.filters.Selection` (licence subset and split), the loader's own filter.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.eval.evalset import DATA_HINT, DataNotFoundError, parquet_files
from biomedica_hf.filters import Selection
from biomedica_hf.io.ranges import read_many
from biomedica_hf.io.tars import read_members, tar_members
from biomedica_hf.layout import FIGURES_INDEX, TABLE_CONFIGS, config_folders, folder_files


@dataclass
class Pairs:
    """Captions in memory; images read on demand by index."""

    keys: list[str]
    captions: list[str]
    root: Path | None = None            # dataset folder (images read from shards)
    shards: list[str] | None = None
    offsets: list[int] | None = None
    sizes: list[int] | None = None
    blobs: list[bytes] | None = None    # Parquet source: bytes in memory
    split: str | None = None            # the split these pairs are (None: the whole folder / table)

    def __len__(self) -> int:
        return len(self.keys)

    def image_bytes(self, indices: list[int]) -> list[bytes]:
        """Encoded images of ``indices`` (read in offset order per shard, returned in the given order)."""
        if self.blobs is not None:
            return [self.blobs[i] for i in indices]
        return read_many(self.root, [self.shards[i] for i in indices], [self.offsets[i] for i in indices],
                         [self.sizes[i] for i in indices])


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".gif", ".bmp")


def _split_filter(table, split: str):
    """(table, split label) after the split rule: ``auto`` keeps ``test`` rows when any exist."""
    if "split" not in table.column_names or split == "all":
        return table, None
    want = "test" if split == "auto" else split
    kept = table.filter(pc.equal(table["split"], want))
    if split == "auto" and kept.num_rows == 0:
        return table, None
    return kept, want


def _select(table: pa.Table, subset: str, split: str) -> tuple[pa.Table, str | None]:
    """The rows of a dataset folder's index that a retrieval set takes, filtered by one
    :class:`~biomedica_hf.filters.Selection` (the loader's rule): the licence ``subset`` and the split (``auto``:
    ``test`` when those rows have any, else every split; ``all``: every split); with the split label used."""
    want = None if "split" not in table.column_names or split == "all" else "test" if split == "auto" else split
    selection = Selection(subset=subset, split=want)

    def rows(sel: Selection) -> pa.Table:
        expr = sel.expression()
        return table if expr is None else table.filter(expr)

    kept = rows(selection)
    if split == "auto" and want is not None and kept.num_rows == 0:
        return rows(selection.replace(split=None)), None
    return kept, want


def _config_folder(root: Path, config: str) -> tuple[str, str]:
    """``(folder, tar glob)`` of a materialised config: ``concept-filtered`` -> all its tars; the card's per-licence
    name ``commercial-concept-filtered`` -> ``concept-filtered/concept-filtered-commercial-*.tar``."""
    if (root / config).is_dir():
        return config, "*.tar"
    subset, _, name = config.partition("-")
    if subset in ("commercial", "noncommercial", "other") and name and (root / name).is_dir():
        return name, f"{name}-{subset}-*.tar"
    return config, "*.tar"


def _scan_config(root: Path, config: str) -> dict[str, dict]:
    """key -> {caption, shard, image_offset, image_size} for every sample of ``DIR/<config>/*.tar``."""
    out: dict[str, dict] = {}
    config, pattern = _config_folder(root, config)
    for tar in folder_files(root / config, pattern):    # flat or in sNNN/gNNN sub-folders (layout.shard_dirs)
        members: dict[str, dict] = {}
        for m in tar_members(tar):                          # io.tars: the one tar reader (headers only)
            key, _, ext = m.name.rpartition(".")
            entry = members.setdefault(key, {"shard": tar.relative_to(root).as_posix()})
            if f".{ext.lower()}" in IMAGE_SUFFIXES:
                entry["image_offset"], entry["image_size"] = m.offset, m.size
        for m, data in read_members(tar, lambda name: name.endswith(".txt")):     # captions by byte range
            members.setdefault(m.name.rpartition(".")[0], {})["caption"] = data.decode("utf-8")
        out.update({k: v for k, v in members.items() if "image_offset" in v})
    return out


def _config_names(root: Path, table) -> list[str]:
    names = sorted(set(table["subset"].to_pylist())) + ["all"]
    tables = [t for t in TABLE_CONFIGS if folder_files(root / t, "*.tar")]
    return names + sorted(n for n in [*tables, *(p.name for p in config_folders(root))] if n not in names)


def load_pairs(path: str | os.PathLike, subset: str | None = None, limit: int | None = None,
               split: str = "auto") -> Pairs:
    """Pairs from a dataset folder (``figures.parquet``; ``subset`` = a config) or eval Parquet.

    See the module docstring for configs and the ``split`` rule.
    """
    root = Path(path)
    index = root / FIGURES_INDEX
    if index.is_file():
        names = pq.read_schema(index).names
        cols = ["key", "caption", "shard", "image_offset", "image_size", "subset"] + (["split"] if "split" in names
                                                                                       else [])
        table = pq.read_table(index, columns=cols)
        own = None
        if subset and subset != "all" and subset not in set(table["subset"].to_pylist()):
            folder, pattern = _config_folder(root, subset)
            if not folder_files(root / folder, pattern):
                raise DataNotFoundError(f"{root}: no config {subset!r}; configs: "
                                        f"{', '.join(_config_names(root, table))}")
            own = _scan_config(root, subset)
            table = table.filter(pc.is_in(table["key"], pa.array(list(own), pa.string())))
        table, used_split = _select(table, subset if own is None and subset else "all", split)
        table = table.filter(pc.greater(pc.utf8_length(pc.fill_null(table["caption"], "")), 0))
        table = table.sort_by([("key", "ascending")])
        if limit:
            table = table.slice(0, limit)
        c = table.to_pydict()
        if own is not None:       # read the config's own shards (byte-identical copies of the samples)
            loc = [own[k] for k in c["key"]]
            return Pairs(c["key"], c["caption"], root, [x["shard"] for x in loc], [x["image_offset"] for x in loc],
                         [x["image_size"] for x in loc], split=used_split)
        return Pairs(c["key"], c["caption"], root, c["shard"], c["image_offset"], c["image_size"], split=used_split)
    files = parquet_files(root) if root.exists() else []
    if not files:
        raise DataNotFoundError(f"{DATA_HINT} (no figures.parquet or Parquet pairs at {root})")
    keys, caps, blobs = [], [], []
    for f in files:
        names = pq.read_schema(f).names
        text = "caption" if "caption" in names else "text"
        if "image" not in names or text not in names:
            raise DataNotFoundError(f"{f}: retrieval Parquet needs 'image' and 'caption' (or 'text') columns")
        key = "key" if "key" in names else ("image_id" if "image_id" in names else None)
        t = pq.read_table(f, columns=["image", text] + ([key] if key else []) + (["split"] if "split" in names else []))
        t, _ = _split_filter(t, split)
        for r in t.to_pylist():
            img = r["image"]
            blobs.append(img["bytes"] if isinstance(img, dict) else img)
            caps.append(r[text])
            keys.append(str(r[key]) if key else f"{f.stem}/{len(keys)}")
            if limit and len(keys) >= limit:
                return Pairs(keys, caps, blobs=blobs)
    return Pairs(keys, caps, blobs=blobs)


@dataclass(frozen=True)
class RetrievalSource:
    """A retrieval set: an explicit path, or ``name`` looked up under the data dir."""

    path: Path | None = None
    name: str | None = None
    subset: str | None = None
    split: str = "auto"                 # auto: the test split when the folder has one

    def locate(self, ctx) -> Path:
        if self.path is not None:
            if not self.path.exists():
                raise DataNotFoundError(f"{DATA_HINT} ({self.path} does not exist)")
            return self.path
        if ctx.data_dir is not None and (ctx.data_dir / self.name).exists():
            return ctx.data_dir / self.name
        raise DataNotFoundError(f"{DATA_HINT} (retrieval set {self.name!r}: expected DATA_DIR/{self.name}, "
                                "a dataset folder or Parquet with image + caption)")

    def load(self, ctx, limit: int | None = None) -> Pairs:
        return load_pairs(self.locate(ctx), self.subset, limit, self.split)

    def describe(self) -> str:
        return str(self.path) if self.path else f"DATA_DIR/{self.name}"

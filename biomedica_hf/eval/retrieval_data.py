"""Image-caption pairs for retrieval: a dataset folder built by this project, or a Parquet table.

A dataset folder is read through its ``figures.parquet`` index (``key``, ``caption``, ``shard``,
``image_offset``, ``image_size``, ``subset``): an image's bytes are
``open(DIR/shard).seek(image_offset).read(image_size)``, so only the images are read, never whole shards.
A Parquet file or folder with ``image`` (bytes or ``{bytes, path}``) and ``caption`` (or ``text``)
columns works too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from .evalset import DATA_HINT, DataNotFoundError, parquet_files


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

    def __len__(self) -> int:
        return len(self.keys)

    def image_bytes(self, indices: list[int]) -> list[bytes]:
        """Encoded images of ``indices`` (read in offset order per shard, returned in the given order)."""
        if self.blobs is not None:
            return [self.blobs[i] for i in indices]
        out: dict[int, bytes] = {}
        by_shard: dict[str, list[int]] = {}
        for i in sorted(indices, key=lambda i: (self.shards[i], self.offsets[i])):
            by_shard.setdefault(self.shards[i], []).append(i)
        for shard, members in by_shard.items():
            with open(self.root / shard, "rb") as handle:
                for i in members:
                    handle.seek(self.offsets[i])
                    out[i] = handle.read(self.sizes[i])
        return [out[i] for i in indices]


def load_pairs(path: str | os.PathLike, subset: str | None = None, limit: int | None = None) -> Pairs:
    """Pairs from a dataset folder (``figures.parquet``) or eval Parquet; ``subset`` filters a folder's subset."""
    root = Path(path)
    index = root / "figures.parquet"
    if index.is_file():
        table = pq.read_table(index, columns=["key", "caption", "shard", "image_offset", "image_size", "subset"])
        if subset and subset != "all":
            table = table.filter(pc.equal(table["subset"], subset))
        table = table.filter(pc.greater(pc.utf8_length(pc.fill_null(table["caption"], "")), 0))
        table = table.sort_by([("key", "ascending")])
        if limit:
            table = table.slice(0, limit)
        cols = table.to_pydict()
        return Pairs(cols["key"], cols["caption"], root, cols["shard"], cols["image_offset"], cols["image_size"])
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
        t = pq.read_table(f, columns=["image", text] + ([key] if key else []))
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
        return load_pairs(self.locate(ctx), self.subset, limit)

    def describe(self) -> str:
        return str(self.path) if self.path else f"DATA_DIR/{self.name}"

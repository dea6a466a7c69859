"""The BIOMEDICA eval-set Parquet layout: read, write, locate.

One row per image: ``image`` (struct ``{bytes, path}``, as ``datasets.Image`` stores it), ``task``,
``options`` (candidate class texts), ``answer_idx`` (index of the correct option), ``label`` (its
text), ``image_id`` and ``provenance_license`` (plus ``split`` in files this package writes).
``BIOMEDICA/Biomedica2025EvalSet`` on the Hub uses this layout with one folder per suite.

Many classes: when every row of a file shares one list of more than :data:`SHARED_OPTIONS_MIN` options (a user
set of 10,000 classes), the list is stored once, in the file's metadata (``biomedica_options``), and the rows'
``options`` are null; :func:`read_evalset` gives every such row the same tuple. In memory, rows with equal
options share one tuple, so memory grows with the rows plus the classes, never rows x classes.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biomedica_hf.io.atomic import write_table

EVALSET_COLUMNS = ("image", "task", "options", "answer_idx", "label", "image_id", "provenance_license")
EVALSET_SCHEMA = pa.schema([
    pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
    pa.field("task", pa.string()),
    pa.field("options", pa.list_(pa.string())),
    pa.field("answer_idx", pa.int32()),
    pa.field("label", pa.string()),
    pa.field("image_id", pa.string()),
    pa.field("provenance_license", pa.string()),
    pa.field("split", pa.string()),
])
# datasets reads this to decode ``image`` as an Image feature
_HF_FEATURES = {"info": {"features": {
    "image": {"_type": "Image"}, "task": {"dtype": "string", "_type": "Value"},
    "options": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "List"},
    "answer_idx": {"dtype": "int32", "_type": "Value"}, "label": {"dtype": "string", "_type": "Value"},
    "image_id": {"dtype": "string", "_type": "Value"},
    "provenance_license": {"dtype": "string", "_type": "Value"}, "split": {"dtype": "string", "_type": "Value"}}}}


class DataNotFoundError(FileNotFoundError):
    """A task's data is absent; the message says where it was looked for and how to provide it."""

    def __init__(self, message: str, suite: str | None = None, looked: str | None = None) -> None:
        super().__init__(message)
        self.suite = suite          # the eval-set suite that is missing, if any
        self.looked = looked        # where it was looked for


DATA_HINT = "data not found: pass --data-dir or set BIOMEDICA_EVAL_DIR"


@dataclass
class EvalRows:
    """Rows of one zero-shot task (images stay encoded until a batch needs them)."""

    images: list[bytes]
    options: list[tuple[str, ...]]
    answer_idx: np.ndarray
    labels: list[str]
    image_ids: list[str]
    licenses: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx: Sequence[int]) -> EvalRows:
        """A subset of rows, in the given order."""
        return EvalRows([self.images[i] for i in idx], [self.options[i] for i in idx],
                        self.answer_idx[np.asarray(idx, dtype=np.int64)], [self.labels[i] for i in idx],
                        [self.image_ids[i] for i in idx], [self.licenses[i] for i in idx] if self.licenses else [])


#: a list of options shared by every row of a file is stored once (file metadata) above this many options
SHARED_OPTIONS_MIN = 64
SHARED_OPTIONS_KEY = b"biomedica_options"


def write_evalset(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write rows (dicts with the layout's keys; ``image`` as bytes or ``{bytes, path}``) atomically; options
    shared by every row, when there are more than :data:`SHARED_OPTIONS_MIN`, are stored once."""
    rows = list(rows)
    first = rows[0].get("options") if rows else None
    shared = (list(first) if first is not None and len(first) > SHARED_OPTIONS_MIN
              and all(r.get("options") is first or r.get("options") == first for r in rows) else None)
    records = []
    for r in rows:
        image = r["image"] if isinstance(r["image"], dict) else {"bytes": r["image"], "path": None}
        records.append({**{k: r.get(k) for k in EVALSET_SCHEMA.names}, "image": image})
        if shared is not None:
            records[-1]["options"] = None
    table = pa.Table.from_pylist(records, schema=EVALSET_SCHEMA)
    meta = {"huggingface": json.dumps(_HF_FEATURES)}
    if shared is not None:
        meta[SHARED_OPTIONS_KEY.decode()] = json.dumps(shared)
    table = table.replace_schema_metadata(meta)
    path = Path(path)
    write_table(path, table, row_group_size=1000)
    return path


def parquet_files(root: str | os.PathLike) -> list[Path]:
    """``root`` itself if it is a Parquet file, else every ``*.parquet`` below it (sorted)."""
    root = Path(root)
    return [root] if root.is_file() else sorted(root.rglob("*.parquet"))


def task_names(files: Sequence[Path]) -> list[str]:
    """Distinct values of the ``task`` column over ``files`` (first-seen order)."""
    seen: dict[str, None] = {}
    for f in files:
        for t in pq.read_table(f, columns=["task"])["task"].to_pylist():
            seen.setdefault(t, None)
    return list(seen)


def read_evalset(files: Sequence[Path], task: str | None = None, split: str | None = None,
                 min_options: int = 2) -> EvalRows:
    """Rows of ``task`` (all tasks if None) from eval-set Parquet files.

    Rows with fewer than ``min_options`` options (a free point) or an out-of-range ``answer_idx`` are dropped.
    """
    images, options, answers, labels, ids, lic = [], [], [], [], [], []
    same: dict[tuple[str, ...], tuple[str, ...]] = {}     # one tuple per distinct options list
    for f in files:
        schema = pq.read_schema(f)
        names = schema.names
        shared = (schema.metadata or {}).get(SHARED_OPTIONS_KEY)
        shared_opts = tuple(json.loads(shared)) if shared else ()
        cols = [c for c in EVALSET_COLUMNS if c in names] + (["split"] if "split" in names else [])
        filters = [("task", "=", task)] if task is not None else []
        if split is not None and "split" in names:
            filters.append(("split", "=", split))
        table = pq.read_table(f, columns=cols, filters=filters or None)   # row groups pruned by statistics
        for r in table.to_pylist():
            if r["options"] is None:
                opts = shared_opts           # one tuple for the file, not hashed per row
            else:
                opts = tuple(r["options"])
                opts = same.setdefault(opts, opts)
            a = r["answer_idx"]
            if len(opts) < min_options or a is None or not 0 <= a < len(opts):
                continue
            img = r["image"]
            images.append(img["bytes"] if isinstance(img, dict) else img)
            options.append(opts)
            answers.append(int(a))
            labels.append(r.get("label") or opts[a])
            ids.append(str(r.get("image_id") or len(ids)))
            lic.append(r.get("provenance_license") or "")
    return EvalRows(images, options, np.asarray(answers, dtype=np.int64), labels, ids, lic)


def decode_image(data: bytes):
    """PIL image from encoded bytes, in its own mode (loaded, so the buffer can be dropped); the encoders make it
    RGB by the one image policy (``encode_images`` -> :func:`biomedica_hf.images.to_rgb`)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    im.load()
    return im

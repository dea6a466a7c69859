"""Evaluation contamination: training samples whose image near-duplicates an evaluation image.

Tasks come from the evaluation registry's public :func:`~biomedica_hf.eval.tasks.registry.resolve_tasks`
(fixture sets, the BIOMEDICA suite when present, retrieval folders, and any spec the registry learns),
so every task with a Parquet source or a retrieval source can be checked. Evaluation images are hashed
with :func:`.hashing.bytes_phash` of the folder's definition (``build_summary.json`` ``phash``; none recorded = the
legacy ``phash256`` of older code): the training side then uses ``figures.parquet``'s ``phash`` column as it is, and
hashes the shard images (byte ranges from ``figures.parquet``) only where the column is missing or null, or where
the folder's definition is one this code does not compute (then everything is ``HASH_NAME``): hashes of two
definitions are never compared.

Matching: the evaluation hashes' 36 LSH keys (:mod:`.groups`) are held in memory (sorted arrays;
evaluation sets are small), the training hashes stream by in batches, every key match is verified with
the exact distance. Writes ``exclusions.txt`` (keys, one per line), ``pairs.parquet`` (task, eval image,
key, distance), ``report.json`` and ``contact_sheet.png`` (example pairs) into ``out_dir``.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.images import to_rgb
from biomedica_hf.io.atomic import atomic_path
from biomedica_hf.io.ranges import ShardFiles, read_range
from biomedica_hf.layout import CARD, DECONTAMINATION_DIR, FIGURES_INDEX
from biomedica_hf.neardup.groups import DEFAULT_THRESHOLD, lsh_tables, table_keys
from biomedica_hf.neardup.hashing import (
    HASH_BITS,
    DEFINITIONS,
    HASH_NAME,
    bytes_phash,
    folder_hash_name,
    hamming,
    hex_to_words,
    open_image,
)

log = logging.getLogger(__name__)

BATCH = 65_536
SHEET_PAIRS = 24


@dataclass
class EvalImages:
    """One task's hashed evaluation images."""

    task: str
    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    unreadable: int = 0
    source: str = ""


def task_images(task, ctx) -> Iterator[tuple[str, bytes]]:
    """(image id, encoded bytes) of every image of a task: its Parquet source rows or its retrieval pairs."""
    if getattr(task, "source", None) is not None:
        for f in task.source.files(ctx):
            names = pq.read_schema(f).names
            if "image" not in names:
                raise ValueError(f"{f}: no 'image' column (task {task.name})")
            cols = ["image"] + [c for c in ("image_id", "task", "split") if c in names]
            pf = pq.ParquetFile(f)
            n = 0
            for batch in pf.iter_batches(batch_size=256, columns=cols):
                for r in batch.to_pylist():
                    n += 1
                    if task.task_filter is not None and r.get("task") != task.task_filter:
                        continue
                    if task.split is not None and "split" in r and r["split"] != task.split:
                        continue
                    img = r["image"]
                    data = img.get("bytes") if isinstance(img, dict) else img
                    if data is None and isinstance(img, dict) and img.get("path"):
                        data = Path(img["path"]).read_bytes()
                    yield str(r.get("image_id") or f"{f.stem}/{n - 1}"), data
    elif getattr(task, "retrieval_source", None) is not None:
        pairs = task.retrieval_source.load(ctx)
        for lo in range(0, len(pairs), 256):
            idx = list(range(lo, min(lo + 256, len(pairs))))
            yield from zip([pairs.keys[i] for i in idx], pairs.image_bytes(idx))
    else:
        raise ValueError(f"task {task.name} has no image source")


def hash_task(task, ctx, progress: bool = False, definition: str = HASH_NAME) -> EvalImages:
    out = EvalImages(task.name, source=(task.source or task.retrieval_source).describe())
    items = task_images(task, ctx)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=f"hash {task.name}", unit="img", leave=False)
    for image_id, data in items:
        try:
            out.hashes.append(bytes_phash(data, definition))
            out.ids.append(image_id)
        except Exception as exc:   # noqa: BLE001 - an unreadable evaluation image is counted, not fatal
            out.unreadable += 1
            log.warning("%s: image %s unreadable (%s)", task.name, image_id, exc)
    return out


class EvalIndex:
    """LSH keys of every evaluation hash, sorted, for probing with training hashes."""

    def __init__(self, hexes: Sequence[str]) -> None:
        self.tables = lsh_tables()
        self.words = hex_to_words(list(hexes)) if hexes else np.zeros((0, HASH_BITS // 64), np.uint64)
        keys = table_keys(self.words, self.tables).reshape(-1) if len(hexes) else np.zeros(0, np.uint64)
        ids = np.repeat(np.arange(len(hexes)), len(self.tables))
        order = np.argsort(keys, kind="stable")
        self.keys, self.ids = keys[order], ids[order]

    def match(self, words: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(training row, eval index, distance) of every pair within ``threshold`` bits."""
        if not len(words) or not len(self.keys):
            return (np.zeros(0, np.int64),) * 3
        tk = table_keys(words, self.tables).reshape(-1)
        lo, hi = np.searchsorted(self.keys, tk, "left"), np.searchsorted(self.keys, tk, "right")
        n = hi - lo
        hit = np.flatnonzero(n)
        if not len(hit):
            return (np.zeros(0, np.int64),) * 3
        rows = np.repeat(hit // len(self.tables), n[hit])
        pos = np.repeat(lo[hit] - np.concatenate([[0], np.cumsum(n[hit])[:-1]]), n[hit]) + np.arange(n[hit].sum())
        ev = self.ids[pos]
        pair = np.unique(np.stack([rows, ev], axis=1), axis=0)
        d = hamming(words[pair[:, 0]], self.words[pair[:, 1]])
        ok = d <= threshold
        return pair[ok, 0], pair[ok, 1], d[ok]


def training_hashes(dataset_dir: Path, progress: bool = False, use_index: bool = True,
                    definition: str = HASH_NAME) -> Iterator[pa.Table]:
    """Batches of (key, phash, shard, image_offset, image_size) for every training sample of the folder; a hash the
    index lacks (no column, a null) is computed from the shard image with ``definition`` (the index's, so both
    are one definition); with ``use_index=False`` (the index's hashes are of a definition this code does not
    compute) every hash is computed so."""
    index = dataset_dir / FIGURES_INDEX
    if not index.is_file():
        raise FileNotFoundError(f"{dataset_dir}: no figures.parquet (is this a folder built by `biomedica build`?)")
    pf = pq.ParquetFile(index)
    names = [n for n in pf.schema_arrow.names if use_index or n != "phash"]
    cols = ["key", "shard", "image_offset", "image_size"] + (["phash"] if "phash" in names else [])
    bar = None
    if progress and "phash" not in names:
        from tqdm import tqdm

        bar = tqdm(total=pf.metadata.num_rows, desc="hash training images", unit="img")
    with ShardFiles(dataset_dir) as shards:
        for batch in pf.iter_batches(batch_size=BATCH, columns=cols):
            t = pa.Table.from_batches([batch])
            if "phash" in names and t["phash"].null_count == 0:
                yield t
                continue
            have = t["phash"].to_pylist() if "phash" in names else [None] * t.num_rows
            hashes = []
            for key, shard, off, size, h in zip(t["key"].to_pylist(), t["shard"].to_pylist(),
                                                t["image_offset"].to_pylist(), t["image_size"].to_pylist(), have):
                if h is None:
                    try:
                        h = bytes_phash(shards.read(shard, off, size), definition)
                    except Exception as exc:   # noqa: BLE001 - counted as unhashed in the report
                        log.warning("training sample %s unreadable (%s)", key, exc)
                hashes.append(h)
                if bar is not None:
                    bar.update(1)
            if "phash" in t.column_names:
                t = t.drop_columns(["phash"])
            yield t.append_column("phash", pa.array(hashes, pa.string()))
    if bar is not None:
        bar.close()


def _image_of(dataset_dir: Path, shard: str, off: int, size: int):
    return open_image(read_range(dataset_dir / shard, off, size))


def contact_sheet(pairs: list[dict], eval_bytes: dict[tuple[str, str], bytes], dataset_dir: Path, path: Path,
                  cell: int = 160) -> None:
    """A PNG of up to :data:`SHEET_PAIRS` pairs: evaluation image | training image | task, ids, distance."""
    from PIL import Image, ImageDraw

    rows = pairs[:SHEET_PAIRS]
    text_w = 420
    sheet = Image.new("RGB", (2 * cell + text_w + 40, max(1, len(rows)) * (cell + 10) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    if not rows:
        draw.text((10, 10), "no contaminated pairs", fill="black")
    for i, p in enumerate(rows):
        y = 10 + i * (cell + 10)
        for j in range(2):
            x = 10 + j * (cell + 10)
            try:
                im = to_rgb(open_image(eval_bytes[(p["task"], p["eval_image"])]) if j == 0 else
                            _image_of(dataset_dir, p["shard"], p["image_offset"], p["image_size"]))
            except Exception as exc:   # noqa: BLE001 - a missing shard leaves a grey cell, not a failed run
                log.warning("contact sheet: image unavailable (%s)", exc)
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(200, 200, 200))
                draw.text((x + 8, y + cell // 2), "image unavailable", fill="black")
                continue
            im.thumbnail((cell, cell))
            sheet.paste(im, (x, y))
        draw.text((2 * cell + 40, y + 10), f"{p['task']}\neval: {p['eval_image']}\ntrain: {p['key']}\n"
                                           f"distance: {p['distance']} bits", fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _public(source: str | None) -> str | None:
    """A task source as the published report names it: a local path by its last component."""
    if not source:
        return source
    spec, sep, rest = source.partition(":")
    if sep and os.path.isabs(rest):
        return f"{spec}:{Path(rest).name}"
    return Path(source).name if os.path.isabs(source) else source


def decontaminate(dataset_dir: str | os.PathLike, tasks: str | Sequence, out_dir: str | os.PathLike | None = None,
                  threshold: int = DEFAULT_THRESHOLD, ctx=None, progress: bool = False, update_card: bool = True) -> dict:
    """Find training samples of ``dataset_dir`` that near-duplicate an image of any of ``tasks``.

    ``tasks``: a registry SPEC (``"@fixtures,imagefolder:PATH"``) or resolved ``Task`` objects. Writes
    ``exclusions.txt``, ``pairs.parquet``, ``report.json`` and ``contact_sheet.png`` into ``out_dir``
    (default ``DIR/decontamination``) and returns the report. Whatever ``out_dir``, the dataset keeps the copy its
    card cites (``DIR/decontamination/report.json`` and ``exclusions.txt``, which ``biomedica push`` uploads), and
    with ``update_card`` an existing card (``DIR/README.md``) is rewritten so its contamination section says what
    this run found. The report names no local path (it is published): the dataset and local task sources by name.
    """
    from biomedica_hf.eval.tasks.base import DataContext
    from biomedica_hf.eval.tasks.registry import resolve_tasks

    root = Path(dataset_dir)
    out = Path(out_dir) if out_dir is not None else root / DECONTAMINATION_DIR
    ctx = ctx or DataContext.from_env()
    resolved = resolve_tasks(tasks, ctx) if isinstance(tasks, str) else list(tasks)
    recorded = folder_hash_name(root)
    definition, other = (recorded, False) if recorded in DEFINITIONS else (HASH_NAME, True)
    evals = [hash_task(t, ctx, progress, definition) for t in resolved]
    owner = [(e.task, i) for e in evals for i in e.ids]
    index = EvalIndex([h for e in evals for h in e.hashes])
    found: list[dict] = []
    train_total = train_unhashed = 0
    from_index = "phash" in pq.read_schema(root / FIGURES_INDEX).names if (root / FIGURES_INDEX).is_file() else False
    if from_index and other:      # never compare hashes of two definitions
        log.warning("%s: figures.parquet's phash values are %s, which this code does not compute: the training "
                    "hashes are computed from the shard images (%s)", root, recorded, HASH_NAME)
        from_index = False
    for t in training_hashes(root, progress, use_index=from_index, definition=definition):
        train_total += t.num_rows
        valid = pc.is_valid(t["phash"]).to_numpy(zero_copy_only=False)
        train_unhashed += int((~valid).sum())
        t = t.filter(pa.array(valid))
        if not t.num_rows:
            continue
        rows, ev, dist = index.match(hex_to_words(t["phash"].to_pylist()), threshold)
        for r, e, d in zip(rows.tolist(), ev.tolist(), dist.tolist()):
            task, image_id = owner[e]
            found.append({"task": task, "eval_image": image_id, "key": t["key"][r].as_py(), "distance": int(d),
                          "shard": t["shard"][r].as_py(), "image_offset": t["image_offset"][r].as_py(),
                          "image_size": t["image_size"][r].as_py()})
    found.sort(key=lambda p: (p["task"], p["distance"], p["key"], p["eval_image"]))
    keys = sorted({p["key"] for p in found})
    per_task = {}
    for e in evals:
        mine = [p for p in found if p["task"] == e.task]
        per_task[e.task] = {"source": _public(e.source), "eval_images": len(e.ids), "eval_unreadable": e.unreadable,
                            "contaminated_eval_images": len({p["eval_image"] for p in mine}),
                            "matched_training_samples": len({p["key"] for p in mine}),
                            "pairs": len(mine),
                            "fraction_contaminated": round(len({p["eval_image"] for p in mine}) / len(e.ids), 6)
                            if e.ids else 0.0}
    report = {"dataset": root.resolve().name, "hash": definition, "hash_bits": HASH_BITS, "threshold": threshold,
              "training_samples": train_total, "training_unhashed": train_unhashed,
              "training_hashes_from": "figures.parquet phash" if from_index else
              f"shard images (figures.parquet's phash is {recorded}, unknown to this code)" if other else "shard images",
              "excluded_keys": len(keys), "tasks": per_task,
              "files": {"exclusions": "exclusions.txt", "pairs": "pairs.parquet", "contact_sheet": "contact_sheet.png"}}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "exclusions.txt") as tmp:
        tmp.write_text("".join(k + "\n" for k in keys))
    schema = pa.schema([("task", pa.string()), ("eval_image", pa.string()), ("key", pa.string()),
                        ("distance", pa.int32())])
    with atomic_path(out / "pairs.parquet") as tmp:
        pq.write_table(pa.Table.from_pylist([{k: p[k] for k in schema.names} for p in found], schema=schema), tmp)
    sheet_pairs = _spread(found)
    wanted = {(p["task"], p["eval_image"]) for p in sheet_pairs}
    eval_bytes = {}
    if wanted:
        for t in resolved:
            if any(w[0] == t.name for w in wanted):
                for image_id, data in task_images(t, ctx):
                    if (t.name, image_id) in wanted:
                        eval_bytes[(t.name, image_id)] = data
    contact_sheet(sheet_pairs, eval_bytes, root, out / "contact_sheet.png")
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    published = root / DECONTAMINATION_DIR
    if out.resolve() != published.resolve():   # the copy the card cites and push uploads
        published.mkdir(parents=True, exist_ok=True)
        for name in ("exclusions.txt", "report.json"):
            with atomic_path(published / name) as tmp:
                tmp.write_bytes((out / name).read_bytes())
    if update_card and (root / CARD).is_file():
        from biomedica_hf.dataset.card import write_card

        try:
            write_card(root)
            log.info("dataset card rewritten: %s", root / CARD)
        except Exception as e:  # noqa: BLE001 - the report stands; the card is regenerated with `biomedica card`
            report["card_error"] = f"{type(e).__name__}: {e}"
            log.warning("the dataset card was not rewritten (%s): run `biomedica card %s`", e, root)
    log.info("decontamination: %d training samples near-duplicate evaluation images", len(keys))
    return report


def _spread(found: list[dict]) -> list[dict]:
    """Up to SHEET_PAIRS pairs, round-robin over tasks (so one task does not fill the sheet)."""
    by_task: dict[str, list[dict]] = {}
    for p in found:
        by_task.setdefault(p["task"], []).append(p)
    out, i = [], 0
    while len(out) < SHEET_PAIRS and any(i < len(v) for v in by_task.values()):
        out += [v[i] for v in by_task.values() if i < len(v)]
        i += 1
    return out[:SHEET_PAIRS]

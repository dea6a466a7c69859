"""``load_biomedica(..., level="panel")``: stream the panels that ``biomedica panels`` cut out of the figures.

Reads ``panels.parquet`` (one row per panel: where its crop sits in a ``<licence>-panels`` shard, its parent
figure, bbox, label, subcaption, method, confidence), filters it, and reads each wanted crop by byte range from
its shard (local file or Hub URL), one generator call per shard. Rows: ``key`` (``<parent key>_pNN``), ``image``
(the crop), ``caption`` (shared part + subcaption: the panel's training text) and ``metadata`` (the panel's json).
This module only knows the file layout (``layout.PANELS_INDEX``); the panels package writes it.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from biomedica_hf.filters import Selection
from biomedica_hf.io.tars import range_members
from biomedica_hf.layout import PANELS_INDEX

PANEL_METADATA = {"parent_key": "string", "pmcid": "string", "figure_id": "string", "subset": "string",
                  "license_code": "string", "split": "string", "year": "int32", "panel_index": "int32",
                  "panel_count": "int32", "bbox": "bbox", "label": "string", "label_score": "float32",
                  "caption_label": "string", "subcaption": "string", "shared": "string", "method": "string",
                  "confidence": "float32", "score": "float32"}
METHODS = ("label", "position", "order", "shared", "single")


def panel_features(decode: bool = True):
    from datasets import Features, Image, List, Value

    meta = {k: List(Value("int32")) if t == "bbox" else Value(t) for k, t in PANEL_METADATA.items()}
    return Features({"key": Value("string"), "image": Image(decode=decode), "caption": Value("string"),
                     "metadata": meta})


def _read_index(url: str, token: str | bool | None):
    import pyarrow.parquet as pq

    if url.startswith("hf://"):
        from huggingface_hub import HfFileSystem

        with HfFileSystem(token=token).open(url, "rb") as f:
            return pq.read_table(f)
    if not os.path.exists(url):
        raise FileNotFoundError(f"{url} not found: run `biomedica panels DIR` on the folder first")
    return pq.read_table(url)


def select_panels(table, subset: str | Sequence[str] = "commercial", split: str | None = None,
                  methods: Sequence[str] | None = None, min_confidence: float | None = None):
    """The rows of ``panels.parquet`` to load (pure: an Arrow table in, one out)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    selection = Selection(subset=subset, split=split)      # the loader's rule (checked when made)
    mask = pc.is_in(table["subset"], value_set=pa.array(list(selection.subsets)))
    if selection.split is not None:
        mask = pc.and_(mask, pc.equal(table["split"], selection.split))
    if methods is not None:
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; valid: {', '.join(METHODS)}")
        mask = pc.and_(mask, pc.is_in(table["method"], value_set=pa.array(list(methods))))
    if min_confidence is not None:
        mask = pc.and_(mask, pc.greater_equal(table["confidence"], float(min_confidence)))
    return table.filter(pc.fill_null(mask, False))


def generate_panels(shards: list[tuple[str, list[tuple[int, int]]]], token: str | bool | None = None
                    ) -> Iterator[dict[str, Any]]:
    """Each wanted panel of each ``(shard url, [(offset, size), ...])``, read by byte range."""
    import json

    from biomedica_hf.io.ranges import open_source

    for url, ranges in shards:
        src = open_source(url, token)
        try:
            for offset, size in ranges:
                data = src.fetch(offset, offset + size)
                members = {name: bytes(payload) for name, payload in range_members(data)}   # io.tars
                image = next(n for n in members if n.endswith((".jpg", ".png")))
                key = image.rsplit(".", 1)[0]
                meta = json.loads(members[f"{key}.json"])
                yield {"key": key, "image": {"bytes": members[image], "path": f"{url}/{image}"},
                       "caption": members[f"{key}.txt"].decode("utf-8"),
                       "metadata": {k: meta.get(k) for k in PANEL_METADATA}}
        finally:
            src.close()


def load_panels(path_or_repo_id: str | os.PathLike, subset: str | Sequence[str] = "commercial", *,
                split: str | None = None, methods: Sequence[str] | None = None, min_confidence: float | None = None,
                streaming: bool = True, decode: bool = True, revision: str | None = None,
                token: str | bool | None = None):
    """Panels of a dataset folder or Hub repo (module doc): ``subset`` as in ``load_biomedica``; ``methods``:
    keep panels aligned this way (e.g. ``["label", "order"]``: panels with a subcaption of their own);
    ``min_confidence``: of the alignment."""
    from datasets import Dataset, IterableDataset

    from biomedica_hf.dataset.locations import check_shard_path, dataset_file_url

    table = select_panels(_read_index(dataset_file_url(path_or_repo_id, PANELS_INDEX, revision), token),
                          subset, split, methods, min_confidence)
    by_shard: dict[str, list[tuple[int, int]]] = {}
    for shard, off, size in zip(table["shard"].to_pylist(), table["tar_offset"].to_pylist(),
                                table["tar_size"].to_pylist()):
        by_shard.setdefault(shard, []).append((int(off), int(size)))
    shards = [(dataset_file_url(path_or_repo_id, check_shard_path(s), revision), sorted(r))
              for s, r in by_shard.items()]
    feats = panel_features(decode)
    gen_kwargs = {"shards": shards, "token": token}
    if streaming:
        return IterableDataset.from_generator(generate_panels, features=feats, gen_kwargs=gen_kwargs)
    if not shards:
        return Dataset.from_dict({name: [] for name in feats}, features=feats)
    return Dataset.from_generator(generate_panels, features=feats, gen_kwargs=gen_kwargs)


__all__ = ["METHODS", "generate_panels", "load_panels", "panel_features", "select_panels"]

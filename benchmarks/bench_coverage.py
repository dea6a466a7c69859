"""Epoch coverage of the training split: distinct samples seen in one epoch / selected samples.

    .venv/bin/python benchmarks/bench_coverage.py [--batch 32] [--json out.json]

Simulates the loader's planning on a synthetic index with unequal shards: one partition of 2,000 articles
(10,000 samples in shards of 1,024, the last one short) and two of 64 articles (320 and 310 samples, one shard
each); "filtered" keeps a seeded 37 % of the samples and drops one whole shard. For W ranks x {0, 2}
DataLoader workers it iterates each rank's stream through the real ``datasets.IterableDataset`` and a real
``torch.utils.data.DataLoader`` (the generator yields keys instead of reading tar bytes), batches of
``--batch``, and counts what an epoch trains on:

* ``old``: the previous split (units cut to a multiple of W x workers, ``split_dataset_by_node``,
  ``drop_last`` batches, every rank stops when the shortest runs out);
* ``new``: ``load_biomedica(rank=)``'s split (:func:`biomedica_hf.dataset.loader.plan_rank`), partial batches
  kept (padded by the recipe), the epoch ends when every rank's share is exhausted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from biomedica_hf.dataset.loader import (ShardRanges, group_units, n_groups, plan_rank,  # noqa: E402
                                         split_units)


def synthetic_units(filtered: bool, seed: int = 0) -> list[ShardRanges]:
    sizes = [("big", [1024] * 9 + [784]), ("small_a", [320]), ("small_b", [310])]
    rng = np.random.default_rng(seed)
    units, key = [], 0
    for part, shards in sizes:
        for s, n in enumerate(shards):
            keys = np.arange(key, key + n)
            key += n
            if filtered:
                keys = keys[rng.random(n) < 0.37]
                if part == "big" and s == 3:
                    keys = keys[:0]
            if len(keys):
                ranges = np.stack([keys * 1024, np.full(len(keys), 1024)], axis=1).astype(np.int64)
                units.append(ShardRanges(f"{part}/{s:05d}.tar", ranges, {"key": keys}))
    return units


def _gen(shards):
    for group in shards:
        for unit in group:
            for k in unit.columns["key"]:
                yield str(int(k)), {"key": int(k)}


def _dataset(groups):
    from datasets import IterableDataset
    from datasets.iterable_dataset import ExamplesIterable

    return IterableDataset(ExamplesIterable(_gen, {"shards": groups}))


def _batches(ds, batch: int, workers: int, drop_last: bool) -> list[list[int]]:
    import torch

    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=drop_last,
                                         collate_fn=lambda xs: [x["key"] for x in xs])
    return list(loader)


def epoch(units: list[ShardRanges], world: int, workers: int, batch: int, how: str) -> dict:
    from datasets.distributed import split_dataset_by_node

    n = sum(len(u.ranges) for u in units)
    if how == "old":
        readers = world * max(1, workers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cut = split_units(units, readers)
        full = _dataset(group_units(cut, n_groups(len(cut), n, readers if len(cut) % readers == 0 else 1)))
        per_rank = [_batches(split_dataset_by_node(full, rank=r, world_size=world) if world > 1 else full, batch,
                             workers, True) for r in range(world)]
        steps = min(len(b) for b in per_rank)           # every rank stops when the shortest runs out
        trained = [k for b in per_rank for batch_keys in b[:steps] for k in batch_keys]
        rank_samples = [sum(len(x) for x in b) for b in per_rank]
    else:
        per_rank = [_batches(_dataset(plan_rank(units, world, r, workers)), batch, workers, False)
                    for r in range(world)]
        steps = max(len(b) for b in per_rank)           # short ranks join with all-padding batches
        trained = [k for b in per_rank for batch_keys in b for k in batch_keys]
        rank_samples = [sum(len(x) for x in b) for b in per_rank]
    return {"samples": n, "distinct": len(set(trained)), "repeated": len(trained) - len(set(trained)),
            "coverage": len(set(trained)) / n, "steps": steps, "rank_min": min(rank_samples),
            "rank_max": max(rank_samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    print("| data | W | workers | samples | old coverage | old ranks min/max | new coverage | new repeats | "
          "new ranks min/max | new steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for filtered in (False, True):
        units = synthetic_units(filtered)
        for world in (1, 2, 4, 8):
            for workers in (0, 2):
                old = epoch(units, world, workers, args.batch, "old")
                new = epoch(units, world, workers, args.batch, "new")
                rows.append({"filtered": filtered, "world": world, "workers": workers, "old": old, "new": new})
                print(f"| {'filtered' if filtered else 'all'} | {world} | {workers} | {new['samples']} | "
                      f"{old['coverage']:.1%} | {old['rank_min']}/{old['rank_max']} | {new['coverage']:.1%} | "
                      f"{new['repeated']} | {new['rank_min']}/{new['rank_max']} | {new['steps']} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

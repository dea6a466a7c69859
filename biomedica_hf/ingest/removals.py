"""An update's removals: the samples of retracted, withdrawn and superseded articles leave the shards (each
touched shard is copied without them under a new name, the old files retired), and their ledger rows are marked.
"""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.ingest.shards import revise_shard, shard_done
from biomedica_hf.ingest.sources.base import FatalBuildError
from biomedica_hf.ingest.state import checkpoint, read_sealed, write_sealed
from biomedica_hf.ingest.work import Work
from biomedica_hf.io.atomic import move_into_place
from biomedica_hf.io.markers import STATS, read_marker
from biomedica_hf.layout import FIGURES_INDEX, shard_paths
from biomedica_hf.ledger import LEDGER_SCHEMA
from biomedica_hf.schema import SKIPPED


def apply_removals(work: Work, k: int) -> int:
    """Remove the samples of articles removed by snapshot ``k`` from the shards; returns how many.

    The plan (which shard loses which keys, and its new name) is sealed in ``removals.json`` before anything
    is written, so a resumed update counts and revises exactly the same, wherever it was stopped. Each shard
    is copied without the keys under a new name (``-rNNN``; none when nothing of it is left); only then are
    the old files moved out of the dataset into ``_work/snapshots/sNNN/retired/`` (deleted once the snapshot is
    complete: never before the new shards and the index are in place)."""
    path = work.snap(k) / "removed.parquet"
    if not path.exists():
        return 0
    plan_path = work.snap(k) / "removals.json"
    retired = work.snap(k) / "retired"
    plan = read_sealed(plan_path)
    if plan is None:
        if retired.exists() and any(retired.rglob("*")):
            raise FatalBuildError(f"{plan_path} is damaged after shards were retired; restore the folder from a "
                                  f"copy or rerun with --rebuild-state")
        plan = _removal_plan(work, k, pq.read_table(path).to_pylist())
        write_sealed(plan_path, plan)
    for old, new, keys, digest in plan["shards"]:
        if new is not None and not shard_done(work.out, new, digest):
            revise_shard(work.out, old, new, set(keys), digest)
            checkpoint("revised")
    for old, *_ in plan["shards"]:
        for f in sorted(shard_paths(work.out, old), key=lambda f: not f.name.endswith(STATS)):   # stats first
            if f.exists():
                move_into_place(f, retired / f.relative_to(work.out))
    if plan["shards"]:
        checkpoint("retired")
    return plan["samples"]


def _removal_plan(work: Work, k: int, removed: list[dict]) -> dict:
    """``{"shards": [[old, new or None, keys, digest]], "samples": n}`` from the published index."""
    index = work.out / FIGURES_INDEX
    shards, n = [], 0
    if removed and index.exists():
        import pyarrow.dataset as ds

        pmcids = pa.array(sorted({r["pmcid"] for r in removed}), pa.string())
        t = ds.dataset(index).to_table(columns=["key", "shard", "pmcid"], filter=pc.is_in(pc.field("pmcid"),
                                                                                          value_set=pmcids))
        by_shard: dict[str, set[str]] = {}
        for key, shard in zip(t["key"].to_pylist(), t["shard"].to_pylist()):
            by_shard.setdefault(shard.removesuffix(".tar"), set()).add(key)
        for old, keys in sorted(by_shard.items()):
            base = old.rsplit("-r", 1)[0] if "-r" in old.rsplit("/", 1)[-1][-5:] else old
            stats = read_marker(shard_paths(work.out, old)[2]) or {}
            left = stats.get("count", len(keys) + 1) - len(keys)
            digest = hashlib.sha256(json.dumps([old, sorted(keys)]).encode()).hexdigest()
            shards.append([old, f"{base}-r{k:03d}" if left > 0 else None, sorted(keys), digest])
            n += len(keys)
    return {"shards": shards, "samples": n}


def ledger_after_removals(batch: pa.Table, gone: dict[str, dict]) -> pa.Table:
    """Ledger rows of removed articles: skipped with the removal reason, ids suffixed ``@sNNN`` (the
    snapshot they came from) so that a new version's rows never clash with the old ones."""
    if not gone or not pc.any(pc.is_in(batch["pmcid"], value_set=pa.array(sorted(gone), pa.string()))).as_py():
        return batch
    rows = batch.to_pylist()
    for r in rows:
        g = gone.get(r["pmcid"])
        if g is None or r["id"].endswith(f"@s{g['snapshot']:03d}"):
            continue
        r["detail"] = f"was {r['state']}/{r['reason']}; {g['reason']} in a later snapshot"[:500]
        r["id"] = f"{r['id']}@s{g['snapshot']:03d}"
        r["state"], r["reason"] = SKIPPED, (g["reason"] if r["kind"] == "article" else f"article_{g['reason']}")
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


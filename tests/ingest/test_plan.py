"""``biomedica build --dry-run``: the listing partitioned like the build would, nothing fetched or written, the plan
against the Hub's limits, in bounded memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

from biomedica_hf.ingest.partition import FINE_BUCKETS, auto_target, bucket_of, choose_layout
from biomedica_hf.ingest.plan import FOLDER_TARGET, plan_build
from biomedica_hf.schema import ArticleRef

BIN = Path(sys.executable).parent / "biomedica"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


class Listing:
    """A source whose listing is generated lazily (what a file list of PMC-OA streams)."""

    name = "synthetic"

    def __init__(self, n: int) -> None:
        self.n = n

    def list_articles(self):
        hints = ("CC BY", "CC BY-NC-ND", "NO-CC CODE", None)
        for i in range(self.n):
            yield ArticleRef(pmcid=f"PMC{1_000_000 + i}", location=f"oa_package/x/PMC{1_000_000 + i}.tar.gz",
                             license_hint=hints[i % 4])


def test_plan_partitions_like_the_build_in_bounded_memory():
    n = 100_000
    tracemalloc.start()
    plan = plan_build(Listing(n), updates=12, update_articles=50_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB traced: the plan must not hold the listing"   # O(buckets)
    assert plan.articles == n
    assert plan.partition_target == auto_target(n)
    counts = [0] * FINE_BUCKETS
    for ref in Listing(n).list_articles():
        counts[bucket_of(ref.pmcid)] += 1
    assert plan.partitions == choose_layout(0, counts, (0.98, 0.01, 0.01), auto_target(n)).partitions
    # the hints decide 3 of 4 articles; the rest are spread at PMC-OA's shares
    assert plan.subset_from_hint == 75_000
    assert plan.subset_articles["noncommercial"] > 25_000
    assert plan.subset_articles["commercial"] > 25_000
    assert [f.folder for f in plan.folders] == ["commercial/", "noncommercial/", "other/"]
    for f in plan.folders:   # the sub-folder layout the build writes: a sizes.json per sNNN/gNNN folder
        assert f.entries == 3 * f.shards + f.sub_folders
        assert f.entries_after_updates > f.entries
        assert f.sub_folders_after_updates == f.sub_folders + 12        # an update's snapshot folder of its own
        assert f.flat_entries == 3 * f.shards + 1
        assert f.flat_entries_after_updates > f.flat_entries
    assert plan.files_total >= sum(f.entries for f in plan.folders)
    assert plan.commits == -(-plan.files_total // 100)
    assert plan.ok
    assert "[ok] entries in the largest folder" in plan.text()
    # tiny shards: a folder over the Hub's recommendation is flagged
    small = plan_build(Listing(n), shard_max_samples=20)
    assert not small.ok
    assert max(f.entries for f in small.folders) > FOLDER_TARGET
    assert "[OVER] entries in the largest folder" in small.text()


def test_dry_run_cli_fetches_and_writes_nothing_and_measures_rates_on_a_build(built_dataset, articles_dir, tmp_path):
    out = tmp_path / "planned"
    r = subprocess.run([str(BIN), "build", "--input", str(articles_dir), "--out", str(out), "--dry-run",
                        "--no-progress"], capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not out.exists()                                   # nothing written
    assert "Build plan (dry run" in r.stdout
    assert "Hub limits (the sub-folder layout the build writes" in r.stdout
    assert "defaults (BIOMEDICA" in r.stdout
    # --json, with the rates of the build already in OUT
    r = subprocess.run([str(BIN), "build", "--input", str(articles_dir), "--out", str(built_dataset), "--dry-run",
                        "--json"], capture_output=True, text=True, env=ENV, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    plan = json.loads(r.stdout)
    summary = json.loads((built_dataset / "build_summary.json").read_text())
    assert plan["articles"] == summary["articles_listed"]
    assert plan["rates"]["source"].startswith("measured on")
    samples = sum(summary["samples"].values())
    assert abs(plan["rates"]["samples_per_article"] - samples / summary["articles"]) < 1e-9
    assert plan["partitions"] == summary["snapshots"][-1]["partitions"]     # the partitions the build chose
    assert {c["what"] for c in plan["checks"]} >= {"entries in the largest folder", "files in the repository"}
    # the plan's sub-folder layout is the one the build wrote: the same sub-folders per subset, same grammar
    from biomedica_hf.layout import folder_files, shard_dirs, shard_folder

    for f in plan["folders"]:
        subset = f["folder"].rstrip("/")
        built_dirs = shard_dirs(built_dataset / subset)[1:]
        assert f["sub_folders"] == len(built_dirs)
        assert f["shards"] > 0
        assert built_dirs[0].relative_to(built_dataset).as_posix() == shard_folder(subset, 0, 0)
        assert all(t.parent in built_dirs for t in folder_files(built_dataset / subset, "*.tar"))
    assert plan["nested_folder_example"] == shard_folder("commercial", 0, 0)
    assert all(c["ok"] for c in plan["checks"] if "folder" in c["what"])

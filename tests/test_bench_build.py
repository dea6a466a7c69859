"""``benchmarks/bench_build.py``'s row of the build's per-article work alone (issue 28): it processes what the build
processes (the same samples from the same input), times its stages, and its table row is a reference (no speed-up
of its own), as the raw rows are."""
from __future__ import annotations

import json
import sys

from support.paths import REPO

from biomedica_hf.ingest.pipeline import BuildConfig, build

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import ARTICLE_WORK, Run, article_work, measure_article_work, replicate, table  # noqa: E402


def test_the_article_work_row_makes_the_samples_the_build_writes(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    n_pkg, _ = replicate(inp, 60, "realistic")
    n, stages, wall, cpu = article_work(inp)
    out = tmp_path / "out"
    build(BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                      dedup_images=False))
    written = sum(json.loads((out / "build_summary.json").read_text())["samples"].values())
    assert n_pkg > 10 and n >= 60
    assert n == written                      # --no-dedup: every sample the articles make is written
    assert set(stages) == {"fetch", "parse", "media"} and all(v > 0 for v in stages.values())
    assert stages["media"] > stages["parse"]     # one decode per figure is most of the work
    assert 0 < sum(stages.values()) <= wall and cpu > 0
    # the table's row: the same work in a child process, with its own peak memory
    run, child_stages = measure_article_work(inp)
    assert (run.name, run.n, run.build) == (ARTICLE_WORK, n, False)
    assert set(child_stages) == set(stages) and run.seconds > 0 and run.cpu > 0 and run.peak_mb > 50


def test_reference_rows_have_no_speed_up_and_builds_keep_theirs():
    raw = Run("raw", 1, 300, 1.0, 1.0, 30.0, build=False)
    raw_isal = Run("raw isal", 1, 300, 0.8, 0.8, 30.0, build=False)
    work = Run(ARTICLE_WORK, 1, 200, 1.5, 1.5, 100.0, build=False)
    one = Run("build", 1, 200, 4.0, 4.0, 250.0)
    two = Run("build", 2, 200, 2.5, 4.4, 250.0)
    lines = table([raw, raw_isal, work, one, two]).splitlines()
    rows = {ln.split(" | ")[0] + f" {ln.split(' | ')[1]}": ln.split(" | ") for ln in lines[2:-1]}
    assert rows[f"| {ARTICLE_WORK} 1"][11] == "-"
    assert rows["| build 1"][11] == "1.00x" and rows["| build 2"][11] == "1.60x"
    assert rows[f"| {ARTICLE_WORK} 1"][8] == "0.44"       # (200 / 1.5) / (300 / 1.0): pairs/s against raw files/s

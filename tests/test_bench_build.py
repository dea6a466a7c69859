"""``benchmarks/bench_build.py``'s row of the build's per-article work alone (issue 28): it processes what the build
processes (the same samples from the same input), times its stages, and its table row is a reference (no speed-up
of its own), as the raw rows are; the raw row of the same figures decodes the files the pairs come from."""
from __future__ import annotations

import json
import sys

from support.paths import REPO

from biomedica_hf.ingest.pipeline import BuildConfig, build

sys.path.insert(0, str(REPO / "benchmarks"))
from bench_build import (  # noqa: E402
    ARTICLE_WORK, ISAL, RAW_FIGURES, Run, _package_bytes, article_work, deal, figure_files, measure_article_work,
    measure_raw_parallel, raw_baseline, replicate, scaling_line, table)


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
    # the raw row of the same figures decodes exactly the files the pairs come from: no thumbnail, no image that no
    # figure points to; the every-image row decodes those too
    figures = figure_files(out)
    assert sum(map(len, figures.values())) == written
    assert raw_baseline(inp, figures=figures) == written < raw_baseline(inp)
    # ... and in 2 processes (the anchor's own 2-core scaling): the same files, dealt to the two by bytes
    shares = deal(sorted(inp.iterdir()), figures, 2)
    assert sorted(shares[0] + shares[1]) == sorted(inp.iterdir()) and not set(shares[0]) & set(shares[1])
    loads = [sum(_package_bytes(p, figures.get(p.name, set())) for p in share) for share in shares]
    assert max(loads) - min(loads) <= max(_package_bytes(p, figures.get(p.name, set())) for p in inp.iterdir())
    two = measure_raw_parallel(inp, figures)
    assert (two.name, two.workers, two.n, two.build) == (RAW_FIGURES, 2, written, False)
    assert two.seconds > 0 and two.cpu > 0
    assert {p.name for p in inp.iterdir()} >= set(figures)          # keyed by package (.tar.gz or folder)
    thumbnails = 0
    for package, paths in figures.items():
        for path in paths:
            assert not (path.endswith(".gif") and any(q != path and q.rsplit(".", 1)[0] == path.rsplit(".", 1)[0]
                                                      for q in paths))
        if package.endswith(".tar.gz"):
            continue
        names = {f.name for f in (inp / package).iterdir()}
        assert paths <= names
        thumbs = {n for n in names if n.endswith(".gif") and n[:-4] + ".jpg" in names}
        assert not thumbs & paths                   # a JPEG figure's GIF thumbnail is not a figure file
        thumbnails += len(thumbs)
    assert thumbnails > 0


def test_reference_rows_have_no_speed_up_and_builds_keep_theirs():
    raw = Run("raw", 1, 300, 1.0, 1.0, 30.0, build=False)
    raw_isal = Run("raw isal", 1, 300, 0.8, 0.8, 30.0, build=False)
    work = Run(ARTICLE_WORK, 1, 200, 1.5, 1.5, 100.0, build=False)
    one = Run("build", 1, 200, 4.0, 4.0, 250.0)
    two = Run("build", 2, 200, 2.5, 4.4, 250.0)
    figs = Run(RAW_FIGURES, 1, 200, 0.9, 0.8, 30.0, build=False)
    figs_isal = Run(RAW_FIGURES + ISAL, 1, 200, 0.5, 0.5, 30.0, build=False)
    lines = table([raw, raw_isal, figs, figs_isal, work, one, two]).splitlines()
    rows = {ln.split(" | ")[0] + f" {ln.split(' | ')[1]}": ln.split(" | ") for ln in lines[2:-1]}
    assert rows[f"| {ARTICLE_WORK} 1"][14] == rows[f"| {RAW_FIGURES} 1"][14] == "-"
    assert rows["| build 1"][14] == "1.00x" and rows["| build 2"][14] == "1.60x"
    assert rows["| build 2"][13] == "0.20"                # (200 / 2.5) / (200 / 0.5): the ISA-L figures-only row
    assert rows[f"| {ARTICLE_WORK} 1"][8] == "0.44"       # (200 / 1.5) / (300 / 1.0): pairs/s against raw files/s
    assert rows[f"| {ARTICLE_WORK} 1"][11] == "0.60"      # (200 / 1.5) / (200 / 0.9): against the same figures' rate
    assert rows["| build 1"][12] == "0.20"                # (200 / 4.0) / (200 / 0.8): per CPU second
    # the raw row in 2 processes has its speed-up over the 1-process raw row, as a build has over its 1-worker row
    figs_two = Run(RAW_FIGURES, 2, 200, 0.5, 0.9, 30.0, build=False)
    lines = table([raw, raw_isal, figs, figs_isal, figs_two, work, one, two]).splitlines()
    rows = {ln.split(" | ")[0] + f" {ln.split(' | ')[1]}": ln.split(" | ") for ln in lines[2:-1]}
    assert rows[f"| {RAW_FIGURES} 2"][14] == "1.80x" and rows[f"| {RAW_FIGURES} 1"][14] == "-"
    assert scaling_line(figs, figs_two, one, two) == (
        "2 cores in this run: the raw read-and-decode of the same figures ran 1.80x faster in 2 processes than in "
        "one; the build ran 1.60x faster with 2 workers (89% of the anchor's scaling)")
    # without a figures-only row its columns are empty
    lines = table([raw, raw_isal, one]).splitlines()
    assert lines[2].split(" | ")[11:14] == ["-", "-", "-"]


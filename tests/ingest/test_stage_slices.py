"""Issue 28: the last partitions of a small build are staged in slices (``pipeline.stage_units``), so that the stage
phase ends evenly on every worker; the slices are combined into the partition's staging in manifest order. What a
build writes must not depend on it: a build staged in slices is byte-identical to one staged whole, after any kill
and with any ``_work/stage`` file of a slice deleted, cut, flipped or padded.

Builds run in this process with ``workers=1`` (the slices then run one after another in the driver, the path is the
same) on generated articles (the real PMC10802347 nXML with new ids, noise figures)."""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest

from biomedica_hf.ingest import pipeline
from biomedica_hf.ingest.partition import Layout, PartitionId
from biomedica_hf.ingest.pipeline import BuildConfig, build, stage_units
from biomedica_hf.ingest.staging import PartitionStage
from biomedica_hf.ingest.task import PartitionJob, PartitionTask
from biomedica_hf.ingest.work import Work

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_corpus  # noqa: E402
from support.resume import damage as _damage, killed as _killed, outputs as _outputs  # noqa: E402

N = 30
START = 95_800_000


@pytest.fixture(autouse=True)
def small_slices(monkeypatch):
    """Slices of 2+ articles (the build's own minimum, 8, would need far more articles than a test builds)."""
    monkeypatch.setattr(pipeline, "MIN_SLICE", 2)


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    kw.setdefault("partition_target", 12)
    kw.setdefault("split_fractions", (0.6, 0.2, 0.2))
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       shard_max_samples=5, caption_dups=False, **kw)


def _slices(out: Path) -> list[Path]:
    return sorted(p for p in (out / "_work" / "stage").glob("*~*-*") if p.is_dir())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    inp = tmp_path_factory.mktemp("slices-in") / "in"
    synth_corpus(inp, N, start=START)
    return inp


@pytest.fixture(scope="module")
def whole(corpus, tmp_path_factory):
    """The reference: every partition staged whole."""
    out = tmp_path_factory.mktemp("slices-ref") / "whole"
    build(_cfg(corpus, out, sliced_partitions=0))
    return _outputs(out)


def test_a_build_staged_in_slices_writes_what_a_build_staged_whole_writes(corpus, whole, tmp_path):
    out = tmp_path / "ds"
    assert _killed(_cfg(corpus, out, sliced_partitions=99), "slice_staged", 1), "no partition was staged in slices"
    assert _slices(out)
    build(_cfg(corpus, out, sliced_partitions=99))
    assert _outputs(out) == whole
    assert not (out / "_work" / "stage").exists()


def test_the_combined_staging_holds_the_same_units_and_images_as_a_whole_one(corpus, tmp_path):
    """Stopped after the duplicate decisions, before any write: every partition's staging read back (records and
    images) is the same whether it was staged whole or in slices (the copied units carry their images' shift)."""
    staged = {}
    for n in (0, 99):
        out = tmp_path / f"s{n}"
        assert _killed(_cfg(corpus, out, sliced_partitions=n), "deduped")
        work = Work(out)
        got = {}
        for folder in sorted((work.root / "stage").iterdir()):
            stage = PartitionStage(folder)
            units = list(stage.units())
            for u in units:
                u.pop("timings")
            images = [s.image.data for u in units for s in stage.read_samples(u["samples"])]
            got[folder.name] = ([[{k: v for k, v in s.items() if k != "offset"} for s in u["samples"]]
                                 for u in units], [u["articles"] for u in units], [u["ledger"] for u in units], images)
        staged[n] = got
        assert not _slices(out)
    assert staged[0] == staged[99]
    assert any("shift" in line for folder in (tmp_path / "s99" / "_work" / "stage").iterdir()
               for line in (folder / "log.jsonl").read_text().splitlines()), "no unit was copied from a slice"


@pytest.mark.parametrize("point,nth", [("slice_staged", 1), ("slice_staged", 3), ("staged_article", 4),
                                       ("staged", 1), ("staged", 2)])
@pytest.mark.parametrize("rerun", [99, 0], ids=["rerun-sliced", "rerun-whole"])
def test_a_sliced_build_killed_anywhere_resumes_to_the_same_output(corpus, whole, tmp_path, point, nth, rerun):
    """Rerun with the same slicing (the killed run's slices are staged on) or with none (they are left alone
    and removed): the same output either way."""
    out = tmp_path / "ds"
    assert _killed(_cfg(corpus, out, sliced_partitions=99), point, nth)
    build(_cfg(corpus, out, sliced_partitions=rerun))
    assert _outputs(out) == whole


@pytest.mark.parametrize("point,nth", [("slice_staged", 2), ("staged", 1)])
def test_an_update_staged_in_slices_killed_resumes_to_the_same_update(corpus, tmp_path, point, nth):
    """An update whose new articles are staged in slices, stopped and rerun: the same folder as an uninterrupted
    update staged whole."""
    newer = tmp_path / "newer"
    shutil.copytree(corpus, newer)
    shutil.rmtree(newer / f"PMC{START + 4}.1")                             # withdrawn
    synth_corpus(newer, 12, start=START + 1000)                            # new
    base = tmp_path / "base"
    build(_cfg(corpus, base, sliced_partitions=0))
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    build(_cfg(newer, ref, sliced_partitions=0))
    out = tmp_path / "ds"
    shutil.copytree(base, out)
    assert _killed(_cfg(newer, out, sliced_partitions=99), point, nth)
    build(_cfg(newer, out, sliced_partitions=99))
    assert _outputs(out) == _outputs(ref)


@pytest.mark.parametrize("name", ["images.bin", "log.jsonl", "staged.json", "for.json", "starts.txt"])
@pytest.mark.parametrize("op", ["delete", "cut", "flip", "junk"])
def test_a_damaged_slice_is_redone(corpus, whole, tmp_path, name, op):
    """A sealed slice of a partition whose other slices are not staged yet: any of its files damaged, the rerun
    stages it again (or the partition whole) and writes the same output."""
    out = tmp_path / "ds"
    assert _killed(_cfg(corpus, out, sliced_partitions=99), "slice_staged", 1)
    (victim,) = _slices(out)
    _damage(victim / name, op)
    build(_cfg(corpus, out, sliced_partitions=99))
    assert _outputs(out) == whole


def _plan(corpus: Path, out: Path, sliced: int):
    """The stage tasks a build of ``out`` (stopped once planned) runs, in order, and its sliced partitions."""
    assert _killed(_cfg(corpus, out), "planned")
    work = Work(out)
    layout = json.loads((work.snap(0) / "layout.json").read_text())
    seals = {name: v[1] for name, v in layout["manifests"].items() if v[0]}
    cfg = _cfg(corpus, out)
    job = PartitionJob(out=str(out), source=cfg.source, media=cfg.media, keep_downloads=False, n_hash=1,
                       discard=False, seed=0, shard_max_samples=5, shard_max_bytes=10**9, caption_keys=False)
    todo = [PartitionTask(p.name, seals[p.name], job) for p in Layout.from_json(layout).all_partitions()
            if p.name in seals]                                 # the build's order
    counts = {p: layout["manifests"][p][0] for p in seals}
    return work, todo, counts, stage_units(work, todo, 1, sliced=sliced)


@pytest.mark.parametrize("op", ["cut", "flip"])
def test_a_slice_damaged_before_its_partition_is_combined(corpus, whole, tmp_path, op):
    """Every slice of a partition sealed, then the bytes of one damaged (its marker and log still check): the
    combine finds the cut unit (the partition is then staged whole), or the write finds the flipped image by its
    CRC-32 (the partition is staged again); the output is the same."""
    out = tmp_path / "ds"
    _, _, _, (units, plan) = _plan(corpus, out, 99)
    order = [u for u in units if u.rows]
    left = {p: len(rows) for p, rows in plan.items()}
    for nth, u in enumerate(order, 1):      # the slices run in this order: stop at the first partition's last one
        left[u.pid] -= 1
        if not left[u.pid]:
            break
    assert _killed(_cfg(corpus, out, sliced_partitions=99), "slice_staged", nth)
    victim = [p for p in _slices(out) if p.name.startswith(u.pid + "~") and (p / "staged.json").exists()]
    assert len(victim) == len(plan[u.pid])
    _damage(victim[-1] / "images.bin", op)
    build(_cfg(corpus, out, sliced_partitions=99))
    assert _outputs(out) == whole


def test_which_partitions_are_staged_in_slices(corpus, tmp_path, monkeypatch):
    """The smallest partitions (those staged last), up to the budget, of MIN_SLICE x 2 .. MAX_SLICED articles,
    cut into SLICES slices that tile the manifest and run after every whole partition; a partition some staging
    exists for is not cut; a killed run's slices that tile a partition are used again, others removed."""
    work, todo, counts, _ = _plan(corpus, tmp_path / "ds", 0)
    seals = counts
    assert stage_units(work, todo, 1)[1] == {}                      # one worker: nothing is cut
    units, plan = stage_units(work, todo, 1, sliced=2)
    smallest = sorted(seals, key=lambda p: counts[p])
    assert set(plan) == set([p for p in smallest if counts[p] >= 4][:2])
    for pid, rows in plan.items():
        assert rows[0][0] == 0 and rows[-1][1] == counts[pid] and all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
        assert len(rows) == min(pipeline.SLICES, counts[pid] // pipeline.MIN_SLICE)
    sizes = [u.rows[1] - u.rows[0] if u.rows else counts[u.pid] for u in units]
    assert sizes == sorted(sizes, reverse=True)
    assert {u.key for u in units if u.rows} == {dataclasses.replace(todo[0], pid=p, rows=r).key
                                                for p, rows in plan.items() for r in rows}

    monkeypatch.setattr(pipeline, "MAX_SLICED", min(counts.values()) - 1)     # too large to be cut
    assert stage_units(work, todo, 2)[1] == {}
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "MIN_SLICE", 2)

    first = next(iter(plan))
    work.stage(PartitionId.parse(first)).folder.mkdir(parents=True)    # staged (in part) by an earlier run
    assert first not in stage_units(work, todo, 1, sliced=2)[1]
    work.stage(PartitionId.parse(first)).remove()

    pid = PartitionId.parse(first)
    n = counts[first]
    for r in [(0, n // 2), (n // 2, n)]:
        work.slice_stage(pid, r).folder.mkdir(parents=True)
    assert stage_units(work, todo, 1, sliced=0)[1] == {first: [(0, n // 2), (n // 2, n)]}   # used again
    work.slice_stage(pid, (0, 1)).folder.mkdir(parents=True)             # no longer tiles: removed, cut anew
    assert stage_units(work, todo, 1, sliced=0)[1] == {}
    assert work.slice_stages() == {}


@pytest.mark.multiprocess
def test_a_two_worker_build_slices_its_last_partitions_and_writes_the_same(corpus, whole, tmp_path):
    """The default with a pool of 2 workers: one partition per worker staged in slices, in the workers (a build
    stopped where a worker seals a slice), combined by the driver as the last slice of each returns; resumed, the
    same output as one worker staging every partition whole."""
    out = tmp_path / "ds"
    work, todo, _, _ = _plan(corpus, out, 0)
    units, plan = stage_units(work, todo, 2)
    assert len(plan) == 2 and sum(1 for u in units if u.rows) == sum(len(rows) for rows in plan.values())
    cfg = dataclasses.replace(_cfg(corpus, out), workers=2)
    assert _killed(cfg, "slice_staged", 1)          # raised in a worker, re-raised by the driver
    build(cfg)
    assert _outputs(out) == whole

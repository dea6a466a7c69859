"""Issue 26: folders built before the Hub-scale sub-folders (every shard flat in ``<subset>/``) keep loading,
verifying, updating and pushing; an update of such a folder writes its new shards in its own sub-folder.

The flat folder is a build of this code moved into the old layout (``tests/flat_layout.py``, checked against a
build by the code before the change)."""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from support.flat_layout import flatten

from biomedica_hf.ingest.pipeline import BuildConfig, build, shard_paths
from biomedica_hf.dataset.card import write_card
from biomedica_hf.dataset.hub import plan_upload
from biomedica_hf.dataset.loader import load_biomedica
from biomedica_hf.dataset.verify import verify_folder
from biomedica_hf.layout import shard_dirs, shard_folder, sizes_dirs
from biomedica_hf.schema import SUBSETS

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_corpus  # noqa: E402

START = 95_900_000


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(out=out, source="local", source_opts={"path": str(inp)}, workers=1, progress=False,
                       partition_target=4, split_fractions=(0.6, 0.2, 0.2), shard_max_samples=6, caption_dups=False,
                       **kw)


def _check_reads(out: Path) -> list[dict]:
    """verify --deep, the card's configs with ``datasets`` and ``load_biomedica`` agree with the index."""
    report = verify_folder(out, deep=True)
    assert report.ok, report.text()
    index = pq.read_table(out / "figures.parquet").to_pylist()
    per_subset = Counter(r["subset"] for r in index)
    for subset in SUBSETS:
        if not per_subset[subset]:
            continue
        got = [r["__key__"] for split in ("train", "validation", "test")
               for r in _split(out, subset, split)]
        assert sorted(got) == sorted(r["key"] for r in index if r["subset"] == subset)
    assert sorted(ex["key"] for ex in load_biomedica(out, subset="all", decode=False)) == \
        sorted(r["key"] for r in index)
    for d in sizes_dirs(out):                     # each folder holding tars lists every shard of the dataset
        assert set(json.loads((d / "sizes.json").read_text())) == {t.name for s in SUBSETS
                                                                   for t in shard_paths(out, s)}
    return index


def _split(out: Path, subset: str, split: str):
    try:
        return list(datasets.load_dataset(str(out), subset, split=split, streaming=True))
    except ValueError as e:                       # a split the config does not declare (no shards of it)
        assert "split" in str(e).lower() or "Unknown" in str(e), e
        return []


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("flat")
    inp = root / "in"
    synth_corpus(inp, 10, start=START)
    out = root / "ds"
    build(_cfg(inp, out))
    write_card(out)
    tars = flatten(out)
    return inp, out, tars


def test_a_flat_folder_loads_verifies_and_plans_its_push(flat):
    _, out, tars = flat
    assert tars
    assert all(t.count("/") == 1 for t in tars)          # really flat: <subset>/<name>.tar
    assert all(len(shard_dirs(out / s)) <= 1 for s in SUBSETS)     # no sub-folder left
    index = _check_reads(out)
    assert {r["shard"] for r in index} == set(tars)
    plan = plan_upload(out)
    assert plan.ok, plan.problems
    assert {f.path for f in plan.files if f.kind == "shard"} == set(tars)
    assert {s: f"{s}/sizes.json" in plan.paths for s in SUBSETS} == {s: any(t.startswith(f"{s}/") for t in tars)
                                                                      for s in SUBSETS}


def test_an_update_of_a_flat_folder_writes_its_shards_in_sub_folders(flat, tmp_path):
    inp, base, tars = flat
    out = Path(shutil.copytree(base, tmp_path / "ds"))
    newer = Path(shutil.copytree(inp, tmp_path / "newer"))
    synth_corpus(newer, 6, start=START + 100)                      # new articles
    index = pq.read_table(out / "figures.parquet").to_pylist()
    by_shard: dict[str, set[str]] = {}
    for r in index:
        by_shard.setdefault(r["shard"], set()).add(r["pmcid"])
    gone = min(min(p) for p in by_shard.values() if len(p) > 1)    # a withdrawn article: its shard is revised
    shutil.rmtree(newer / f"{gone}.1")
    build(_cfg(newer, out, allow_shrink=True))
    write_card(out)
    after = _check_reads(out)
    shards = {r["shard"] for r in after}
    assert gone not in {r["pmcid"] for r in after}
    new = {s for s in shards if "-s001-" in s}
    assert new
    assert (all(Path(s).parent.as_posix() == shard_folder(s.split("/")[0], 1, int(s.split("-p")[1][:5]))
                       for s in new))                               # the update's shards: <subset>/s001/gNNN/
    kept_flat = {s for s in shards if s.count("/") == 1}
    assert kept_flat
    assert kept_flat <= set(tars) | {t.removesuffix(".tar") + "-r001.tar" for t in tars}
    assert any(s.endswith("-r001.tar") for s in kept_flat)        # the revised shard stays beside its original
    assert shards == kept_flat | new
    assert plan_upload(out).ok, plan_upload(out).problems

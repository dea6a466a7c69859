"""What a built folder says about itself, as published: no path of the building machine in any file push would
upload, duplicate removals counted once (console = build_summary.json = card = ledger), and a decontamination
report that the card cites and push uploads, whatever ``--out`` it was written to.

One real build through the CLI, under a temporary path with a distinctive name: real fixture articles (one of
them twice: exact duplicates) and synthetic Cloud-layout articles whose figures are re-encoded copies of another's
(near duplicates, dropped with ``--near-dedup``).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from biomedica_hf.dataset.hub import plan_upload
from biomedica_hf.layout import folder_files

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "biomedica"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
MARK = "ZZlocalZZmachineZZ"
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_scale import synth_article  # noqa: E402 - after the path insert
from support.images import jpeg_copy


@pytest.fixture(scope="module")
def built(tmp_path_factory, articles_dir) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp(MARK)
    inp = root / "input"
    inp.mkdir()
    for name in ("eLife_39122_subarticles", "PMC7159286", "eLife_19405"):
        shutil.copytree(articles_dir / name, inp / name, symlinks=False)
    shutil.copytree(articles_dir / "eLife_39122_subarticles", inp / "eLife_39122_copy")      # exact duplicates
    figs = [p.read_bytes() for p in sorted((articles_dir / "PMC7159286").glob("*.jpg"))[:4]]
    for num, scale in ((95_599_001, 1.0), (95_599_002, 0.75)):                                # near duplicates
        folder = synth_article(inp, num, commercial=num == 95_599_001)
        for i, data in enumerate(figs, 1):
            (folder / f"nihpp-2023.12.31.573776v1-f000{i}.jpg").write_bytes(data if scale == 1.0 else
                                                                            jpeg_copy(data, scale, 70))
    out = root / "ds"
    r = subprocess.run([str(BIN), "build", "--input", str(inp), f"--out={out}", "--no-progress", "--workers", "1",
                        "--near-dedup"], capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def _published_text(folder: Path, rel: str) -> str:
    """A published file as text: Parquet tables decoded (their strings may be compressed), others as bytes."""
    path = folder / rel
    if rel.endswith(".parquet"):
        return json.dumps(pq.read_table(path).to_pylist(), default=str)
    return path.read_bytes().decode("latin-1")


def _leaks(folder: Path) -> list[str]:
    plan = plan_upload(folder)
    assert plan.ok, plan.problems
    return [rel for rel in plan.paths if MARK in _published_text(folder, rel) or MARK in rel]


def test_no_local_path_in_any_published_file(built):
    out, stdout = built
    assert MARK in str(out)
    assert MARK in stdout          # the console may name the folder: it is not published
    assert _leaks(out) == []
    summary = json.loads((out / "build_summary.json").read_text())
    assert summary["command"].startswith("biomedica build --input <input> --out=<out> --no-progress --workers 1")
    assert "--near-dedup" in summary["command"]
    assert summary["source_opts"]["path"] == "<input>"
    ledger = pq.read_table(out / "ledger.parquet").to_pylist()
    sources = {r["source"] for r in ledger if r["source"]}
    assert "eLife_39122_copy" in sources
    assert "PMC95599001.1" in sources   # relative to the input root
    assert not [s for s in sources if s.startswith("/")]


def test_duplicate_removals_agree_everywhere(built):
    out, stdout = built
    ledger = pq.read_table(out / "ledger.parquet", columns=["reason"]).column("reason").to_pylist()
    exact, near = ledger.count("duplicate_image"), ledger.count("near_duplicate_image")
    assert exact >= 1
    assert near == 4                      # the eLife copy's figures; the 4 re-encoded copies
    summary = json.loads((out / "build_summary.json").read_text())
    assert (summary["duplicates_removed"], summary["near_duplicates_removed"]) == (exact, near)
    assert f"Exact duplicate images removed: {exact}\n" in stdout
    assert f"Near-duplicate images removed: {near}\n" in stdout
    card = (out / "README.md").read_text()
    assert f"Exact duplicate images removed: {exact} " in card
    assert f"near-duplicate images removed: {near}." in card
    assert f"{exact} images removed" in card
    assert f"{near} near-duplicate images were removed" in card


def test_decontaminate_with_any_out_updates_the_card_and_push_uploads_the_report(built, tmp_path, articles_dir):
    src, _ = built
    ds = Path(shutil.copytree(src, tmp_path / MARK / "ds"))
    evalset = tmp_path / MARK / "eval"
    for i, p in enumerate(sorted((articles_dir / "PMC7159286").glob("*.jpg"))[:2]):   # images the build holds
        (evalset / f"class{i}").mkdir(parents=True)
        shutil.copy(p, evalset / f"class{i}" / p.name)
    assert "no report yet" in (ds / "README.md").read_text()
    elsewhere = tmp_path / "reports"
    r = subprocess.run([str(BIN), "decontaminate", str(ds), "--against", f"imagefolder:{evalset}", "--out",
                        str(elsewhere)], capture_output=True, text=True, env=ENV, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (elsewhere / "report.json").is_file()
    card = (ds / "README.md").read_text()
    assert "no report yet" not in card
    assert "**Evaluation contamination**" in card
    report = json.loads((ds / "decontamination" / "report.json").read_text())
    assert report["excluded_keys"] >= 2
    assert f"{report['excluded_keys']:,} keys" in card
    plan = plan_upload(ds)
    assert plan.ok, plan.problems
    assert {"decontamination/exclusions.txt", "decontamination/report.json"} <= set(plan.paths)
    assert _leaks(ds) == []
    # a card that cites a file push would not upload blocks the push
    (ds / "decontamination" / "exclusions.txt").unlink()
    plan = plan_upload(ds)
    assert any("links decontamination/exclusions.txt" in p for p in plan.problems), plan.problems


def test_webdataset_features_keep_the_labels_of_a_labelled_folder(built_dataset, tmp_path):
    """The documented loading code, ``load_dataset("webdataset", data_files=..., features=webdataset_features())``,
    keeps ``panel_type`` / ``concepts`` / ``local_concepts`` of labelled shards (it silently dropped them), and
    still loads unlabelled shards (null labels)."""
    import datasets

    from biomedica_hf.concepts.subsets import write_subset_tar
    from biomedica_hf.schema import webdataset_features

    index = pq.read_table(built_dataset / "figures.parquet").to_pylist()
    rows = [r for r in index if r["subset"] == "other"]
    labels = {}
    for i, r in enumerate(rows):     # labels as `biomedica label` writes them into the json member
        labels[r["key"]] = {"panel_type": "Microscopy" if i % 2 else "Chart", "concepts": [f"concept {i % 3}"],
                            "local_concepts": [] if i % 2 else ["local a", "local b"]}
        r.update(labels[r["key"]])
    labelled = tmp_path / "labelled-other-000000.tar"
    write_subset_tar(built_dataset, sorted(rows, key=lambda r: (r["shard"], r["tar_offset"])), labelled)
    unlabelled = min(folder_files(built_dataset / "commercial", "*.tar"))
    ds = datasets.load_dataset("webdataset", data_files={"train": [str(labelled), str(unlabelled)]}, split="train",
                               features=webdataset_features())
    got = {r["__key__"]: r["json"] for r in ds}
    assert set(labels) <= set(got)
    for key, want in labels.items():
        assert {k: got[key][k] for k in want} == want
    plain = [v for k, v in got.items() if k not in labels]
    assert plain
    assert all(v["concepts"] is None and v["panel_type"] is None for v in plain)

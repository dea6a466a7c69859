"""`make smoke`: examples/smoke.py runs every stage on the bundled sample with tiny random models, offline.

One run of the script (the command `make smoke` runs), then checks on what each stage left behind. It
takes a few minutes on 2 cores (the two recipes under `accelerate launch` are most of it), so it is
marked ``slow`` (it still runs in the normal suite) with its own timeout.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.paths import REPO

STAGES = ["tiny random models", "build", "card", "embed", "cluster", "annotation-sheets", "label", "CLIP recipe",
          "SmolVLM recipe", "caption", "eval", "index", "serve + query", "RAG example"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("smoke") / "smoke_out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "examples/smoke.py", "--out", str(out), "--clean"], check=False,
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=1400)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    return out, r.stdout


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_every_stage_runs_and_says_its_models_are_tiny_and_random(smoke):
    out, stdout = smoke
    assert stdout.startswith("=" * 100)
    assert "TINY RANDOM MODELS" in stdout
    assert "meaningless" in stdout
    summary = json.loads((out / "smoke_summary.json").read_text())
    assert summary["ok"] is True
    assert [s["stage"] for s in summary["stages"]] == STAGES
    assert all(s["ok"] for s in summary["stages"])
    assert sorted(p.name for p in (out / "models").iterdir()) == ["tiny-random-clip", "tiny-random-dinov2",
                                                                   "tiny-random-lm"]
    # only public command lines were run
    commands = [s["command"] for s in summary["stages"][1:]]
    assert all(Path(c[0]).name in ("biomedica", "accelerate") or c[1] == "examples/rag_agent.py" for c in commands)

    ds = out / "ds"
    figures = pq.read_table(ds / "figures.parquet").to_pylist()
    assert len(figures) >= 10
    assert (ds / "README.md").exists()
    # concepts: the generated annotation's labels propagated to every clustered figure; subsets materialised
    annotation = json.loads((out / "annotations" / "smoke_annotator.json").read_text())
    voted = {c for a in annotation.values() for c in a["global_class"]}
    assert all(f["concepts"] and set(f["concepts"]) <= voted for f in figures)
    assert list((ds / "concept-filtered").rglob("*.tar"))
    assert list((ds / "concept-balanced").rglob("*.tar"))
    # recipes exported models; eval scored retrieval on the folder with the exported CLIP
    assert (out / "runs" / "clip" / "export" / "open_clip").is_dir()
    assert (out / "runs" / "smolvlm" / "merged" / "config.json").exists()
    assert list((out / "runs" / "eval").rglob("summary.json"))
    # the server answered the query with the article the words come from
    served = next(s for s in summary["stages"] if s["stage"] == "serve + query")
    assert served["total"] > 0
    assert served["top"].startswith("eLife_19405_")
    # the RAG example retrieved numbered sources for its question
    rag = json.loads((out / "rag_answer.json").read_text())
    assert rag["sources"]
    assert rag["sources"][0]["n"] == 1
    assert "[1]" in rag["prompt"]

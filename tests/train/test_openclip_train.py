"""open_clip's own trainer (``python -m open_clip_train.main``) on a folder `biomedica build` wrote.

open_clip_train 3.3 fails on webdataset 1.x (``KeyError: 'fname'`` in its sample grouping) and works with
the webdataset it pins (0.2.86). The test installs that version with ``pip install --target DIR --no-deps``
(the project's venv keeps its own webdataset) and runs the README's command for two steps of a tiny random
open_clip model on CPU, with DIR first on PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

from biomedica_hf.layout import folder_files

pytest.importorskip("open_clip_train")
WEBDATASET = "0.2.86"
SUBSETS = ("commercial", "noncommercial", "other")
TINY = {"model_cfg": {"embed_dim": 64,
                      "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]}}


@pytest.fixture(scope="module")
def old_webdataset(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("wds086")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                        str(target), "--no-deps", f"webdataset=={WEBDATASET}"], check=False, capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"cannot install webdataset=={WEBDATASET} (no package index?): {r.stderr[-500:]}")
    assert (target / "webdataset").is_dir()
    return target


def readme_block() -> str:
    """The documented command (docs/training.md, linked from the README)."""
    readme = (REPO / "docs" / "training.md").read_text()
    section = readme[readme.index("### With open_clip's own trainer"):]
    return section[section.index("```bash") + 7:section.index("```", section.index("```bash") + 7)]


def _train(ds: Path, model_dir: Path, logs: Path, pythonpath: str, num_samples: int | None = 8
           ) -> subprocess.CompletedProcess:
    """The README's command: every shard of the three subsets (globbed, joined by ``::``), 8 samples, batch 4
    (``num_samples=None``: no ``--train-num-samples``, open_clip counts the samples from ``sizes.json``)."""
    shards = [str(p) for subset in SUBSETS for p in folder_files(ds / subset, "*.tar")]   # in sNNN/gNNN/
    # the README's SHARDS line, run by bash in the dataset's parent folder, gives the same list
    line = next(x for x in readme_block().splitlines() if x.startswith("SHARDS="))
    bash = subprocess.run(["bash", "-c", line.replace("ds/", f"{ds.name}/") + '; printf %s "$SHARDS"'],
                          capture_output=True, text=True, cwd=ds.parent, check=True)
    assert bash.stdout == "::".join(str(Path(x).relative_to(ds.parent)) for x in shards)
    samples = sum(json.loads((Path(x).parent / "sizes.json").read_text())[Path(x).name] for x in shards)
    assert shards
    assert samples >= 8
    count = ["--train-num-samples", str(num_samples)] if num_samples is not None else []
    cmd = [sys.executable, "-m", "open_clip_train.main", "--model", f"local-dir:{model_dir}",
           "--train-data", "::".join(shards), "--dataset-type", "webdataset", *count,
           "--batch-size", "4", "--epochs", "1", "--workers", "0", "--device", "cpu", "--precision", "fp32",
           "--lr", "1e-4", "--warmup", "1", "--seed", "0", "--log-every-n-steps", "1", "--save-frequency", "1",
           "--report-to", "", "--logs", str(logs), "--name", "tiny"]
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_open_clip_train_runs_on_a_built_folder_with_webdataset_0_2_86(recipe_dataset, old_webdataset, tmp_path):
    import open_clip
    import torch
    import webdataset

    block = readme_block()
    assert f"pip install --target wds0286 --no-deps webdataset=={WEBDATASET}" in block
    assert "PYTHONPATH=wds0286 python -m open_clip_train.main" in block
    for flag in ("--train-data", "--dataset-type webdataset", "--train-num-samples", "--report-to"):
        assert flag in block
    model_dir = tmp_path / "tiny-random-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY))
    r = _train(recipe_dataset, model_dir, tmp_path / "logs", f"{old_webdataset}{os.pathsep}{REPO}")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    steps = re.findall(r"Train Epoch: 0 \[\s*(\d+)/8 .*Contrastive_loss: ([\d.]+)", out)
    assert [int(n) for n, _ in steps] == [4, 8] and all(0 < float(loss) < 10 for _, loss in steps), out[-2000:]
    ckpt = torch.load(tmp_path / "logs" / "tiny" / "checkpoints" / "epoch_1.pt", map_location="cpu",
                      weights_only=False)
    model = open_clip.create_model(f"local-dir:{model_dir}")
    model.load_state_dict(ckpt["state_dict"])  # the trained weights load back into the same architecture
    assert ckpt["epoch"] == 1
    # the same command on the venv's webdataset 1.x is the failure the README warns about
    if webdataset.__version__.startswith("1."):
        r = _train(recipe_dataset, model_dir, tmp_path / "logs_new", str(REPO))
        assert r.returncode != 0 and "KeyError: 'fname'" in r.stderr, (r.stdout + r.stderr)[-3000:]


def test_open_clip_train_counts_joined_subsets_from_sizes_json(recipe_dataset, old_webdataset, tmp_path):
    """``commercial::noncommercial::other`` without ``--train-num-samples``: open_clip looks every shard up in the
    FIRST shard's folder's ``sizes.json``, which lists every shard of the dataset (names are unique), so it counts
    them all (it was ``KeyError: 'noncommercial-train-s000-p00000-000.tar'``)."""
    ds = recipe_dataset
    shards = [p for subset in SUBSETS for p in folder_files(ds / subset, "*.tar")]
    assert all(p.parent != ds / p.relative_to(ds).parts[0] for p in shards)   # in sub-folders, not flat
    first = json.loads((shards[0].parent / "sizes.json").read_text())   # the folder open_clip reads
    assert {p.name for p in shards} <= set(first)
    total = sum(first[p.name] for p in shards)
    model_dir = tmp_path / "tiny-random-clip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(TINY))
    r = _train(ds, model_dir, tmp_path / "logs", f"{old_webdataset}{os.pathsep}{REPO}", num_samples=None)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    epoch = -(-total // 4) * 4          # open_clip rounds the count up to whole batches of 4
    assert re.search(rf"Train Epoch: 0 \[\s*{epoch}/{epoch} \(100%\)", out), out[-3000:]

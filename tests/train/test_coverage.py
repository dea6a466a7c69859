"""Issue 23: every selected sample once per epoch on any number of ranks / workers; runs never mixed; a launch
that asked for more processes than it got says so."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from support.paths import REPO
from support.recipes import BIN, RECIPE_ENV, free_port, launch_recipe, recipe_log

from biomedica_hf.dataset.loader import ShardRanges, balanced_sizes, load_biomedica, plan_rank

SMOKE = REPO / "biomedica_hf" / "train" / "configs" / "clip" / "cpu_smoke.yaml"
torch.set_num_threads(1)


def _unequal_units() -> list[ShardRanges]:
    """One big partition (shards of 1,024, the last one short) and two small ones, with gaps (a filter)."""
    rng = np.random.default_rng(0)
    units, key = [], 0
    for n in [1024] * 9 + [784, 320, 310, 7]:
        keys = np.arange(key, key + n)
        key += n
        keys = keys[rng.random(n) < 0.6]
        units.append(ShardRanges(f"s{key}.tar", np.stack([keys * 512, np.full(len(keys), 512)], 1), {"key": keys}))
    return units


@pytest.mark.parametrize("workers", [0, 2])
def test_eight_rank_split_balances_to_one_sample(workers):
    units = _unequal_units()
    everything = np.concatenate([u.columns["key"] for u in units])
    shares = []
    for rank in range(8):
        groups = plan_rank(units, 8, rank, workers)
        assert len(groups) % max(1, workers) == 0                      # the workers of a rank get equal counts
        sizes = [sum(len(u.ranges) for u in g) for g in groups]
        assert max(sizes) - min(sizes) <= 1
        for g in groups:
            for u in g:     # a piece's byte ranges are its keys' ranges: nothing outside the selection is read
                assert np.array_equal(u.ranges[:, 0], u.columns["key"] * 512)
        shares.append(np.concatenate([u.columns["key"] for g in groups for u in g]))
    counts = [len(s) for s in shares]
    assert max(counts) - min(counts) <= 1                               # well within one batch
    assert np.array_equal(np.concatenate(shares), everything)           # every sample once, in index order
    assert counts == balanced_sizes(len(everything), 8)


def test_rank_split_of_a_real_build(recipe_dataset):
    index = pq.read_table(recipe_dataset / "figures.parquet", columns=["key", "subset"]).to_pydict()
    for subset, wanted in (("all", index["key"]),
                           ("commercial", [k for k, s in zip(index["key"], index["subset"]) if s == "commercial"])):
        for world in (1, 2, 3, 8):
            shares = []
            for rank in range(world):
                ds = load_biomedica(recipe_dataset, subset=subset, decode=False, world_size=world, rank=rank,
                                    num_workers=2)
                shares.append([ex["key"] for ex in ds])
                assert ds.info.splits["train"].num_examples == len(shares[-1])
            flat = [k for s in shares for k in s]
            assert sorted(flat) == sorted(wanted) and len(set(flat)) == len(flat), (subset, world)
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="rank must be in"):
        load_biomedica(recipe_dataset, subset="all", world_size=2, rank=2)


def test_masked_loss_is_the_loss_of_the_real_rows():
    from biomedica_hf.clip.loss import ClipLoss

    torch.manual_seed(0)
    img, txt = torch.randn(5, 8, requires_grad=True), torch.randn(5, 8, requires_grad=True)
    scale = torch.tensor(10.0)
    ref = ClipLoss()(img[:3], txt[:3], scale)
    padded = torch.cat([img[:3], img[:1], img[:1]]), torch.cat([txt[:3], txt[:1], txt[:1]])
    masked = ClipLoss()(*padded, scale, torch.tensor([True, True, True, False, False]))
    assert masked.item() == pytest.approx(ref.item(), rel=1e-6)
    g_ref = torch.autograd.grad(ref, img)[0]
    g_masked = torch.autograd.grad(masked, img)[0]
    assert torch.allclose(g_ref, g_masked, atol=1e-6)
    nothing = ClipLoss()(*padded, scale, torch.zeros(5, dtype=torch.bool))
    assert nothing.item() == 0.0
    assert torch.autograd.grad(nothing, img)[0].abs().sum() == 0


@pytest.mark.slow
def test_two_processes_cover_every_sample_once_per_epoch(recipe_dataset, tmp_path):
    """2 CPU ranks, 2 DataLoader workers each, batch 4: the shares (12 / 11 of 23 samples in 4-sample shards)
    end in partial batches on every worker; one epoch trains on every sample exactly once."""
    run = tmp_path / "run"
    launch_recipe(["-m", "biomedica_hf.train.clip", "--config", str(SMOKE), "--threads", "1",
                   "--set", f"data.path={recipe_dataset}", "--set", f"output_dir={run}", "--set", "data.num_workers=2",
                   "--set", "data.record_keys=true", "--set", "train.max_steps=null", "--set", "train.max_epochs=1",
                   "--set", "train.save_every=null", "--set", "export.enabled=false"])
    wanted = pq.read_table(recipe_dataset / "figures.parquet", columns=["key"])["key"].to_pylist()
    trained = [k for r in (0, 1) for line in (run / f"keys_rank{r}.jsonl").read_text().splitlines()
               for k in json.loads(line)["keys"]]
    assert sorted(trained) == sorted(wanted)
    assert len(wanted) == 23
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"event"' in line]
    assert events[0]["rank_samples"] == [12, 11]
    assert events[0]["steps_per_epoch"] == 4
    assert events[-1]["event"] == "epoch_end"
    assert events[-1]["rank_samples"] == [12, 11]
    assert [r["step"] for r in recipe_log(run)] == [1, 2, 3, 4]
    assert recipe_log(run)[-1]["samples"] == 23


# --------------------------------------------------------------------------- one run per folder
def _cfg(recipe_dataset, out: Path, **train) -> dict:
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["data"]["path"] = str(recipe_dataset)
    cfg["output_dir"] = str(out)
    cfg["card"]["enabled"] = False
    cfg["export"]["enabled"] = False
    cfg["train"].update(cpu=True, **train)
    return cfg


def test_resume_auto_refuse_and_overwrite(recipe_dataset, tmp_path, capsys):
    from biomedica_hf.train.clip import train
    from biomedica_hf.train.rundir import RunConflict

    out = tmp_path / "run"
    first = train(_cfg(recipe_dataset, out, max_steps=4, save_every=2))
    assert [r["step"] for r in recipe_log(out)] == [1, 2, 3, 4]
    assert first["step"] == 4
    # the same config again: auto resumes the finished run (no step is trained twice, the log stays one run's)
    (out / "checkpoints" / "step_4" / "trainer_state.json").unlink()    # as if the run died after step 3
    again = train(_cfg(recipe_dataset, out, max_steps=4, save_every=2))
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in recipe_log(out)] == [1, 2, 3, 4]
    assert again["step"] == 4
    assert again["losses"] == pytest.approx(first["losses"][2:], rel=1e-5)
    # another config, or resume=null over the run: refused, nothing touched
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(RunConflict, match=r"another config \(train\.max_steps: 4 -> 2\).*--overwrite"):
        train(_cfg(recipe_dataset, out, max_steps=2))
    with pytest.raises(RunConflict, match=r"train\.resume is null.*--overwrite"):
        train(_cfg(recipe_dataset, out, max_steps=4, save_every=2, resume=None))
    assert sorted(p.name for p in out.rglob("*")) == before
    # --overwrite clears the folder first: only the new run's checkpoints and log
    train(_cfg(recipe_dataset, out, max_steps=2, overwrite=True, save_every=None))
    assert [r["step"] for r in recipe_log(out)] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2"]


def test_refusal_is_one_line_exit_2(recipe_dataset, tmp_path, capsys):
    from biomedica_hf.train.clip import main

    out = tmp_path / "run"
    common = ["--config", str(SMOKE), "--set", f"data.path={recipe_dataset}", "--set", f"output_dir={out}",
              "--set", "export.enabled=false", "--set", "train.cpu=true", "--set", "train.save_every=null"]
    assert main([*common, "--set", "train.max_steps=1"]) == 0
    capsys.readouterr()
    assert main([*common, "--set", "train.max_steps=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert "--overwrite" in err[0]
    assert main([*common, "--set", "train.max_steps=2", "--overwrite"]) == 0
    assert [r["step"] for r in recipe_log(out)] == [1, 2]
    # the run's log drawn by `biomedica train-plot`
    from click.testing import CliRunner
    from PIL import Image

    from biomedica_hf.cli import main as cli

    res = CliRunner().invoke(cli, ["train-plot", str(out)])
    assert res.exit_code == 0, res.output
    with Image.open(out / "training.png") as png:
        assert png.format == "PNG"
        assert png.size == (800, 600)
        assert len(png.convert("L").getcolors(10**6)) > 10            # curves and labels, not a blank page
    res = CliRunner().invoke(cli, ["train-plot", str(tmp_path)])
    assert res.exit_code == 1
    assert "no training log" in res.output


# --------------------------------------------------------------------------- launch check
def test_launch_warning_from_the_launcher_command_line():
    from biomedica_hf.train.progress import launch_warning

    accel = ["accelerate", "launch", "--cpu", "--num_processes", "2", "-m", "biomedica_hf.train.clip"]
    assert "asked for 2 processes but this run has 1" in launch_warning(1, parent_cmdline=accel)
    assert launch_warning(2, parent_cmdline=accel) is None
    assert launch_warning(1, parent_cmdline=["torchrun", "--nproc-per-node=4", "x.py"]).count("4") >= 1
    assert launch_warning(1, parent_cmdline=["python", "-m", "biomedica_hf.train.clip"]) is None


@pytest.mark.slow
def test_one_process_launch_that_asked_for_two_says_so(recipe_dataset, tmp_path):
    cmd = [str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "biomedica_hf.train.clip", "--config", str(SMOKE), "--threads", "1",
           "--set", f"data.path={recipe_dataset}", "--set", f"output_dir={tmp_path / 'run'}",
           "--set", "train.max_steps=1", "--set", "export.enabled=false"]
    env = {k: v for k, v in RECIPE_ENV.items() if k != "ACCELERATE_USE_CPU"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=240, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    warnings = [line for line in p.stderr.splitlines() if "asked for 2 processes" in line]
    assert len(warnings) == 1
    assert "--multi_gpu" in warnings[0]
    assert "world size 1" in p.stderr


# --------------------------------------------------------------------------- data paths
def test_wrong_data_path_is_a_typed_error_naming_both_tries(tmp_path, monkeypatch):
    from biomedica_hf.dataset.loader import DatasetNotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=rf"no folder {tmp_path}/my_ds_typo \(relative paths resolve "
                                                   rf"against the working directory {tmp_path}\).*not a Hub dataset id"):
        load_biomedica("my_ds_typo")
    # a well-formed Hub id, with the Hub out of reach (HF_HUB_OFFLINE): the folder and the Hub both named
    with pytest.raises(DatasetNotFoundError, match=r"no folder .*/owner/name .*the Hub could not be asked"):
        load_biomedica("owner/name")
    assert issubclass(DatasetNotFoundError, FileNotFoundError)
    assert DatasetNotFoundError.exit_code == 2


@pytest.mark.parametrize("recipe", ["clip", "smolvlm"])
def test_recipe_with_a_wrong_data_path_exits_2_in_one_line(recipe, tmp_path, monkeypatch, capsys):
    import importlib

    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(f"biomedica_hf.train.{recipe}").main
    assert main(["--config", "cpu_smoke", "--set", "data.path=demo_out", "--set", f"output_dir={tmp_path}/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: dataset 'demo_out' not found: no folder ")
    assert str(tmp_path) in err[0]
    assert not (tmp_path / "run").exists()     # nothing written

"""The SmolVLM fine-tuning recipe (biomedica_hf.train.smolvlm) under accelerate (2 CPU processes): training, each
rank's share of the stream, checkpoint resume, export and `caption` of its outputs; its bundled configs and QLoRA's
clear error. The library it drives (biomedica_hf.vlm) is tested in tests/vlm/."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from support.paths import PMC, REPO
from support.recipes import ddp_teardown, launch_recipe, recipe_log

pytest.importorskip("num2words")  # SmolVLMProcessor needs it; the pipeline imports only transformers/peft

TRAIN = str(REPO / "finetune" / "smolvlm" / "train.py")
SMOKE = str(REPO / "finetune" / "smolvlm" / "configs" / "cpu_smoke.yaml")
FIG_JPG = next((PMC / "images_other" / "pmc_packages_without_nxml" / "PMC11286954").glob("*Fig1_HTML.jpg"))

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def run(recipe_dataset, tmp_path_factory) -> Path:
    """6 optimizer steps (2 procs x batch 2 x accumulation 2), checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("run") / "smoke"
    # the installed entry point and a bundled config name (the resume test runs finetune/smolvlm/train.py)
    launch_recipe(["-m", "biomedica_hf.train.smolvlm", "--config", "cpu_smoke", "--set", f"data.path={recipe_dataset}",
                   "--set", f"output_dir={out}", "--set", "train.max_steps=6", "--threads", "1"])
    return out


def _launch(args: list[str], timeout: int = 240, probe: Path | None = None):
    return launch_recipe([TRAIN, *args], timeout, probe)


def test_qlora_without_bitsandbytes_or_gpu_is_a_clear_error():
    import importlib.util

    from biomedica_hf.train.smolvlm import load_config, quantization_config

    cfg = load_config("smolvlm_2.2b_qlora")
    assert cfg["model"]["quantization"] == "nf4"
    assert cfg["lora"]["r"] == 8
    assert cfg["train"]["lr"] == 1e-4
    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        assert quantization_config(cfg["model"]).bnb_4bit_quant_type == "nf4"
        return
    with pytest.raises(RuntimeError, match="QLoRA .* needs .*(bitsandbytes|CUDA GPU).*use a LoRA config"):
        quantization_config(cfg["model"])


def test_configs_load_with_real_model_names():
    from biomedica_hf.train.config import bundled_configs
    from biomedica_hf.train.smolvlm import load_config

    names = {p.name: load_config(p)["model"] for p in bundled_configs("smolvlm").values()}
    assert names["smolvlm_256m_lora.yaml"]["name"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert names["smolvlm_500m_lora.yaml"]["name"] == "HuggingFaceTB/SmolVLM-500M-Instruct"
    assert names["smolvlm_2.2b_lora.yaml"]["name"] == "HuggingFaceTB/SmolVLM-Instruct"
    assert names["cpu_smoke.yaml"]["tiny"] is True


# ------------------------------------------------------------------------------------------ training
def test_train_two_processes_exports_and_card(run):
    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 2
    assert res["steps"] == 6
    assert res["samples"] == 6 * 2 * 2 * 2                # steps x batch x accumulation x processes
    assert all(math.isfinite(v) and v < 20 for v in res["losses"])
    assert [r["step"] for r in recipe_log(run)] == [1, 2, 3, 4, 5, 6]
    assert res["merge_max_abs_diff"] < 1e-4
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"step_2", "step_4", "step_6"}
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "merged" / "config.json").exists()
    assert (run / "merged" / "processor_config.json").exists()
    card = (run / "README.md").read_text()
    assert "tiny random Idefics3" in card
    assert "q_proj" in card
    assert f"{res['losses'][-1]:.4f}" in card
    assert str(res["tokens_per_s"]) in card
    assert (run / "merged" / "README.md").exists()
    # the adapter learnt something: LoRA B weights left their zero (gaussian) init
    from safetensors.torch import load_file

    w = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in w.items())


def test_each_rank_reads_only_its_share(run, recipe_dataset):
    """The stream is split once (by sample: ``load_biomedica(rank=)``), not read whole by every rank and
    filtered by i % world_size; the shares differ by at most one sample."""
    import pyarrow.parquet as pq

    from biomedica_hf.dataset.loader import load_biomedica

    every = {r["key"] for r in pq.read_table(recipe_dataset / "figures.parquet", columns=["key"]).to_pylist()}
    reads = [json.loads((run / f"data_rank{r}_reads.json").read_text()) for r in range(2)]
    shares = [{ex["key"] for ex in load_biomedica(recipe_dataset, subset="all", decode=False, world_size=2, rank=r,
                                                  num_workers=0)} for r in range(2)]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == every
    assert all(shares)
    assert sorted(map(len, shares)) == [11, 12]
    start = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start"
    assert start["rank_samples"] == [12, 11]
    assert start["world_size"] == 2
    for rank in range(2):
        assert reads[rank], rank
        assert set(reads[rank]) <= shares[rank], rank      # never a row of the other rank
        # a rank cycles over its share: each pass reads the share once, so the I/O is 1/world_size of the data
        first_pass = reads[rank][:len(shares[rank])]
        assert sorted(first_pass) == sorted(shares[rank])
    assert len(reads[0]) + len(reads[1]) >= 6 * 2 * 2 * 2   # the run consumed at least its 48 samples


def test_resume_from_checkpoint_repeats_the_same_steps(run, recipe_dataset, tmp_path):
    """``train.resume: auto`` picks the latest checkpoint; a checkpoint of a run made before issue 18 (data
    state under its old name, ``data_rank{r}.json``) resumes the same way."""
    out = tmp_path / "resumed"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("step_6", "adapter", "merged"))
    for r in range(2):
        state = out / "checkpoints" / "step_4" / f"data_state_rank{r}.json"
        assert json.loads(state.read_text())["seen"] > 0
        state.rename(state.with_name(f"data_rank{r}.json"))
    (out / "log.jsonl").write_text("\n".join(json.dumps(r) for r in recipe_log(run)[:4]) + "\n")
    r = _launch(["--config", SMOKE, "--set", f"data.path={recipe_dataset}", "--set", f"output_dir={out}",
                 "--set", "train.max_steps=6", "--threads", "1"], probe=tmp_path)
    assert ddp_teardown(tmp_path) == [[True], [True]]   # DDP freed before the process group (no gloo deadlock)
    assert "resumed from" in r.stdout + r.stderr
    assert "step_4" in r.stdout + r.stderr
    a, b = recipe_log(run), recipe_log(out)
    assert [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a[4:], b[4:], strict=True):
        assert x["lr"] == pytest.approx(y["lr"])
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)


def test_caption_command_merged_and_adapter(run):
    from click.testing import CliRunner

    from biomedica_hf.vlm.cli import COMMANDS

    (caption,) = COMMANDS
    for d in ("merged", "adapter"):
        r = CliRunner().invoke(caption, [str(FIG_JPG), "--model", str(run / d), "--max-new-tokens", "5"])
        assert r.exit_code == 0, (r.output, r.exception)
        assert r.output.strip()

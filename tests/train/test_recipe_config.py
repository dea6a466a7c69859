"""Recipe configs and command lines (issue 18): `python -m biomedica_hf.train.clip|smolvlm` answer `--help` and
`--list-configs` without importing torch; configs are typed (unknown keys rejected with the valid list and a
did-you-mean, old keys name their new key, types checked and converted); both recipes use one vocabulary;
bundled configs resolve by name, by path and through `finetune/*/configs`; checkpoints resolve `train.resume`
and read the data state under its old name."""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import subprocess
import sys

import pytest
import tomllib
import yaml
from support.paths import REPO

from biomedica_hf.train import checkpoint
from biomedica_hf.train.config import (
    CONFIG_DIR,
    RECIPES,
    RENAMED,
    ClipTrain,
    ConfigError,
    bundled_configs,
    check_config,
    load_config,
)

RECIPE_NAMES = ["clip", "smolvlm"]


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k not in ("tasks", "model_cfg", "config"):
            out |= _keys(v, f"{prefix}{k}.")
    return out


# ------------------------------------------------------------------------------------------ command line
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_help_and_list_configs_answer_without_torch(recipe):
    module = f"biomedica_hf.train.{recipe}"
    r = _python("-m", module, "--help")
    assert r.returncode == 0, r.stderr
    assert "--config NAME_OR_PATH" in r.stdout and "--list-configs" in r.stdout and "--set KEY=VALUE" in r.stdout
    assert "cpu_smoke" in r.stdout                      # the bundled names are offered
    probe = ("import json, runpy, sys\n"
             f"for argv in (['--help'], ['--list-configs']):\n"
             f"    sys.argv = ['{module}', *argv]\n"
             "    try:\n"
             f"        runpy.run_module('{module}', run_name='__main__')\n"
             "    except SystemExit as e:\n"
             "        assert e.code == 0, e.code\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('torch', 'transformers', 'accelerate', 'open_clip', 'datasets', 'peft'))))")
    r = _python("-c", probe)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    listed = [line.split()[0] for line in _python("-m", module, "--list-configs").stdout.splitlines()]
    assert listed == list(bundled_configs(recipe)) and "cpu_smoke" in listed


def test_command_line_errors_are_usage_errors():
    r = _python("-m", "biomedica_hf.train.smolvlm", "--config", "cpu_smoke", "--set", "lora.dropuot=0.2")
    assert r.returncode == 2 and "usage:" in r.stderr
    assert "unknown config key 'lora.dropuot'; did you mean 'lora.dropout'?" in r.stderr
    assert "Valid keys of lora: enabled, r, alpha, dropout, target_modules, init_lora_weights" in r.stderr
    r = _python("finetune/clip/train.py", "--config", "cpu_smoke", "--set", "train.resume_from=runs/x/checkpoints/step_2")
    assert r.returncode == 2 and "train.resume_from was renamed: use train.resume" in r.stderr
    r = _python("-m", "biomedica_hf.train.clip", "--config", "cpu_smoke", "--set", "data.path=null")
    assert r.returncode == 2 and "data.path is not set" in r.stderr
    r = _python("-m", "biomedica_hf.train.clip", "--config", "cpu_smoek")
    assert r.returncode == 2 and "did you mean 'cpu_smoke'?" in r.stderr and "lora, vitb16_1gpu" in r.stderr
    r = _python("-m", "biomedica_hf.train.clip", "--set", "train.lr=1")
    assert r.returncode == 2 and "--config NAME_OR_PATH is required" in r.stderr


# ------------------------------------------------------------------------------------------ typed configs
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_unknown_keys_are_rejected_with_the_valid_keys(recipe, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "ds"}, "train": {"batch_size": 2, "resum": "auto"}}))
    with pytest.raises(ConfigError) as e:
        load_config(recipe, config)
    msg = str(e.value)
    train_fields = [f.name for f in dataclasses.fields(RECIPES[recipe]().train)]
    assert msg.startswith(f"{config}: unknown config key 'train.resum'; did you mean 'train.resume'?")
    assert msg.endswith("Valid keys of train: " + ", ".join(train_fields))
    with pytest.raises(ConfigError, match=r"unknown config key 'ouput_dir'; did you mean 'output_dir'\? "
                                          r"Valid keys at the top level: seed, output_dir, model, "):
        load_config(recipe, None, ["ouput_dir=runs/x"])
    with pytest.raises(ConfigError, match="unknown config key 'extra'.* Valid keys at the top level"):
        load_config(recipe, None, ["extra.thing=1"])          # a whole unknown section
    with pytest.raises(ConfigError, match="train: expected a mapping, got 5"):
        load_config(recipe, None, ["train=5"])


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_old_keys_name_their_new_key(old):
    new, _ = RENAMED[old]
    section, key = old.split(".")
    for recipe in RECIPE_NAMES:
        with pytest.raises(ConfigError, match=rf"^{old} was renamed: use {new} \("):
            load_config(recipe, None, [f"{old}=true"])
        assert key not in RECIPES[recipe]().__dict__[section].__dict__        # really gone from both


def test_types_are_checked_and_converted(tmp_path):
    config = tmp_path / "c.yaml"
    # YAML 1.1 reads 1e-6 as a string and an unquoted `no` as false: both mean what the user wrote
    config.write_text("train:\n  lr: 1e-6\n  max_steps: 10.0\n  mixed_precision: no\n  betas: [0.9, 1]\n"
                      "data:\n  subset: [commercial, other]\n  years: 2020\n")
    cfg = load_config("clip", config)
    assert cfg["train"]["lr"] == 1e-6 and cfg["train"]["max_steps"] == 10 and isinstance(cfg["train"]["max_steps"], int)
    assert cfg["train"]["mixed_precision"] == "no" and cfg["train"]["betas"] == [0.9, 1.0]
    assert cfg["data"]["subset"] == ["commercial", "other"] and cfg["data"]["years"] == 2020
    bad = {"train.max_steps=ten": "train.max_steps: expected int or null, got 'ten'",
           "train.batch_size=2.5": "train.batch_size: expected int, got 2.5",
           "train.grad_checkpointing=1": "train.grad_checkpointing: expected bool, got 1",
           "train.mixed_precision=fp8": "train.mixed_precision: expected 'auto' | 'no' | 'bf16' | 'fp16', got 'fp8'",
           "export.formats=[onnx]": "export.formats[0]: expected 'open_clip' | 'transformers', got 'onnx'",
           "model.kind=timm": "model.kind: expected 'open_clip' | 'transformers', got 'timm'",
           "data.subset=3": "data.subset: expected str or a list of str, got 3"}
    for override, message in bad.items():
        with pytest.raises(ConfigError) as e:
            load_config("clip", "cpu_smoke", [override])
        assert str(e.value) == message
    with pytest.raises(ConfigError, match=r"data.tasks: expected 'caption' \| 'reference' \| 'concepts', got 'caption2'"):
        load_config("smolvlm", "cpu_smoke", ["data.tasks.caption2=1"])
    with pytest.raises(ConfigError, match=r"model.quantization: expected 'nf4' or null, got 'int8'"):
        load_config("smolvlm", "cpu_smoke", ["model.quantization=int8"])
    # --set reaches into free-form mappings and merges with the file (the other tasks stay)
    cfg = load_config("smolvlm", "cpu_smoke", ["data.tasks.reference=0", "train.resume=null"])
    assert cfg["data"]["tasks"] == {"caption": 1.0, "reference": 0.0, "concepts": 0.5} and cfg["train"]["resume"] is None


def test_the_data_section_is_one_selection_checked_with_the_config(tmp_path):
    """Issue 29: ``data``'s filters are the fields of one ``Selection`` (the loader's rule), checked when the
    config is loaded: a file's own error names the file."""
    from biomedica_hf.filters import Selection

    for recipe in RECIPE_NAMES:
        with pytest.raises(ConfigError, match=r"^data: subset must be 'all' or among \['commercial'"):
            load_config(recipe, "cpu_smoke", ["data.subset=comercial"])
        with pytest.raises(ConfigError, match=r"^data: min_caption_chars must be a non-negative integer, got -3"):
            load_config(recipe, "cpu_smoke", ["data.min_caption_chars=-3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  near_duplicates: keep\n  years: [2019, x]\n")
    with pytest.raises(ConfigError, match="data.years"):
        load_config("clip", bad)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  subset: [other]\n  years: [2019, 2021]\n  licenses: cc by\n  split: test\n")
    data = check_config("clip", load_config("clip", config)).data
    assert data.selection() == Selection(subset=("other",), years=frozenset({2019, 2021}), licenses="cc by",
                                         split="test")
    assert check_config("smolvlm", {"data": {"near_duplicates": "drop"}}).data.selection().near_duplicates == "drop"


def test_one_vocabulary_for_both_recipes():
    clip, vlm = (_keys(dataclasses.asdict(RECIPES[r]())) for r in RECIPE_NAMES)
    shared = {"seed", "output_dir", "train.resume", "train.grad_checkpointing", "train.mixed_precision", "train.cpu",
              "train.batch_size", "train.grad_accum", "train.lr", "train.max_steps", "train.save_every",
              "export.enabled", "export.adapter", "card.enabled", "card.template", "lora.enabled", "lora.r",
              "data.path", "data.subset", "data.concepts", "data.licenses", "data.split", "data.near_duplicates"}
    assert shared <= clip & vlm
    for old in RENAMED:
        assert old not in clip | vlm
    assert ClipTrain().resume == "auto" and RECIPES["smolvlm"]().train.resume == "auto"   # issue 23: auto for both
    assert ClipTrain().overwrite is False and RECIPES["smolvlm"]().train.overwrite is False


# ------------------------------------------------------------------------------------------ bundled configs
@pytest.mark.parametrize("recipe", RECIPE_NAMES)
def test_bundled_configs_resolve_by_name_path_and_finetune_link(recipe):
    named = bundled_configs(recipe)
    assert "cpu_smoke" in named and len(named) >= 4
    for name, path in named.items():
        cfg = load_config(recipe, name)
        assert cfg == load_config(recipe, str(path)) == load_config(recipe, f"{name}.yaml")
        assert cfg == load_config(recipe, REPO / "finetune" / recipe / "configs" / f"{name}.yaml")
        assert cfg["card"]["enabled"] is True and "resume" in cfg["train"]
    with pytest.raises(ConfigError, match=f"neither a file nor a bundled {recipe} config.* Bundled: "):
        load_config(recipe, "no/such/cpu_smoke.yaml")          # a missing path is not silently a bundled name


def test_bundled_configs_are_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["biomedica_hf"]
    package = REPO / "biomedica_hf"
    files = [p.relative_to(package).as_posix() for p in CONFIG_DIR.rglob("*") if p.is_file()]
    assert files and all(f.endswith(".yaml") for f in files)
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns), f


# ------------------------------------------------------------------------------------------ checkpoints
def test_resume_resolution_and_data_state_names(tmp_path):
    out = tmp_path / "run"
    assert checkpoint.resume_checkpoint(None, out) is None and checkpoint.resume_checkpoint("auto", out) is None
    for step, complete in ((2, True), (10, True), (9, True), (12, False)):   # step_12: killed while saving
        ck = checkpoint.checkpoint_dir(out, step)
        ck.mkdir(parents=True)
        if complete:
            checkpoint.write_trainer_state(ck, {"step": step})
    assert checkpoint.resume_checkpoint("auto", out) == out / "checkpoints" / "step_10"   # by number, complete
    assert checkpoint.resume_checkpoint(str(out / "checkpoints" / "step_2"), out).name == "step_2"
    with pytest.raises(ConfigError, match="step_12 is not a checkpoint folder"):
        checkpoint.resume_checkpoint(str(out / "checkpoints" / "step_12"), out)
    ck = out / "checkpoints" / "step_10"
    checkpoint.write_data_state(ck, 1, {"seen": 7})
    assert (ck / "data_state_rank1.json").is_file() and checkpoint.read_data_state(ck, 1) == {"seen": 7}
    (ck / "data_rank0.json").write_text(json.dumps({"seen": 5}))          # written before issue 18
    assert checkpoint.read_data_state(ck, 0) == {"seen": 5} and checkpoint.read_data_state(ck, 2) is None

"""The templates (biomedica_hf/templates/): one copy of each, one renderer, and the same cards from an installed wheel.

The wheel test builds a wheel of this checkout, installs it (no dependencies) into a fresh virtual environment and
renders both model cards and the dataset card there, from a folder outside the repository: the output must be byte
for byte what this checkout renders, and the dataset card must get the concept configs through the entry points
alone (the script never imports ``biomedica_hf.concepts``).
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import jinja2
import pytest

from biomedica_hf import hooks, templates

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "biomedica_hf" / "templates"
# the repository's top-level folders people read and edit; each file there is a symlink to the package's copy
LINKS = {"dataset_card/README.md.j2": templates.DATASET_CARD,
         "model_cards/clip_model_card.md": templates.CLIP_MODEL_CARD,
         "model_cards/smolvlm_model_card.md": templates.SMOLVLM_MODEL_CARD}

CLIP_CFG = {  # the keys the CLIP card reads (finetune/clip/configs/cpu_smoke.yaml's shape), with LoRA and WiSE-FT on
    "model": {"name": "ViT-B-16", "pretrained": "laion2b_s34b_b88k"},
    "data": {"path": "me/pmc-figures", "subset": "commercial", "shuffle_buffer": 16, "reference_prob": 0.25,
             "years": [2015, 2024]},
    "train": {"batch_size": 4, "grad_accum": 2, "lr": 1e-5, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.2,
              "warmup_steps": 2, "max_steps": 10, "grad_clip": 1.0, "mixed_precision": "no",
              "grad_checkpointing": False},
    "lora": {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.05},
    "wise_ft": {"alpha": 0.5},
    "export": {"repo_id": "me/bmc-clip-b16"},
}
SMOLVLM_CFG = {  # the keys the SmolVLM card reads
    "output_dir": "runs/smolvlm-demo",
    "model": {"name": "HuggingFaceTB/SmolVLM-256M-Instruct", "tiny": False, "quantization": None},
    "data": {"path": "/data/pmc", "subset": "commercial", "tasks": {"caption": 1.0, "reference": 0.5},
             "longest_edge": 512, "max_length": 1024},
    "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
    "train": {"batch_size": 2, "grad_accum": 4, "lr": 1e-4, "warmup_steps": 5, "scheduler": "cosine"},
}
SMOLVLM_RESULT = {"losses": [2.5, 1.25], "steps": 2, "world_size": 1, "tokens_per_s": 12.5, "samples_per_s": 0.5,
                  "trainable_params": 1234, "total_params": 56789}
CLIP_STATS = {"step": 7, "samples": 100, "world_size": 2, "final_loss": 1.0}


def test_one_copy_of_each_template():
    assert sorted(p.name for p in TEMPLATES.iterdir() if p.name not in ("__init__.py", "__pycache__")) \
        == sorted(templates.NAMES)
    for link, name in LINKS.items():
        path = REPO / link
        assert path.is_symlink() and not os.path.isabs(os.readlink(path)), link          # relative: survives a copy
        assert path.resolve() == (TEMPLATES / name).resolve()
        assert path.read_text() == templates.source(name)
    for folder in ("dataset_card", "model_cards"):   # read and edited there, no longer import packages
        assert not (REPO / folder / "__init__.py").exists()
    with pytest.raises(ValueError, match="unknown template"):
        templates.source("README.md.j2")


def test_one_environment_strict_verbatim_unescaped():
    assert templates.render_string("<b>{{ x }}</b>\n", x="a & b") == "<b>a & b</b>\n"   # Markdown: no escaping
    assert templates.render_string("{{ x }}", x=1) == "1"
    with pytest.raises(jinja2.UndefinedError):     # a misspelt variable is an error, not an empty string
        templates.render_string("{{ missing }}")
    from biomedica_hf.search.page import PAGE_HTML

    assert PAGE_HTML == (TEMPLATES / templates.SEARCH_PAGE).read_text()
    assert PAGE_HTML.endswith("</html>\n")


def test_model_cards_render_from_the_packaged_and_a_users_template(tmp_path):
    from biomedica_hf.clip.card import render_model_card
    from biomedica_hf.vlm.card import render, write_model_card

    card = render_model_card(CLIP_CFG, "open_clip", CLIP_STATS)
    assert card.startswith("---\nlibrary_name: open_clip\n")
    assert "| LoRA r | 8 |" in card
    assert "WiSE-FT interpolation with the base weights (alpha=0.5)" in card
    assert "{{" not in card
    own = tmp_path / "mine.md.j2"
    own.write_text("# {{ title }} ({{ format_name }})\n")
    assert render_model_card(CLIP_CFG, "transformers", CLIP_STATS, own) == "# BMC-CLIP ViT-B-16 (transformers)\n"
    with pytest.raises(FileNotFoundError):
        render_model_card(CLIP_CFG, "open_clip", CLIP_STATS, tmp_path / "absent.md")
    text = render(SMOLVLM_CFG, SMOLVLM_RESULT, kind="adapter")
    assert "# smolvlm-demo: HuggingFaceTB/SmolVLM-256M-Instruct fine-tuned" in text
    assert "library_name: peft" in text
    assert "| first / last training loss | 2.5000 / 1.2500 |" in text
    assert "{{" not in text
    (tmp_path / "own.j2").write_text("{{ run_name }} {{ first_loss }}\n")
    out = tmp_path / "run"
    (out / "merged").mkdir(parents=True)
    write_model_card(out, {**SMOLVLM_CFG, "card": {"template": str(tmp_path / "own.j2")}}, SMOLVLM_RESULT)
    assert (out / "merged" / "README.md").read_text() == "smolvlm-demo 2.5000\n"


def _fake_concept_subset(folder: Path) -> None:
    """A materialised concept subset (what `biomedica concept-subsets` leaves): its card config comes from the hook."""
    from biomedica_hf.layout import folder_files

    shard = min(folder_files(folder / "commercial", "*.tar"))
    (folder / "concept-filtered").mkdir()
    shutil.copy(shard, folder / "concept-filtered" / f"concept-filtered-{shard.name}")
    (folder / "concepts").mkdir()
    (folder / "concepts" / "subsets.json").write_text(json.dumps({"concept-filtered": {"samples": 1, "shards": 1}}))


WHEEL_SCRIPT = r"""
import json, sys
from pathlib import Path

job = json.loads(Path(sys.argv[1]).read_text())
import biomedica_hf
assert biomedica_hf.__file__.startswith(sys.prefix), (biomedica_hf.__file__, sys.prefix)   # the installed wheel
from biomedica_hf import hooks
from biomedica_hf.clip.card import render_model_card
from biomedica_hf.dataset.card import write_card
from biomedica_hf.vlm.card import render

out = Path(job["out"])
(out / "clip.md").write_text(render_model_card(job["clip_cfg"], "open_clip", job["clip_stats"]))
(out / "smolvlm.md").write_text(render(job["vlm_cfg"], job["vlm_result"], kind="merged"))
assert "biomedica_hf.concepts" not in sys.modules          # concepts is found through its entry points only
write_card(Path(job["dataset"]), repo_id="me/pmc")
print(json.dumps({g: [f"{f.__module__}:{f.__name__}" for f in hooks.providers(g)] for g in hooks.GROUPS}))
"""


@pytest.mark.slow
def test_cards_from_an_installed_wheel(tmp_path):
    """pip wheel of this checkout -> fresh venv (--system-site-packages; the test interpreter's own site-packages
    added by a .pth so that the dependencies resolve) -> install with --no-deps -> render from outside the repo."""
    from biomedica_hf.ingest.pipeline import BuildConfig, build
    from biomedica_hf.clip.card import render_model_card
    from biomedica_hf.dataset.card import write_card
    from biomedica_hf.vlm.card import render

    # the wheel, from a copy of what it is built from (the symlinked top-level folders included)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("biomedica_hf", "dataset_card", "model_cards"):
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    r = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                        str(src)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = next((tmp_path / "dist").glob("biomedica_hf-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for name in templates.NAMES:                      # real content, not links
            assert z.read(f"biomedica_hf/templates/{name}") == (TEMPLATES / name).read_bytes()
        assert not [n for n in names if n.startswith(("dataset_card/", "model_cards/"))]
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for group, fn in (("card_sections", "card_section"), ("card_configs", "card_configs"),
                      ("card_files", "card_files")):
        assert f"[biomedica_hf.{group}]\nconcepts = biomedica_hf.concepts.hooks:{fn}\n" in entry_points

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (purelib / "test-deps.pth").write_text("".join(f"{p}\n" for p in ours))   # plain paths: their .pth stay unread
    r = subprocess.run([*pip, "--python", str(vpy), "install", "-q", "--no-deps", str(wheel)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    # the same dataset folder (the bundled sample, as `biomedica build --sample`) twice: one card from this
    # checkout, one from the wheel
    built = tmp_path / "built"
    build(BuildConfig(out=built, source="local", source_opts={"path": str(REPO / "biomedica_hf/sample_data/articles")},
                      progress=False))
    _fake_concept_subset(built)
    shutil.copytree(built, tmp_path / "from_wheel", ignore=shutil.ignore_patterns("_work"))
    shutil.copytree(built, tmp_path / "from_checkout", ignore=shutil.ignore_patterns("_work"))
    import biomedica_hf.concepts  # noqa: F401 - registers the card hooks in this (not installed) checkout
    expected = write_card(tmp_path / "from_checkout", repo_id="me/pmc").read_bytes()

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "render.py").write_text(WHEEL_SCRIPT)
    job = {"out": str(outside), "dataset": str(tmp_path / "from_wheel"), "clip_cfg": CLIP_CFG,
           "clip_stats": CLIP_STATS, "vlm_cfg": SMOLVLM_CFG, "vlm_result": SMOLVLM_RESULT}
    (outside / "job.json").write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([str(vpy), "render.py", "job.json"], cwd=outside, env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    found = json.loads(r.stdout.strip().splitlines()[-1])
    assert sorted(found[hooks.CARD_CONFIGS]) == ["biomedica_hf.concepts.hooks:card_configs",
                                                 "biomedica_hf.panels.hooks:card_configs"]
    assert sorted(found[hooks.CARD_SECTIONS]) == ["biomedica_hf.concepts.hooks:card_section",
                                                  "biomedica_hf.panels.hooks:card_section"]

    assert (outside / "clip.md").read_text() == render_model_card(CLIP_CFG, "open_clip", CLIP_STATS)
    assert (outside / "smolvlm.md").read_text() == render(SMOLVLM_CFG, SMOLVLM_RESULT, kind="merged")
    card = (tmp_path / "from_wheel" / "README.md").read_bytes()
    assert b"config_name: commercial-concept-filtered" in card
    assert card == expected

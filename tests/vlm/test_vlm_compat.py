"""Issue 23: a SmolVLM export loads with the oldest transformers pyproject allows (4.46) and with the current one.

The cross-release check needs a Python with transformers 4.46 (``BIOMEDICA_OLD_TRANSFORMERS_PYTHON``, e.g. a venv
with ``transformers==4.46.3 tokenizers==0.20.3 huggingface_hub==0.26.5`` that reaches this project's other
packages through a ``.pth`` line ``import site; site.addsitedir('.../.venv/lib/python3.11/site-packages')``);
without it that test is skipped. The layout test runs everywhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

PROBE = r'''
import json, sys, torch
from PIL import Image
import transformers
from transformers import AutoProcessor
try:
    from transformers import AutoModelForImageTextToText as Auto
except ImportError:
    from transformers import AutoModelForVision2Seq as Auto
d = sys.argv[1]
proc = AutoProcessor.from_pretrained(d)
model = Auto.from_pretrained(d).eval()
msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this figure."}]}]
text = proc.apply_chat_template(msgs, add_generation_prompt=True)
b = proc(text=[text], images=[[Image.new("RGB", (48, 40), (200, 30, 30))]], return_tensors="pt")
with torch.no_grad():
    logits = model(**b).logits
print(json.dumps({"version": transformers.__version__, "ids": b["input_ids"][0].tolist(),
                  "logits": logits[0, -3:].flatten().tolist()}))
'''


def _export(tmp_path: Path) -> Path:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from biomedica_hf.vlm.compat import make_legacy_compatible
    from biomedica_hf.vlm.tiny import save_tiny_model

    base = save_tiny_model(tmp_path / "base", ["a chest X-ray", "a bar chart of gene expression"], seed=0)
    out = tmp_path / "merged"
    AutoModelForImageTextToText.from_pretrained(base).save_pretrained(out)
    AutoProcessor.from_pretrained(base).save_pretrained(out)
    make_legacy_compatible(out)
    return out


def _probe(python: str, folder: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([python, "-c", PROBE, str(folder)], capture_output=True, text=True, env=env, timeout=300,
                       check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_export_has_the_layout_every_release_reads(tmp_path):
    from biomedica_hf.vlm.compat import make_legacy_compatible

    out = _export(tmp_path)
    assert make_legacy_compatible(out) == []                                   # idempotent
    processor = json.loads((out / "processor_config.json").read_text())
    assert not any(isinstance(v, dict) for v in processor.values())             # no nested image processor
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"] == \
        "Idefics3ImageProcessor"
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "token_type_ids" not in tok["model_input_names"]
    assert (out / "chat_template.json").is_file()
    now = _probe(sys.executable, out)          # the current release still loads it, and runs it
    assert now["ids"]
    assert all(map(lambda v: abs(v) < 1e3, now["logits"]))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BIOMEDICA_OLD_TRANSFORMERS_PYTHON"),
                    reason="set BIOMEDICA_OLD_TRANSFORMERS_PYTHON to a Python with transformers 4.46")
def test_oldest_allowed_transformers_loads_the_export(tmp_path):
    out = _export(tmp_path)
    old, now = _probe(os.environ["BIOMEDICA_OLD_TRANSFORMERS_PYTHON"], out), _probe(sys.executable, out)
    assert old["version"].startswith("4.46")
    assert old["version"] != now["version"]
    assert old["ids"] == now["ids"]
    assert torch.allclose(torch.tensor(old["logits"]), torch.tensor(now["logits"]), atol=1e-5)

"""Issue 23: the CLIP LoRA adapter round-trips exactly (temperature and every trained non-LoRA parameter)."""
from __future__ import annotations

import json
import math

import pytest
import torch

torch.set_num_threads(1)
TEXTS = ["a chest X-ray of a child", "fluorescence microscopy of HeLa cells", "bar chart"]


def _tiny(seed: int):
    from biomedica_hf.clip import build_model
    from biomedica_hf.clip.tiny import TINY_OPEN_CLIP_CFG

    return build_model({"kind": "open_clip", "name": "tiny", "model_cfg": TINY_OPEN_CLIP_CFG,
                        "train_augment": False}, seed=seed)


def _logits(model, pixels, tokens):
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
        return model.logit_scale.exp() * img @ txt.T


def test_adapter_through_peft_gives_the_merged_export_logits(tmp_path):
    import open_clip
    from peft import PeftModel

    from biomedica_hf.clip.export import TRAINED_PARAMETERS, export_model, load_lora_adapter, save_lora_adapter

    clip = _tiny(seed=1)
    clip.apply_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():   # "training": non-trivial adapters and a temperature away from its initial value
        for n, p in clip.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
        clip.base_core().logit_scale.fill_(math.log(14.2430))
    adapter = save_lora_adapter(clip, tmp_path / "lora_adapter", "tiny",
                                {"kind": "open_clip", "data": "BIOMEDICA/biomedica", "subset": "commercial",
                                 "steps": 7})
    merged = export_model(clip, tmp_path / "export", ("open_clip",))["open_clip"]

    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    readme = (adapter / "README.md").read_text()
    assert "BIOMEDICA/biomedica" in readme
    assert "load_lora_adapter" in readme
    assert TRAINED_PARAMETERS in readme
    assert "logit_scale" in readme
    assert "base_model: tiny" in readme

    pixels, tokens = torch.randn(2, 3, 32, 32), open_clip.tokenize(TEXTS, context_length=16)
    reference, _ = open_clip.create_model_from_pretrained(f"local-dir:{merged}")
    want = _logits(reference.eval(), pixels, tokens)
    loaded = load_lora_adapter(_tiny(seed=1).model, adapter).eval()
    got = _logits(loaded.get_base_model(), pixels, tokens)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert loaded.get_base_model().logit_scale.exp().item() == pytest.approx(14.2430, rel=1e-6)
    # PEFT alone (the side file not applied) keeps the base temperature: the logits differ
    plain = PeftModel.from_pretrained(_tiny(seed=1).model, str(adapter)).eval()
    assert not torch.allclose(_logits(plain.get_base_model(), pixels, tokens), want, atol=1e-3)

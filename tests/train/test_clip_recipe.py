"""CLIP continual pre-training recipe: loss, data, training under accelerate (2 CPU processes), resume,
export round-trips (open_clip hf-hub layout, transformers conversion, LoRA), WiSE-FT, model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from support.paths import REPO
from support.recipes import ddp_teardown, launch_recipe, recipe_log

TRAIN = str(REPO / "finetune" / "clip" / "train.py")      # the thin script README users run
SMOKE = str(REPO / "finetune" / "clip" / "configs" / "cpu_smoke.yaml")   # a path through finetune/clip/configs

torch.set_num_threads(1)


def _tiny_oc(seed: int = 0, **kw):
    from biomedica_hf.clip import build_model
    from biomedica_hf.clip.tiny import TINY_OPEN_CLIP_CFG

    return build_model({"kind": "open_clip", "name": "tiny", "model_cfg": TINY_OPEN_CLIP_CFG,
                        "train_augment": False, **kw}, seed=seed)


def _tiny_hf(tok_dir, seed: int = 0):
    from biomedica_hf.clip import build_model
    from biomedica_hf.clip.tiny import tiny_clip_config

    return build_model({"kind": "transformers", "config": tiny_clip_config().to_dict(), "tokenizer_dir": str(tok_dir),
                        "train_augment": False}, seed=seed)


def _embed(clip, pixels, texts):
    clip.eval()
    with torch.no_grad():
        img, txt, _ = clip(pixels, **clip.tokenize(texts))
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


TEXTS = ["a chest X-ray of a child", "fluorescence microscopy of HeLa cells", "bar chart"]


# --------------------------------------------------------------------------- distributed training
def test_gathered_loss_equals_single_process(tmp_path):
    out = tmp_path / "gather.json"
    launch_recipe([str(REPO / "finetune" / "clip" / "check_gather.py"), str(out)])
    res = json.loads(out.read_text())
    assert res["world_size"] == 2
    assert res["distributed_loss"] == pytest.approx(res["single_process_loss"], rel=1e-5)
    assert res["max_grad_abs_diff"] < 1e-5


def test_open_clip_two_processes_resume_and_export(recipe_dataset, tmp_path):
    run, resumed = tmp_path / "run", tmp_path / "resumed"
    common = ["--config", SMOKE, "--threads", "1", "--set", f"data.path={recipe_dataset}"]
    launch_recipe([TRAIN, *common, "--set", f"output_dir={run}"], probe=tmp_path)
    assert ddp_teardown(tmp_path) == [[True], [True]]   # DDP freed before the process group (no gloo deadlock)
    log = recipe_log(run)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert {"loss", "lr", "samples_per_s", "data_wait_frac", "grad_norm", "logit_scale"} <= set(log[0])
    # 23 samples, shares of 12 / 11: epoch 0 is 3 steps (8 + 8 + 7 real samples), step 4 starts epoch 1
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"event"' in line]
    assert events[0]["event"] == "start" and events[0]["rank_samples"] == [12, 11]
    assert events[0]["steps_per_epoch"] == 3 and events[0]["world_size"] == 2
    assert events[1] == {"event": "epoch_end", "step": 3, "epoch": 0, "rank_samples": [12, 11], "samples": 23}
    assert [r["samples"] for r in log] == [8, 16, 23, 31] and [r["epoch"] for r in log] == [0, 0, 0, 1]
    ckpt = run / "checkpoints" / "step_2"
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json", "data_state_rank0.json",
            "data_state_rank1.json"} <= {p.name for p in ckpt.iterdir()}
    # exact resume: the steps after the checkpoint give the same losses
    launch_recipe([TRAIN, *common, "--set", f"output_dir={resumed}", "--set", f"train.resume={ckpt}",
                   "--set", "export.enabled=false"])
    after = recipe_log(resumed)
    assert [r["step"] for r in after] == [3, 4]
    for a, b in zip(after, log[2:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
    # exports: open_clip local-dir and transformers folders give the same embeddings as each other
    import open_clip
    from transformers import CLIPModel, CLIPProcessor

    oc_dir, hf_dir = run / "export" / "open_clip", run / "export" / "transformers"
    model, _ = open_clip.create_model_from_pretrained(f"local-dir:{oc_dir}")
    hf = CLIPModel.from_pretrained(hf_dir).eval()
    proc = CLIPProcessor.from_pretrained(hf_dir)
    pixels = torch.randn(2, 3, 32, 32)
    tokens = open_clip.tokenize(TEXTS, context_length=16)
    hf_tokens = proc.tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        from biomedica_hf.clip.model import hf_features

        assert torch.allclose(model.encode_image(pixels), hf_features(hf.get_image_features(pixel_values=pixels)),
                              atol=1e-5)
        assert torch.allclose(model.encode_text(tokens), hf_features(hf.get_text_features(**hf_tokens)), atol=1e-5)
    card = (oc_dir / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "open_clip" and meta["pipeline_tag"] == "zero-shot-image-classification"
    assert "candidate_labels" in meta["widget"][0]
    assert yaml.safe_load((hf_dir / "README.md").read_text().split("---")[1])["library_name"] == "transformers"


def test_transformers_lora_two_processes(recipe_dataset, tmp_path):
    run = tmp_path / "hf"
    from biomedica_hf.clip.tiny import tiny_clip_config

    cfg = yaml.safe_load(Path(SMOKE).read_text())
    cfg["model"] = {"kind": "transformers", "config": tiny_clip_config().to_dict(), "train_augment": False,
                    "tokenizer_dir": str(tmp_path / "tok")}
    cfg.update(output_dir=str(run), lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
               wise_ft={"alpha": 0.5})
    cfg["data"]["path"] = str(recipe_dataset)
    cfg["train"].update(max_steps=2, save_every=None, grad_checkpointing=True)
    cfg["export"].update(adapter=True)
    config = tmp_path / "hf.yaml"
    config.write_text(yaml.safe_dump(cfg))
    launch_recipe(["-m", "biomedica_hf.train.clip", "--config", str(config), "--threads", "1"])   # the package's entry
    assert [r["step"] for r in recipe_log(run)] == [1, 2]
    export = run / "export"
    assert (export / "lora_adapter" / "adapter_config.json").is_file()
    assert not (export / "open_clip").exists()   # a transformers model has no open_clip layout: skipped
    from biomedica_hf.clip.model import load_model

    adapter = load_model(f"transformers:{export / 'transformers'}", device="cpu")
    assert adapter.encode_texts(TEXTS).shape == (3, 32)
    assert "lora" in yaml.safe_load((export / "transformers" / "README.md").read_text().split("---")[1])["tags"]


# --------------------------------------------------------------------------- in-process checks
@pytest.mark.parametrize("kind", ["open_clip", "transformers"])
def test_loss_decreases_on_repeated_batch(recipe_dataset, kind, tmp_path):
    from biomedica_hf.clip.data import Collate, build_stream
    from biomedica_hf.clip.loss import ClipLoss
    from biomedica_hf.filters import Selection

    clip = _tiny_oc() if kind == "open_clip" else _tiny_hf(tmp_path / "tok")
    ds = build_stream(str(recipe_dataset), Selection(subset="all"))
    batch = Collate(clip)(list(ds.take(8)))
    opt = torch.optim.AdamW(clip.parameters(), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    clip.train()
    for _ in range(6):
        loss = ClipLoss()(*clip(batch["pixel_values"], **{k: batch[k] for k in ("input_ids", "attention_mask")
                                                           if k in batch}))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_open_clip_export_round_trip_and_hf_conversion(tmp_path):
    import open_clip

    from biomedica_hf.clip import export_model
    from biomedica_hf.clip.model import load_model

    clip = _tiny_oc(seed=3)
    pixels = torch.randn(3, 3, 32, 32)
    img0, txt0 = _embed(clip, pixels, TEXTS)
    written = export_model(clip, tmp_path / "export")
    assert set(written) == {"open_clip", "transformers"}
    model, _ = open_clip.create_model_from_pretrained(f"local-dir:{written['open_clip']}")
    tok = open_clip.get_tokenizer(f"local-dir:{written['open_clip']}")
    with torch.no_grad():
        img1 = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
        txt1 = torch.nn.functional.normalize(model.encode_text(tok(TEXTS)), dim=-1)
    assert torch.allclose(img0, img1, atol=1e-6) and torch.allclose(txt0, txt1, atol=1e-6)
    # transformers conversion: same embeddings through the adapters (own processors/tokenizers)
    oc, hf = load_model(written["open_clip"], device="cpu"), load_model(written["transformers"], device="cpu")
    assert torch.allclose(oc.encode_texts(TEXTS), hf.encode_texts(TEXTS), atol=1e-5)
    assert oc.logit_scale == pytest.approx(hf.logit_scale)
    from PIL import Image

    images = [Image.fromarray((torch.rand(48, 40, 3) * 255).byte().numpy()) for _ in range(2)]
    # PIL vs torchvision resize differ slightly: compare the embeddings loosely
    assert (oc.encode_images(images) * hf.encode_images(images)).sum(-1).min() > 0.99


def test_conversion_refuses_unmappable():
    from biomedica_hf.clip import convert_open_clip_to_hf

    clip = _tiny_oc()
    clip.model.text_pool_type = "first"
    with pytest.raises(ValueError, match="does not map"):
        convert_open_clip_to_hf(clip.model)


def test_lora_merge_keeps_embeddings(tmp_path):
    clip = _tiny_oc(seed=1)
    clip.apply_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():   # make the adapters non-trivial
        for n, p in clip.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pixels = torch.randn(2, 3, 32, 32)
    before = _embed(clip, pixels, TEXTS)
    trainable = {n for n, p in clip.named_parameters() if p.requires_grad}
    assert any("logit_scale" in n for n in trainable) and all("lora" in n or "logit_scale" in n for n in trainable)
    assert any(".attn." in n for n in trainable) and any("visual" in n for n in trainable)
    clip.merge_lora()
    after = _embed(clip, pixels, TEXTS)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(before, after))


def test_wise_ft_interpolates():
    from biomedica_hf.clip import wise_ft

    base, ft = _tiny_oc(seed=0).model, _tiny_oc(seed=1).model
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    ft_state = {k: v.clone() for k, v in ft.state_dict().items()}
    wise_ft(ft, base_state, 0.25)
    k = "visual.conv1.weight"
    assert torch.allclose(ft.state_dict()[k], 0.75 * base_state[k] + 0.25 * ft_state[k])
    with pytest.raises(ValueError):
        wise_ft(ft, base_state, 1.5)


def test_reference_captions_and_card_model_index(tmp_path):
    from biomedica_hf.clip.card import render_model_card
    from biomedica_hf.clip.data import pick_caption
    from biomedica_hf.train.clip import load_config

    ex = {"key": "k1", "caption": "cap", "metadata": {"references": ["ref one", "ref two"]}}
    assert pick_caption(ex, 0.0, 0, 0) == "cap"
    assert pick_caption(ex, 1.0, 0, 0) in {"ref one", "ref two"}
    assert pick_caption(ex, 1.0, 0, 3) == pick_caption(ex, 1.0, 0, 3)
    assert pick_caption({**ex, "metadata": {"references": []}}, 1.0, 0, 0) == "cap"
    cfg = load_config("bmc_clip_vitl14_8gpu", ["train.max_steps=7"])      # a bundled config, by name
    assert cfg["model"]["name"] == "ViT-L-14" and cfg["train"]["max_steps"] == 7
    assert cfg["train"]["betas"] == [0.9, 0.95] and cfg["train"]["lr"] == 1e-6
    (tmp_path / "model_index.yaml").write_text("model-index:\n- name: m\n  results: []\n")
    (tmp_path / "results.md").write_text("# Evaluation of `m`\n\n| task | acc |\n|---|---|\n| x | 50.00 |\n")
    cfg["export"]["model_index"] = str(tmp_path / "model_index.yaml")
    card = render_model_card(cfg, "open_clip", {"step": 7, "samples": 100, "world_size": 8, "final_loss": 1.0})
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "laion/CLIP-ViT-L-14-CommonPool.XL.clip-s13B-b90K"
    # this config streams BIOMEDICA/biomedica from the Hub: the one Hub id it really used
    assert meta["model-index"][0]["name"] == "m" and meta["datasets"] == ["BIOMEDICA/biomedica"]
    assert "| x | 50.00 |" in card and "| AdamW betas | (0.9, 0.95) |" in card
    assert "## Limitations" in card and "## Intended use" in card


def test_transformers_lora_export_round_trip(tmp_path):
    from transformers import CLIPModel

    from biomedica_hf.clip import export_model

    clip = _tiny_hf(tmp_path / "tok", seed=2)
    clip.apply_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for n, p in clip.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pixels = torch.randn(2, 3, 32, 32)
    img0, txt0 = _embed(clip, pixels, TEXTS)
    written = export_model(clip, tmp_path / "export", lora="adapter")
    assert (Path(written["lora_adapter"]) / "adapter_config.json").is_file()
    assert "open_clip" in json.loads(written["skipped"])
    loaded = CLIPModel.from_pretrained(written["transformers"]).eval()
    clip.model = loaded   # same adapter (tokenizer, transforms) around the reloaded weights
    img1, txt1 = _embed(clip, pixels, TEXTS)
    assert torch.allclose(img0, img1, atol=1e-5) and torch.allclose(txt0, txt1, atol=1e-5)


@pytest.mark.parametrize("dim", [24, 48])
def test_transformers_export_every_entry_point_matches_open_clip(tmp_path, dim):
    """The exported folder loads through CLIPModel, CLIPTextModelWithProjection, CLIPVisionModelWithProjection,
    AutoModel and the zero-shot pipeline at two embedding sizes (neither the tower width nor 512), and each gives
    open_clip's embeddings / probabilities on the same pixels."""
    import copy

    from PIL import Image
    from transformers import (
        AutoModel,
        AutoProcessor,
        CLIPModel,
        CLIPTextModelWithProjection,
        CLIPVisionModelWithProjection,
        pipeline,
    )

    from biomedica_hf.clip import build_model, export_model
    from biomedica_hf.clip.tiny import TINY_OPEN_CLIP_CFG

    cfg = copy.deepcopy(TINY_OPEN_CLIP_CFG)
    cfg["embed_dim"] = dim
    clip = build_model({"kind": "open_clip", "name": "tiny", "model_cfg": cfg, "train_augment": False}, seed=5)
    oc = clip.model.eval()
    written = export_model(clip, tmp_path / "export", formats=("transformers",))
    folder = written["transformers"]
    config = json.loads((Path(folder) / "config.json").read_text())
    assert config["projection_dim"] == config["text_config"]["projection_dim"] == \
        config["vision_config"]["projection_dim"] == dim

    # identical pixels: 32x32 real fixture crops need no resize or crop, so both pipelines see the same tensor
    cells = sorted((REPO.parent / "shared" / "fixtures" / "eval" / "bccd_cells" / "RBC").glob("*.png"))[:3]
    images = [Image.open(p).convert("RGB").resize((32, 32)) for p in cells]
    pixels = torch.stack([clip.preprocess_val(im) for im in images])
    processor = AutoProcessor.from_pretrained(folder)
    assert torch.allclose(processor(images=images, return_tensors="pt")["pixel_values"], pixels, atol=1e-6)
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    tokens = SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])(TEXTS)
    with torch.no_grad():
        oc_img = torch.nn.functional.normalize(oc.encode_image(pixels), dim=-1)
        oc_txt = torch.nn.functional.normalize(oc.encode_text(tokens), dim=-1)
    enc = processor.tokenizer(TEXTS, padding=True, return_tensors="pt")

    def n(x):
        return torch.nn.functional.normalize(x if isinstance(x, torch.Tensor) else x.pooler_output, dim=-1)

    with torch.no_grad():
        for cls in (CLIPModel, AutoModel):
            m = cls.from_pretrained(folder).eval()
            assert type(m).__name__ == "CLIPModel"
            assert torch.allclose(n(m.get_image_features(pixel_values=pixels)), oc_img, atol=1e-5)
            assert torch.allclose(n(m.get_text_features(**enc)), oc_txt, atol=1e-5)
        text_model = CLIPTextModelWithProjection.from_pretrained(folder).eval()
        assert torch.allclose(n(text_model(**enc).text_embeds), oc_txt, atol=1e-5)
        vision_model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
        assert torch.allclose(n(vision_model(pixel_values=pixels).image_embeds), oc_img, atol=1e-5)
    labels = ["red blood cell", "bar chart", "brain MRI"]
    clf = pipeline("zero-shot-image-classification", model=folder)
    template = "This is a photo of {}."
    with torch.no_grad():
        t = torch.nn.functional.normalize(oc.encode_text(SimpleTokenizer(context_length=16)(
            [template.format(x) for x in labels])), dim=-1)
        probs = (oc.logit_scale.exp() * oc_img @ t.T).softmax(-1)
    for im, p in zip(images, probs):
        out = {d["label"]: d["score"] for d in clf(im, candidate_labels=labels, hypothesis_template=template)}
        assert [out[x] for x in labels] == pytest.approx(p.tolist(), abs=1e-5)
    assert open_clip  # imported for the tokenizer's package


def test_preprocessor_crop_arithmetic_is_measured(tmp_path):
    """CLIPImageProcessor starts the centre crop at floor((L - S) / 2), torchvision's CenterCrop (open_clip) at
    round-half-even((L - S) / 2): one pixel apart when L - S = 3 mod 4. Elsewhere the PIL backend's pixels are
    identical to open_clip's and the default torchvision backend's within 0.02 (bicubic on tensors vs PIL)."""
    import open_clip
    from PIL import Image
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from biomedica_hf.clip.export import compare_preprocessing, crop_offsets

    assert crop_offsets(32, 35, 32) == {"open_clip": (0, 2), "transformers": (0, 1)}
    assert crop_offsets(32, 37, 32)["open_clip"] == crop_offsets(32, 37, 32)["transformers"] == (0, 2)
    assert crop_offsets(224, 231, 224) == {"open_clip": (0, 4), "transformers": (0, 3)}
    files = sorted((REPO.parent / "shared" / "fixtures" / "eval" / "skimage_biomed").iterdir())
    src = Image.open(files[0]).convert("RGB")
    images = [Image.open(f) for f in files] + [src.crop((0, 0, 35, 32)), src.crop((0, 0, 37, 32))]   # L - S = 3, 5
    kw = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
          "image_mean": list(open_clip.OPENAI_DATASET_MEAN), "image_std": list(open_clip.OPENAI_DATASET_STD)}
    transform = open_clip.image_transform(32, is_train=False)
    pil = compare_preprocessing(transform, CLIPImageProcessorPil(**kw), images)
    tv = compare_preprocessing(transform, CLIPImageProcessor(**kw), images)
    assert [r["crop_differs"] for r in pil[-2:]] == [True, False]
    for a, b in zip(pil, tv):
        if a["crop_differs"]:
            assert a["max_abs_diff"] > 0.0          # a shifted crop: other pixels
        else:
            assert a["max_abs_diff"] == 0.0 and b["max_abs_diff"] < 0.02


def test_card_from_facts_local_folder_and_real_eval_run(tmp_path):
    """Trained on a local folder: no `datasets:` and no Hub link, the folder in prose; the model-index of a real
    `biomedica eval` run on an ImageFolder names that folder; only commands that exist are suggested."""
    import csv
    import shutil

    from biomedica_hf.clip.card import hub_dataset_id, render_model_card
    from biomedica_hf.clip.tiny import tiny_open_clip
    from biomedica_hf.eval.runner import run_eval
    from biomedica_hf.eval.tasks import DataContext, resolve_tasks
    from biomedica_hf.train.clip import load_config

    assert hub_dataset_id("BIOMEDICA/biomedica") == "BIOMEDICA/biomedica"
    assert hub_dataset_id("hf://datasets/org/name/commercial/x.tar") == "org/name"
    assert hub_dataset_id(str(tmp_path)) is None and hub_dataset_id("demo_out") is None
    local = tmp_path / "my_ds"
    local.mkdir()
    cfg = load_config(SMOKE, [f"data.path={local}"])
    card = render_model_card(cfg, "transformers", {"step": 3, "samples": 12})
    meta = yaml.safe_load(card.split("---")[1])
    assert "datasets" not in meta and "huggingface.co/datasets" not in card
    assert str(local) not in card and f"`{local.name}`" in card     # the folder by name: the card is published
    assert "biomedica-eval" not in card and "biomedica eval --model" in card
    assert meta["library_name"] == "transformers"
    # a real eval run on an ImageFolder of real crops; its model-index goes into the card
    images = tmp_path / "cells"
    for r in list(csv.DictReader((REPO.parent / "shared/fixtures/eval/bccd_cells/labels.csv").read_text().splitlines()))[::20]:
        (images / r["label"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO.parent / "shared/fixtures/eval/bccd_cells" / r["file"], images / r["label"])
    ctx = DataContext(data_dir=tmp_path / "none", cache_dir=tmp_path / "cache", allow_download=False)
    adapter, _, _ = tiny_open_clip(seed=0)
    run_eval(adapter, resolve_tasks(f"imagefolder:{images}", ctx), tmp_path / "run", ctx, name="my-clip")
    cfg["export"]["model_index"] = str(tmp_path / "run" / "model_index.yaml")
    card = render_model_card(cfg, "open_clip", {"step": 3, "samples": 12})
    meta = yaml.safe_load(card.split("---")[1])
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"] == {"name": "cells", "type": str(images.resolve()), "split": "all"}   # no split given: every image
    assert f"imagefolder:{images.resolve()}" in card and "Biomedica2025EvalSet" not in card
    # the user states the local folder was published: then (and only then) its Hub id is listed
    cfg["export"]["dataset_id"] = "me/my-pmc-figures"
    meta = yaml.safe_load(render_model_card(cfg, "open_clip", {}).split("---")[1])
    assert meta["datasets"] == ["me/my-pmc-figures"]

"""The SmolVLM library (biomedica_hf.vlm): tiny random Idefics3 + locally built processor (AutoProcessor round trip),
task building, token-by-token label masking, the image-token budget guard on a large real figure, adapter
save/load/merge logits, `caption` over many images, model cards. The recipe under accelerate (2 CPU processes, resume,
export) is tests/train/test_smolvlm_recipe.py."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from support.paths import PMC

pytest.importorskip("num2words")  # SmolVLMProcessor needs it; the pipeline imports only transformers/peft

BIG_TIF = next((PMC / "images_other" / "pmc_packages_without_nxml" / "PMC11286954").glob("*MOESM2_ESM.tif"))
FIG_JPG = next((PMC / "images_other" / "pmc_packages_without_nxml" / "PMC11286954").glob("*Fig1_HTML.jpg"))

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from biomedica_hf.vlm.tiny import save_tiny_model

    return Path(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", ["a figure caption"], seed=0))


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


# ------------------------------------------------------------------------------------------ processor / data
def test_tiny_processor_round_trip(tiny_dir, processor):
    from transformers import AutoModelForImageTextToText

    assert type(processor).__name__ == "Idefics3Processor"
    assert processor.image_seq_len == 4
    tok = processor.tokenizer
    for t in ["<image>", "<fake_token_around_image>", "<global-img>", "<row_6_col_6>", "<end_of_utterance>"]:
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id, t
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert model.config.model_type == "idefics3"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")


def test_tasks_from_metadata():
    from biomedica_hf.vlm.data import choose_task, task_candidates

    row = {"key": "k", "caption": "Fig 1. Cells.", "metadata": {"references": ["As shown in Fig. 1, cells grow."],
                                                              "concepts": ["microscopy"], "local_concepts": ["cell"]}}
    assert task_candidates(row) == {"caption": "Fig 1. Cells.", "reference": "As shown in Fig. 1, cells grow.",
                                    "concepts": "microscopy, cell"}
    assert task_candidates({"key": "x", "caption": "c", "metadata": {"references": []}}) == {"caption": "c"}
    assert choose_task(row, {"caption": 1.0}) == ("caption", "Fig 1. Cells.")
    assert choose_task(row, {"concepts": 1.0}) == ("concepts", "microscopy, cell")
    picks = {choose_task({**row, "key": f"k{i}"}, {"caption": 1, "reference": 1, "concepts": 1})[0] for i in range(30)}
    assert picks == {"caption", "reference", "concepts"}
    assert choose_task(row, {"caption": 1, "reference": 1}, epoch=0) == choose_task(row, {"caption": 1, "reference": 1}, epoch=0)


def test_labels_mask_prompt_image_and_padding_token_by_token(processor):
    from PIL import Image

    from biomedica_hf.vlm.data import IGNORE_INDEX, collate, encode, image_token_ids, messages

    tok = processor.tokenizer
    img_ids = image_token_ids(processor)
    answer = "Scale bar, 10 um. (A) control cells."
    e = encode(processor, Image.open(FIG_JPG), "Describe this figure.", answer, max_length=512)
    assert e is not None
    assert e.truncated_from is None
    # the ids are exactly the processor's encoding of the full chat-template conversation
    full = processor.apply_chat_template(messages("Describe this figure.", answer), tokenize=False)
    ref = processor(text=[full], images=[[Image.open(FIG_JPG)]])["input_ids"][0]
    assert e.input_ids == list(ref)
    assert e.image_tokens == sum(1 for t in e.input_ids if t in img_ids) > 0
    for i, (t, lab) in enumerate(zip(e.input_ids, e.labels, strict=True)):
        if i < e.prompt_len or t in img_ids:
            assert lab == IGNORE_INDEX, (i, tok.convert_ids_to_tokens(t))
        else:
            assert lab == t, (i, tok.convert_ids_to_tokens(t))
    assert tok.decode(e.input_ids[:e.prompt_len]).endswith("Assistant:")
    assert tok.decode([t for t in e.labels if t != IGNORE_INDEX]) == " " + answer + "<end_of_utterance>\n"
    # padding: a shorter example (one tile: longest edge capped at the tile size) padded to the longer one
    import copy

    from biomedica_hf.vlm.data import set_longest_edge

    one_tile = copy.deepcopy(processor)
    set_longest_edge(one_tile, 32)
    short = encode(one_tile, Image.new("RGB", (20, 20), "white"), "Describe this figure.", "Blank.", max_length=512)
    b = collate([e, short], tok.pad_token_id)
    n = len(short.input_ids)
    assert b["input_ids"].shape[1] == len(e.input_ids)
    assert (b["labels"][1, n:] == IGNORE_INDEX).all()
    assert (b["attention_mask"][1, n:] == 0).all()
    assert (b["input_ids"][1, n:] == tok.pad_token_id).all()
    assert b["labels"][1, :n].tolist() == short.labels
    # fewer tiles in the short image: its padding tiles are all zero (the model drops them)
    k = short.pixel_values.shape[0]
    assert k < e.pixel_values.shape[0]
    assert (b["pixel_values"][1, k:] == 0).all()


def test_token_budget_guard_on_large_real_figure(tiny_dir, processor):
    """2250x3250 TIFF: skipped (with a reason) when its image tokens leave no room; otherwise the *caption* is
    shortened, every image token is kept and the model's image features match the image tokens."""
    import copy

    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from biomedica_hf.vlm.data import SkipLog, collate, encode, set_longest_edge

    proc = copy.deepcopy(processor)
    set_longest_edge(proc, 192)                       # 6 x 5 tiles of 32 px + global = 31 tiles x 4 tokens
    big = Image.open(BIG_TIF).convert("RGB")
    assert big.size == (2250, 3250)
    caption = "Supplementary figure. " * 40
    skips = SkipLog()
    assert encode(proc, big, "Describe this figure.", caption, max_length=96, key="big", skips=skips) is None
    assert skips.counts == {"image_tokens_over_budget": 1}
    assert "lower longest_edge" in skips.examples[0]

    full = encode(proc, big, "Describe this figure.", caption, max_length=4096)
    assert full.image_tokens > 96
    assert full.pixel_values.shape[0] == 31
    n_img = sum(1 for t in full.input_ids if t == proc.image_token_id)
    assert n_img == 31 * proc.image_seq_len
    limit = full.prompt_len + 12
    e = encode(proc, big, "Describe this figure.", caption, max_length=limit, key="big", skips=skips)
    assert len(e.input_ids) == limit
    assert e.truncated_from == len(full.input_ids) - full.prompt_len
    assert e.input_ids[:e.prompt_len] == full.input_ids[:full.prompt_len]      # no image token lost
    assert skips.counts["answer_shortened"] == 1
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    with torch.no_grad():
        loss = model(**collate([e], proc.tokenizer.pad_token_id)).loss
    assert torch.isfinite(loss)
    # a smaller longest_edge is the fix: fewer tiles, fewer tokens
    set_longest_edge(proc, 64)
    small = encode(proc, big, "Describe this figure.", caption, max_length=96)
    assert small is not None
    assert small.pixel_values.shape[0] == 5   # 2 x 2 tiles (edges rounded up to whole tiles) + global


def test_smolvlm_tile_costs_81_tokens():
    """SmolVLM(-Instruct) geometry: 384-px tiles, patch 14, pixel shuffle 3 -> 81 image tokens per tile."""
    from PIL import Image

    from biomedica_hf.vlm.tiny import build_processor

    proc = build_processor(["x"], tile=384, max_tiles_edge=2, patch_size=14, scale_factor=3)
    assert proc.image_seq_len == 81
    b = proc(text=["<image>Describe."], images=[[Image.new("RGB", (700, 400))]])
    n_tiles = b["pixel_values"][0].shape[0] if hasattr(b["pixel_values"][0], "shape") else len(b["pixel_values"][0])
    assert n_tiles == 5               # 700x400 -> 768 px longest edge, edges rounded up to 384: 2 x 2 tiles + global
    assert b["input_ids"][0].count(proc.image_token_id) == 81 * 5


# ------------------------------------------------------------------------------------------ PEFT round trips
def test_adapter_save_load_merge_identical_logits(tiny_dir, processor, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from biomedica_hf.train.smolvlm import DEFAULT_TARGETS
    from biomedica_hf.vlm.data import collate, encode

    e = encode(processor, Image.open(FIG_JPG), "Describe this figure.", "A western blot.", max_length=256)
    batch = collate([e], processor.tokenizer.pad_token_id)
    batch.pop("labels")
    base = AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        ref_base = base(**batch).logits
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, lora_dropout=0.1, target_modules=DEFAULT_TARGETS,
                                            init_lora_weights=False)).eval()
    names = {n.split(".")[-2] for n, _ in model.named_parameters() if "lora_A" in n} | {
        n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert set(DEFAULT_TARGETS) <= names
    with torch.no_grad():
        ref = model(**batch).logits
    assert not torch.allclose(ref, ref_base)                      # the adapter changes the output
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_dir), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, ref)
    merged = reloaded.merge_and_unload()
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, ref, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**batch).logits, ref, atol=1e-5, rtol=1e-5)


def test_caption_many_images_to_jsonl(tiny_dir, tmp_path):
    """`biomedica caption DIR|GLOB --out captions.jsonl`: one JSON line per image, in order; an unreadable
    image is a line with an error, not a crash; a single image still prints just its caption."""
    from click.testing import CliRunner

    from biomedica_hf.cli import main

    figs = tmp_path / "figs"
    (figs / "sub").mkdir(parents=True)
    jpgs = sorted(FIG_JPG.parent.glob("*_HTML.jpg"))[:3]
    for i, src in enumerate(jpgs):
        shutil.copy(src, (figs / "sub" if i == 2 else figs) / src.name)
    (figs / "broken.png").write_bytes(b"not a png")
    (figs / "notes.txt").write_text("not an image")
    common = ["--model", str(tiny_dir), "--max-new-tokens", "3"]
    out = tmp_path / "captions.jsonl"
    r = CliRunner().invoke(main, ["caption", str(figs), "--out", str(out), *common])
    assert r.exit_code == 0, (r.output, r.exception)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(x["image"]).name for x in rows] == sorted(
        ["broken.png", jpgs[0].name, jpgs[1].name, jpgs[2].name], key=lambda n: (n == jpgs[2].name, n))
    broken = next(x for x in rows if x["image"].endswith("broken.png"))
    assert broken["caption"] is None
    assert "UnidentifiedImageError" in broken["error"]
    good = [x for x in rows if x is not broken]
    assert all(isinstance(x["caption"], str) and "error" not in x for x in good)
    assert "3 captions, 1 unreadable images" in r.output
    # a glob prints JSON lines on stdout; one image prints its caption as before (greedy: the same text)
    g = CliRunner().invoke(main, ["caption", str(figs / "*.jpg"), *common])
    assert g.exit_code == 0, (g.output, g.exception)
    assert [Path(json.loads(x)["image"]).name for x in g.stdout.splitlines()] == [jpgs[0].name, jpgs[1].name]
    one = CliRunner().invoke(main, ["caption", str(figs / jpgs[0].name), *common])
    assert one.exit_code == 0
    assert one.stdout.rstrip("\n") == good[0]["caption"]
    # nothing captionable: non-zero, and a pattern matching nothing is a usage error
    bad = CliRunner().invoke(main, ["caption", str(figs / "broken.png"), "--out", str(tmp_path / "b.jsonl"), *common])
    assert bad.exit_code == 1
    assert "no image could be captioned" in bad.output
    none = CliRunner().invoke(main, ["caption", str(figs / "*.tif"), *common])
    assert none.exit_code == 2
    assert "no image file there" in none.output


def test_cards_per_folder_state_the_truth(tmp_path):
    """merged/: library_name transformers + base_model; adapter/: peft; a local dataset is prose, not `datasets:`."""
    import yaml

    from biomedica_hf.train.smolvlm import load_config
    from biomedica_hf.vlm.card import write_model_card

    out = tmp_path / "run"
    for d in ("merged", "adapter"):
        (out / d).mkdir(parents=True)
    data = tmp_path / "ds"
    data.mkdir()
    cfg = load_config(None, [f"output_dir={out}", f"data.path={data}"])
    result = {"losses": [2.0, 1.5], "steps": 2, "world_size": 1}
    write_model_card(out, cfg, result)

    def meta(p):
        return yaml.safe_load((p / "README.md").read_text().split("---")[1])

    merged, adapter, run = meta(out / "merged"), meta(out / "adapter"), meta(out)
    assert merged["library_name"] == "transformers"
    assert adapter["library_name"] == "peft"
    assert merged["base_model"] == adapter["base_model"] == cfg["model"]["name"] == "HuggingFaceTB/SmolVLM-256M-Instruct"
    assert merged["pipeline_tag"] == "image-text-to-text"
    assert run["library_name"] == "transformers"
    for m in (merged, adapter, run):
        assert "datasets" not in m
    text = (out / "merged" / "README.md").read_text()
    assert str(data) not in text
    assert "`ds`" in text
    assert "not on the Hub" in text
    assert "merged model" in text
    # data streamed from the Hub: its id is listed; the tiny smoke model has no Hub base_model
    cfg = load_config(None, [f"output_dir={out}", "data.path=me/pmc-figures", "model.tiny=true"])
    write_model_card(out, cfg, result)
    assert meta(out / "merged")["datasets"] == ["me/pmc-figures"]
    assert "base_model" not in meta(out / "merged")

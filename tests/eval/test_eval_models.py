"""Models through the harness: tiny random and briefly trained CLIPs (open_clip and transformers),
their save / reload through both model SPEC kinds, retrieval on a real built dataset, and the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner

from biomedica_hf.clip.export import save_open_clip_folder
from biomedica_hf.clip.model import load_model, parse_model_spec
from biomedica_hf.clip.tiny import tiny_open_clip, tiny_transformers_clip
from biomedica_hf.eval.cli import compare_cmd, eval_cmd
from biomedica_hf.eval.evalset import decode_image, read_evalset
from biomedica_hf.eval.runner import EvalConfig, run_eval, run_task
from biomedica_hf.eval.tasks import DataContext, get_task, resolve_tasks
from biomedica_hf.eval.zeroshot import class_prototypes

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
EVAL_FIXTURES = FIXTURES / "eval"
pytestmark = [pytest.mark.skipif(not EVAL_FIXTURES.is_dir(), reason=f"eval fixtures not found at {EVAL_FIXTURES}"),
              pytest.mark.usefixtures("one_thread")]
STEPS = 200


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> DataContext:
    return DataContext(data_dir=tmp_path_factory.mktemp("no_eval_data"), fixtures_dir=EVAL_FIXTURES,
                       cache_dir=tmp_path_factory.mktemp("eval_cache"), allow_download=False)


@pytest.fixture(scope="module")
def bccd_train(ctx):
    """BCCD's train split (650 real crops) as PIL images + class indices, and the task's caption sets."""
    task = get_task("fixtures/bccd")
    rows = read_evalset(task.source.with_split("train").files(ctx))
    images = [decode_image(b).convert("RGB") for b in rows.images]
    classes = list(rows.options[0])
    captions = [[tmpl.format(task.phrase(c)) for c in classes] for tmpl in task.templates]
    return images, torch.as_tensor(rows.answer_idx), captions


def train_contrastive(encode_image, encode_text, params, logit_scale, pixels, labels, text_inputs, seed=0):
    """A short CLIP-style loop: each image against the caption of every class (one template per step), AdamW."""
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for step in range(STEPS):
        idx = torch.randint(0, len(pixels), (32,), generator=gen)
        img = F.normalize(encode_image(pixels[idx]), dim=-1)
        txt = F.normalize(encode_text(text_inputs[step % len(text_inputs)]), dim=-1)
        loss = F.cross_entropy(logit_scale.exp() * img @ txt.T, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


@pytest.fixture(scope="module")
def trained_open_clip(bccd_train):
    adapter, model, cfg = tiny_open_clip(seed=0, name="tiny-open-clip-trained")
    images, labels, captions = bccd_train
    pixels = torch.stack([adapter.preprocess(im) for im in images])
    model.train()
    train_contrastive(model.encode_image, model.encode_text, model.parameters(), model.logit_scale, pixels, labels,
                      [adapter.tokenizer(c) for c in captions])
    model.eval()
    return adapter, model, cfg


def _sd_balanced_accuracy(per_class) -> float:
    """Upper bound of the s.d. of balanced accuracy for a predictor independent of the label.

    Class c's recall is Binomial(n_c, q_c) / n_c for the predictor's rate q_c of saying c, so
    Var = (1/K^2) * sum_c q_c (1 - q_c) / n_c <= (1/K^2) * sum_c 1 / (4 n_c); the mean is exactly 1/K.
    """
    k = len(per_class)
    return float(np.sqrt(sum(1 / (4 * c["support"]) for c in per_class)) / k)


def test_random_model_scores_near_chance(ctx):
    adapter, _, _ = tiny_open_clip(seed=1, name="tiny-random")
    results, _ = run_eval(adapter, resolve_tasks("fixtures/breastmnist,fixtures/pneumoniamnist", ctx), ctx=ctx)
    for r in results:
        sd = _sd_balanced_accuracy(r["per_class"])
        # BreastMNIST 42/114: sd <= 0.045; PneumoniaMNIST 234/390: sd <= 0.021; 3 s.d. band around 1/K
        assert abs(r["metrics"]["balanced_accuracy"] - r["chance"]) <= 3 * sd, (r["task"], r["metrics"], sd)
        # accuracy of a label-independent predictor lies between the smallest and largest class share
        shares = [c["support"] / r["n"] for c in r["per_class"]]
        assert min(shares) - 3 * np.sqrt(0.25 / r["n"]) <= r["metrics"]["accuracy"] <= max(shares) + 3 * np.sqrt(
            0.25 / r["n"])


def test_trained_open_clip_beats_chance_on_held_out_images(trained_open_clip, ctx):
    adapter, _, _ = trained_open_clip
    untrained, _, _ = tiny_open_clip(seed=0)
    task = get_task("fixtures/bccd")                     # BCCD test split: source images unseen in training
    before = run_task(untrained, task, ctx, EvalConfig())
    after = run_task(adapter, task, ctx, EvalConfig())
    assert after["n"] == 217
    assert after["chance"] == pytest.approx(1 / 3)
    assert after["metrics"]["balanced_accuracy"] >= 0.75, after["metrics"]
    assert after["metrics"]["balanced_accuracy"] >= before["metrics"]["balanced_accuracy"] + 0.15
    assert min(c["recall"] for c in after["per_class"]) > 0.3


def test_prompt_ensembling_is_mean_of_normalised_template_embeddings(trained_open_clip):
    adapter, _, _ = trained_open_clip
    templates = ("a microscopy image of {}.", "{}")
    protos = class_prototypes(adapter, ["platelets", "a red blood cell"], templates)
    manual = torch.stack([F.normalize(adapter.encode_texts([t.format(p) for t in templates]), dim=-1).mean(0)
                          for p in ["platelets", "a red blood cell"]])
    assert torch.allclose(protos, F.normalize(manual, dim=-1), atol=1e-6)
    assert torch.allclose(protos.norm(dim=-1), torch.ones(2))


def test_rows_with_their_own_options(trained_open_clip, ctx, tmp_path):
    """Eval-set rows may each carry their own candidates (µ-Bench style): a row picks among its options only."""
    from biomedica_hf.eval.evalset import write_evalset
    from biomedica_hf.eval.tasks.base import ParquetSource, Task

    adapter, _, _ = trained_open_clip
    bccd = get_task("fixtures/bccd")
    rows = read_evalset(bccd.source.files(ctx))
    classes = list(rows.options[0])
    records = []
    for i in range(len(rows)):              # the true class + one distractor, rotating; option order varies
        true = classes[rows.answer_idx[i]]
        other = [c for c in classes if c != true][i % 2]
        opts = [true, other] if i % 3 else [other, true]
        records.append({"image": rows.images[i], "task": "pairs", "options": opts, "answer_idx": opts.index(true),
                        "label": true, "image_id": rows.image_ids[i]})
    path = write_evalset(records, tmp_path / "pairs.parquet")
    task = Task("local/pairs", "cell biology", "zero-shot", source=ParquetSource(path), templates=bccd.templates,
                classnames=bccd.classnames)
    two_way = run_task(adapter, task, ctx, EvalConfig())
    three_way = run_task(adapter, bccd, ctx, EvalConfig())
    assert two_way["n"] == 217
    assert sorted(two_way["classes"]) == sorted(classes)
    # each row has fewer distractors: never worse than the 3-way task on the same images
    assert two_way["metrics"]["accuracy"] >= three_way["metrics"]["accuracy"]


def test_transformers_folder_train_save_reload(bccd_train, ctx, tmp_path):
    folder = tmp_path / "tiny_hf"
    adapter = tiny_transformers_clip(folder, seed=0)
    model, processor = adapter.model, adapter.processor
    images, labels, captions = bccd_train
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    texts = [dict(processor.tokenizer(c, padding=True, return_tensors="pt")) for c in captions]
    model.train()
    train_contrastive(adapter.encode_image, lambda enc: adapter.encode_text(**enc), model.parameters(),
                      model.logit_scale, pixels, labels, texts)
    model.eval()
    model.save_pretrained(folder)
    for spec in (str(folder), f"transformers:{folder}"):
        assert parse_model_spec(spec).kind == "transformers"
    reloaded = load_model(str(folder), "cpu")
    assert torch.allclose(reloaded.encode_images(images[:6]), adapter.encode_images(images[:6]), atol=1e-5)
    r = run_task(reloaded, get_task("fixtures/bccd"), ctx, EvalConfig())
    assert r["metrics"]["balanced_accuracy"] >= 0.6, r["metrics"]


def test_retrieval_on_built_dataset_is_exact_and_pessimistic_on_ties(trained_open_clip, built_dataset, ctx):
    adapter, _, _ = trained_open_clip
    task = resolve_tasks(f"retrieval:{built_dataset}", ctx)[0]
    r = run_task(adapter, task, ctx, EvalConfig())
    pairs = task.retrieval_source.load(ctx)
    assert r["n"] == len(pairs) == 23
    # dense reference from the same embeddings
    img = torch.cat([adapter.encode_images([decode_image(b) for b in pairs.image_bytes([i])]) for i in range(23)])
    txt = adapter.encode_texts(pairs.captions)
    sim = (img.double() @ txt.double().T).numpy()
    s = np.diag(sim)[:, None]
    higher = (sim > s + 1e-6).sum(1)
    ties = (np.abs(sim - s) <= 1e-6).sum(1) - 1
    assert r["metrics"]["image_to_text"]["R@1"] == pytest.approx(np.mean(1 + higher + ties <= 1))
    assert r["metrics"]["image_to_text"]["mean_rank"] == pytest.approx(np.mean(1 + higher + ties))
    assert r["metrics"]["image_to_text"]["R@100"] == 1.0
    # the fixture articles hold one caption used twice: both images tie on it, so neither can be ranked 1st
    dup = [i for i, c in enumerate(pairs.captions) if pairs.captions.count(c) > 1]
    assert len(dup) == 2
    assert all(ties[i] >= 1 for i in dup)
    sub = run_task(adapter, resolve_tasks(f"retrieval:{built_dataset}#commercial", ctx)[0], ctx, EvalConfig())
    assert sub["n"] == 2


def test_cli_eval_writes_run_and_compare(trained_open_clip, built_dataset, ctx, tmp_path):
    _, model, cfg = trained_open_clip
    trained = save_open_clip_folder(model, cfg, tmp_path / "trained")
    _, rnd_model, _ = tiny_open_clip(seed=0)
    random_dir = save_open_clip_folder(rnd_model, cfg, tmp_path / "random")
    common = ["--tasks", f"fixtures/bccd,fixtures/breastmnist,retrieval:{built_dataset}", "--fixtures-dir",
              str(EVAL_FIXTURES), "--cache-dir", str(ctx.cache_dir), "--limit", "120", "--batch", "32"]
    runner = CliRunner()
    for name, folder in (("a", random_dir), ("b", trained)):
        res = runner.invoke(eval_cmd, ["--model", str(folder), "--name", f"tiny-{name}", "--out", str(tmp_path / name),
                                       *common])
        assert res.exit_code == 0, res.output
    run = tmp_path / "b"
    assert json.loads((run / "tasks" / "fixtures__bccd.json").read_text())["n"] == 120      # --limit
    assert {p.name for p in (run / "tasks").iterdir()} == {"fixtures__bccd.json", "fixtures__breastmnist.json",
                                                           "retrieval__ds.json"}
    assert (run / "plots" / "domains.png").stat().st_size > 1000
    md = (run / "results.md").read_text()
    assert "## cell biology" in md
    assert "## radiology" in md
    assert "## retrieval" in md
    assert "**average**" in md
    card = yaml.safe_load((run / "model_index.yaml").read_text())["model-index"][0]
    assert card["name"] == "tiny-b"
    assert len(card["results"]) == 3
    res = runner.invoke(compare_cmd, [str(tmp_path / "a"), str(run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    bccd = [ln for ln in res.output.splitlines() if ln.startswith("| fixtures/bccd | cell biology | zero-shot | ")]
    assert len(bccd) == 1, res.output                        # protocol and split columns name what was compared
    assert " | accuracy | " in bccd[0]
    assert "| retrieval | 1 |" in res.output
    assert (tmp_path / "cmp" / "compare.png").is_file()
    # bad input: not a run folder -> non-zero exit
    assert runner.invoke(compare_cmd, [str(tmp_path / "a"), str(built_dataset)]).exit_code != 0
    # missing data: a clear message, non-zero exit, no model loaded
    res = runner.invoke(eval_cmd, ["--model", str(trained), "--tasks", "@biomedica", "--data-dir", str(tmp_path / "x"),
                                   "--cache-dir", str(ctx.cache_dir)])
    assert res.exit_code != 0
    assert "pass --data-dir or set BIOMEDICA_EVAL_DIR" in res.output
    res = runner.invoke(eval_cmd, ["--tasks", "@fixtures", "--list", "--fixtures-dir", str(EVAL_FIXTURES),
                                   "--cache-dir", str(ctx.cache_dir)])
    assert res.exit_code == 0
    assert res.output.count("fixtures/") == 3

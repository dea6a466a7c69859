"""Bring your own labelled set: ImageFolder, MedMNIST .npz, CSV / Parquet and Hub-layout folders written in the
test from the real fixtures; linear probe, few-shot and QWK; provenance in every output; retrieval on a config
of a built folder and on its test split."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

from biomedica_hf.clip.export import save_open_clip_folder
from biomedica_hf.clip.tiny import tiny_open_clip
from biomedica_hf.eval.cli import compare_cmd, eval_cmd
from biomedica_hf.eval.evalset import read_evalset
from biomedica_hf.eval.runner import EvalConfig, run_eval, run_task
from biomedica_hf.eval.tasks import DataContext, UserDataError, get_task, resolve_tasks

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO.parent / "shared" / "fixtures"
EVAL = FIXTURES / "eval"
pytestmark = [pytest.mark.skipif(not EVAL.is_dir(), reason=f"eval fixtures not found at {EVAL}"),
              pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> DataContext:
    return DataContext(data_dir=tmp_path_factory.mktemp("no_eval_data"), fixtures_dir=EVAL,
                       cache_dir=tmp_path_factory.mktemp("cache"), allow_download=False)


@pytest.fixture(scope="module")
def bccd_folder(tmp_path_factory) -> Path:
    """The real BCCD crops as PATH/{train,val,test}/<class>/*.png (BCCD's own splits), plus one corrupt file."""
    root = tmp_path_factory.mktemp("user") / "blood_cells"
    for r in csv.DictReader((EVAL / "bccd_cells" / "labels.csv").read_text().splitlines()):
        d = root / r["bccd_split"] / r["label"]
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(EVAL / "bccd_cells" / r["file"], d / Path(r["file"]).name)
    (root / "test" / "RBC" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    _, model, cfg = tiny_open_clip(seed=0)
    return save_open_clip_folder(model, cfg, tmp_path_factory.mktemp("m") / "tiny")


def _no_suite_claim(text: str) -> None:
    assert "Biomedica2025EvalSet" not in text and "BIOMEDICA/" not in text, text[:2000]


def test_imagefolder_one_command_all_protocols(bccd_folder, model_dir, ctx, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(eval_cmd, ["--model", str(model_dir), "--tasks", f"imagefolder:{bccd_folder}",
                                        "--protocol", "zero-shot,linear-probe,few-shot", "--shots", "1,4,16",
                                        "--seeds", "3", "--cache-dir", str(ctx.cache_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    files = {p.name for p in (out / "tasks").iterdir()}
    assert files == {"imagefolder__blood_cells.json", "imagefolder__blood_cells_linear-probe.json",
                     "imagefolder__blood_cells_few-shot.json"}
    zs = json.loads((out / "tasks" / "imagefolder__blood_cells.json").read_text())
    # test split only (BCCD test: 217 crops), the corrupt file skipped, classes from folder names
    assert zs["n"] == 217 and zs["classes"] == ["Platelets", "RBC", "WBC"]
    assert zs["dataset"] == {"name": "blood_cells", "type": str(bccd_folder.resolve()), "split": "test"}
    assert zs["source"] == f"imagefolder:{bccd_folder.resolve()}"
    lp = json.loads((out / "tasks" / "imagefolder__blood_cells_linear-probe.json").read_text())
    assert lp["splits"] == {"train": 650, "val": 266, "test": 217}
    assert lp["split_note"] == "the data's train / val / test splits"
    assert lp["C"] in [c for c, _ in lp["c_curve"]]
    # a probe on frozen features of the real crops beats the 1/3 chance of the balanced metric by far
    assert lp["metrics"]["balanced_accuracy"] > 0.6, lp["metrics"]
    fs = json.loads((out / "tasks" / "imagefolder__blood_cells_few-shot.json").read_text())
    shots = fs["metrics"]["shots"]
    assert sorted(shots, key=int) == ["1", "4", "16"]
    for k, v in shots.items():
        assert v["seeds"] == 3 and len(v["runs"]) == 3 and v["accuracy_std"] >= 0
        assert {r["n_train"] for r in v["runs"]} == {3 * int(k)}
        assert v["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in v["runs"]]))
        assert v["accuracy_std"] == pytest.approx(np.std([r["accuracy"] for r in v["runs"]], ddof=1))
    assert fs["primary"] == shots["16"]["accuracy"]
    md = (out / "results.md").read_text()
    assert "## linear probe" in md and "## few-shot" in md and "| k=1 | k=4 | k=16 |" in md and " ± " in md
    for text in (md, (out / "model_index.yaml").read_text(), (out / "summary.json").read_text()):
        _no_suite_claim(text)
    mi = yaml.safe_load((out / "model_index.yaml").read_text())["model-index"][0]["results"]
    assert [r["task"]["type"] for r in mi] == ["zero-shot-image-classification", "image-classification",
                                              "image-classification"]
    assert {r["dataset"]["type"] for r in mi} == {str(bccd_folder.resolve())}
    # the conversion recorded the corrupt file with its reason
    stamp = next((ctx.cache_dir / "user").glob("imagefolder-blood_cells-*.json"))
    skipped = json.loads(stamp.read_text())["skipped"]
    assert [s["file"] for s in skipped] == ["test/RBC/broken.png"] and skipped[0]["reason"]


def test_flat_folder_with_task_file_and_list(bccd_folder, ctx, tmp_path):
    flat = tmp_path / "cells"
    shutil.copytree(bccd_folder / "test", flat)
    (flat / "RBC" / "broken.png").unlink()
    (flat / "task.yaml").write_text(yaml.safe_dump({
        "name": "my-lab/cells", "domain": "hematology", "classes": ["WBC", "RBC", "Platelets"],
        "phrases": {"WBC": "a white blood cell", "RBC": "a red blood cell", "Platelets": "platelets"},
        "templates": ["a blood smear showing {}.", "{}"], "license": "MIT"}))
    task = resolve_tasks(str(flat), ctx)[0]                      # a bare folder with its own name is accepted
    assert (task.name, task.domain, task.dataset_type) == ("my-lab/cells", "hematology", str(flat.resolve()))
    assert task.templates == ("a blood smear showing {}.", "{}") and task.phrase("WBC") == "a white blood cell"
    rows = read_evalset(task.source.files(ctx), None, "test")
    assert len(rows) == 217 and rows.options[0] == ("WBC", "RBC", "Platelets")   # the declared order
    adapter, _, _ = tiny_open_clip(seed=0)
    zs, lp = run_eval(adapter, [task], None, ctx, EvalConfig(protocols=("zero-shot", "linear-probe")))[0]
    assert zs["n"] == 217 and zs["class_phrases"] == ["a white blood cell", "a red blood cell", "platelets"]
    # no train split: the probe uses a stratified 60/20/20 split of the images
    assert lp["splits"]["train"] + lp["splits"]["val"] + lp["splits"]["test"] == 217
    assert "60/20/20" in lp["split_note"]
    res = CliRunner().invoke(eval_cmd, ["--tasks", f"imagefolder:{flat}", "--list", "--cache-dir", str(ctx.cache_dir)])
    assert res.exit_code == 0 and res.output.split("\t")[0] == "my-lab/cells"
    assert res.output.strip().endswith(f"imagefolder:{flat.resolve()}")
    _no_suite_claim(res.output)
    # two sets under one name would overwrite each other's results: refused
    twin = tmp_path / "cells_copy"
    shutil.copytree(flat, twin)
    with pytest.raises(UserDataError, match="both named 'my-lab/cells'"):
        resolve_tasks(f"{flat},{twin}", ctx)
    # a typo in the task file is refused with the known keys
    (flat / "task.yaml").write_text("nmae: x\n")
    with pytest.raises(UserDataError, match="unknown task-file keys"):
        resolve_tasks(str(flat), ctx)


@pytest.fixture(scope="module")
def breast_npz(tmp_path_factory) -> Path:
    """BreastMNIST under a user's own file name, without MedMNIST's INFO.json beside it."""
    path = tmp_path_factory.mktemp("npz") / "my_breast_us.npz"
    shutil.copy(EVAL / "medmnist" / "breastmnist.npz", path)
    return path


def test_npz_needs_class_names_then_runs_with_qwk(breast_npz, ctx, tmp_path):
    from sklearn.metrics import cohen_kappa_score

    with pytest.raises(UserDataError, match="class names unknown: pass --classes"):
        resolve_tasks(f"npz:{breast_npz}", ctx)[0].source.files(ctx)
    npz = np.load(breast_npz)
    # --classes gives names by label index; MedMNIST: 0 = malignant, 1 = normal/benign
    task = resolve_tasks(f"npz:{breast_npz}", ctx, classes=["malignant", "benign"])[0]
    assert len(read_evalset(task.source.files(ctx), None, "test")) == 156
    # one command: zero-shot + linear probe on the user's .npz, named by its path
    _, model, cfg = tiny_open_clip(seed=2)
    folder = save_open_clip_folder(model, cfg, tmp_path / "m")
    res = CliRunner().invoke(eval_cmd, ["--model", str(folder), "--tasks", f"npz:{breast_npz}", "--classes",
                                        "malignant,benign", "--protocol", "zero-shot,linear-probe",
                                        "--cache-dir", str(ctx.cache_dir), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    lp = json.loads((tmp_path / "run" / "tasks" / "npz__my_breast_us.npz_linear-probe.json").read_text())
    assert lp["splits"] == {"train": 546, "val": 78, "test": 156} and lp["classes"] == ["malignant", "benign"]
    assert lp["dataset"]["type"] == str(breast_npz.resolve()) and str(breast_npz.resolve()) in res.output
    # a sidecar JSON + an ordinal task file (benign < malignant): QWK is computed and is the primary metric
    breast_npz.with_suffix(".json").write_text(json.dumps({"labels": {"0": "malignant", "1": "normal, benign"}}))
    tf = tmp_path / "task.json"
    tf.write_text(json.dumps({"classes": ["normal, benign", "malignant"], "ordered": True}))
    task = resolve_tasks(f"npz:{breast_npz}", ctx, task_file=tf)[0]
    assert task.primary_metric == "quadratic_kappa" and task.ordered_classes == ("normal, benign", "malignant")
    rows = read_evalset(task.source.files(ctx), None, "test")
    # labels remapped by name into the declared order: index 1 (malignant) where MedMNIST says 0
    assert (rows.answer_idx == 1 - npz["test_labels"].reshape(-1)).all()
    adapter, _, _ = tiny_open_clip(seed=3)
    zs, lp, fs = run_eval(adapter, [task], None, ctx, EvalConfig(protocols=("zero-shot", "linear-probe", "few-shot"),
                                                                  shots=(2, 8), seeds=(0, 1)))[0]
    assert lp["splits"] == {"train": 546, "val": 78, "test": 156}
    for r in (zs, lp):
        cm = np.asarray(r["confusion_matrix"])
        y = np.repeat(np.arange(2), cm.sum(1))
        p = np.concatenate([np.repeat(np.arange(2), cm[i]) for i in range(2)])
        assert r["metrics"]["quadratic_kappa"] == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"), abs=1e-12)
        assert r["primary"] == r["metrics"]["quadratic_kappa"]
    assert "quadratic_kappa_std" in fs["metrics"]["shots"]["8"]


def test_csv_parquet_and_hub_layout(bccd_folder, ctx, tmp_path):
    import datasets

    labels = list(csv.DictReader((EVAL / "bccd_cells" / "labels.csv").read_text().splitlines()))[::9][:120]   # all three classes
    table = tmp_path / "cells.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["filename", "cell_type", "split"])
        for r in labels:
            w.writerow([f"imgs/{r['file']}", r["label"], r["bccd_split"]])
        w.writerow(["imgs/missing.png", "RBC", "test"])
    shutil.copytree(EVAL / "bccd_cells", tmp_path / "imgs", ignore=shutil.ignore_patterns("*.csv", "LICENSE*"))
    (tmp_path / "cells.task.yaml").write_text("label_column: cell_type\n")
    t_csv = resolve_tasks(f"csv:{table}", ctx)[0]
    rows = read_evalset(t_csv.source.files(ctx))
    assert len(rows) == 120 and set(rows.labels) == {r["label"] for r in labels}
    assert t_csv.dataset_type == str(table.resolve())
    # Parquet with image bytes and integer labels + --classes
    order = ["Platelets", "RBC", "WBC"]
    recs = [{"image": (EVAL / "bccd_cells" / r["file"]).read_bytes(), "label": order.index(r["label"]),
             "split": r["bccd_split"]} for r in labels]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "cells_bytes.parquet")
    t_pq = resolve_tasks(f"parquet:{tmp_path / 'cells_bytes.parquet'}", ctx, classes=order)[0]
    rows_pq = read_evalset(t_pq.source.files(ctx))
    assert sorted(rows_pq.labels) == sorted(rows.labels)
    # a local folder in Hub layout: Image + ClassLabel columns, loaded by `datasets` offline
    hub = tmp_path / "hub_cells"
    (hub / "data").mkdir(parents=True)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=order)})
    for split in ("train", "test"):
        part = [r for r in recs if r["split"] == split]
        ds = datasets.Dataset.from_dict({"image": [{"bytes": r["image"], "path": None} for r in part],
                                         "label": [r["label"] for r in part]}, features=feats)
        ds.to_parquet(str(hub / "data" / f"{split}-00000-of-00001.parquet"))
    t_hf = resolve_tasks(f"hf:{hub}", ctx)[0]
    assert t_hf.name == "hf/hub_cells" and t_hf.dataset_type == str(hub.resolve())
    test_rows = read_evalset(t_hf.source.files(ctx), None, "test")
    assert len(test_rows) == sum(r["split"] == "test" for r in recs) and set(test_rows.options) == {tuple(order)}
    # an absent Hub id offline: a clear "data not found" with the cause
    from biomedica_hf.eval.evalset import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="hf:nobody/no-such-set"):
        resolve_tasks("hf:nobody/no-such-set", ctx)[0].source.files(ctx)


def test_local_copy_in_suite_layout_is_named_by_its_path(ctx, tmp_path, model_dir):
    """A user's set written in the suite's Parquet layout under --data-dir is not reported as the BIOMEDICA suite;
    a Hub snapshot (its .cache/huggingface marker) is."""
    data = tmp_path / "evalset" / "medmnist"
    data.mkdir(parents=True)
    shutil.copy(get_task("fixtures/breastmnist").source.files(ctx)[0], data / "mine.parquet")
    local = DataContext(data_dir=tmp_path / "evalset", fixtures_dir=EVAL, cache_dir=ctx.cache_dir, allow_download=False)
    adapter, _, _ = tiny_open_clip(seed=0)
    task = resolve_tasks("medmnist/BreastMNIST", local)[0]
    r = run_task(adapter, task, local, EvalConfig(limit=40))
    assert r["dataset"]["type"] == str(data) and r["source"] == str(data) and str(data) in r["dataset"]["name"]
    _no_suite_claim(json.dumps(r["dataset"]))
    (tmp_path / "evalset" / ".cache" / "huggingface").mkdir(parents=True)
    r = run_task(adapter, task, local, EvalConfig(limit=40))
    assert r["dataset"]["type"] == "BIOMEDICA/Biomedica2025EvalSet"
    # a folder with its own name (not a suite) under the data dir resolves, named by its path
    own = tmp_path / "evalset" / "ultrasound"
    own.mkdir()
    shutil.copy(data / "mine.parquet", own / "x.parquet")
    t = resolve_tasks("ultrasound/*", local)
    assert [x.name for x in t] == ["ultrasound/BreastMNIST"] and t[0].dataset_type == str(own.resolve())


def test_compare_shows_balanced_accuracy(ctx, tmp_path):
    """A model whose scores ignore the image scores its majority-class share on accuracy, 1/K on balanced accuracy."""
    from biomedica_hf.clip.model import ModelAdapter

    class Constant(ModelAdapter):
        name, device = "constant", torch.device("cpu")

        def encode_images(self, images):
            return torch.nn.functional.normalize(torch.ones(len(images), 4), dim=-1)

        def encode_texts(self, texts):
            return torch.nn.functional.normalize(torch.tensor([[1.0, 1, 1, 1.5] if "normal" in t else [1.0, 0, 0, 0]
                                                               for t in texts]), dim=-1)

        @property
        def logit_scale(self):
            return 100.0

    task = get_task("fixtures/breastmnist")
    run_eval(Constant(), [task], tmp_path / "a", ctx)
    adapter, _, _ = tiny_open_clip(seed=1)
    run_eval(adapter, [task], tmp_path / "b", ctx)
    a = json.loads((tmp_path / "a" / "summary.json").read_text())["tasks"]["fixtures/breastmnist"]
    assert a["metrics"]["accuracy"] == pytest.approx(114 / 156) and a["metrics"]["balanced_accuracy"] == 0.5
    res = CliRunner().invoke(compare_cmd, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "A: bal. acc." in res.output and "**A** = `constant`, **B** = `tiny-open-clip`" in res.output
    row = next(line for line in res.output.splitlines() if line.startswith("| fixtures/breastmnist"))
    assert "| 73.08 |" in row and "| 50.00 |" in row and "| zero-shot | test |" in row


def test_retrieval_on_concept_config_and_test_split(built_dataset, ctx, tmp_path):
    from biomedica_hf.concepts.subsets import write_selection
    from biomedica_hf.eval.retrieval_data import load_pairs

    ds = tmp_path / "ds"
    shutil.copytree(built_dataset, ds)
    index = pq.read_table(ds / "figures.parquet")
    keys = index["key"].to_pylist()
    concepts = [["Plots and Charts"] if i % 3 == 0 else ["Microscopy"] for i in range(len(keys))]
    index = index.append_column("concepts", pa.array(concepts, pa.list_(pa.string())))
    mask = np.array([c != ["Plots and Charts"] for c in concepts])
    write_selection(ds, "concept-filtered", mask, index)   # the real materialiser: DIR/concept-filtered/s000/g000/*.tar
    assert any((ds / "concept-filtered").glob("s000/g000/*.tar"))
    adapter, _, _ = tiny_open_clip(seed=0)
    task = resolve_tasks(f"retrieval:{ds}#concept-filtered", ctx)[0]
    r = run_task(adapter, task, ctx, EvalConfig())
    full = load_pairs(ds, None, split="all")
    wanted = {k for k, m in zip(keys, mask) if m} & set(full.keys)
    assert r["n"] == len(wanted) > 0
    pairs = task.retrieval_source.load(ctx)
    assert set(pairs.keys) == wanted and all(s.startswith("concept-filtered/") for s in pairs.shards)
    # the config's copies are byte-identical to the source shards' images
    src = {k: b for k, b in zip(full.keys, full.image_bytes(list(range(len(full)))))}
    assert pairs.image_bytes(list(range(len(pairs)))) == [src[k] for k in pairs.keys]
    with pytest.raises(Exception, match="no config 'nope'.*concept-filtered"):
        load_pairs(ds, "nope")
    # the card's per-licence config name: that licence subset's tars of the folder
    sub = load_pairs(ds, "other-concept-filtered", split="all")
    other = {r["key"] for r in pq.read_table(ds / "figures.parquet", columns=["key", "subset"]).to_pylist()
             if r["subset"] == "other"}
    assert sub.keys and set(sub.keys) == {k for k in wanted if k in other}
    assert all(s_.startswith("concept-filtered/s000/g000/concept-filtered-other-") for s_ in sub.shards)
    # a partitioned build's `split` column (every build writes one; replaced here with a known assignment):
    # the test split by default, everything with split="all"
    split = ["test" if i % 4 == 0 else "train" for i in range(len(keys))]
    built = pq.read_table(ds / "figures.parquet")
    assert built["key"].to_pylist() == keys
    built = built.set_column(built.schema.get_field_index("split"), "split", pa.array(split))
    pq.write_table(built, ds / "figures.parquet")
    r = run_task(adapter, resolve_tasks(f"retrieval:{ds}", ctx)[0], ctx, EvalConfig())
    test_keys = {k for k, s in zip(keys, split) if s == "test"} & set(full.keys)
    assert r["n"] == len(test_keys) and r["dataset"]["split"] == "test"
    r_all = run_task(adapter, resolve_tasks(f"retrieval:{ds}", ctx, retrieval_split="all")[0], ctx, EvalConfig())
    assert r_all["n"] == len(full) and r_all["dataset"]["split"] == "all"
    r_cf = run_task(adapter, resolve_tasks(f"retrieval:{ds}#concept-filtered", ctx)[0], ctx, EvalConfig())
    assert r_cf["n"] == len(wanted & test_keys)


def test_retrieval_pairs_are_the_loaders_selection(built_dataset):
    """Issue 29: a dataset folder's retrieval pairs are chosen by the loader's ``Selection`` (licence subset and
    split): the same keys as ``load_biomedica`` selects (less captionless figures), and a misspelt split is an
    error naming the splits instead of an empty set."""
    from biomedica_hf.dataset.loader import load_biomedica
    from biomedica_hf.eval.retrieval_data import load_pairs

    index = pq.read_table(built_dataset / "figures.parquet", columns=["key", "caption", "split"]).to_pylist()
    captioned = {r["key"] for r in index if r["caption"]}
    split = next(s for s in ("test", "validation", "train") if any(r["split"] == s for r in index))
    for subset, sp in (("commercial", "all"), ("noncommercial", split), (None, split)):
        pairs = load_pairs(built_dataset, subset, split=sp)
        loaded = {ex["key"] for ex in load_biomedica(built_dataset, subset=subset or "all", decode=False,
                                                     split=None if sp == "all" else sp)}
        assert pairs.keys and set(pairs.keys) == loaded & captioned, (subset, sp)
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'validation', 'test'\]"):
        load_pairs(built_dataset, "commercial", split="tset")


def test_small_flat_folder_labels_split_and_shots_truthfully(ctx, tmp_path):
    """The issue's run: 64 real crops in 3 classes, no split folders. Zero-shot scored every image: its split is
    ``all`` (was "test"); the probes' held-out part is named as such; few-shot k=16 cannot be 16-shot (a class has
    fewer train images), so it is skipped with its reason instead of being headlined, and model_index.yaml and
    results.md say the k actually used per class."""
    rows = list(csv.DictReader((EVAL / "bccd_cells" / "labels.csv").read_text().splitlines()))
    folder = tmp_path / "cells64"
    want = {"RBC": 40, "WBC": 14, "Platelets": 10}
    for r in rows:
        if want.get(r["label"], 0) > 0:
            want[r["label"]] -= 1
            (folder / r["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(EVAL / "bccd_cells" / r["file"], folder / r["label"] / Path(r["file"]).name)
    assert sum(1 for _ in folder.rglob("*.png")) + sum(1 for _ in folder.rglob("*.jpg")) == 64
    task = resolve_tasks(f"imagefolder:{folder}", ctx)[0]
    adapter, _, _ = tiny_open_clip(seed=0)
    cfg = EvalConfig(protocols=("zero-shot", "few-shot"), shots=(1, 4, 16), seeds=(0, 1, 2))
    results, _ = run_eval(adapter, [task], tmp_path / "run", ctx, cfg)
    zs, fs = results
    assert zs["n"] == 64 and zs["dataset"]["split"] == "all"
    assert fs["dataset"]["split"].startswith("held-out 20%")
    assert sorted(fs["metrics"]["shots"], key=int) == ["1", "4"] and list(fs["shots_skipped"]) == ["16"]
    assert fs["metrics"]["shots"]["4"]["k_per_class"] == {"Platelets": 4, "RBC": 4, "WBC": 4}
    assert "k=4" in fs["method"] and "k=16 skipped" in fs["method"]
    mi = (tmp_path / "run" / "model_index.yaml").read_text()
    assert "16-shot" not in mi and "4-shot accuracy (4 per class, mean of 3 seeds)" in mi
    assert 'split: "all"' in mi
    md = (tmp_path / "run" / "results.md").read_text()
    assert "k=16: **skipped**" in md and "Platelets 4, RBC 4, WBC 4 train images per class" in md

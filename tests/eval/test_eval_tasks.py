"""Task registry, eval-set Parquet layout and the fixture converters (real labelled data, no model)."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from biomedica_hf.eval.evalset import DATA_HINT, DataNotFoundError, read_evalset, task_names, write_evalset
from biomedica_hf.eval.tasks import MEDMNIST_DOMAINS, REGISTRY, SUITES, DataContext, get_task, resolve_tasks

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "eval"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"eval fixtures not found at {FIXTURES}")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> DataContext:
    empty = tmp_path_factory.mktemp("no_eval_data")
    return DataContext(data_dir=empty, fixtures_dir=FIXTURES, cache_dir=tmp_path_factory.mktemp("cache"),
                       allow_download=False)


def test_registry_names_and_domains():
    assert {"fixtures/breastmnist", "fixtures/pneumoniamnist", "fixtures/bccd", "medmnist/DermaMNIST",
            "medmnist/OrganAMNIST", "patchcamelyon/PatchCamelyon", "biomedflickr"} <= set(REGISTRY)
    assert set(SUITES) == {"medmnist", "patchcamelyon", "lc25000", "ubench", "chexpert", "rsna", "cataracts", "dresden"}
    assert get_task("medmnist/DermaMNIST").domain == "dermatology"
    assert get_task("medmnist/OrganAMNIST").domain == "radiology"
    assert get_task("biomedflickr").kind == "retrieval"
    # suite tasks prompt with sentences around the option text, not the bare option alone
    derm = get_task("medmnist/DermaMNIST").templates
    assert derm[0] == "{}"
    assert len(derm) > 1
    assert all("{}" in t for t in derm)
    assert MEDMNIST_DOMAINS["RetinaMNIST"] == "ophthalmology"
    assert SUITES["ubench"].skip_tasks == {"unknown"}
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nope")


def test_biomedica_suite_without_data_says_how_to_provide_it(ctx):
    for spec in ("@biomedica", "medmnist/DermaMNIST", "@ubench", "lc25000/*"):
        with pytest.raises(DataNotFoundError, match=DATA_HINT):
            tasks = resolve_tasks(spec, ctx)
            for t in tasks:                       # static tasks resolve; their data check fails
                t.source.files(ctx)
    assert [t.name for t in resolve_tasks("@biomedica", ctx, skip_missing=True)] == ["biomedflickr"]
    with pytest.raises(DataNotFoundError, match="BIOMEDICA_EVAL_DIR"):
        get_task("biomedflickr").retrieval_source.locate(ctx)


def test_resolve_groups_globs_and_retrieval(ctx, tmp_path):
    assert [t.name for t in resolve_tasks("@fixtures", ctx)] == ["fixtures/breastmnist", "fixtures/pneumoniamnist",
                                                                 "fixtures/bccd"]
    assert [t.name for t in resolve_tasks("fixtures/*mnist, fixtures/bccd,fixtures/bccd", ctx)] == [
        "fixtures/breastmnist", "fixtures/pneumoniamnist", "fixtures/bccd"]
    assert [t.name for t in resolve_tasks("@domain:cell biology", ctx)] == ["fixtures/bccd"]
    t = resolve_tasks(f"retrieval:{tmp_path}#commercial", ctx)[0]
    assert t.kind == "retrieval"
    assert t.retrieval_source.subset == "commercial"
    assert t.name.endswith("#commercial")
    with pytest.raises(KeyError, match="no task matches"):
        resolve_tasks("fixtures/nothing*", ctx)


def test_breastmnist_converter_real_test_split(ctx):
    task = get_task("fixtures/breastmnist")
    files = task.source.files(ctx)
    table = pq.read_table(files[0])
    assert table.column_names == ["image", "task", "options", "answer_idx", "label", "image_id",
                                  "provenance_license", "split"]
    rows = read_evalset(files)
    assert len(rows) == 156
    assert Counter(rows.labels) == {"malignant": 42, "normal, benign": 114}
    assert set(rows.options) == {("malignant", "normal, benign")}
    npz = np.load(FIXTURES / "medmnist" / "breastmnist.npz")
    assert rows.answer_idx.tolist() == npz["test_labels"].reshape(-1).tolist()
    from biomedica_hf.eval.evalset import decode_image
    im = decode_image(rows.images[7])
    assert im.size == (28, 28)
    assert np.array_equal(np.asarray(im), npz["test_images"][7])   # lossless
    assert json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["image"] == {"_type": "Image"}
    # cached: a second call reuses the file
    mtime = files[0].stat().st_mtime_ns
    assert task.source.files(ctx)[0].stat().st_mtime_ns == mtime


def test_pneumonia_and_bccd_converters(ctx):
    pneu = read_evalset(get_task("fixtures/pneumoniamnist").source.files(ctx))
    assert len(pneu) == 624
    assert Counter(pneu.labels) == {"normal": 234, "pneumonia": 390}
    bccd = get_task("fixtures/bccd")
    test = read_evalset(bccd.source.files(ctx))
    train = read_evalset(bccd.source.with_split("train").files(ctx))
    assert len(test) == 217
    assert len(train) == 650
    assert set(test.image_ids).isdisjoint(train.image_ids)
    assert set(test.options) == {("RBC", "WBC", "Platelets")}
    assert bccd.phrase("WBC") == "a white blood cell"


def test_suite_discovery_from_a_local_eval_dir(ctx, tmp_path):
    """Real rows written in the eval-set layout under DATA_DIR/medmnist/ are found and named from the data."""
    data = tmp_path / "evalset" / "data" / "medmnist"      # the Hub repo's <top>/<suite>/*.parquet shape
    data.mkdir(parents=True)
    for name in ("breastmnist", "pneumoniamnist"):
        shutil.copy(get_task(f"fixtures/{name}").source.files(ctx)[0], data / f"{name}.parquet")
    local = DataContext(data_dir=tmp_path / "evalset", fixtures_dir=FIXTURES, cache_dir=ctx.cache_dir,
                        allow_download=False)
    tasks = resolve_tasks("@medmnist", local)
    assert [(t.name, t.domain) for t in tasks] == [("medmnist/BreastMNIST", "radiology"),
                                                  ("medmnist/PneumoniaMNIST", "radiology")]
    assert len(read_evalset(tasks[1].source.files(local), tasks[1].task_filter)) == 624
    assert [t.name for t in resolve_tasks("medmnist/Breast*", local)] == ["medmnist/BreastMNIST"]
    assert "medmnist/BreastMNIST" in [t.name for t in resolve_tasks("@domain:radiology", local)]


def test_evalset_reader_drops_free_points_and_bad_answers(tmp_path):
    png = (FIXTURES / "bccd_cells" / "RBC").glob("*.png").__next__().read_bytes()
    rows = [{"image": png, "task": "t", "options": ["x", "y"], "answer_idx": 1, "label": "y", "image_id": "ok"},
            {"image": png, "task": "t", "options": ["x"], "answer_idx": 0, "label": "x", "image_id": "one option"},
            {"image": png, "task": "t", "options": ["x", "y"], "answer_idx": 2, "label": "?", "image_id": "bad idx"},
            {"image": png, "task": "u", "options": ["p", "q", "r"], "answer_idx": 2, "label": "r", "image_id": "u"}]
    path = write_evalset(rows, tmp_path / "s" / "x.parquet")
    assert task_names([path]) == ["t", "u"]
    assert read_evalset([path], "t").image_ids == ["ok"]
    assert read_evalset([path]).labels == ["y", "r"]

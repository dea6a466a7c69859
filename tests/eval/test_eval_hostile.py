"""Issue 24, evaluation rows: hostile user sets generated in the test - 10,000 classes, a file name that is not
UTF-8, a CSV row naming a file outside its folder, a task file with wrong types, an empty class folder."""
from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

import pytest

from support.hostile_inputs import run_measured

from biomedica_hf.eval.tasks import DataContext, TaskFileError, UserSource, user_task
from biomedica_hf.eval.tasks.user import parse_user_item


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, (seed * 7) % 256, 3)).save(buf, "PNG")
    return buf.getvalue()


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for i, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for j in range(n):
            (root / name / f"{j}.png").write_bytes(_png(i * 31 + j))
    return root


def test_ten_thousand_classes_memory_is_rows_plus_classes(tmp_path):
    """10,000 declared classes, 1,000 images: the class list is stored once (not per row) and every row read
    back shares one tuple. Before, each of the 1,000 rows carried the 10,000 names (10 M strings: the issue's
    MemoryError at 5.2 GB was the same with more images). Measured in a fresh process."""
    import yaml

    root = _folder(tmp_path / "many", {f"class_{i:05d}": 1 for i in range(1000)})
    (root / "task.yaml").write_text(yaml.safe_dump({"classes": [f"class_{i:05d}" for i in range(10_000)]}))
    m = run_measured(f"""
from pathlib import Path
from biomedica_hf.eval.evalset import read_evalset
from biomedica_hf.eval.tasks import DataContext
from biomedica_hf.eval.tasks.user import parse_user_item, user_task
from biomedica_hf.eval.zeroshot import class_space
_before = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
ctx = DataContext(cache_dir=Path({str(tmp_path / "cache")!r}), allow_download=False)
task = user_task(parse_user_item({str(root)!r}))
files = task.source.files(ctx)
rows = read_evalset(files)
classes, labels = class_space(rows)
RESULT = dict(before=_before, rows=len(rows), classes=len(classes), tuples=len({{id(o) for o in rows.options}}),
              size=sum(f.stat().st_size for f in files), right=bool((labels == rows.answer_idx).all()))
""")
    r = m["result"]
    grown = m["max_rss_mb"] - r["before"]
    print(f"\n10,000 classes x 1,000 images: peak RSS +{grown:.0f} MB, eval-set file {r['size'] / 1e6:.2f} MB")
    assert (r["rows"], r["classes"], r["tuples"], r["right"]) == (1000, 10_000, 1, True)
    assert r["size"] < 1_000_000 and grown < 150, m


def test_non_utf8_file_name_is_a_per_file_error(tmp_path, caplog):
    root = _folder(tmp_path / "set", {"a": 2, "b": 2})
    bad = os.fsdecode(b"caf\xe9.png")                              # Latin-1 bytes: not UTF-8
    (root / "a" / bad).write_bytes(_png(99))
    (root / os.fsdecode(b"cl\xe4ss")).mkdir()
    (root / os.fsdecode(b"cl\xe4ss") / "x.png").write_bytes(_png(98))
    ctx = DataContext(cache_dir=tmp_path / "cache", allow_download=False)
    task = user_task(parse_user_item(str(root)))
    with caplog.at_level(logging.WARNING):
        files = task.source.files(ctx)                               # the conversion goes on
    report = task.source.conversion_report(ctx)
    assert report["rows"] == 4
    assert report["classes"] == ["a", "b"]
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    assert skipped["a/caf\\xe9.png"].startswith("file name is not valid UTF-8")
    assert skipped["cl\\xe4ss/"].startswith("class folder name is not valid UTF-8")
    assert "a/caf\\xe9.png" in caplog.text
    assert files[0].is_file()


def test_csv_rows_are_contained_in_the_table_folder(tmp_path):
    (tmp_path / "outside.png").write_bytes(_png(1))
    table = tmp_path / "t" / "labels.csv"
    (table.parent / "img").mkdir(parents=True)
    (table.parent / "img" / "ok.png").write_bytes(_png(2))
    (table.parent / "img" / "ok2.png").write_bytes(_png(3))
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows([["img/ok.png", "x"], ["img/ok2.png", "y"], ["../outside.png", "x"],
                     [str(tmp_path / "outside.png"), "y"], ["img/../../outside.png", "x"]])
    rows, names, skipped = UserSource("csv", str(table)).convert()
    assert sorted(r["image_id"] for r in rows) == ["img/ok.png", "img/ok2.png"]
    assert names == ["x", "y"]
    refused = {s["file"] for s in skipped if s["reason"].startswith("refused: the path leaves the table's folder")}
    assert refused == {"../outside.png", str(tmp_path / "outside.png"), "img/../../outside.png"}


@pytest.mark.parametrize(("text", "key"), [
    ("phrases: [a, b]\n", "phrases"),
    ("classes: 5\n", "classes"),
    ("classes: [a, [b]]\n", "classes"),
    ("classes: [a, b, a]\n", "classes"),
    ("ordered: 'yes'\n", "ordered"),
    ("name: {a: 1}\n", "name"),
    ("templates: [1, 2]\n", "templates"),
    ("templates: 'a {}'\n", "templates"),
    ("domain: [x]\n", "domain"),
])
def test_task_file_with_wrong_types_names_the_key(tmp_path, text, key):
    root = _folder(tmp_path / "set", {"a": 1, "b": 1})
    (tmp_path / "task.yaml").write_text(text)
    with pytest.raises(TaskFileError, match=f"task-file key '{key}' must be") as ei:
        user_task(parse_user_item(str(root)), tmp_path / "task.yaml")
    assert ei.value.key == key


def test_task_file_with_right_types_still_loads(tmp_path):
    root = _folder(tmp_path / "set", {"a": 1, "b": 1})
    (tmp_path / "task.yaml").write_text("name: 2024\nclasses: [a, b]\nordered: true\nphrases: {a: alpha}\n"
                                        "templates: ['a {}']\nlicense:\n")
    task = user_task(parse_user_item(str(root)), tmp_path / "task.yaml")
    assert task.name == "2024"
    assert task.ordered_classes == ("a", "b")
    assert task.classnames == {"a": "alpha"}


def test_empty_class_folder_is_reported(tmp_path):
    root = _folder(tmp_path / "set", {"a": 1, "b": 1, "c": 0})
    (root / "c" / "notes.txt").write_text("no images here")
    rows, names, skipped = UserSource("imagefolder", str(root)).convert()
    assert names == ["a", "b"]
    assert len(rows) == 2
    assert skipped == [{"file": "c/", "reason": "empty class folder: no images, the class is left out"}]


def test_csv_that_is_not_utf8_names_the_file(tmp_path):
    from biomedica_hf.eval.tasks import UserDataError

    table = tmp_path / "labels.csv"
    table.write_bytes("image,label\nimg/ok.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserDataError, match=r"labels.csv: not UTF-8 text \(byte 26"):
        UserSource("csv", str(table)).convert()

"""Local tasks from small real labelled sets, converted to the eval-set Parquet layout in a cache dir.

* BreastMNIST and PneumoniaMNIST (MedMNIST v2, CC BY 4.0): the official ``test`` split of the
  ``.npz`` files, 28x28 grayscale PNGs, class names from ``INFO.json``.
* BCCD blood cells (MIT): single-cell crops, RBC / WBC / Platelets, BCCD's own split from ``labels.csv``.

The converted file is reused while the source files are unchanged (size + mtime fingerprint).
Their ``dataset_type`` (the model-index ``type``) is the fixture path, not a Hub id: these are local copies.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomedica_hf.eval.evalset import DATA_HINT, DataNotFoundError, write_evalset
from biomedica_hf.eval.tasks.base import DataContext, Task

CONVERTER_VERSION = 1


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def medmnist_rows(npz: Path, info: Path, task: str, split: str) -> Iterator[dict]:
    """Rows of one split of a MedMNIST ``.npz`` (class names and licence from ``INFO.json``)."""
    meta = json.loads(info.read_text())[npz.name]
    names = [meta["labels"][str(i)] for i in range(len(meta["labels"]))]
    data = np.load(npz)
    images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
    for i, (img, lab) in enumerate(zip(images, labels)):
        yield {"image": _png(img), "task": task, "options": names, "answer_idx": int(lab), "label": names[int(lab)],
               "image_id": f"{npz.stem}/{split}/{i}", "provenance_license": meta.get("license", "CC BY 4.0"),
               "split": split}


BCCD_CLASSES = ("RBC", "WBC", "Platelets")


def bccd_rows(folder: Path, split: str) -> Iterator[dict]:
    """Rows of BCCD's ``split`` (train / val / test) from ``labels.csv``, in file order."""
    with open(folder / "labels.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["bccd_split"] != split:
                continue
            yield {"image": (folder / r["file"]).read_bytes(), "task": "BCCD", "options": list(BCCD_CLASSES),
                   "answer_idx": BCCD_CLASSES.index(r["label"]), "label": r["label"], "image_id": r["file"],
                   "provenance_license": "MIT", "split": split}


@dataclass(frozen=True)
class FixtureSource:
    """A raw fixture converted on first use to ``CACHE/fixtures/<name>-<split>.parquet``."""

    name: str
    inputs: tuple[str, ...]                     # paths relative to the fixtures dir
    rows: Callable[[Path, str], Iterator[dict]]  # (fixtures dir, split) -> rows
    split: str = "test"

    def with_split(self, split: str) -> FixtureSource:
        return FixtureSource(self.name, self.inputs, self.rows, split)

    def files(self, ctx: DataContext) -> list[Path]:
        root = ctx.fixtures_dir
        if root is None or not all((root / p).exists() for p in self.inputs):
            raise DataNotFoundError(f"{DATA_HINT} (fixture {self.name!r} needs {', '.join(self.inputs)} under "
                                    f"{root or 'a fixtures dir'}: pass --fixtures-dir or set BIOMEDICA_EVAL_FIXTURES)")
        stats = [(root / p).stat() for p in self.inputs]
        fingerprint = {"version": CONVERTER_VERSION, "inputs": [str((root / p).resolve()) for p in self.inputs],
                       "stat": [[s.st_size, s.st_mtime_ns] for s in stats]}
        out = ctx.cache_dir / "fixtures" / f"{self.name}-{self.split}.parquet"
        stamp = out.with_suffix(".json")
        if not (out.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == fingerprint):
            write_evalset(self.rows(root, self.split), out)
            stamp.write_text(json.dumps(fingerprint))
        return [out]

    def describe(self) -> str:
        return f"fixtures:{self.name} ({self.split})"


def _breast(root: Path, split: str) -> Iterator[dict]:
    return medmnist_rows(root / "medmnist" / "breastmnist.npz", root / "medmnist" / "INFO.json", "BreastMNIST", split)


def _pneumonia(root: Path, split: str) -> Iterator[dict]:
    return medmnist_rows(root / "medmnist" / "pneumoniamnist_varun19424.npz", root / "medmnist" / "INFO.json",
                         "PneumoniaMNIST", split)


def _bccd(root: Path, split: str) -> Iterator[dict]:
    return bccd_rows(root / "bccd_cells", split)


FIXTURE_TASKS: list[Task] = [
    Task(name="fixtures/breastmnist", domain="radiology", kind="zero-shot",
         source=FixtureSource("breastmnist", ("medmnist/breastmnist.npz", "medmnist/INFO.json"), _breast),
         templates=("a breast ultrasound image showing {}.", "an ultrasound scan of the breast with {}.", "{}"),
         classnames={"malignant": "a malignant tumor", "normal, benign": "normal tissue or a benign lesion"},
         dataset_name="BreastMNIST", dataset_type="fixtures/eval/medmnist/breastmnist.npz",
         description="Breast ultrasound, malignant vs normal/benign (MedMNIST v2 test split, 156 images)",
         reference="MedMNIST v2 (Yang et al., Scientific Data 2023); ../shared/fixtures/eval/medmnist"),
    Task(name="fixtures/pneumoniamnist", domain="radiology", kind="zero-shot",
         source=FixtureSource("pneumoniamnist", ("medmnist/pneumoniamnist_varun19424.npz", "medmnist/INFO.json"),
                              _pneumonia),
         templates=("a chest x-ray showing {}.", "a pediatric chest radiograph with {}.", "{}"),
         classnames={"normal": "normal lungs", "pneumonia": "pneumonia"},
         dataset_name="PneumoniaMNIST", dataset_type="fixtures/eval/medmnist/pneumoniamnist_varun19424.npz",
         description="Pediatric chest X-ray, normal vs pneumonia (MedMNIST v2 test split, 624 images)",
         reference="MedMNIST v2 (Kermany et al. 2018 source); ../shared/fixtures/eval/medmnist"),
    Task(name="fixtures/bccd", domain="cell biology", kind="zero-shot",
         source=FixtureSource("bccd", ("bccd_cells/labels.csv",), _bccd),
         templates=("a microscopy image of {}.", "a blood smear showing {}.", "{}"),
         classnames={"RBC": "a red blood cell", "WBC": "a white blood cell", "Platelets": "platelets"},
         dataset_name="BCCD blood cells", dataset_type="fixtures/eval/bccd_cells",
         description="Blood-smear single-cell crops, RBC / WBC / Platelets (BCCD test split, 217 crops)",
         reference="BCCD (github.com/Shenggan/BCCD_Dataset, MIT); ../shared/fixtures/eval/bccd_cells"),
]

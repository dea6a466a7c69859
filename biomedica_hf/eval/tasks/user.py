"""Your own labelled images as tasks, no code: ImageFolder, MedMNIST-style ``.npz``, CSV / Parquet, Hub datasets.

``--tasks`` items (see :func:`user_task`):

* ``imagefolder:PATH`` - ``PATH/<class>/*`` or ``PATH/{train,val,test}/<class>/*`` (``valid`` / ``validation``
  count as ``val``); class names are the folder names.
* ``npz:PATH`` - MedMNIST layout (``train_images``, ``train_labels``, ``val_...``, ``test_...``); class names from
  a sidecar JSON (``PATH`` with ``.json``, or ``INFO.json`` beside it: ``{"labels": {"0": "name", ...}}``, keyed by
  the file name as MedMNIST's INFO does, or a plain list) or ``--classes``.
* ``csv:PATH`` / ``parquet:PATH`` - one row per image: an image column (a path relative to the table, or bytes /
  ``{bytes, path}``) and a label column (class name or index); an optional ``split`` column. A Parquet already in
  the eval-set layout (``options`` + ``answer_idx``) is read as is.
* ``hf:ORG/NAME[:config]`` (or ``hf:LOCAL_FOLDER[:config]``) - ``datasets.load_dataset``: the first ``Image``
  column and the first ``ClassLabel`` column (names from the feature); splits by name.
* a bare existing path: a folder of class folders, a ``.npz``, ``.csv`` or ``.parquet`` is recognised.

An optional task file (YAML or JSON; ``--task-file``, or ``task.yaml`` / ``task.json`` inside the folder) sets
``name``, ``domain``, ``classes`` (their order; ``ordered: true`` makes them ordinal and adds quadratic weighted
kappa), ``phrases`` (class -> text put in the prompts), ``templates``, ``primary_metric``, ``license``,
``description``, ``image_column`` / ``label_column``.

Every set is converted once to the eval-set Parquet layout in ``CACHE/user/`` (reused while the inputs are
unchanged) and named after itself: the task's dataset is the path or the Hub id, never the BIOMEDICA suite.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomedica_hf.eval.evalset import DATA_HINT, DataNotFoundError, write_evalset
from biomedica_hf.eval.tasks.base import DataContext, Task

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
KINDS = ("imagefolder", "npz", "csv", "parquet", "hf")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}
SPLITS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
          "test": "test", "testing": "test"}
DEFAULT_TEMPLATES = ("an image of {}.", "{}")
TASK_FILE_NAMES = ("task.yaml", "task.yml", "task.json")
TASK_FILE_KEYS = {"name", "domain", "classes", "ordered", "phrases", "templates", "primary_metric", "license",
                  "description", "image_column", "label_column", "dataset_name"}
IMAGE_COLUMNS = ("image", "image_path", "path", "file", "filename", "file_name", "img")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "target", "y")


class UserDataError(ValueError):
    """A user set that cannot be read as asked; the message says what is wrong and how to fix it."""


class TaskFileError(UserDataError):
    """A task-file key whose value has the wrong type; ``key`` names it."""

    def __init__(self, path: str | os.PathLike, key: str, expected: str, value: object) -> None:
        super().__init__(f"{path}: task-file key {key!r} must be {expected}, not {type(value).__name__} "
                         f"({str(value)[:80]!r})")
        self.key = key


_TEXT = (str, int, float)   # scalars a YAML author may write unquoted (a name 2024, a licence 4.0)
#: task-file key -> (accepted types, what the message says)
TASK_FILE_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": (_TEXT, "a string"), "domain": (_TEXT, "a string"), "primary_metric": ((str,), "a string"),
    "license": (_TEXT, "a string"), "description": ((str,), "a string"), "image_column": ((str,), "a string"),
    "label_column": ((str,), "a string"), "dataset_name": (_TEXT, "a string"), "ordered": ((bool,), "true or false"),
    "classes": ((list,), "a list of class names"), "phrases": ((dict,), "a mapping class -> phrase"),
    "templates": ((list,), "a non-empty list of strings with '{}' for the class phrase"),
}


def _check_task_file_types(path: Path, data: dict) -> None:
    for key, value in data.items():
        types, expected = TASK_FILE_TYPES[key]
        if value is None:             # `key:` with nothing after it: unset
            continue
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise TaskFileError(path, key, expected, value)
        if key == "classes" and not all(isinstance(c, _TEXT) and not isinstance(c, bool) for c in value):
            raise TaskFileError(path, key, "a list of class names (strings)", value)
        if key == "classes" and len({str(c) for c in value}) != len(value):
            dup = sorted(c for c, k in Counter(str(c) for c in value).items() if k > 1)
            raise TaskFileError(path, key, f"a list of distinct class names (repeated: {dup[:5]})", value)
        if key == "phrases" and not all(isinstance(v, _TEXT) and not isinstance(v, bool) for v in value.values()):
            raise TaskFileError(path, key, "a mapping class -> phrase (strings)", value)
        if key == "templates" and not all(isinstance(t, str) for t in value):
            raise TaskFileError(path, key, expected, value)


def load_task_file(path: str | os.PathLike | None) -> dict:
    """A task file (YAML or JSON) as a dict; unknown keys are an error (a typo must not pass silently)."""
    if path is None:
        return {}
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UserDataError(f"{path}: a task file is a mapping (name, domain, classes, phrases, templates, ...)")
    unknown = set(data) - TASK_FILE_KEYS
    if unknown:
        raise UserDataError(f"{path}: unknown task-file keys {sorted(unknown)}; known: {sorted(TASK_FILE_KEYS)}")
    if "templates" in data and (isinstance(data["templates"], str) or not data["templates"]):
        raise TaskFileError(path, "templates", "a non-empty list of strings with '{}' for the class phrase",
                            data["templates"])
    _check_task_file_types(path, data)
    return data


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _check_image(data: bytes) -> str | None:
    """None when ``data`` decodes as an image, else the reason."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason to skip the file
        return f"{type(exc).__name__}: {exc}"
    return None


def _shown(path: Path) -> str:
    """A path as text that always encodes: undecodable bytes of a file name as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:      # a file name that is not UTF-8 (its bytes kept as surrogates by the OS layer)
        return False
    return True


def _inside(path: Path, root: Path) -> bool:
    real, top = path.resolve(), root.resolve()
    return real == top or top in real.parents


def _norm_split(name: str | None) -> str | None:
    return SPLITS.get(str(name).strip().lower()) if name is not None else None


def _class_order(found: Sequence[str], declared: Sequence[str] | None, where: str) -> list[str]:
    """Declared classes (task file / --classes) in their order, else the found names (in the order given)."""
    if not declared:
        return list(found)
    declared = [str(c) for c in declared]
    missing = sorted(set(found) - set(declared))
    if missing:
        raise UserDataError(f"{where}: labels {missing} are not among the declared classes {declared}")
    return declared


# ------------------------------------------------------------------------------------------- readers
def imagefolder_rows(root: Path, classes: Sequence[str] | None, skipped: list) -> tuple[list[dict], list[str]]:
    """Rows of an ImageFolder (flat or with split folders) and the class list."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if _norm_split(p.name)]
    if split_dirs and len(split_dirs) == len(subdirs):
        layout = [(p, _norm_split(p.name)) for p in split_dirs]
    elif split_dirs:
        raise UserDataError(f"{root}: mixes split folders ({', '.join(p.name for p in split_dirs)}) with class folders "
                            f"({', '.join(p.name for p in subdirs if p not in split_dirs)})")
    else:
        layout = [(root, None)]
    found: dict[str, None] = {}
    items = []
    for folder, split in layout:
        for cdir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            rel_dir = cdir.relative_to(root)
            if not _utf8(cdir.name):
                skipped.append({"file": _shown(rel_dir) + "/", "reason": "class folder name is not valid UTF-8: "
                                "rename it (its images are left out)"})
                continue
            images = sorted(p for p in cdir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            if not images:    # reported: an empty class must not vanish silently
                skipped.append({"file": f"{rel_dir.as_posix()}/", "reason": "empty class folder: no images, the "
                                "class is left out" + (" of this split" if split else "")})
            for f in images:
                found.setdefault(cdir.name, None)
                items.append((f, cdir.name, split))
    if not items:
        raise UserDataError(f"{root}: no images in class folders (expected PATH/<class>/* or "
                            "PATH/{train,val,test}/<class>/*)")
    names = _class_order(sorted(found), classes, str(root))
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for f, label, split in items:
        rel = f.relative_to(root)
        if not _utf8(str(rel)):
            skipped.append({"file": _shown(rel), "reason": "file name is not valid UTF-8: rename it"})
            continue
        try:
            data = f.read_bytes()
        except OSError as exc:
            skipped.append({"file": str(rel), "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
            continue
        if (why := _check_image(data)) is not None:
            skipped.append({"file": str(rel), "reason": why})
            continue
        rows.append({"image": data, "answer_idx": index[label], "label": label,
                     "image_id": str(rel), "split": split})
    return rows, names


def _npz_class_names(path: Path) -> list[str] | None:
    for side in (path.with_suffix(".json"), path.parent / "INFO.json"):
        if not side.is_file():
            continue
        meta = json.loads(side.read_text())
        if isinstance(meta, dict) and "labels" not in meta:
            meta = meta.get(path.name) or meta.get(path.stem)
        if isinstance(meta, dict):
            meta = meta.get("labels")
        if isinstance(meta, dict):
            return [str(meta[str(i)]) for i in range(len(meta))]
        if isinstance(meta, list):
            return [str(x) for x in meta]
    return None


def npz_rows(path: Path, classes: Sequence[str] | None) -> tuple[list[dict], list[str]]:
    """Rows of every split of a MedMNIST-layout ``.npz``.

    Label index -> name from the sidecar JSON; without one, ``classes`` gives the names by index. With both,
    ``classes`` is the order the sidecar's names are put in (labels are remapped by name).
    """
    data = np.load(path)
    splits = [s for s in ("train", "val", "test") if f"{s}_images" in data.files and f"{s}_labels" in data.files]
    if not splits:
        raise UserDataError(f"{path}: no <split>_images / <split>_labels arrays (found {', '.join(data.files)})")
    by_index = _npz_class_names(path) or ([str(c) for c in classes] if classes else None)
    if by_index is None:
        raise UserDataError(f"{path}: class names unknown: pass --classes a,b,... (names in label-index order) or "
                            f"write {path.with_suffix('.json').name} ({{\"labels\": {{\"0\": \"name\", ...}}}})")
    names = _class_order(by_index, classes, str(path))
    index = {n: i for i, n in enumerate(names)}
    rows = []
    for split in splits:
        images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        if labels.ndim > 1 and labels.shape[1] != 1:
            raise UserDataError(f"{path}: {split}_labels has shape {labels.shape}: multi-label sets are not supported")
        labels = labels.reshape(-1).astype(np.int64)
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(by_index):
            raise UserDataError(f"{path}: {split} labels span 0..{labels.max()} but {len(by_index)} class names "
                                "are given")
        for i, (img, lab) in enumerate(zip(images, labels)):
            name = by_index[int(lab)]
            rows.append({"image": _png(img), "answer_idx": index[name], "label": name,
                         "image_id": f"{split}/{i}", "split": split})
    return rows, names


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, where: str) -> str:
    if wanted:
        if wanted not in columns:
            raise UserDataError(f"{where}: no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise UserDataError(f"{where}: no {what} column among {', '.join(columns)}; set {what}_column in a task file "
                        f"(looked for {', '.join(candidates)})")


def _labels_to_rows(records: list[dict], labels: list, classes: Sequence[str] | None, where: str) -> list[str]:
    """Fill answer_idx / label of ``records`` from raw labels (names or indices); returns the class list."""
    ints = all(isinstance(x, (int, np.integer)) or (isinstance(x, str) and x.strip().lstrip("-").isdigit())
               for x in labels)
    if ints and classes and not set(map(str, labels)) <= set(map(str, classes)):
        names = [str(c) for c in classes]
        idx = [int(x) for x in labels]
        if min(idx) < 0 or max(idx) >= len(names):
            raise UserDataError(f"{where}: label indices span {min(idx)}..{max(idx)}, {len(names)} classes declared")
    else:
        found = sorted({str(x) for x in labels}, key=lambda v: (int(v), v) if ints else (0, v))   # 2 before 10
        names = _class_order(found, classes, where)
        index = {n: i for i, n in enumerate(names)}
        idx = [index[str(x)] for x in labels]
    for r, i in zip(records, idx):
        r["answer_idx"], r["label"] = i, names[i]
    return names


def table_rows(path: Path, kind: str, classes: Sequence[str] | None, image_col: str | None, label_col: str | None,
               skipped: list) -> tuple[list[dict], list[str]]:
    """Rows of a CSV / Parquet table with an image column and a label column (and optionally ``split``)."""
    if kind == "csv":
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                table = list(csv.DictReader(fh))
        except UnicodeDecodeError as exc:
            raise UserDataError(f"{_shown(path)}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the table "
                                f"as UTF-8") from None
        columns = list(table[0]) if table else []
    else:
        import pyarrow.parquet as pq

        from biomedica_hf.eval.evalset import parquet_files

        table = [r for f in parquet_files(path) for r in pq.read_table(f).to_pylist()]
        columns = list(table[0]) if table else []
    if not table:
        raise UserDataError(f"{path}: no rows")
    icol = _pick(columns, image_col, IMAGE_COLUMNS, "image", str(path))
    lcol = _pick(columns, label_col, LABEL_COLUMNS, "label", str(path))
    base = path.parent if path.is_file() else path
    records, labels = [], []
    for n, r in enumerate(table):
        img, ident = r[icol], None
        if isinstance(img, dict) and not img.get("bytes"):
            img = img.get("path")
        if isinstance(img, dict):
            ident, img = img.get("path"), img.get("bytes")
        elif isinstance(img, str):
            ident = img
            f = base / img
            if not _inside(f, base):     # a row names files in the table's folder only (no `..`, no absolute path)
                skipped.append({"file": img, "reason": f"refused: the path leaves the table's folder {base}"})
                continue
            if not f.is_file():
                skipped.append({"file": img, "reason": "file not found"})
                continue
            img = f.read_bytes()
        if not img or (why := _check_image(img)) is not None:
            skipped.append({"file": ident or f"row {n}", "reason": "no image" if not img else why})
            continue
        if r[lcol] is None or r[lcol] == "":
            skipped.append({"file": ident or f"row {n}", "reason": "empty label"})
            continue
        records.append({"image": img, "image_id": str(ident or f"row{n}"), "split": _norm_split(r.get("split"))})
        labels.append(r[lcol])
    if not records:
        raise UserDataError(f"{path}: no readable image rows ({len(skipped)} skipped: {skipped[:3]})")
    return records, _labels_to_rows(records, labels, classes, str(path))


def hf_rows(location: str, config: str | None, classes: Sequence[str] | None, image_col: str | None,
            label_col: str | None) -> tuple[list[dict], list[str]]:
    """Rows of a ``datasets`` dataset (Hub id, or a local folder in Hub layout) with Image + ClassLabel columns."""
    import datasets

    try:
        dd = datasets.load_dataset(location, config)
    except Exception as exc:
        raise DataNotFoundError(f"{DATA_HINT} (hf:{location}{':' + config if config else ''}: "
                                f"{type(exc).__name__}: {exc})") from exc
    first = next(iter(dd.values()))
    feats = first.features
    icol = image_col or next((k for k, v in feats.items() if isinstance(v, datasets.Image)), None)
    lcol = label_col or next((k for k, v in feats.items() if isinstance(v, datasets.ClassLabel)), None)
    if icol is None or lcol is None:
        raise UserDataError(f"hf:{location}: needs an Image and a ClassLabel column (features: {dict(feats)}); "
                            "or name them with image_column / label_column in a task file")
    label_feat = feats[lcol]
    names = list(label_feat.names) if isinstance(label_feat, datasets.ClassLabel) else None
    if classes:
        names = _class_order(names or [], classes, f"hf:{location}")
    records, labels = [], []
    for split_name, ds in dd.items():
        split = _norm_split(split_name) or split_name
        ds = ds.cast_column(icol, datasets.Image(decode=False))
        for i, r in enumerate(ds):
            img = r[icol]
            data = img.get("bytes") or Path(img["path"]).read_bytes()
            records.append({"image": data, "image_id": img.get("path") or f"{split_name}/{i}", "split": split})
            labels.append(r[lcol])
    if names is not None and all(isinstance(x, (int, np.integer)) for x in labels):
        for rec, lab in zip(records, labels):
            rec["answer_idx"], rec["label"] = int(lab), names[int(lab)]
        return records, names
    return records, _labels_to_rows(records, labels, classes, f"hf:{location}")


def stratified_split(labels: Sequence[int], ids: Sequence[str], fractions=(0.6, 0.2, 0.2)) -> list[str]:
    """train / val / test per class by the sha1 order of the ids (deterministic, each class cut alike)."""
    out = [""] * len(labels)
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(int(lab), []).append(i)
    for members in by_class.values():
        members.sort(key=lambda i: hashlib.sha1(ids[i].encode()).hexdigest())
        n = len(members)
        if fractions[2] == 0:                    # train / val only: nothing is left over
            n_val = max(1, round(fractions[1] * n)) if n >= 2 else 0
            n_train = n - n_val
        else:
            n_train = max(1, round(fractions[0] * n)) if n >= 3 else max(0, n - 2)
            n_val = max(1, round(fractions[1] * n)) if n >= 3 else (1 if n == 2 else 0)
        for j, i in enumerate(members):
            out[i] = "train" if j < n_train else "val" if j < n_train + n_val else "test"
    return out


# ------------------------------------------------------------------------------------------- source
@dataclass(frozen=True)
class UserSource:
    """A user's labelled set, converted on first use to ``CACHE/user/<slug>-<hash>.parquet`` (all splits)."""

    kind: str                                  # one of KINDS
    location: str                              # a path (absolute) or a Hub id
    config: str | None = None                  # hf: dataset config
    classes: tuple[str, ...] | None = None     # declared class order (task file / --classes)
    image_column: str | None = None
    label_column: str | None = None
    license: str = ""

    @property
    def is_local(self) -> bool:
        return self.kind != "hf" or Path(self.location).exists()

    def _inputs(self) -> list[Path]:
        p = Path(self.location)
        if self.kind == "imagefolder":
            return sorted(f for f in p.rglob("*") if f.is_file())
        if self.kind == "npz":
            return [p] + [s for s in (p.with_suffix(".json"), p.parent / "INFO.json") if s.is_file()]
        if self.kind in ("csv", "parquet"):
            return [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        return sorted(f for f in p.rglob("*") if f.is_file()) if p.exists() else []

    def fingerprint(self) -> dict:
        stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in self._inputs()]
        h = hashlib.sha1(json.dumps(stats).encode()).hexdigest()
        return {"version": CONVERTER_VERSION, "source": self.describe(), "classes": list(self.classes or []),
                "columns": [self.image_column, self.label_column], "inputs": h}

    def out_path(self, ctx: DataContext) -> Path:
        key = hashlib.sha1(f"{self.kind}:{self.location}:{self.config}".encode()).hexdigest()[:12]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(self.location).name or self.location)
        return (ctx.cache_dir or Path(".")) / "user" / f"{self.kind}-{stem}-{key}.parquet"

    def convert(self) -> tuple[list[dict], list[str], list[dict]]:
        """(rows in the eval-set layout, classes, skipped files with reasons)."""
        rows, names, skipped, _ = self.convert_with_splits()
        return rows, names, skipped

    def convert_with_splits(self) -> tuple[list[dict], list[str], list[dict], bool]:
        """:meth:`convert` and whether the set gave its own splits (without them every image is converted as
        ``test`` and results say split ``all``)."""
        p = Path(self.location)
        skipped: list[dict] = []
        if self.kind == "imagefolder":
            rows, names = imagefolder_rows(p, self.classes, skipped)
        elif self.kind == "npz":
            rows, names = npz_rows(p, self.classes)
        elif self.kind in ("csv", "parquet"):
            rows, names = table_rows(p, self.kind, self.classes, self.image_column, self.label_column, skipped)
        else:
            rows, names = hf_rows(self.location, self.config, self.classes, self.image_column, self.label_column)
        task = self.describe()
        for r in rows:
            r.update(task=task, options=names, provenance_license=self.license)
        split_given = not all(r["split"] is None for r in rows)
        if not split_given:
            for r in rows:
                r["split"] = "test"        # no split given: every image is evaluated (zero-shot)
        elif any(r["split"] is None for r in rows):
            raise UserDataError(f"{task}: some rows have a split and some do not")
        return rows, names, skipped, split_given

    def files(self, ctx: DataContext) -> list[Path]:
        if self.is_local and not Path(self.location).exists():
            raise DataNotFoundError(f"{DATA_HINT} ({self.describe()}: {self.location} does not exist)")
        out = self.out_path(ctx)
        stamp = out.with_suffix(".json")
        fp = self.fingerprint()
        try:
            done = out.is_file() and json.loads(stamp.read_text())["fingerprint"] == fp
        except (OSError, ValueError, KeyError):
            done = False
        if not done:
            rows, names, skipped, split_given = self.convert_with_splits()
            for s in skipped:
                log.warning("%s: skipped %s (%s)", self.describe(), s["file"], s["reason"])
            write_evalset(rows, out)
            stamp.write_text(json.dumps({"fingerprint": fp, "classes": names, "rows": len(rows), "skipped": skipped,
                                         "split_given": split_given}, indent=1))
        return [out]

    def split_given(self, ctx: DataContext) -> bool:
        """Did the data name its splits (split folders, a ``split`` column, MedMNIST arrays)? Without, every image
        was converted as ``test`` and a result over them is over ``all`` the images."""
        self.files(ctx)
        return bool(self.conversion_report(ctx).get("split_given", True))

    def conversion_report(self, ctx: DataContext) -> dict:
        """classes, rows and skipped files of the last conversion."""
        return json.loads(self.out_path(ctx).with_suffix(".json").read_text())

    def describe(self) -> str:
        return f"{self.kind}:{self.location}" + (f":{self.config}" if self.config else "")


# ------------------------------------------------------------------------------------------- tasks
def detect_kind(path: Path) -> str | None:
    """The reader for a bare path: a folder of class folders, .npz, .csv, .parquet (file or folder)."""
    if path.is_file():
        return {".npz": "npz", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix.lower())
    if path.is_dir():
        if any(path.glob("*.parquet")):
            return "parquet"
        if any(p.is_dir() for p in path.iterdir()):
            return "imagefolder"
    return None


def _sidecar_task_file(path: Path) -> Path | None:
    folder = path if path.is_dir() else path.parent
    names = TASK_FILE_NAMES if path.is_dir() else (f"{path.stem}.task.yaml", f"{path.stem}.task.json")
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _is_evalset_parquet(path: Path) -> bool:
    import pyarrow.parquet as pq

    from biomedica_hf.eval.evalset import parquet_files

    files = parquet_files(path)
    return bool(files) and {"options", "answer_idx"} <= set(pq.read_schema(files[0]).names)


@dataclass(frozen=True)
class UserSpec:
    """How a user item was written: kind, location, config."""

    kind: str
    location: str
    config: str | None = None
    options: dict = field(default_factory=dict)


def parse_user_item(item: str) -> UserSpec | None:
    """``imagefolder:PATH`` etc., or a bare existing path; None when the item is not a user set."""
    kind, sep, rest = item.partition(":")
    if sep and kind in KINDS:
        if kind == "hf":
            loc, _, config = rest.partition(":")
            if Path(rest).exists():              # a local path may itself contain ':'
                loc, config = rest, ""
            return UserSpec("hf", str(Path(loc).expanduser().resolve()) if Path(loc).exists() else loc, config or None)
        return UserSpec(kind, str(Path(rest).expanduser().resolve()))
    p = Path(item).expanduser()
    if p.exists() and (kind := detect_kind(p)):
        return UserSpec(kind, str(p.resolve()))
    return None


def user_task(spec: UserSpec, task_file: str | os.PathLike | None = None,
              classes: Sequence[str] | None = None) -> Task:
    """A zero-shot :class:`Task` (and the data for probes) over a user's set, named after the set itself."""
    from biomedica_hf.eval.tasks.base import ParquetSource

    loc = Path(spec.location)
    tf_path = task_file or (_sidecar_task_file(loc) if loc.exists() else None)
    tf = load_task_file(tf_path)
    declared = tuple(str(c) for c in (classes or tf.get("classes") or ())) or None
    is_hub = spec.kind == "hf" and not loc.exists()
    label = spec.location if is_hub else loc.name
    if spec.config:
        label += f":{spec.config}"
    name = str(tf.get("name") or f"{spec.kind}/{label}")
    if spec.kind == "parquet" and _is_evalset_parquet(loc):
        source = ParquetSource(loc)
    else:
        source = UserSource(spec.kind, spec.location, spec.config, declared, tf.get("image_column"),
                            tf.get("label_column"), str(tf.get("license") or ""))
    ordered = bool(tf.get("ordered", False))
    if ordered and not declared:
        raise UserDataError(f"{spec.location}: ordered: true needs the classes listed in order (task file or --classes)")
    phrases = {str(k): str(v) for k, v in (tf.get("phrases") or {}).items()}
    primary = tf.get("primary_metric") or ("quadratic_kappa" if ordered else "accuracy")
    where = f"Hub dataset {spec.location}" if is_hub else str(loc)
    return Task(name=name, domain=str(tf.get("domain") or "custom"), kind="zero-shot", source=source,
                templates=tuple(tf.get("templates") or DEFAULT_TEMPLATES), classnames=phrases,
                dataset_name=str(tf.get("dataset_name") or label),
                dataset_type=spec.location + (f":{spec.config}" if spec.config else ""), split="test",
                description=str(tf.get("description") or f"{spec.kind} set at {where}"),
                reference=f"user data: {where}" + (f"; task file {tf_path}" if tf_path else ""),
                primary_metric=primary, ordered_classes=declared if ordered else None)

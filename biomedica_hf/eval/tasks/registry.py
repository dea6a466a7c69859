"""Task registry and ``--tasks`` SPEC resolution.

A SPEC is a comma-separated list of:

* a task name: ``fixtures/bccd``, ``medmnist/DermaMNIST``, ``ubench/<task>`` (read from the data), ``biomedflickr``;
* a glob over names: ``fixtures/*``, ``medmnist/*``;
* a group: ``@fixtures``, ``@biomedica`` (every suite + BioMed-Flickr), ``@<suite>`` (``@medmnist``, ...),
  ``@domain:<domain>`` (over the registered tasks and the suites whose data is present);
* ``retrieval:PATH`` or ``retrieval:PATH#config``: a dataset folder built by ``biomedica build``
  (or a Parquet with image + caption) as a retrieval set; ``config`` is a licence subset, ``all`` or a
  materialised config such as ``concept-filtered``;
* your own labelled set (:mod:`.user`): ``imagefolder:PATH``, ``npz:PATH``, ``csv:PATH``, ``parquet:PATH``,
  ``hf:ORG/NAME[:config]`` or a bare existing path;
* ``<folder>`` or ``<folder>/<task>`` for a folder of eval-set Parquet under the data dir that is not a
  BIOMEDICA suite (named by its path, not as the suite).
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
from pathlib import Path

from biomedica_hf.eval.evalset import DATA_HINT, DataNotFoundError
from biomedica_hf.eval.retrieval_data import RetrievalSource
from biomedica_hf.eval.tasks.base import DataContext, Task
from biomedica_hf.eval.tasks.biomedica import STATIC_TASKS, SUITES, discover_suite
from biomedica_hf.eval.tasks.fixtures import FIXTURE_TASKS
from biomedica_hf.eval.tasks.user import parse_user_item, user_task

log = logging.getLogger(__name__)

REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add (or replace) a task under its name."""
    REGISTRY[task.name] = task
    return task


for _t in [*FIXTURE_TASKS, *STATIC_TASKS]:
    register(_t)


def get_task(name: str) -> Task:
    """A registered task by name (``KeyError`` with the known names otherwise)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def retrieval_task(path: str | Path, subset: str | None = None, split: str = "auto") -> Task:
    """A retrieval task over a dataset folder (a config of it; its ``test`` split when it has one) or Parquet pairs.

    ``split``: ``auto`` (the ``test`` rows when ``figures.parquet`` has a ``split`` column with any, else all),
    ``all``, or a split name.
    """
    p = Path(path).expanduser().resolve()
    label = p.name + (f"#{subset}" if subset else "")
    return Task(name=f"retrieval/{label}", domain="retrieval", kind="retrieval",
                retrieval_source=RetrievalSource(path=p, subset=subset, split=split), dataset_name=label,
                dataset_type=str(p), primary_metric="mean_recall",
                description=f"image <-> caption retrieval on {p}" + (f" (config {subset})" if subset else ""),
                reference="a dataset folder built by `biomedica build` (figures.parquet)")


def _local_folder_tasks(item: str, ctx: DataContext) -> list[Task]:
    """Tasks of ``DATA_DIR/<folder>`` (eval-set Parquet, not a known suite), named by the folder's path."""
    from biomedica_hf.eval.evalset import parquet_files, task_names
    from biomedica_hf.eval.tasks.base import ParquetSource

    top, _, pattern = item.removeprefix("@").partition("/")
    if ctx.data_dir is None or not top or top in SUITES or not (ctx.data_dir / top).is_dir():
        return []
    folder = (ctx.data_dir / top).resolve()
    files = parquet_files(folder)
    if not files:
        return []
    out = []
    for name in task_names(files):
        full = f"{top}/{name}"
        if pattern and not fnmatch.fnmatchcase(full, item.removeprefix("@")):
            continue
        out.append(Task(name=full, domain="custom", kind="zero-shot", source=ParquetSource(folder), task_filter=name,
                        dataset_name=f"{name} ({folder})", dataset_type=str(folder),
                        description=f"task {name!r} of the eval-set Parquet in {folder}",
                        reference=f"local data: {folder}"))
    return out


def _suite_tasks(name: str, ctx: DataContext, missing: list[DataNotFoundError]) -> list[Task]:
    try:
        return discover_suite(name, ctx)
    except DataNotFoundError as exc:
        missing.append(exc)
        return []


def _missing_message(missing: list[DataNotFoundError]) -> str:
    """One message for the missing suites, grouped by where they were looked for."""
    by_place: dict[str, list[str]] = {}
    for exc in missing:
        by_place.setdefault(exc.looked or str(exc), []).append(exc.suite or "")
    parts = [f"suites {', '.join(dict.fromkeys(s for s in suites if s))} of {place}" for place, suites in by_place.items()]
    return f"{DATA_HINT} ({'; '.join(parts)})"


def resolve_tasks(spec: str, ctx: DataContext | None = None, skip_missing: bool = False,
                  task_file: str | Path | None = None, classes: list[str] | None = None,
                  retrieval_split: str = "auto") -> list[Task]:
    """Tasks named by a SPEC, in order, without duplicates.

    Suites whose data is absent raise :class:`DataNotFoundError` (``skip_missing``: a warning instead).
    ``task_file`` / ``classes`` apply to the user sets in the SPEC (:mod:`.user`); ``retrieval_split`` to
    the retrieval folders.
    """
    ctx = ctx or DataContext.from_env()
    out: dict[str, Task] = {}
    missing: list[DataNotFoundError] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        found: list[Task] = []
        if item.startswith("retrieval:"):
            path, _, subset = item.removeprefix("retrieval:").partition("#")
            found = [retrieval_task(path, subset or None, retrieval_split)]
        elif item not in REGISTRY and not item.startswith("@") and (user := parse_user_item(item)) is not None:
            found = [user_task(user, task_file, classes)]
        elif item == "@fixtures":
            found = list(FIXTURE_TASKS)
        elif item == "@biomedica":
            for s in SUITES:
                found += _suite_tasks(s, ctx, missing)
            found.append(REGISTRY["biomedflickr"])
        elif item.startswith("@domain:"):
            domain = item.removeprefix("@domain:").lower()
            pool = list(REGISTRY.values())
            local = dataclasses.replace(ctx, allow_download=False)
            for s in SUITES:                  # a domain spans suites: only those present locally are searched
                pool += _suite_tasks(s, local, [])
            found = [t for t in pool if t.domain.lower() == domain]
        elif item.startswith("@") and item[1:] in SUITES:
            found = _suite_tasks(item[1:], ctx, missing)
        elif item.startswith("@") and (local := _local_folder_tasks(item, ctx)):
            found = local
        elif item in REGISTRY:
            found = [REGISTRY[item]]
        else:
            suite = item.split("/", 1)[0]
            pool = list(REGISTRY.values())
            if suite in SUITES:
                pool += _suite_tasks(suite, ctx, missing)
            found = [t for t in pool if fnmatch.fnmatchcase(t.name, item)] or _local_folder_tasks(item, ctx)
            if not found and not (suite in SUITES and missing):
                raise KeyError(f"no task matches {item!r}; registered: {', '.join(sorted(REGISTRY))}, "
                               f"suites: {', '.join('@' + s for s in SUITES)}")
        for t in found:
            if t.name in out and out[t.name].source != t.source and t.source is not None:
                from biomedica_hf.eval.tasks.user import UserDataError

                raise UserDataError(f"two different sets are both named {t.name!r} ({out[t.name].source.describe()} "
                                    f"and {t.source.describe()}): give each its own task file with its own name")
            out.setdefault(t.name, t)
    if missing:
        msg = _missing_message(missing)
        if not skip_missing:
            raise DataNotFoundError(msg)
        log.warning("skipping tasks without data: %s", msg)
    return list(out.values())

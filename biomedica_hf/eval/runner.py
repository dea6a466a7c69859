"""Run tasks for one model and write the run folder.

``OUT/`` after :func:`run_eval`:

  tasks/<task>.json   one result per task (metrics, per-class report, confusion matrix, timing, provenance)
  summary.json        model, config, per-task primary metrics, per-domain averages
  results.md          Markdown table per domain with averages
  model_index.yaml    the ``model-index`` block for a model card
  plots/domains.png   per-domain and per-task bars
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from biomedica_hf.clip.model import ModelAdapter, load_model
from biomedica_hf.eval.evalset import EvalRows, read_evalset
from biomedica_hf.eval.metrics import TieRule
from biomedica_hf.eval.report import domain_summary, flat_metrics, markdown_report, model_index_yaml, plot_domains
from biomedica_hf.eval.retrieval import DEFAULT_TIE_EPS, retrieval_scores
from biomedica_hf.eval.tasks.base import DataContext, Task
from biomedica_hf.eval.zeroshot import class_space, encode_in_batches, evaluate_zero_shot, image_embeddings

log = logging.getLogger(__name__)
PAPER_KS = (1, 10, 100)   # BIOMEDICA reports Recall@1/10/100; mean_recall averages these, both directions


PROTOCOLS = ("zero-shot", "linear-probe", "few-shot")


@dataclass
class EvalConfig:
    """Knobs of a run (recorded in summary.json)."""

    batch: int = 64
    limit: int | None = None          # at most this many images per task and split (deterministic subset)
    tie_eps: float = DEFAULT_TIE_EPS
    tie_rule: TieRule = "pessimistic"
    ks: tuple[int, ...] = (1, 5, 10, 100)
    protocols: tuple[str, ...] = ("zero-shot",)    # for classification tasks; see PROTOCOLS
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)      # few-shot: examples per class
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)       # few-shot: one draw of the shots per seed

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad or not self.protocols:
            raise ValueError(f"unknown protocol(s) {bad}; choose from {', '.join(PROTOCOLS)}")


def check_data(task: Task, ctx: DataContext) -> None:
    """Raise DataNotFoundError if the task's data is absent (before any model is loaded)."""
    if task.kind == "retrieval":
        task.retrieval_source.locate(ctx)
    else:
        task.source.files(ctx)


def _subset(rows: EvalRows, limit: int | None) -> EvalRows:
    """A deterministic subset of at most ``limit`` rows (smallest sha1 of image_id)."""
    if limit and len(rows) > limit:
        keys = [hashlib.sha1(i.encode()).hexdigest() for i in rows.image_ids]
        rows = rows.take(sorted(np.argsort(keys, kind="stable")[:limit].tolist()))
    return rows


def load_rows(task: Task, ctx: DataContext, limit: int | None = None) -> EvalRows:
    """The task's rows; ``limit`` keeps a deterministic subset (smallest sha1 of image_id)."""
    return _subset(read_evalset(task.source.files(ctx), task.task_filter, task.split), limit)


def load_split_rows(task: Task, ctx: DataContext, split: str, limit: int | None = None) -> EvalRows:
    """Rows of another split of the task's data (empty when the data has no such split)."""
    from biomedica_hf.eval.evalset import DataNotFoundError

    src = task.source
    if hasattr(src, "with_split"):             # fixtures: one converted file per split
        try:
            files = src.with_split(split).files(ctx)
        except (DataNotFoundError, KeyError, ValueError):
            return read_evalset([], None)
        return _subset(read_evalset(files, task.task_filter, split), limit)
    files = src.files(ctx)
    import pyarrow.parquet as pq

    if not any("split" in pq.read_schema(f).names for f in files):
        return read_evalset([], None)
    return _subset(read_evalset(files, task.task_filter, split), limit)


def task_provenance(task: Task, ctx: DataContext) -> dict:
    """{name, type, split, source}: the dataset a result is about, as it really is.

    Suite tasks read from a local folder that is not a Hub snapshot of the eval set are named by that
    folder, never as the BIOMEDICA suite.
    """
    src = task.source or task.retrieval_source
    name, dtype, where = task.dataset_name or task.name, task.dataset_type or task.name, src.describe()
    if hasattr(src, "provenance"):
        prov = src.provenance(ctx)
        if not prov["from_hub"]:
            name = f"{task.task_filter or task.name} (local data: {prov['source']})"
            dtype, where = prov["type"], prov["source"]
    return {"name": name, "type": dtype, "split": task.split or "test", "source": where}


def rows_split(task: Task, ctx: DataContext) -> str | None:
    """``all`` when the task's data named no split (a folder of class folders, a table without a ``split`` column:
    every image was read, though converted as ``test``); None when the task's own split label holds."""
    if hasattr(task.source, "split_given") and not task.source.split_given(ctx):
        return "all"
    return None


def _base(task: Task, adapter: ModelAdapter, ctx: DataContext, protocol: str | None = None) -> dict:
    prov = task_provenance(task, ctx)
    description = task.description
    if prov["source"] != (task.source or task.retrieval_source).describe():
        description = f"{task.task_filter or task.name}: eval-set Parquet read from {prov['source']}"
    return {"task": task.name if protocol in (None, "zero-shot") else f"{task.name}@{protocol}",
            "base_task": task.name, "kind": protocol or task.kind, "domain": task.domain, "model": adapter.name,
            "dataset": {k: prov[k] for k in ("name", "type", "split")}, "source": prov["source"],
            "description": description, "reference": task.reference, "primary_metric": task.primary_metric}


CLASS_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "chance_balanced_accuracy", "quadratic_kappa")


def _ordered(task: Task, classes: list[str]) -> bool:
    if not task.ordered_classes:
        return False
    if list(task.ordered_classes) != list(classes):
        raise ValueError(f"{task.name}: class order {classes} differs from the declared {list(task.ordered_classes)}")
    return True


def run_zero_shot(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig,
                  rows: EvalRows | None = None) -> dict:
    """One zero-shot task -> result dict."""
    rows = rows if rows is not None else load_rows(task, ctx, cfg.limit)
    if not len(rows):
        raise ValueError(f"{task.name}: no rows")
    classes, _ = class_space(rows)
    res = evaluate_zero_shot(adapter, rows, task.templates, task.phrase, cfg.batch, cfg.tie_eps,
                             ordered=_ordered(task, classes))
    metrics = {k: res[k] for k in CLASS_METRICS if k in res}
    base = _base(task, adapter, ctx)
    if task.source is not None and rows_split(task, ctx):   # every image of a folder without splits
        base["dataset"]["split"] = rows_split(task, ctx)
    return {**base, "n": res["n"], "metrics": metrics, "primary": metrics[task.primary_metric],
            "chance": metrics["chance_balanced_accuracy"], "classes": [c["class"] for c in res["per_class"]],
            "class_phrases": [task.phrase(c["class"]) for c in res["per_class"]], "templates": list(task.templates),
            "per_class": res["per_class"], "confusion_matrix": res["confusion_matrix"],
            "timing": {k: res[k] for k in ("text_seconds", "image_seconds", "images_per_second")},
            "tie_rule": "pessimistic (a tie with the true class is an error)", "tie_eps": cfg.tie_eps}


def probe_splits(task: Task, ctx: DataContext, cfg: EvalConfig) -> tuple[EvalRows, EvalRows, EvalRows, str]:
    """(train, val, test) rows for the probes and a note on where they come from.

    The data's own splits when it has a train split (val carved from train, stratified, when absent);
    otherwise a stratified 60/20/20 split of the evaluated rows by the sha1 of their ids.
    """
    from biomedica_hf.eval.tasks.user import stratified_split

    test = load_rows(task, ctx, cfg.limit)
    train = load_split_rows(task, ctx, "train", cfg.limit)
    if len(train):
        val = load_split_rows(task, ctx, "val", cfg.limit)
        if len(val):
            return train, val, test, "the data's train / val / test splits"
        _, y = class_space(train)
        parts = stratified_split(y, train.image_ids, (0.8, 0.2, 0.0))
        pick = lambda name: [i for i, p in enumerate(parts) if p == name]
        return train.take(pick("train")), train.take(pick("val")), test, \
            "the data's train split (80/20 train/val by id hash) and test split"
    _, y = class_space(test)
    parts = stratified_split(y, test.image_ids, (0.6, 0.2, 0.2))
    pick = lambda name: [i for i, p in enumerate(parts) if p == name]
    return test.take(pick("train")), test.take(pick("val")), test.take(pick("test")), \
        "no train split in the data: a stratified 60/20/20 train/val/test split of its images by id hash"


def run_probes(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig) -> list[dict]:
    """Linear-probe and/or few-shot results (per ``cfg.protocols``) on frozen image embeddings."""
    from biomedica_hf.eval.probe import Splits, few_shot, linear_probe

    train, val, test, note = probe_splits(task, ctx, cfg)
    all_rows = [train, val, test]
    classes: dict[str, int] = {}
    for part in all_rows:
        for c in class_space(part)[0]:
            classes.setdefault(c, len(classes))
    if task.ordered_classes:
        classes = {c: i for i, c in enumerate(task.ordered_classes)}
    names = list(classes)
    t0 = time.perf_counter()
    emb = [image_embeddings(adapter, part.images, cfg.batch).double().numpy() for part in all_rows]
    seconds = time.perf_counter() - t0
    ys = [np.array([classes[o[a]] for o, a in zip(part.options, part.answer_idx)], dtype=np.int64) for part in all_rows]
    splits = Splits(emb[0], ys[0], emb[1], ys[1], emb[2], ys[2])
    ordered = bool(task.ordered_classes)
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    # the split the probe results are scored on: the data's test split, or the held-out part of a split made here
    test_split = "test" if note.endswith(("test splits", "and test split")) else \
        "held-out 20% of all images (stratified, by id hash)"
    out = []
    if "linear-probe" in cfg.protocols:
        res = linear_probe(splits, names, ordered, tie_eps=0.0)
        metrics = {k: res[k] for k in CLASS_METRICS if k in res}
        base = _base(task, adapter, ctx, "linear-probe")
        base["dataset"]["split"] = test_split
        out.append({**base, "n": res["n"], "metrics": metrics,
                    "primary": metrics[task.primary_metric], "chance": metrics["chance_balanced_accuracy"],
                    "classes": names, "per_class": res["per_class"], "confusion_matrix": res["confusion_matrix"],
                    "C": res["C"], "c_curve": res["c_curve"], "splits": sizes, "split_note": note,
                    "method": "sklearn LogisticRegression (lbfgs) on L2-normalised frozen image embeddings; "
                              "C chosen on val by balanced accuracy, refit on train + val",
                    "timing": {"embed_seconds": seconds}})
    if "few-shot" in cfg.protocols:
        from biomedica_hf.eval.probe import unsupported_shots

        shots = few_shot(splits, names, cfg.shots, cfg.seeds, ordered)
        skipped = unsupported_shots(splits.y_train, names, cfg.shots)
        for k, why in skipped.items():
            log.warning("%s few-shot: k=%s skipped: %s", task.name, k, why["reason"])
        if shots:
            last = shots[max(shots, key=int)]
            metrics = {"shots": shots, **{k: last[k] for k in CLASS_METRICS if k in last}}
            base = _base(task, adapter, ctx, "few-shot")
            base["dataset"]["split"] = test_split
            out.append({**base, "n": len(test), "metrics": metrics,
                        "primary": last[task.primary_metric], "chance": 1.0 / len(set(ys[2].tolist())),
                        "classes": names, "splits": sizes, "split_note": note, "seeds": list(cfg.seeds),
                        "shots_skipped": skipped,
                        "method": f"k examples per class from train (k in {sorted(int(k) for k in shots)}; "
                                  + (f"k={', '.join(skipped)} skipped: a class has fewer train images; "
                                     if skipped else "")
                                  + "one draw per seed; LogisticRegression with C chosen on val; mean and s.d. over "
                                  f"seeds; headline metrics at k={last['k']}",
                        "timing": {"embed_seconds": seconds}})
        elif skipped:
            log.warning("%s few-shot: no k of %s is supported by the train split (%s): no few-shot result",
                        task.name, list(cfg.shots), train_counts_text(splits.y_train, names))
    return out


def train_counts_text(y_train, names) -> str:
    from biomedica_hf.eval.probe import train_counts

    return ", ".join(f"{c}: {n}" for c, n in train_counts(y_train, names).items())


def run_retrieval(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig) -> dict:
    """One retrieval task -> result dict (exact ranks, chunked similarity)."""
    pairs = task.retrieval_source.load(ctx, cfg.limit)
    if not len(pairs):
        raise ValueError(f"{task.name}: no image-caption pairs")
    t0 = time.perf_counter()
    idx = list(range(len(pairs)))
    img = encode_in_batches(lambda b: image_embeddings(adapter, pairs.image_bytes(b), cfg.batch), idx, 4 * cfg.batch)
    t1 = time.perf_counter()
    txt = encode_in_batches(adapter.encode_texts, pairs.captions, max(cfg.batch, 64))
    t2 = time.perf_counter()
    ks = tuple(sorted(set(cfg.ks) | set(PAPER_KS)))
    metrics = retrieval_scores(img, txt, ks=ks, rule=cfg.tie_rule, tie_eps=cfg.tie_eps)
    metrics["mean_recall"] = float(np.mean([metrics[d][f"R@{k}"] for d in ("image_to_text", "text_to_image")
                                            for k in PAPER_KS]))
    base = _base(task, adapter, ctx)
    base["dataset"]["split"] = pairs.split or "all"
    return {**base, "n": len(pairs), "metrics": metrics, "primary": metrics["mean_recall"],
            "chance": None, "timing": {"image_seconds": t1 - t0, "text_seconds": t2 - t1,
                                       "images_per_second": len(pairs) / (t1 - t0) if t1 > t0 else float("nan"),
                                       "rank_seconds": time.perf_counter() - t2},
            "tie_rule": cfg.tie_rule, "tie_eps": cfg.tie_eps}


def run_task(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig) -> dict:
    """The task's zero-shot (or retrieval) result."""
    return (run_retrieval if task.kind == "retrieval" else run_zero_shot)(adapter, task, ctx, cfg)


def run_task_protocols(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig) -> list[dict]:
    """Every result of a task under ``cfg.protocols`` (retrieval tasks: retrieval only)."""
    if task.kind == "retrieval":
        return [run_retrieval(adapter, task, ctx, cfg)]
    out = [run_zero_shot(adapter, task, ctx, cfg)] if "zero-shot" in cfg.protocols else []
    if {"linear-probe", "few-shot"} & set(cfg.protocols):
        out += run_probes(adapter, task, ctx, cfg)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "__" if c == "/" else "_" for c in name)


def write_run(out: Path, model: str, results: Sequence[dict], cfg: EvalConfig, extra: dict | None = None) -> dict:
    """Write per-task JSON, summary.json, results.md, model_index.yaml and plots; returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tasks").mkdir(exist_ok=True)
    for r in results:
        (out / "tasks" / f"{_slug(r['task'])}.json").write_text(json.dumps(r, indent=2, ensure_ascii=False))
    summary = {
        "model": model, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(cfg) | (extra or {}),
        "tasks": {r["task"]: {"domain": r["domain"], "kind": r["kind"], "n": r["n"], "primary_metric": r["primary_metric"],
                              "primary": r["primary"], "chance": r.get("chance"), "metrics": flat_metrics(r),
                              "dataset": r["dataset"], "source": r.get("source")} for r in results},
        "domains": domain_summary(results),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    (out / "results.md").write_text(markdown_report(model, results))
    (out / "model_index.yaml").write_text(model_index_yaml(model, results))
    if results:
        plot_domains(summary, out / "plots" / "domains.png")
    return summary


def run_eval(model: str | ModelAdapter, tasks: Sequence[Task], out: str | os.PathLike | None = None,
             ctx: DataContext | None = None, cfg: EvalConfig | None = None, device: str = "auto",
             skip_missing: bool = False, name: str | None = None) -> tuple[list[dict], dict | None]:
    """Evaluate ``model`` (a SPEC or an adapter) on ``tasks``; write the run folder when ``out`` is given.

    ``name`` is the model's display name in the reports and model-index (default: the SPEC).

    Data presence is checked for every task before the model is loaded.
    """
    from biomedica_hf.eval.evalset import DataNotFoundError

    ctx = ctx or DataContext.from_env()
    cfg = cfg or EvalConfig()
    ready, skipped = [], []
    for t in tasks:
        try:
            check_data(t, ctx)
            ready.append(t)
        except DataNotFoundError as exc:
            if not skip_missing:
                raise
            skipped.append(t.name)
            log.warning("%s: %s", t.name, exc)
    adapter = load_model(model, device) if isinstance(model, str) else model
    results = []
    for t in ready:
        t0 = time.perf_counter()
        for r in run_task_protocols(adapter, t, ctx, cfg):
            r["elapsed_seconds"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            log.info("%s: %s = %.4f (%d items, %.1fs)", r["task"], r["primary_metric"], r["primary"], r["n"],
                     r["elapsed_seconds"])
            results.append(r)
    summary = None
    if out is not None:
        summary = write_run(Path(out), name or adapter.name, results, cfg,
                            {"spec": adapter.name, "device": str(adapter.device), "skipped": skipped})
    return results, summary

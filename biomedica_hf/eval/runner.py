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

from .adapters import ModelAdapter, load_model
from .evalset import EvalRows, read_evalset
from .metrics import TieRule
from .report import domain_summary, flat_metrics, markdown_report, model_index_yaml, plot_domains
from .retrieval import DEFAULT_TIE_EPS, retrieval_scores
from .tasks.base import DataContext, Task
from .zeroshot import encode_in_batches, evaluate_zero_shot, image_embeddings

log = logging.getLogger(__name__)
PAPER_KS = (1, 10, 100)   # BIOMEDICA reports Recall@1/10/100; mean_recall averages these, both directions


@dataclass
class EvalConfig:
    """Knobs of a run (recorded in summary.json)."""

    batch: int = 64
    limit: int | None = None          # at most this many images per task (deterministic subset)
    tie_eps: float = DEFAULT_TIE_EPS
    tie_rule: TieRule = "pessimistic"
    ks: tuple[int, ...] = (1, 5, 10, 100)


def check_data(task: Task, ctx: DataContext) -> None:
    """Raise DataNotFoundError if the task's data is absent (before any model is loaded)."""
    if task.kind == "retrieval":
        task.retrieval_source.locate(ctx)
    else:
        task.source.files(ctx)


def load_rows(task: Task, ctx: DataContext, limit: int | None = None) -> EvalRows:
    """The task's rows; ``limit`` keeps a deterministic subset (smallest sha1 of image_id)."""
    rows = read_evalset(task.source.files(ctx), task.task_filter, task.split)
    if limit and len(rows) > limit:
        keys = [hashlib.sha1(i.encode()).hexdigest() for i in rows.image_ids]
        rows = rows.take(sorted(np.argsort(keys, kind="stable")[:limit].tolist()))
    return rows


def _base(task: Task, adapter: ModelAdapter) -> dict:
    return {"task": task.name, "kind": task.kind, "domain": task.domain, "model": adapter.name,
            "dataset": {"name": task.dataset_name or task.name, "type": task.dataset_type or task.name,
                        "split": task.split or "test"},
            "source": (task.source or task.retrieval_source).describe(), "description": task.description,
            "reference": task.reference, "primary_metric": task.primary_metric}


def run_zero_shot(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig) -> dict:
    """One zero-shot task -> result dict."""
    rows = load_rows(task, ctx, cfg.limit)
    if not len(rows):
        raise ValueError(f"{task.name}: no rows")
    res = evaluate_zero_shot(adapter, rows, task.templates, task.phrase, cfg.batch, cfg.tie_eps)
    metrics = {k: res[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "chance_balanced_accuracy")}
    return {**_base(task, adapter), "n": res["n"], "metrics": metrics, "primary": metrics[task.primary_metric],
            "chance": metrics["chance_balanced_accuracy"], "classes": [c["class"] for c in res["per_class"]],
            "class_phrases": [task.phrase(c["class"]) for c in res["per_class"]], "templates": list(task.templates),
            "per_class": res["per_class"], "confusion_matrix": res["confusion_matrix"],
            "timing": {k: res[k] for k in ("text_seconds", "image_seconds", "images_per_second")},
            "tie_rule": "pessimistic (a tie with the true class is an error)", "tie_eps": cfg.tie_eps}


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
    return {**_base(task, adapter), "n": len(pairs), "metrics": metrics, "primary": metrics["mean_recall"],
            "chance": None, "timing": {"image_seconds": t1 - t0, "text_seconds": t2 - t1,
                                       "images_per_second": len(pairs) / (t1 - t0) if t1 > t0 else float("nan"),
                                       "rank_seconds": time.perf_counter() - t2},
            "tie_rule": cfg.tie_rule, "tie_eps": cfg.tie_eps}


def run_task(adapter: ModelAdapter, task: Task, ctx: DataContext, cfg: EvalConfig) -> dict:
    """Dispatch on the task kind."""
    return (run_retrieval if task.kind == "retrieval" else run_zero_shot)(adapter, task, ctx, cfg)


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
                              "dataset": r["dataset"]} for r in results},
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
    from .evalset import DataNotFoundError

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
        r = run_task(adapter, t, ctx, cfg)
        r["elapsed_seconds"] = time.perf_counter() - t0
        log.info("%s: %s = %.4f (%d items, %.1fs)", t.name, r["primary_metric"], r["primary"], r["n"],
                 r["elapsed_seconds"])
        results.append(r)
    summary = None
    if out is not None:
        summary = write_run(Path(out), name or adapter.name, results, cfg,
                            {"spec": adapter.name, "device": str(adapter.device), "skipped": skipped})
    return results, summary

"""Evaluation harness: zero-shot classification and image-text retrieval of CLIP-style models.

>>> from biomedica_hf.eval import load_model, resolve_tasks, run_eval
>>> results, summary = run_eval("ViT-B-32:laion2b_s34b_b79k", resolve_tasks("@fixtures"), out="runs/vitb32")

Models come from the CLIP library (``biomedica_hf.clip.model``: model SPECs -> ``ClipModel``, a
``ModelAdapter``); modules here: ``tasks`` (registry), ``evalset`` (the
eval-set Parquet layout), ``metrics`` (pure metrics, tie rule), ``retrieval`` (chunked exact ranks),
``zeroshot``, ``runner``, ``report``, ``cli`` (``COMMANDS`` for the top-level ``biomedica`` group).
Heavy imports (torch, open_clip, transformers) happen inside these modules, not here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ModelAdapter": "biomedica_hf.clip.model", "ClipModel": "biomedica_hf.clip.model",
    "load_model": "biomedica_hf.clip.model", "parse_model_spec": "biomedica_hf.clip.model",
    "save_open_clip_folder": "biomedica_hf.clip.export",
    "Task": "tasks", "DataContext": "tasks", "resolve_tasks": "tasks", "get_task": "tasks", "register": "tasks",
    "retrieval_task": "tasks", "run_eval": "runner", "run_task": "runner", "EvalConfig": "runner",
    "write_evalset": "evalset", "read_evalset": "evalset", "DataNotFoundError": "evalset",
    "write_clip_tokenizer": "biomedica_hf.clip.tokenizer",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from biomedica_hf.clip.model import ModelAdapter, load_model  # noqa: F401
    from biomedica_hf.eval.runner import run_eval  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        where = _EXPORTS[name]
        return getattr(importlib.import_module(where if "." in where else f".{where}", __name__), name)
    raise AttributeError(name)

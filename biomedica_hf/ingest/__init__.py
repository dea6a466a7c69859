"""The build: PMC listing -> articles -> figures -> shards, tables and ``figures.parquet`` (``biomedica build``).

Stages, one module each, data flowing one way: ``sources`` (list and fetch packages) -> ``parse`` (JATS) ->
``media`` (images) -> ``article`` (the per-article worker) -> ``staging`` -> ``dedup`` -> ``shards`` -> ``figures``,
driven partition by partition by ``pipeline`` under ``lock``: ``options`` (the frozen ``BuildOptions``),
``snapshots`` (planning, resuming), ``task`` (a partition's work as a task object run by
:mod:`biomedica_hf.executors`: local processes or Ray), ``duplicates``, ``removals``, ``finish`` (tables, summary).

The names below load on first use: importing ``biomedica_hf.ingest.options`` (the command line's defaults) does not
import the whole build.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"BuildConfig": "options", "BuildOptions": "options", "BuildReport": "finish", "build": "pipeline",
            "SourceSpec": "sources.spec"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BuildConfig", "BuildOptions", "BuildReport", "SourceSpec", "build"]

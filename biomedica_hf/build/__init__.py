"""The build: PMC listing -> articles -> figures -> shards, tables and ``figures.parquet`` (``biomedica build``).

Stages, one module each, data flowing one way: ``sources`` (list and fetch packages) -> ``parse`` (JATS) ->
``media`` (images) -> ``article`` (the per-article worker) -> ``staging`` -> ``dedup`` -> ``shards`` -> ``figures``,
driven partition by partition by ``pipeline`` under ``lock``: ``options`` (the frozen ``BuildOptions``),
``snapshots`` (planning, resuming), ``task`` (a partition's work as a task object run by
:mod:`biomedica_hf.executors`: local processes or Ray), ``duplicates``, ``removals``, ``finish`` (tables, summary).
"""
from biomedica_hf.build.options import BuildConfig, BuildOptions
from biomedica_hf.build.pipeline import BuildReport, build
from biomedica_hf.build.sources.spec import SourceSpec

__all__ = ["BuildConfig", "BuildOptions", "BuildReport", "SourceSpec", "build"]

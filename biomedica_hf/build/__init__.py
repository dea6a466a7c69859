"""The build: PMC listing -> articles -> figures -> shards, tables and ``figures.parquet`` (``biomedica build``).

Stages, one module each, data flowing one way: ``sources`` (list and fetch packages) -> ``parse`` (JATS) ->
``media`` (images) -> ``article`` (the per-article worker) -> ``staging`` -> ``dedup`` -> ``shards`` -> ``figures``,
driven partition by partition by ``pipeline`` on ``executors`` (local processes or Ray) under ``lock``.
"""
from biomedica_hf.build.pipeline import BuildConfig, BuildReport, build

__all__ = ["BuildConfig", "BuildReport", "build"]

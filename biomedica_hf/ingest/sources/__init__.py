"""Article sources: PMC Cloud Service (2026), legacy OA mirror, local folders.

``make_source(spec)`` opens the source a :class:`~biomedica_hf.ingest.sources.spec.SourceSpec` describes:
``"cloud"`` -> :class:`CloudSource`, ``"legacy"`` -> :class:`LegacySource`, ``"local"`` -> :class:`LocalSource`;
``make_source(kind, **opts)`` makes the spec from keyword arguments first.
"""
from __future__ import annotations

from typing import Any

from biomedica_hf.ingest.sources.base import FETCH_REASONS, FetchError, Source
from biomedica_hf.ingest.sources.spec import ARCHIVE_OPTIONS, DOWNLOAD_OPTIONS, SOURCE_KINDS, SourceSpec


def make_source(spec: SourceSpec | str, **opts: Any) -> Source:
    """Open a source. ``spec`` is a :class:`SourceSpec`, or a kind whose options are the class's keyword
    arguments, e.g.

    ``make_source("cloud", pmcids=["PMC7112410"])``,
    ``make_source("legacy", base_url_or_root="https://host/pub/pmc", filelist="oa_file_list.csv")``,
    ``make_source("local", path="/data/pmc")``.

    Download settings (``rate``/``rate_per_s``, ``burst``, ``max_connections``, ``retries``,
    ``timeout``, ``deadline``, ``backoff``, ``user_agent``) build the source's :class:`~biomedica_hf.ingest.download.Downloader`
    when no ``downloader`` is given; ``None`` values are ignored; the local source ignores them.
    ``max_package_bytes`` / ``max_member_bytes`` budget the uncompressed bytes of archives (legacy,
    local; ignored by the cloud source).
    """
    if isinstance(spec, str):
        spec = SourceSpec.from_options(spec, **opts)
    elif opts:
        raise TypeError("make_source(spec) takes no other options: they are the spec's fields")
    kw = spec.source_kwargs()
    dl_opts = spec.download_kwargs()
    own = spec.kind in ("cloud", "legacy") and bool(dl_opts) and kw.get("downloader") is None
    if own:
        from biomedica_hf.ingest.download import Downloader

        kw["downloader"] = Downloader(**dl_opts)
    src: Source
    if spec.kind == "cloud":
        from biomedica_hf.ingest.sources.cloud import CloudSource

        src = CloudSource(**kw)
        src._own_downloader = src._own_downloader or own
        return src
    if spec.kind == "legacy":
        from biomedica_hf.ingest.sources.legacy import LegacySource

        src = LegacySource(**kw)
        src._own_downloader = src._own_downloader or own
        return src
    from biomedica_hf.ingest.sources.local import LocalSource

    return LocalSource(**kw)


__all__ = ["ARCHIVE_OPTIONS", "DOWNLOAD_OPTIONS", "FETCH_REASONS", "SOURCE_KINDS", "FetchError", "Source",
           "SourceSpec", "make_source"]

"""Article sources: PMC Cloud Service (2026), legacy OA mirror, local folders.

``make_source(kind, **opts)`` builds one by name: ``"cloud"`` -> :class:`CloudSource`,
``"legacy"`` -> :class:`LegacySource`, ``"local"`` -> :class:`LocalSource`.
"""
from __future__ import annotations

from typing import Any

from biomedica_hf.build.sources.base import FETCH_REASONS, FetchError, Source

SOURCE_KINDS = ("cloud", "legacy", "local")

# make_source options that configure the Downloader (``rate`` is requests/s shared by all threads)
DOWNLOAD_OPTIONS = {"rate": "rate_per_s", "rate_per_s": "rate_per_s", "burst": "burst",
                    "max_connections": "max_connections", "retries": "retries", "timeout": "timeout",
                    "deadline": "deadline", "backoff": "backoff", "user_agent": "user_agent"}
# archive budgets (uncompressed bytes): legacy and local sources; the cloud source has no archives
ARCHIVE_OPTIONS = ("max_package_bytes", "max_member_bytes")


def make_source(kind: str, **opts: Any) -> Source:
    """Build a source. Options are the class's keyword arguments, e.g.

    ``make_source("cloud", pmcids=["PMC7112410"])``,
    ``make_source("legacy", base_url_or_root="https://host/pub/pmc", filelist="oa_file_list.csv")``,
    ``make_source("local", path="/data/pmc")``.

    Download settings (``rate``/``rate_per_s``, ``burst``, ``max_connections``, ``retries``,
    ``timeout``, ``deadline``, ``backoff``, ``user_agent``) build the source's :class:`~biomedica_hf.build.download.Downloader`
    when no ``downloader`` is given; ``None`` values are ignored; the local source ignores them.
    ``max_package_bytes`` / ``max_member_bytes`` budget the uncompressed bytes of archives (legacy,
    local; ignored by the cloud source).
    """
    kind = kind.lower()
    if kind not in ("legacy", "local"):
        for k in ARCHIVE_OPTIONS:
            opts.pop(k, None)
    for k in ARCHIVE_OPTIONS:
        if opts.get(k, 0) is None:
            opts.pop(k)
    dl_opts = {DOWNLOAD_OPTIONS[k]: opts.pop(k) for k in list(opts) if k in DOWNLOAD_OPTIONS}
    dl_opts = {k: v for k, v in dl_opts.items() if v is not None}
    own = kind in ("cloud", "legacy") and bool(dl_opts) and opts.get("downloader") is None
    if own:
        from biomedica_hf.build.download import Downloader

        opts["downloader"] = Downloader(**dl_opts)
    src: Source
    if kind == "cloud":
        from biomedica_hf.build.sources.cloud import CloudSource

        src = CloudSource(**opts)
        src._own_downloader = src._own_downloader or own
        return src
    if kind == "legacy":
        from biomedica_hf.build.sources.legacy import LegacySource

        if "base_url" in opts or "root" in opts:  # friendlier spellings
            opts["base_url_or_root"] = opts.pop("base_url", None) or opts.pop("root")
        src = LegacySource(**opts)
        src._own_downloader = src._own_downloader or own
        return src
    if kind == "local":
        from biomedica_hf.build.sources.local import LocalSource

        return LocalSource(**opts)
    raise ValueError(f"unknown source kind {kind!r}; one of {SOURCE_KINDS}")


__all__ = ["FETCH_REASONS", "SOURCE_KINDS", "FetchError", "Source", "make_source"]

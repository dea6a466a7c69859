"""``SourceSpec``: which articles a build reads and how politely: the one typed description of a source, from the
command line (or a caller) to :func:`~biomedica_hf.ingest.sources.make_source`.

Frozen and picklable (workers open their own source from it, one per process, keyed by the spec), with each
default defined once here: the command line's ``--rate`` and ``--retries`` read them. ``options()`` is the
source's keyword arguments in the order the build records them (``build_summary.json``'s ``source_opts``,
through :func:`biomedica_hf.ingest.provenance.public_options`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SOURCE_KINDS = ("cloud", "legacy", "local")
DEFAULT_RATE = 20.0          # requests/s of the whole build (`build --rate`): split across the workers
DEFAULT_RETRIES = 5          # tries of a failed request (`build --retries`)

# spellings of the download settings accepted by make_source -> the Downloader's keyword
DOWNLOAD_OPTIONS = {"rate": "rate_per_s", "rate_per_s": "rate_per_s", "burst": "burst",
                    "max_connections": "max_connections", "retries": "retries", "timeout": "timeout",
                    "deadline": "deadline", "backoff": "backoff", "user_agent": "user_agent"}
_DOWNLOAD_FIELDS = ("rate", "burst", "max_connections", "retries", "timeout", "deadline", "backoff", "user_agent")
# archive budgets (uncompressed bytes): legacy and local sources; the cloud source has no archives
ARCHIVE_OPTIONS = ("max_package_bytes", "max_member_bytes")
_LOCATION = {"local": "path", "legacy": "base_url_or_root", "cloud": "base_url"}
_LOCATION_SPELLINGS = ("path", "base_url_or_root", "base_url", "root")


@dataclass(frozen=True)
class SourceSpec:
    """A source by kind and location, its listing, its download settings and its archive budgets."""

    kind: str = "local"                            # cloud | legacy | local
    location: str | None = None                    # local: the folder; legacy: mirror URL or folder;
                                                   # cloud: bucket URL (None: PMC's bucket)
    pmcid_file: str | None = None                  # cloud: one PMCID per line
    pmcids: tuple[str, ...] | None = None          # cloud: the PMCIDs themselves
    filelist: str | None = None                    # cloud / legacy: a PMC file list
    list_all: bool = False                         # cloud: every article of the bucket
    rate: float | None = None                      # requests/s (None: the Downloader's own limit)
    burst: int | None = None
    max_connections: int | None = None
    retries: int | None = None
    timeout: float | None = None                   # seconds per request
    deadline: float | None = None                  # seconds per download, retries included
    backoff: float | None = None
    user_agent: str | None = None
    max_package_bytes: int | None = None           # legacy / local archives (None: the source's default)
    max_member_bytes: int | None = None
    extra: tuple[tuple[str, Any], ...] = ()        # any other keyword argument of the source class
    cli: bool = dataclasses.field(default=False, compare=False)   # made by `biomedica build` (see options())

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {self.kind!r}; one of {SOURCE_KINDS}")

    @classmethod
    def from_options(cls, kind: str, **opts: Any) -> "SourceSpec":
        """The spec of ``make_source(kind, **opts)``'s keyword arguments (``path``, ``base_url``,
        ``base_url_or_root`` or ``root`` is the location; ``rate_per_s`` is ``rate``; ``None`` values are unset)."""
        kind = kind.lower()
        fields: dict[str, Any] = {}
        extra = []
        for key, value in opts.items():
            if key in _LOCATION_SPELLINGS:
                if value is not None:
                    fields["location"] = value
            elif key in DOWNLOAD_OPTIONS:
                fields["rate" if key == "rate_per_s" else key] = value
            elif key == "pmcids":
                fields["pmcids"] = tuple(value) if value is not None else None
            elif key in ("pmcid_file", "filelist"):
                fields[key] = str(value) if value is not None else None
            elif key in ("list_all", *ARCHIVE_OPTIONS):
                fields[key] = value
            else:
                extra.append((key, value))
        return cls(kind, extra=tuple(extra), **fields)

    def shared(self, slots: int) -> "SourceSpec":
        """The spec of one of ``slots`` workers: the build's request rate split between them."""
        return dataclasses.replace(self, rate=self.rate / slots) if self.rate and slots > 1 else self

    def options(self) -> dict[str, Any]:
        """The source's options as the build records them, in a fixed order per kind (the command line's)."""
        out: dict[str, Any] = {}
        download = {k: getattr(self, k) for k in ("rate", "retries", "timeout", "deadline")
                    if getattr(self, k) is not None}
        archive = {k: getattr(self, k) for k in ARCHIVE_OPTIONS if getattr(self, k) is not None}
        if self.kind == "local":
            out = {"path": self.location, **archive}
        elif self.kind == "cloud":
            if self.cli or self.pmcid_file is not None:
                out["pmcid_file"] = self.pmcid_file
            if self.cli or self.filelist is not None:
                out["filelist"] = self.filelist
            if self.cli or self.list_all:
                out["list_all"] = self.list_all
            if self.pmcids is not None:
                out["pmcids"] = list(self.pmcids)
            out.update(download)
            if self.location is not None:
                out["base_url"] = self.location
        else:
            out = {"base_url_or_root": self.location, "filelist": self.filelist, **download, **archive}
        out.update({k: getattr(self, k) for k in ("burst", "max_connections", "backoff", "user_agent")
                    if getattr(self, k) is not None})
        out.update(self.extra)
        return out

    def source_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the source class (without the download settings)."""
        kw: dict[str, Any] = {}
        if self.location is not None:
            kw[_LOCATION[self.kind]] = self.location
        if self.kind == "cloud":
            kw.update({k: v for k, v in (("pmcids", list(self.pmcids) if self.pmcids is not None else None),
                                          ("pmcid_file", self.pmcid_file), ("filelist", self.filelist))
                       if v is not None})
            if self.list_all:
                kw["list_all"] = True
        if self.kind == "legacy" and self.filelist is not None:
            kw["filelist"] = self.filelist
        if self.kind in ("legacy", "local"):
            kw.update({k: getattr(self, k) for k in ARCHIVE_OPTIONS if getattr(self, k) is not None})
        kw.update(self.extra)
        return kw

    def download_kwargs(self) -> dict[str, Any]:
        """The Downloader's keyword arguments: the download settings that are set."""
        return {DOWNLOAD_OPTIONS[k]: getattr(self, k) for k in _DOWNLOAD_FIELDS if getattr(self, k) is not None}


__all__ = ["ARCHIVE_OPTIONS", "DEFAULT_RATE", "DEFAULT_RETRIES", "DOWNLOAD_OPTIONS", "SOURCE_KINDS", "SourceSpec"]

"""``BuildOptions``: everything a build is asked to do, one frozen object built once (by ``biomedica build`` or a
caller) and handed down: the source (:class:`~biomedica_hf.ingest.sources.spec.SourceSpec`), the media policy
(:class:`~biomedica_hf.ingest.article.MediaOptions`), the shard limits, the executor and the update rules.

Every default of the build is defined here once (or in the nested option object it belongs to); the command
line's defaults read them (:func:`default`). ``BuildConfig`` is the same class under its earlier name.
"""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from biomedica_hf.ingest.article import MediaOptions
from biomedica_hf.ingest.partition import DEFAULT_SPLIT_FRACTIONS
from biomedica_hf.ingest.sources.spec import SourceSpec
from biomedica_hf.layout import WORK_DIR


@dataclass(frozen=True)
class BuildOptions:
    """A build's options. ``source`` is a :class:`SourceSpec`; a kind with ``source_opts`` (the source class's
    keyword arguments) is turned into one when the object is made."""

    out: Path
    source: SourceSpec = field(default_factory=SourceSpec)
    workers: int = 1
    limit: int | None = None
    shard_max_samples: int = 10_000               # `--shard-samples`
    shard_max_bytes: int = 1_000_000_000          # `--shard-bytes`
    seed: int = 0
    dedup_images: bool = True                     # exact duplicate images kept once
    media: MediaOptions = field(default_factory=MediaOptions)
    keep_downloads: bool = False
    retry_failed: bool = False                    # re-process articles whose earlier run failed
    executor: str = "local"                       # local (process pool) | ray
    ray_address: str | None = None                # ray: "auto", "ray://host:10001" or "local"
    progress: bool = True
    progress_every: float = 30.0                  # seconds between progress lines when stderr is not a terminal
    command: str = ""
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    partition_target: int | None = None           # articles per partition (None: partition.auto_target)
    max_attempts: int = 3                         # tries of a partition whose worker died
    allow_shrink: bool = False                    # an update may withdraw more than half of the articles
    near_dedup: bool = False                      # drop near-duplicate images too (default: flag them)
    caption_dups: bool = True                     # flag near-duplicate captions (MinHash)
    allow_downgrade: bool = False                 # an update may replace an article by an older version
    rebuild_state: bool = False                   # a folder whose _work/ is gone: reconstruct it first
    sliced_partitions: int | None = None          # partitions staged last that are cut into slices (None: one per
                                                  # worker with 2+ workers, pipeline.stage_units); staging only
    preload: tuple[str, ...] = ()                 # modules the caller needs after the build (the card's): imported
                                                  # while the workers stage, off the critical path (pipeline._Preload)
    source_opts: InitVar[dict[str, Any] | None] = None   # with ``source`` a kind: the source's keyword arguments

    def __post_init__(self, source_opts: dict[str, Any] | None) -> None:
        if isinstance(self.source, str):
            object.__setattr__(self, "source", SourceSpec.from_options(self.source, **(source_opts or {})))
        elif source_opts:
            raise TypeError("source_opts goes with a source kind; a SourceSpec holds its own options")
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "split_fractions", tuple(self.split_fractions))
        object.__setattr__(self, "preload", tuple(self.preload))

    @property
    def work(self) -> Path:
        return self.out / WORK_DIR


BuildConfig = BuildOptions      # the earlier name


def default(name: str) -> Any:
    """The default of option ``name`` (``media.<field>`` / ``source.<field>`` for a nested one)."""
    cls: Any = BuildOptions
    parts = name.split(".")
    if parts[0] in ("media", "source"):
        cls, parts = {"media": MediaOptions, "source": SourceSpec}[parts[0]], parts[1:]
    f = {f.name: f for f in dataclasses.fields(cls)}[parts[0]]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default   # type: ignore[misc]


__all__ = ["BuildConfig", "BuildOptions", "default"]

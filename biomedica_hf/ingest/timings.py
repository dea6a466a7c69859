"""Where a build's time goes: seconds per stage of the work on articles and shards, and of the driver.

Work stages (seconds summed over articles, on the workers; an article's seconds are stored with it in the
staging log, so a resumed partition keeps those of its earlier runs):

* ``fetch``        obtain the article's package (download / extract / read from the input folder);
* ``parse``        parse its JATS XML files;
* ``media``        read, decode, convert and hash its figure images;
* ``stage_write``  append its record and image bytes to the partition's staging;
* ``shard_write``  write the shard (tar, Parquet, stats, and the band keys of its captions for the caption
                   pass) — per shard, not per article.

A shard's ``_stats.json`` has ``timings``: the work stages of the articles whose samples it holds (an article's
seconds shared out over its kept samples, so that the shards of a build add up to its work), its own
``shard_write``, and ``elapsed`` (their sum). ``build_summary.json`` has the driver's wall-clock stages
(:class:`StageClock`), the work totals of the snapshot and the elapsed seconds of the run. Timings never enter a
digest or a tar: a rebuilt shard is byte-identical, only its stats differ.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping

from biomedica_hf.io.sizes import human_size

log = logging.getLogger("biomedica_hf.ingest")

ARTICLE_STAGES = ("fetch", "parse", "media", "stage_write")
WORK_STAGES = (*ARTICLE_STAGES, "shard_write")


@contextlib.contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the seconds of the ``with`` body to ``timings[stage]`` (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def add(into: dict[str, float], more: Mapping[str, float], scale: float = 1.0) -> dict[str, float]:
    """``into += more * scale``, stage by stage (unknown stages of an older staging log are kept too)."""
    for stage, seconds in more.items():
        into[stage] = into.get(stage, 0.0) + float(seconds) * scale
    return into


def total(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in parts:
        add(out, p)
    return out


def rounded(timings: Mapping[str, float], elapsed: bool = True) -> dict[str, float]:
    """The work stages in their order (0 when absent), seconds to 3 decimals, plus ``elapsed`` (their sum)."""
    out = {stage: round(float(timings.get(stage, 0.0)), 3) for stage in WORK_STAGES}
    if elapsed:
        out["elapsed"] = round(sum(float(timings.get(stage, 0.0)) for stage in WORK_STAGES), 3)
    return out


class StageClock:
    """The driver's wall-clock seconds and peak RSS at the end of each stage (logged; in ``build_summary.json``).

    A stage run twice in one build (never, today) adds up; ``elapsed_seconds`` counts from the clock's start."""

    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.stages: dict[str, dict[str, float]] = {}

    def lap(self, name: str) -> float:
        """End stage ``name`` now; returns its seconds."""
        import resource

        now = time.perf_counter()
        seconds = now - self.last
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kB
        before = self.stages.get(name, {}).get("seconds", 0.0)
        self.stages[name] = {"seconds": round(before + seconds, 3), "driver_peak_rss_mb": round(rss, 1)}
        log.info("stage %s: %.1f s (driver peak RSS %s)", name, seconds, human_size(rss * 2**20))
        self.last = now
        return seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def as_dict(self, work: Mapping[str, float] | None = None) -> dict:
        """``stages`` (driver, wall clock), ``work`` (per-stage seconds summed over the workers' articles and
        shards, when given) and ``elapsed_seconds`` (wall clock of this run)."""
        out: dict = {"stages": self.stages}
        if work is not None:
            out["work"] = rounded(work, elapsed=False)
        out["elapsed_seconds"] = round(self.elapsed(), 3)
        return out


__all__ = ["ARTICLE_STAGES", "WORK_STAGES", "StageClock", "add", "rounded", "timed", "total"]

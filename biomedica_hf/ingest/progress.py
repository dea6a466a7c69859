"""What a running build shows: one bar over articles, and a line per stage.

* **Articles.** The workers (local processes or Ray tasks alike) append one byte per finished article to a tick
  file of their partition (:func:`tick`, ``_work/progress/<partition>``); the driver sums the files' sizes a few
  times a second. On a terminal (stderr is a TTY) that feeds one tqdm bar over the articles processed now, with
  rate and ETA; without a terminal (a log file, CI, ``nohup``) a plain line every ``every`` seconds instead
  (``stage: 1,200/6,000 articles (20%), 41.3/s, ETA 01:56``).
* **Stages.** A line when each stage ends (``dedup: done in 0.3 s``), and a last line for the article stage with
  its count and rate.
* ``--no-progress``: nothing at all.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from biomedica_hf.ingest.timings import StageClock

POLL_SECONDS = 0.25


def bars_on(enabled: bool, stream: IO[str] | None = None) -> bool:
    """Bars only for a person watching: progress asked for and the stream is a terminal."""
    stream = stream or sys.stderr
    return enabled and hasattr(stream, "isatty") and stream.isatty()


def tick(folder: Path, name: str) -> None:
    """One finished article of partition ``name`` (a byte appended: atomic, cheap, no shared state)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "ab") as fh:
        fh.write(b".")


def ticks(folder: Path) -> int:
    """Articles ticked so far (the sum of the tick files' sizes)."""
    n = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as it:
        for entry in it:
            with contextlib.suppress(FileNotFoundError):
                n += entry.stat().st_size
    return n


def _eta(seconds: float) -> str:
    return tqdm.format_interval(seconds) if seconds == seconds and seconds < 1e7 else "?"


class _LineClock(StageClock):
    """A :class:`StageClock` that also prints a line as each stage ends."""

    def __init__(self, progress: "BuildProgress") -> None:
        super().__init__()
        self._progress = progress

    def lap(self, name: str) -> float:
        seconds = super().lap(name)
        self._progress.line(f"{name}: done in {seconds:.1f} s")
        return seconds


class BuildProgress:
    """The build's progress output on ``stream`` (stderr): see the module's docstring."""

    def __init__(self, enabled: bool = True, every: float = 30.0, stream: IO[str] | None = None,
                 tty: bool | None = None) -> None:
        self.enabled = enabled
        self.every = max(0.05, float(every))
        self.stream = stream or sys.stderr
        self.tty = bars_on(True, self.stream) if tty is None else tty
        self._bar: tqdm | None = None

    @property
    def bars(self) -> bool:
        return self.enabled and self.tty

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def clock(self) -> StageClock:
        return _LineClock(self) if self.enabled else StageClock()

    @contextlib.contextmanager
    def articles(self, total: int, folder: Path, desc: str = "stage") -> Iterator[None]:
        """Show the articles ticked into ``folder`` (emptied first) while the block runs."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        if not self.enabled or total <= 0:
            try:
                yield
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        t0 = time.monotonic()
        stop = threading.Event()
        if self.tty:
            self._bar = tqdm(total=total, desc=desc, unit="article", file=self.stream, dynamic_ncols=True,
                             smoothing=0.1)

        def done() -> int:
            return min(total, ticks(folder))

        # a log's line every `every` seconds needs a poll at least that often (a 0.2 s stage and --progress-every
        # 0.05 printed nothing when the poll waited 0.25 s)
        wait = POLL_SECONDS if self._bar is not None else min(POLL_SECONDS, self.every)

        def poll() -> None:
            last_line = t0
            while not stop.wait(wait):
                n = done()
                if self._bar is not None:
                    self._bar.update(n - self._bar.n)
                elif time.monotonic() - last_line >= self.every:
                    last_line = time.monotonic()
                    self.line(self._status(desc, n, total, last_line - t0))

        thread = threading.Thread(target=poll, name="build-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            n = done()
            if self._bar is not None:
                self._bar.update(n - self._bar.n)
                self._bar.close()
                self._bar = None
            shutil.rmtree(folder, ignore_errors=True)
            elapsed = time.monotonic() - t0
            self.line(f"{desc}: {n:,} article(s) in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f}/s)")

    @staticmethod
    def _status(desc: str, n: int, total: int, elapsed: float) -> str:
        rate = n / elapsed if elapsed > 0 else 0.0
        eta = _eta((total - n) / rate) if rate > 0 else "?"
        return f"{desc}: {n:,}/{total:,} articles ({100 * n // max(total, 1)}%), {rate:.1f}/s, ETA {eta}"

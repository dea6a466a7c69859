"""What `biomedica build` shows while it runs (issue 27): one bar over articles (rate, ETA) on a terminal, a plain
line every N seconds without one, a line per stage, and nothing with --no-progress. Run as a user runs it: the
real CLI in a subprocess, on the bundled sample, its stderr a pseudo-terminal or a pipe."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

from support.paths import REPO

ENV = {**{k: v for k, v in os.environ.items() if k != "BIOMEDICA_DEBUG"}, "PYTHONPATH": str(REPO),
       "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}


def _build_cmd(out, *extra: str) -> list[str]:
    return [sys.executable, "-m", "biomedica_hf.cli", "build", "--sample", "--out", str(out), "--workers", "1", *extra]


def test_a_terminal_gets_one_bar_over_articles_with_rate_and_eta(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))   # a terminal of 120 columns
    p = subprocess.Popen(_build_cmd(tmp_path / "ds"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=slave, env=ENV, cwd=tmp_path)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:      # the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    assert p.wait(timeout=300) == 0
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    frames = re.split(r"[\r\n]", text)
    bars = [f for f in frames if re.search(r"stage:.*\d+/6 \[", f)]
    assert bars, text[-3000:]                                          # a bar over the 6 articles, not partitions
    assert any("6/6" in f for f in bars)
    assert any("article/s" in f or "s/article" in f for f in bars)
    assert any(re.search(r"<\d\d:\d\d", f) for f in bars)               # tqdm's ETA
    assert not any(re.search(r"stage:.*\d+/\d+ \[.*part", f) for f in frames)   # no per-partition bar any more
    for stage in ("stage: done in", "dedup: done in", "write: done in", "index: done in"):
        assert stage in text


def test_without_a_terminal_a_line_every_n_seconds(tmp_path):
    r = subprocess.run(_build_cmd(tmp_path / "ds", "--progress-every", "0.05"), capture_output=True, text=True,
                       env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "\r" not in r.stderr
    assert "|" not in r.stderr                 # no bar drawn into a log
    lines = r.stderr.splitlines()
    status = [ln for ln in lines if re.fullmatch(r"stage: \d+/6 articles \(\d+%\), [\d.]+/s, ETA (\d\d:\d\d|\?)", ln)]
    assert status, r.stderr
    assert "stage: 6 of 6 listed article(s) to process, in 1 partition(s)" in lines
    assert any(re.fullmatch(r"stage: 6 article\(s\) in [\d.]+ s \([\d.]+/s\)", ln) for ln in lines)
    # each stage's lap once (the caption pass, run where it is started with one worker, too)
    laps = [ln.split(":")[0] for ln in lines if re.fullmatch(r"\w+: done in [\d.]+ s", ln)]
    assert len(laps) == len(set(laps)) and "caption_duplicates" in laps, laps


def test_no_progress_is_quiet(tmp_path):
    r = subprocess.run(_build_cmd(tmp_path / "ds", "--no-progress", "--progress-every", "0.05"), capture_output=True,
                       text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not [ln for ln in r.stderr.splitlines() if ln.startswith(("stage:", "list:", "write:", "dedup:"))], r.stderr
    assert not (tmp_path / "ds" / "_work" / "progress").exists()       # the tick files are gone once staged

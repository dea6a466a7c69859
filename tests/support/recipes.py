"""Training recipes under ``accelerate launch`` (2 CPU ranks): the launcher, its environment, the run's log and
the DDP teardown ``ddp_probe.py`` records."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from support.paths import REPO

BIN = Path(sys.executable).parent
ACCELERATE = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
RECIPE_ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
              "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
DDP_PROBE = str(Path(__file__).resolve().with_name("ddp_probe.py"))


def free_port() -> int:
    """A free TCP port for the rendezvous: the default 29500 collides with other accelerate runs on the machine."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants. Not a process-group kill: torch elastic starts every rank in
    a session of its own, so killing the launcher's group leaves the ranks running (and holding our pipes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def launch_recipe(args: list[str], timeout: int = 240, probe: Path | None = None):
    """``accelerate launch`` 2 CPU ranks on ``args`` (script + its arguments); asserts a zero exit. On a timeout
    the launcher and both ranks are killed and the test fails with their output (it never waits forever).
    ``probe``: run the script under ``ddp_probe.py``, which records its DDP teardown order into that folder."""
    import subprocess

    if probe is not None:
        args = [DDP_PROBE, str(probe), *args]
    cmd = [*ACCELERATE, "--main_process_port", str(free_port()), *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=RECIPE_ENV, cwd=REPO)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(p.pid)
        out, err = p.communicate(timeout=60)
        pytest.fail(f"{' '.join(args[:1])} timed out after {timeout}s:\n{out[-2000:]}\n{err[-3000:]}")
    assert p.returncode == 0, out[-3000:] + err[-5000:]
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def recipe_log(run: Path) -> list[dict]:
    """A recipe run's ``log.jsonl``, one dict per logged step (``event`` records left out)."""
    import json

    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "event" not in r]


def ddp_teardown(out: Path) -> list[list[bool]]:
    """What ``ddp_probe.py`` recorded for ranks 0 and 1 (see ``launch_recipe(..., probe=out)``)."""
    import json

    return [json.loads((out / f"ddp_rank{r}.json").read_text()) for r in (0, 1)]

"""One output folder, one run: what a recipe does with ``output_dir`` before it trains.

``train.resume`` (default ``auto`` in both recipes):

* the folder holds no run (no ``config.yaml``, ``log.jsonl`` or ``checkpoints/``): start afresh;
* it holds a run of the *same* config (everything but ``output_dir``, ``train.resume`` and
  ``train.overwrite``): ``auto`` resumes its latest complete checkpoint (a finished run just exports again),
  a checkpoint path resumes that one;
* it holds a run of *another* config, or ``train.resume`` is null: refuse with one line that names
  ``--overwrite`` (``train.overwrite: true``), which clears the folder first.

On resume, ``log.jsonl`` keeps only the records up to the checkpoint's step (a crashed run's later lines are
written again by the resumed run), so a log is always one run's.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from biomedica_hf.train import checkpoint
from biomedica_hf.train.config import ConfigError

CONFIG_FILE = "config.yaml"
LOG_FILE = "log.jsonl"
#: config keys that may differ between the runs of one output folder
IGNORED = (("output_dir",), ("train", "resume"), ("train", "overwrite"))


class RunConflict(ConfigError):
    """``output_dir`` holds another run (or ``train.resume`` is null over a run): exit 2, nothing touched."""


def signature(cfg: dict) -> dict:
    """The config without the keys that may change between the runs of one folder (:data:`IGNORED`)."""
    sig = copy.deepcopy(cfg)
    for path in IGNORED:
        node = sig
        for k in path[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return json.loads(json.dumps(sig, sort_keys=True, default=str))


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def holds_run(out: Path) -> bool:
    return any((out / name).exists() for name in (CONFIG_FILE, LOG_FILE, checkpoint.CHECKPOINTS))


def check_output_dir(out: Path, cfg: dict, overwrite: bool = False) -> None:
    """Raise :class:`RunConflict` when training into ``out`` would mix two runs (read-only; every rank calls it)."""
    if overwrite or not holds_run(out):
        return
    resume = cfg["train"].get("resume")
    last = checkpoint.latest_checkpoint(out)
    what = f"a run (checkpoint {last.name})" if last is not None else "a run"
    fix = "use another output_dir, or --overwrite (train.overwrite=true) to clear the folder first"
    saved_file = out / CONFIG_FILE
    saved = yaml.safe_load(saved_file.read_text()) if saved_file.is_file() else None
    if not resume:
        raise RunConflict(f"{out} already holds {what} and train.resume is null",
                          f"resume it with train.resume=auto, {fix}")
    if not isinstance(saved, dict):
        raise RunConflict(f"{out} holds {what} with no {CONFIG_FILE} (not written by this version, or broken)", fix)
    changes = _diff(signature(saved), signature(cfg))
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise RunConflict(f"{out} holds {what} of another config ({shown})", fix)


def start_run(out: Path, cfg: dict, overwrite: bool = False) -> None:
    """Rank 0, after :func:`check_output_dir` passed on every rank: clear ``out`` (``overwrite``), create it and
    write the run's ``config.yaml``."""
    if overwrite and out.is_dir():
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
    tmp.replace(out / CONFIG_FILE)


def open_run(accelerator, out: Path, cfg: dict | Any, overwrite: bool = False) -> None:
    """The start of every recipe, on every rank: the one-line warning of a launch that got one process where it
    asked for more (rank 0), :func:`check_output_dir` on every rank before anything is written, then
    :func:`start_run` on rank 0, the ranks waiting for each other between the steps. ``cfg``: the recipe's typed
    config (or its dict), saved as ``config.yaml``."""
    import dataclasses
    import sys

    from biomedica_hf.train.progress import launch_warning

    if accelerator.is_main_process and (warning := launch_warning(accelerator.num_processes)):
        print(warning, file=sys.stderr, flush=True)
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    check_output_dir(out, cfg, overwrite)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        start_run(out, cfg, overwrite)
    accelerator.wait_for_everyone()


def trim_log(out: Path, step: int) -> None:
    """Keep the ``log.jsonl`` records up to ``step`` (rank 0, when a run resumes at ``step``)."""
    log = out / LOG_FILE
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue           # a line cut by a crash
        if int(rec.get("step", 0)) <= step:
            kept.append(line)
    tmp = log.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(log)

"""The checkpoint folder both recipes write: ``output_dir/checkpoints/step_N``.

It holds ``accelerator.save_state`` (model, optimizer, scheduler, RNG), ``trainer_state.json`` (step, ...,
written by rank 0) and one ``data_state_rank{r}.json`` per rank (the rank's stream position: the CLIP
recipe's ``IterableDataset.state_dict()``, SmolVLM's ``{"seen": N}``). SmolVLM checkpoints written before
issue 18 name that file ``data_rank{r}.json``: it is still read.

``train.resume``: ``null`` (start afresh), ``auto`` (the latest complete checkpoint of ``output_dir``, if
any) or the path of a checkpoint folder.
"""
from __future__ import annotations

import json
from pathlib import Path

from biomedica_hf.train.config import ConfigError

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS / f"step_{step}"


def data_state_file(rank: int) -> str:
    return f"data_state_rank{rank}.json"


def _old_data_state_file(rank: int) -> str:
    return f"data_rank{rank}.json"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step whose ``trainer_state.json`` was written (a complete one), or None."""
    found = [c for c in (Path(output_dir) / CHECKPOINTS).glob("step_*")
             if c.name.removeprefix("step_").isdigit() and (c / TRAINER_STATE).is_file()]
    return max(found, key=lambda c: int(c.name.removeprefix("step_")), default=None)


def resume_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint ``train.resume`` names (see the module docstring), or None to start afresh."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    ck = Path(resume)
    if not (ck / TRAINER_STATE).is_file():
        raise ConfigError(f"train.resume: {resume} is not a checkpoint folder (no {TRAINER_STATE})",
                          "give output_dir/checkpoints/step_N, `auto` (the latest of output_dir) or null")
    return ck


def read_trainer_state(ck: Path) -> dict:
    return json.loads((Path(ck) / TRAINER_STATE).read_text())


def write_trainer_state(ck: Path, state: dict) -> None:
    (Path(ck) / TRAINER_STATE).write_text(json.dumps(state))


def write_data_state(ck: Path, rank: int, state: dict) -> None:
    Path(ck).mkdir(parents=True, exist_ok=True)
    (Path(ck) / data_state_file(rank)).write_text(json.dumps(state))


def read_data_state(ck: Path, rank: int) -> dict | None:
    """The rank's stream position saved in ``ck`` (under the new or the old file name), or None."""
    for name in (data_state_file(rank), _old_data_state_file(rank)):
        f = Path(ck) / name
        if f.is_file():
            return json.loads(f.read_text())
    return None

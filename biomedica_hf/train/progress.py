"""What a training run shows while it runs: the start banner, the launch check, the progress bar.

* :func:`banner` - one line at start (rank 0): world size, device, samples per rank, steps per epoch;
* :func:`launch_warning` - a launch that asked for N processes but runs as one (``accelerate launch --cpu
  --num_processes 2`` starts a single process: accelerate's simple launcher ignores ``--num_processes``) gets
  one line saying so, and naming the command that works;
* :class:`Progress` - rank 0 only: a tqdm bar (step, epoch, loss, samples/s, ETA) on a terminal, else one plain
  line every ``every`` steps (so that logs of batch jobs show the run's progress too).
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import TextIO


def asked_processes(parent_cmdline: list[str] | None = None) -> int | None:
    """How many processes the launcher was asked for: ``--num_processes N`` / ``--num-processes N`` /
    ``--nproc_per_node N`` on the parent's command line (``accelerate launch``, ``torchrun``), else None."""
    if parent_cmdline is None:
        try:
            import psutil

            parent_cmdline = psutil.Process(os.getppid()).cmdline()
        except Exception:  # noqa: BLE001 - no psutil, no permission: nothing to compare
            parent_cmdline = []
    flags = ("--num_processes", "--num-processes", "--nproc_per_node", "--nproc-per-node")
    for i, arg in enumerate(parent_cmdline):
        for flag in flags:
            value = None
            if arg == flag and i + 1 < len(parent_cmdline):
                value = parent_cmdline[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            if value is not None and value.isdigit():
                return int(value)
    return None


def launch_warning(num_processes: int, parent_cmdline: list[str] | None = None) -> str | None:
    """One line when the launch asked for more processes than the run has, else None."""
    asked = asked_processes(parent_cmdline)
    if asked is None or asked <= num_processes:
        return None
    return (f"warning: the launch asked for {asked} processes but this run has {num_processes} (accelerate launch "
            f"--cpu ignores --num_processes): use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            f"--num_processes {asked} ...` for {asked} CPU processes")


def micro_batches(n_samples: int, batch_size: int, num_workers: int = 0) -> int:
    """Micro-batches a rank of ``n_samples`` makes in an epoch: every DataLoader worker ends its share with its
    own (partial) batch, so ``num_workers`` equal shares make up to ``num_workers - 1`` more than one reader."""
    from biomedica_hf.dataset.loader import balanced_sizes

    return sum(math.ceil(s / batch_size) for s in balanced_sizes(n_samples, max(1, num_workers)))


def banner(recipe: str, world: int, device: str, rank_samples: list[int], steps_per_epoch: int,
           batch_size: int, accum: int, max_steps: int, start_step: int = 0) -> str:
    shown = rank_samples if len(rank_samples) <= 8 else [*rank_samples[:4], "...", *rank_samples[-2:]]
    return (f"{recipe}: world size {world} ({device}), samples per rank {shown} (total {sum(rank_samples)}), "
            f"{steps_per_epoch} steps per epoch (batch {batch_size} x {world} ranks x accum {accum}), "
            f"max_steps {max_steps}" + (f", resuming at step {start_step}" if start_step else ""))


class Progress:
    """Rank 0's progress: a tqdm bar on a TTY, else a line every ``every`` steps (to ``stream``)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, every: int | None = None,
                 stream: TextIO | None = None, desc: str = "train") -> None:
        self.total, self.step, self.enabled = total, initial, enabled
        self.stream = stream or sys.stderr
        self.every = every or max(1, math.ceil(total / 100))
        self.t0, self.start = time.perf_counter(), initial
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", desc=desc, file=self.stream,
                            dynamic_ncols=True)

    def update(self, step: int, epoch: int, loss: float, samples_per_s: float) -> None:
        if not self.enabled:
            return
        done, self.step = step - self.step, step
        if self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", refresh=False)
            return
        if step % self.every and step != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        print(f"step {step}/{self.total} epoch {epoch} loss {loss:.4f} samples/s {samples_per_s:.1f} "
              f"ETA {_hms(eta)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

"""How a training recipe ends a distributed (``accelerate``) run without hanging.

A DDP model's C++ ``Reducer`` holds a reference to the process group. If that reference is the last one,
the ``ProcessGroupGloo`` destructor runs from the Reducer's destructor with the GIL held and joins gloo's
worker threads, while a worker may still be releasing the work object of a recent collective whose tensors
belong to Python objects, which needs the GIL: a deadlock (seen here about once in a hundred 2-process CPU
runs, always at exit, after all the work was done). When the process group's own Python object drops the
last reference instead, PyTorch releases the GIL before destroying it and the workers finish.

So a recipe runs its training in a function whose frame owns every DDP model, optimizer and stream (the
accelerator itself keeps only the unwrapped modules), and after it returns calls :func:`end_run`: the DDP
wrappers are gone while the process group is still registered, and only then is the group destroyed.
``tests/support/ddp_probe.py`` checks that order on both recipes.
"""
from __future__ import annotations

import gc


def end_run(accelerator) -> None:
    """Drop the accelerator's references to the prepared objects, collect, then destroy the process group.

    Call it after the last collective, once the function that held the prepared objects has returned (its
    locals must be gone)."""
    accelerator.free_memory()
    gc.collect()          # free_memory collects before it drops its lists; a DDP wrapper in a cycle waits for gc
    accelerator.end_training()

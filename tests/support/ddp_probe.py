"""Run a recipe entry point under a probe: ``ddp_probe.py OUT_DIR SCRIPT [ARGS...]``.

Records, per rank in ``OUT_DIR/ddp_rank{RANK}.json``, for every ``DistributedDataParallel`` wrapper the
script built, whether the process group was still initialised when the wrapper was collected. A recipe must
free its DDP model before it destroys the process group (see ``biomedica_hf.train.distributed``): ``[true]``.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import weakref
from pathlib import Path

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

collected: list[bool] = []
_init = DistributedDataParallel.__init__


def _tracked_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    weakref.finalize(self, lambda: collected.append(dist.is_initialized()))


DistributedDataParallel.__init__ = _tracked_init
out_dir, script = sys.argv[1], sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    Path(out_dir, f"ddp_rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(collected))

r"""BMC-CLIP continual pre-training: this script is ``python -m biomedica_hf.train.clip`` (installed with the
package; ``accelerate launch -m biomedica_hf.train.clip ...`` works without this checkout).

    accelerate launch finetune/clip/train.py --config finetune/clip/configs/bmc_clip_vitl14_8gpu.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 finetune/clip/train.py \
        --config cpu_smoke --set data.path=DATASET_DIR
    python finetune/clip/train.py --config ... --set train.max_steps=10 --set output_dir=runs/x

``--config`` takes a YAML path or a bundled config name (``--list-configs``); ``finetune/clip/configs`` is
a link to the bundled ones, ``biomedica_hf/train/configs/clip``.
"""
from __future__ import annotations

import sys

from biomedica_hf.train.clip import main

if __name__ == "__main__":
    sys.exit(main())

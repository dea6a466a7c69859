r"""SmolVLM fine-tuning on BIOMEDICA: this script is ``python -m biomedica_hf.train.smolvlm`` (installed with
the package; ``accelerate launch -m biomedica_hf.train.smolvlm ...`` works without this checkout).

    accelerate launch finetune/smolvlm/train.py --config finetune/smolvlm/configs/smolvlm_256m_lora.yaml \
        --set data.path=DATASET_DIR
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 finetune/smolvlm/train.py \
        --config cpu_smoke --set data.path=DATASET_DIR --threads 1
    python finetune/smolvlm/train.py --config ... --set train.max_steps=10 --set output_dir=runs/x

``--config`` takes a YAML path or a bundled config name (``--list-configs``); ``finetune/smolvlm/configs``
is a link to the bundled ones, ``biomedica_hf/train/configs/smolvlm``.
"""
from __future__ import annotations

import sys

from biomedica_hf.train.smolvlm import main

if __name__ == "__main__":
    sys.exit(main())

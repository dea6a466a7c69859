"""BMC-CLIP continual pre-training entry point.

    accelerate launch finetune/clip/train.py --config finetune/clip/configs/bmc_clip_vitl14_8gpu.yaml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 finetune/clip/train.py \
        --config finetune/clip/configs/cpu_smoke.yaml --set data.path=DATASET_DIR
    python finetune/clip/train.py --config ... --set train.max_steps=10 --set output_dir=runs/x

The library lives in ``biomedica_hf.clip`` (adapter, data, loss, trainer, export, card).
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from biomedica_hf.train.config import parse_recipe_args

    _, args = parse_recipe_args(__doc__, "finetune/clip/configs/*.yaml", argv)
    from biomedica_hf.train.clip import load_config, train

    cfg = load_config(args.config, args.set)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "losses"} | {"last_loss": (result["losses"] or [None])[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

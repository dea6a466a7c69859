"""SmolVLM fine-tuning on BIOMEDICA (transformers + PEFT LoRA/QLoRA, accelerate).

    accelerate launch finetune/smolvlm/train.py --config finetune/smolvlm/configs/smolvlm_256m_lora.yaml \
        --set data.path=DATASET_DIR
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 finetune/smolvlm/train.py \
        --config finetune/smolvlm/configs/cpu_smoke.yaml --set data.path=DATASET_DIR --threads 1
    python finetune/smolvlm/train.py --config ... --set train.max_steps=10 --set output_dir=runs/x

The library lives in ``biomedica_hf.vlm`` (data/tasks, trainer, export, card, inference).
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from biomedica_hf.train.config import parse_recipe_args

    parser, args = parse_recipe_args(__doc__, "finetune/smolvlm/configs/*.yaml", argv)
    from biomedica_hf.train.smolvlm import load_config, train

    cfg = load_config(args.config, args.set)
    if not cfg["data"].get("path"):
        parser.error("data.path is not set (a `biomedica build` folder or Hub dataset id): --set data.path=DIR")
    try:
        result = train(cfg)
    except RuntimeError as exc:
        if "QLoRA" in str(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}
                         | {"first_loss": (result["losses"] or [None])[0], "last_loss": (result["losses"] or [None])[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

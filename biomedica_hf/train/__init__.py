"""Training recipes, installed with the package:

    accelerate launch -m biomedica_hf.train.clip --config NAME_OR_PATH [--set KEY=VALUE ...]
    accelerate launch -m biomedica_hf.train.smolvlm --config NAME_OR_PATH [--set KEY=VALUE ...]

    clip.py         the CLIP continual pre-training loop + its ``main``
    smolvlm.py      SmolVLM LoRA / QLoRA fine-tuning + its ``main``
    config.py       typed recipe configs (one vocabulary), bundled config names (``configs/<recipe>/*.yaml``)
    cli.py          the command line both recipes share (``--config``, ``--set``, ``--list-configs``)
    checkpoint.py   the checkpoint folder: ``train.resume``, trainer and data state files
    distributed.py  ending a distributed run without a hang
"""

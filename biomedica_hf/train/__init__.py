"""Training recipes, run with ``accelerate launch -m biomedica_hf.train.clip`` or ``-m biomedica_hf.train.smolvlm``."""

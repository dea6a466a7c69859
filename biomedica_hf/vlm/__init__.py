"""SmolVLM fine-tuning on BIOMEDICA: tasks + encoding (``data``), training (``trainer``), inference
(``infer``), a click ``caption`` command (``cli.COMMANDS``), model card (``card``), tiny offline model (``tiny``)."""

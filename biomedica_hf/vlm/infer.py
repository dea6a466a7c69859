"""Caption a figure with a fine-tuned SmolVLM: a merged model folder or a PEFT adapter folder."""
from __future__ import annotations

import os
from pathlib import Path

from .data import PROMPTS, decode_image, messages, set_longest_edge


def load_for_inference(model_dir: str | os.PathLike, dtype=None):
    """(model, processor) from a merged model folder or an adapter folder (base from ``adapter_config.json``)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = os.fspath(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    if (Path(model_dir) / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base_id = PeftConfig.from_pretrained(model_dir).base_model_name_or_path
        base = AutoModelForImageTextToText.from_pretrained(base_id, dtype=dtype or torch.float32)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype or torch.float32)
    return model.eval(), processor


def generate_caption(model, processor, image, prompt: str = PROMPTS["caption"], max_new_tokens: int = 64,
                     longest_edge: int | None = None) -> str:
    import torch
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    image = decode_image(image)
    set_longest_edge(processor, longest_edge)
    text = processor.apply_chat_template(messages(prompt), add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[image]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()

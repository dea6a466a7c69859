"""Caption a figure with a fine-tuned SmolVLM: a merged model folder or a PEFT adapter folder."""
from __future__ import annotations

import os
from pathlib import Path

from biomedica_hf.vlm.data import PROMPTS, decode_image, messages, set_longest_edge


def load_for_inference(model_dir: str | os.PathLike, dtype=None):
    """(model, processor) from a merged model folder or an adapter folder (base from ``adapter_config.json``)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = os.fspath(model_dir)
    if (Path(model_dir) / "adapter_config.json").exists():
        from peft import PeftConfig, PeftModel

        base_id = PeftConfig.from_pretrained(model_dir).base_model_name_or_path
        check_model_kind(base_id)
        processor = AutoProcessor.from_pretrained(model_dir)
        try:
            base = AutoModelForImageTextToText.from_pretrained(base_id, dtype=dtype or torch.float32)
        except OSError as exc:
            _raise_missing_base(base_id, model_dir, exc)
            raise
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        check_model_kind(model_dir)
        processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype or torch.float32)
    return model.eval(), processor


def check_model_kind(model_dir: str) -> None:
    """Raise :class:`~biomedica_hf.errors.WrongModelError` when a local folder's ``config.json`` is not of
    an image-text-to-text model (a CLIP or DINOv2 folder given to ``caption``); Hub ids pass unchecked."""
    import json

    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from biomedica_hf.errors import WrongModelError

    config = Path(model_dir) / "config.json"
    if not config.is_file():
        if Path(model_dir).is_dir():
            raise WrongModelError(f"{model_dir} holds neither config.json nor adapter_config.json",
                                  "pass --model a merged model folder or a LoRA adapter folder written by "
                                  "finetune/smolvlm/train.py")
        return
    cfg = json.loads(config.read_text())
    kind = cfg.get("model_type")
    if kind not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        arch = ", ".join(cfg.get("architectures") or []) or "?"
        raise WrongModelError(f"{model_dir} is a {kind!r} model ({arch}), not an image-text-to-text model "
                              "(SmolVLM / Idefics3)",
                              "pass --model a folder written by finetune/smolvlm/train.py (merged/ or the "
                              "adapter folder)")


def _raise_missing_base(base_id: str, model_dir: str, exc: OSError) -> None:
    from biomedica_hf.errors import MissingWeightsError, hub_offline, is_local_path, unreachable

    if is_local_path(base_id) or not (hub_offline() or unreachable(exc)):
        return
    raise MissingWeightsError(f"the base model {base_id!r} of adapter {model_dir} is not in the local cache "
                              "and the Hugging Face Hub cannot be reached",
                              "pass --model the merged model folder instead, or run once with network") from exc


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".bmp", ".webp")


def find_images(specs: "list[str] | tuple[str, ...]") -> list[Path]:
    """Image files named by ``specs``: files as given, folders searched recursively, globs expanded
    (``figs/*.png``, ``figs/**/*.jpg``); sorted and deduplicated. Raises ``FileNotFoundError`` naming
    a spec that matches nothing."""
    import glob

    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)
                             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not matches:
            raise FileNotFoundError(f"{spec}: no image file there (looked for {', '.join(IMAGE_SUFFIXES)})")
        found.update(dict.fromkeys(matches))
    return list(found)


def caption_images(model, processor, paths: "list[Path]", prompt: str = PROMPTS["caption"],
                   max_new_tokens: int = 64, longest_edge: int | None = None, progress: bool = True):
    """Yield ``{"image": path, "caption": text}`` per image, in order; an image that cannot be read
    yields ``{"image": path, "caption": None, "error": reason}`` instead of stopping the run."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    for path in tqdm(paths, unit="img", desc="caption", disable=not progress):
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            yield {"image": str(path), "caption": None, "error": f"{type(exc).__name__}: {exc}"}
            continue
        yield {"image": str(path),
               "caption": generate_caption(model, processor, image, prompt, max_new_tokens, longest_edge)}

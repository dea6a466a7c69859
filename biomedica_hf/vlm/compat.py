"""Saved SmolVLM folders that older transformers releases load too (pyproject allows ``transformers>=4.46``).

transformers 5 saves a processor as ``processor_config.json`` holding the image processor's settings, a
``chat_template.jinja`` and a tokenizer of class ``TokenizersBackend``; 4.x reads the image processor from
``preprocessor_config.json``, the template from ``chat_template.json``, has no ``TokenizersBackend`` (``Tokenizer
class TokenizersBackend does not exist``) and passes a nested ``image_processor`` entry twice to the processor.
:func:`make_legacy_compatible` rewrites a saved folder into the layout both read (checked: 4.46.3 and 5.25.0 load
it, with the same token ids and logits): ``preprocessor_config.json`` beside a flat ``processor_config.json``,
``chat_template.json`` beside the ``.jinja``, ``tokenizer_class: PreTrainedTokenizerFast`` (the class every
release maps a ``tokenizer.json`` to) with its special tokens also under ``additional_special_tokens`` and
``model_input_names`` without ``token_type_ids`` (which Idefics3 does not take).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

NEW_ONLY_TOKENIZER_CLASSES = ("TokenizersBackend",)
SUB_PROCESSORS = ("image_processor", "video_processor", "feature_extractor")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def make_legacy_compatible(folder: str | os.PathLike) -> list[str]:
    """Rewrite a ``save_pretrained`` processor/tokenizer folder for transformers 4.x and 5.x; returns the files
    written or changed (none when the folder already has the old layout)."""
    d = Path(folder)
    changed: list[str] = []
    processor = _read(d / "processor_config.json")
    if processor is not None:
        nested = {k: processor.pop(k) for k in SUB_PROCESSORS if isinstance(processor.get(k), dict)}
        if "image_processor" in nested and not (d / "preprocessor_config.json").is_file():
            image = dict(nested["image_processor"])
            if processor.get("processor_class"):
                image.setdefault("processor_class", processor["processor_class"])
            _write(d / "preprocessor_config.json", image)
            changed.append("preprocessor_config.json")
        if nested:
            _write(d / "processor_config.json", processor)
            changed.append("processor_config.json")
    jinja = d / "chat_template.jinja"
    if jinja.is_file() and not (d / "chat_template.json").is_file():
        _write(d / "chat_template.json", {"chat_template": jinja.read_text()})
        changed.append("chat_template.json")
    tok = _read(d / "tokenizer_config.json")
    if tok is not None:
        before = json.dumps(tok, sort_keys=True)
        if tok.get("tokenizer_class") in NEW_ONLY_TOKENIZER_CLASSES and (d / "tokenizer.json").is_file():
            tok["tokenizer_class"] = "PreTrainedTokenizerFast"
        if isinstance(tok.get("extra_special_tokens"), list):
            extra = [t for t in tok["extra_special_tokens"] if t not in (tok.get("additional_special_tokens") or [])]
            tok["additional_special_tokens"] = [*(tok.get("additional_special_tokens") or []), *extra]
        tok.setdefault("model_input_names", ["input_ids", "attention_mask"])
        if json.dumps(tok, sort_keys=True) != before:
            _write(d / "tokenizer_config.json", tok)
            changed.append("tokenizer_config.json")
    return changed

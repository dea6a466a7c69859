"""Export a trained :class:`~biomedica_hf.clip.model.ClipModel`: open_clip hf-hub layout, transformers folder, LoRA.

* ``open_clip`` - ``open_clip_config.json`` + ``open_clip_model.safetensors`` (loadable with
  ``open_clip.create_model_from_pretrained("local-dir:DIR")`` and pushable as an ``hf-hub:`` repo).
* ``transformers`` - ``CLIPModel`` + ``CLIPProcessor`` (``save_pretrained``). An open_clip model is
  converted when its architecture maps (:func:`convert_open_clip_to_hf`): a ViT image tower with class
  token pooling and the standard causal text tower with argmax (EOT) pooling.
* LoRA - merged into the weights (default) or saved as a PEFT adapter folder (``lora_adapter/``,
  :func:`save_lora_adapter`): the adapter, ``base_model_name_or_path``, every trained parameter outside the
  adapted layers (the temperature ``logit_scale``, any unfrozen projection) in
  ``trained_parameters.safetensors``, and a README saying how to load it (:func:`load_lora_adapter`).
* :func:`wise_ft` - WiSE-FT weight-space ensembling with the base model.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def save_open_clip_folder(model: torch.nn.Module, model_cfg: dict, out_dir: str | os.PathLike,
                          preprocess_cfg: dict | None = None) -> Path:
    """Write ``model`` in open_clip's hf-hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out


# ---------------------------------------------------------------------- LoRA adapter
#: the adapter folder's side file: trained parameters outside the LoRA layers (PEFT saves only the adapters,
#: and ``modules_to_save`` takes modules, not a bare parameter such as CLIP's ``logit_scale``)
TRAINED_PARAMETERS = "trained_parameters.safetensors"

ADAPTER_README = """---
library_name: peft
base_model: {base}
tags: [biomedica, clip, lora]
---
# LoRA adapter: {base}

A PEFT LoRA adapter of the {kind} CLIP model `{base}`{pretrained}, trained by the biomedica-hf CLIP recipe
(`python -m biomedica_hf.train.clip`) on `{data}` (subset `{subset}`) for {steps} steps.

* `adapter_config.json`, `adapter_model.safetensors`: the LoRA weights (r={r}, alpha={alpha}) on {targets};
* `{side}`: the trained parameters outside the adapted layers ({extra}). PEFT does not load this file:
  apply it as below, or the model keeps the base model's values (e.g. its temperature) and its logits differ.

## Load

```python
from peft import PeftModel
from safetensors.torch import load_file

base = ...   # the base model: {load_base}
model = PeftModel.from_pretrained(base, "ADAPTER_DIR")
missing, unexpected = model.get_base_model().load_state_dict(load_file("ADAPTER_DIR/{side}"), strict=False)
assert not unexpected
```

or `biomedica_hf.clip.export.load_lora_adapter(base, "ADAPTER_DIR")`, which does the same. The merged model
(`export/open_clip`, `export/transformers`) gives the same logits without PEFT.
"""


def save_lora_adapter(clip, out_dir: str | os.PathLike, base: str | None = None,
                      info: dict[str, Any] | None = None) -> Path:
    """Save ``clip``'s PEFT adapter with ``base_model_name_or_path``, its trained non-LoRA parameters
    (:data:`TRAINED_PARAMETERS`) and a README (base, data, how to load). ``info``: ``kind``, ``pretrained``,
    ``data``, ``subset``, ``steps`` for the README."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    info = dict(info or {})
    peft_model = clip.model
    config = peft_model.peft_config["default"]
    base = base or config.base_model_name_or_path or getattr(clip, "name", None) or "unknown"
    config.base_model_name_or_path = base
    peft_model.save_pretrained(out)
    extra = {n: p.detach().contiguous().cpu() for n, p in peft_model.get_base_model().named_parameters()
             if p.requires_grad and "lora_" not in n}
    save_file(extra, str(out / TRAINED_PARAMETERS))
    kind = info.get("kind", getattr(clip, "kind", "open_clip"))
    load_base = (f'open_clip.create_model_and_transforms("{base}"'
                 + (f', pretrained="{info["pretrained"]}")[0]' if info.get("pretrained") else ")[0]")
                 if kind == "open_clip" else f'transformers.CLIPModel.from_pretrained("{base}")')
    (out / "README.md").write_text(ADAPTER_README.format(
        base=base, kind=kind, pretrained=f" (weights `{info['pretrained']}`)" if info.get("pretrained") else "",
        data=info.get("data", "a BIOMEDICA dataset"), subset=info.get("subset", "all"), steps=info.get("steps", "?"),
        r=config.r, alpha=config.lora_alpha, targets=", ".join(f"`{t}`" for t in sorted(config.target_modules or [])),
        side=TRAINED_PARAMETERS, extra=", ".join(f"`{n}`" for n in extra) or "none", load_base=load_base))
    return out


def load_lora_adapter(base: torch.nn.Module, adapter_dir: str | os.PathLike):
    """``PeftModel.from_pretrained(base, adapter_dir)`` with the adapter's :data:`TRAINED_PARAMETERS` applied."""
    from peft import PeftModel
    from safetensors.torch import load_file

    model = PeftModel.from_pretrained(base, str(adapter_dir))
    side = Path(adapter_dir) / TRAINED_PARAMETERS
    if side.is_file():
        _, unexpected = model.get_base_model().load_state_dict(load_file(str(side)), strict=False)
        if unexpected:
            raise ValueError(f"{side}: parameters {unexpected[:5]} are not in the base model: another base?")
    return model


# ---------------------------------------------------------------------- WiSE-FT
@torch.no_grad()
def wise_ft(model: torch.nn.Module, base_state: dict[str, torch.Tensor], alpha: float) -> torch.nn.Module:
    """In place: ``theta = (1 - alpha) * theta_base + alpha * theta_finetuned`` for floating-point tensors.

    ``alpha=1`` keeps the fine-tuned weights, ``alpha=0`` returns the base model (Wortsman et al., 2022).
    Keys missing from ``base_state`` are left fine-tuned.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    for key, value in model.state_dict().items():
        base = base_state.get(key)
        if base is not None and value.is_floating_point() and base.shape == value.shape:
            value.copy_((1 - alpha) * base.to(value.device, value.dtype) + alpha * value)
    return model


# ---------------------------------------------------------------------- open_clip -> transformers
def _check_mappable(model: torch.nn.Module) -> None:
    import open_clip
    from open_clip.transformer import VisionTransformer

    problems = []
    if type(model) is not open_clip.model.CLIP:
        problems.append(f"{type(model).__name__} is not open_clip.model.CLIP (custom / HF text tower)")
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        problems.append(f"image tower {type(visual).__name__} is not open_clip's VisionTransformer")
    else:
        if getattr(visual, "attn_pool", None) is not None:
            problems.append("attentional pooler")
        if getattr(visual, "pool_type", "tok") != "tok":
            problems.append(f"image pool_type {visual.pool_type!r} (only 'tok')")
        if getattr(visual, "final_ln_after_pool", False):
            problems.append("final_ln_after_pool")
        if isinstance(getattr(visual, "ln_pre", None), torch.nn.Identity):
            problems.append("no ln_pre")
        if getattr(visual.conv1, "bias", None) is not None:
            problems.append("patch embedding bias")
        if not isinstance(getattr(visual, "proj", None), torch.nn.Parameter):
            problems.append("image projection is not a plain matrix")
        for blk in visual.transformer.resblocks:
            if not isinstance(blk.ls_1, torch.nn.Identity) or not isinstance(getattr(blk, "ln_attn", torch.nn.Identity()),
                                                                                 torch.nn.Identity):
                problems.append("layer scale / extra norms in vision blocks")
                break
    if getattr(model, "text_pool_type", "argmax") != "argmax":
        problems.append(f"text pool_type {model.text_pool_type!r} (only 'argmax')")
    if not isinstance(getattr(model, "text_projection", None), torch.nn.Parameter):
        problems.append("text projection is not a plain matrix")
    if problems:
        raise ValueError("open_clip model does not map onto transformers CLIPModel: " + "; ".join(problems))


def _act_name(block: torch.nn.Module) -> str:
    from open_clip.transformer import QuickGELU

    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, torch.nn.GELU) and act.approximate == "none":
        return "gelu"
    raise ValueError(f"MLP activation {act!r} has no transformers CLIP equivalent")


def _tower_cfg(transformer: torch.nn.Module, width: int) -> dict[str, Any]:
    blk = transformer.resblocks[0]
    return {"hidden_size": width, "intermediate_size": blk.mlp.c_fc.out_features,
            "num_hidden_layers": len(transformer.resblocks), "num_attention_heads": blk.attn.num_heads,
            "hidden_act": _act_name(blk), "layer_norm_eps": blk.ln_1.eps}


def open_clip_to_hf_config(model: torch.nn.Module):
    """The transformers ``CLIPConfig`` matching an open_clip ``CLIP`` (after :func:`_check_mappable`)."""
    from transformers import CLIPConfig

    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else visual.image_size
    patch = visual.conv1.kernel_size[0]
    vision = {**_tower_cfg(visual.transformer, visual.conv1.out_channels), "image_size": int(size),
              "patch_size": int(patch)}
    text = {**_tower_cfg(model.transformer, model.token_embedding.embedding_dim),
            "vocab_size": model.token_embedding.num_embeddings, "max_position_embeddings": model.context_length,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    dim = int(model.text_projection.shape[1])
    # the sub-configs carry their own projection_dim: CLIPTextModelWithProjection / CLIPVisionModelWithProjection
    # build their projection from it (left at the 512 default they fail to load any other size)
    return CLIPConfig(text_config={**text, "projection_dim": dim}, vision_config={**vision, "projection_dim": dim},
                      projection_dim=dim, logit_scale_init_value=float(model.logit_scale.item()))


def _blocks(prefix_oc: str, prefix_hf: str, n: int, sd: dict, out: dict) -> None:
    for i in range(n):
        o, h = f"{prefix_oc}.{i}", f"{prefix_hf}.{i}"
        w, b = sd[f"{o}.attn.in_proj_weight"], sd[f"{o}.attn.in_proj_bias"]
        for name, wi, bi in zip(("q_proj", "k_proj", "v_proj"), w.chunk(3), b.chunk(3)):
            out[f"{h}.self_attn.{name}.weight"], out[f"{h}.self_attn.{name}.bias"] = wi, bi
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, c in pairs.items():
            out[f"{h}.{c}.weight"], out[f"{h}.{c}.bias"] = sd[f"{o}.{a}.weight"], sd[f"{o}.{a}.bias"]


def open_clip_to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Map an open_clip ``CLIP`` state dict onto transformers ``CLIPModel`` keys."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T,
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,
        "logit_scale": sd["logit_scale"].reshape(()),
    }
    _blocks("visual.transformer.resblocks", "vision_model.encoder.layers", len(model.visual.transformer.resblocks),
            sd, out)
    _blocks("transformer.resblocks", "text_model.encoder.layers", len(model.transformer.resblocks), sd, out)
    return {k: v.contiguous().clone() for k, v in out.items()}


def convert_open_clip_to_hf(model: torch.nn.Module):
    """A transformers ``CLIPModel`` with the weights of an open_clip ``CLIP``; raises ``ValueError`` when
    the architecture does not map."""
    from transformers import CLIPModel

    _check_mappable(model)
    hf = CLIPModel(open_clip_to_hf_config(model))
    state = open_clip_to_hf_state_dict(model)
    target = hf.state_dict()
    missing = [k for k in target if k not in state and not k.endswith("position_ids")]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise ValueError(f"conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if target[k].shape != v.shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} != {tuple(target[k].shape)}")
    hf.load_state_dict(state, strict=False)
    return hf.eval()


def sync_projection_dims(config) -> None:
    """Copy the top-level ``projection_dim`` into the text and vision sub-configs (in place).

    ``CLIPModel`` reads the top-level value, ``CLIPTextModelWithProjection`` / ``CLIPVisionModelWithProjection``
    read the sub-config's; a sub-config left at its default (512) makes them fail on any other size.
    """
    dim = int(config.projection_dim)
    for sub in (config.text_config, config.vision_config):
        if getattr(sub, "projection_dim", None) != dim:
            sub.projection_dim = dim


# ---------------------------------------------------------------------- preprocessing agreement
def crop_offsets(height: int, width: int, size: int) -> dict[str, tuple[int, int]]:
    """(top, left) of the centre crop after a shortest-edge resize to ``size``, by open_clip and transformers.

    open_clip's eval transform is torchvision ``Resize(size)`` + ``CenterCrop(size)``: the long side becomes
    ``int(size * long / short)`` and the crop starts at ``int(round((L - size) / 2))`` (round half to even).
    transformers' ``CLIPImageProcessor`` (both backends, 5.x) resizes the same way but starts the crop at
    ``int((L - size) / 2)`` / ``(L - size) // 2``: one pixel apart whenever ``L - size`` is 3 mod 4.
    """
    short, long_ = (height, width) if height <= width else (width, height)
    new_long = int(size * long_ / short)
    new_h, new_w = (size, new_long) if height <= width else (new_long, size)
    tv = (int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0)))  # noqa: RUF046 - torchvision's own words
    hf = ((new_h - size) // 2, (new_w - size) // 2)
    return {"open_clip": tv, "transformers": hf}


def compare_preprocessing(open_clip_transform, image_processor, images) -> list[dict]:
    """Per image: the crop offsets and the max / mean absolute difference of the two pixel tensors."""
    import numpy as np

    from biomedica_hf.images import to_rgb

    rows = []
    for im in images:
        im = to_rgb(im)
        a = open_clip_transform(im).numpy()
        b = image_processor(images=[im], return_tensors="pt")["pixel_values"][0].numpy()
        size = a.shape[-1]
        off = crop_offsets(im.height, im.width, size)
        rows.append({"size": [im.width, im.height], "crop_open_clip": off["open_clip"],
                     "crop_transformers": off["transformers"], "crop_differs": off["open_clip"] != off["transformers"],
                     "max_abs_diff": float(np.abs(a - b).max()), "mean_abs_diff": float(np.abs(a - b).mean())})
    return rows


# ---------------------------------------------------------------------- export
def _hf_processor(clip, config, out: Path):
    from transformers import CLIPImageProcessor, CLIPProcessor

    from biomedica_hf.clip.tokenizer import write_clip_tokenizer

    if clip.processor is not None:
        return clip.processor
    tokenizer = write_clip_tokenizer(out, model_max_length=config.text_config.max_position_embeddings)
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                         image_mean=list(clip.mean), image_std=list(clip.std))
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def export_open_clip(clip, out_dir: str | os.PathLike) -> Path:
    """open_clip hf-hub layout; needs an open_clip model whose config is known (``clip.model_cfg``)."""
    if clip.kind != "open_clip":
        raise ValueError("open_clip export needs an open_clip model")
    if not clip.model_cfg:
        raise ValueError(f"{clip.name}: model config unknown (an hf-hub: start): cannot write open_clip_config.json")
    preprocess = {"size": clip.image_size, "mean": list(clip.mean), "std": list(clip.std),
                  "interpolation": "bicubic", "resize_mode": "shortest"}
    return save_open_clip_folder(clip.base_core(), clip.model_cfg, out_dir, preprocess)


def export_transformers(clip, out_dir: str | os.PathLike) -> Path:
    """transformers ``CLIPModel`` + ``CLIPProcessor`` folder (converting an open_clip model)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = clip.base_core() if clip.kind == "transformers" else convert_open_clip_to_hf(clip.base_core())
    sync_projection_dims(model.config)
    processor = _hf_processor(clip, model.config, out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def export_model(clip, out_dir: str | os.PathLike, formats: tuple[str, ...] = ("open_clip", "transformers"),
                 lora: str = "merge") -> dict[str, str]:
    """Export into ``out_dir``: ``open_clip/`` and/or ``transformers/`` subfolders (and ``lora_adapter/``).

    ``lora="adapter"`` also saves the PEFT adapter before merging (the merged full model is always what the
    other formats hold); a format that cannot be produced is reported under ``skipped``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if clip.is_lora:
        if lora == "adapter":
            save_lora_adapter(clip, out / "lora_adapter")
            written["lora_adapter"] = str(out / "lora_adapter")
        clip.merge_lora()
    skipped = {}
    for fmt in formats:
        try:
            path = export_open_clip(clip, out / fmt) if fmt == "open_clip" else export_transformers(clip, out / fmt)
            written[fmt] = str(path)
        except ValueError as exc:
            skipped[fmt] = str(exc)
    if skipped:
        written["skipped"] = json.dumps(skipped)
    from biomedica_hf.io.atomic import share_tree

    for key, path in written.items():
        if key != "skipped":
            share_tree(path)      # 0755/0644 unless the umask says otherwise (mkdtemp / safetensors write 0700/0600)
    return written

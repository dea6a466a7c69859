"""Model cards for a SmolVLM fine-tuning run, from ``biomedica_hf/templates/smolvlm_model_card.md.j2`` (also at
``model_cards/smolvlm_model_card.md``; a Jinja template, like a user's own ``card.template``).

One card per folder, each with the front matter that is true for it:

* ``merged/`` (LoRA merged into the weights; a plain transformers model): ``library_name: transformers``;
* ``adapter/`` (the PEFT adapter): ``library_name: peft``;
* the run folder: describes both, ``library_name: transformers`` when a merged model exists.

``base_model`` is the Hub id of the model that was fine-tuned (omitted for the tiny random smoke-test model);
``datasets:`` lists Hub ids only (the training data's own id when it was read from the Hub); a local folder is
described in prose.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from biomedica_hf import templates
from biomedica_hf.clip.card import hub_dataset_id
from biomedica_hf.dataset.licences import DataLicences, data_licences, write_licences
from biomedica_hf.filters import described_filters


def training_licences(cfg: dict) -> DataLicences:
    """The licences of the samples the config's ``data`` selects (subset + filters), read from the dataset."""
    d = cfg["data"]
    hub = hub_dataset_id(d.get("path"))
    return data_licences(d.get("path"), d.get("subset", "commercial"), d,
                         data=hub or "a local dataset folder built with `biomedica build`")


def public_config(cfg: dict) -> dict:
    """The config as the card shows it: local paths (the data folder, the output folder) replaced by their role."""
    import copy
    import os

    out = copy.deepcopy(cfg)
    path = out.get("data", {}).get("path")
    if path and not hub_dataset_id(path):
        out["data"]["path"] = "<data>"
    for key in ("output_dir",):
        if out.get(key):
            out[key] = Path(str(out[key])).name
    for section in out.values():
        if isinstance(section, dict):
            for k, v in section.items():
                if isinstance(v, str) and os.path.isabs(v) and k != "path":
                    section[k] = f"<{k}>"
    return out


def _hub_model_id(cfg: dict) -> str | None:
    name = cfg["model"].get("name")
    if cfg["model"].get("tiny") or not name or Path(name).exists() or name.count("/") != 1:
        return None
    return name


def front_matter(cfg: dict, kind: str, licences: DataLicences | None = None) -> dict:
    """The YAML metadata of the card in folder ``kind`` (``merged``, ``adapter`` or ``run``); ``license`` from the
    training data's licences (``dataset.licences``; read here when not given)."""
    licences = licences if licences is not None else training_licences(cfg)
    meta: dict = {**licences.front_matter(), "library_name": "peft" if kind == "adapter" else "transformers",
                  "pipeline_tag": "image-text-to-text"}
    base = _hub_model_id(cfg)
    if base:
        meta["base_model"] = base
        if kind == "merged":
            meta["base_model_relation"] = "finetune"
    tags = ["biomedical", "smolvlm", "idefics3", "lora", "biomedica"] + (["peft"] if kind == "adapter" else [])
    meta["tags"] = tags
    hub = hub_dataset_id(cfg["data"].get("path"))
    if hub:
        meta["datasets"] = [hub]
    return meta


def render(cfg: dict, result: dict, template: str | None = None, kind: str = "run",
           licences: DataLicences | None = None) -> str:
    """The card of folder ``kind``; ``template``: the text of a Jinja template of your own instead of the packaged one."""
    licences = licences if licences is not None else training_licences(cfg)
    t = cfg["train"]
    losses = result.get("losses") or []
    hub = hub_dataset_id(cfg["data"].get("path"))
    what = {"merged": "the merged model (LoRA folded into the weights; loads with transformers alone)",
            "adapter": "the LoRA adapter (load it on top of the base model with peft)",
            "run": "the run folder (`merged/`: the merged model; `adapter/`: the LoRA adapter)"}[kind]
    fields = {
        "metadata": yaml.safe_dump(front_matter(cfg, kind, licences), sort_keys=False).strip(),
        "folder": what,
        "library_name": "peft" if kind == "adapter" else "transformers",
        "run_name": Path(cfg["output_dir"]).name,
        "base_model": "tiny random Idefics3 (smoke test)" if cfg["model"].get("tiny") else cfg["model"]["name"],
        "qlora": " (QLoRA, 4-bit nf4)" if cfg["model"].get("quantization") else "",
        "dataset": (f"[{hub}](https://huggingface.co/datasets/{hub})" if hub else
                    f"a dataset folder built locally with `biomedica build` (`{Path(str(cfg['data']['path'])).name}`; "
                    "not on the Hub)"),
        "subset": cfg["data"]["subset"],
        "filters": ", ".join(f"{k} {v}" for k, v in described_filters(cfg["data"])) or "none",
        "licences": licences.summary(),
        "tasks": ", ".join(f"{k} {v}" for k, v in cfg["data"]["tasks"].items()),
        "longest_edge": cfg["data"].get("longest_edge") or "processor default", "max_length": cfg["data"]["max_length"],
        "skips": ", ".join(f"{k}: {v}" for k, v in (result.get("skips_rank0") or {}).items()) or "none",
        "lora_r": cfg["lora"]["r"], "lora_alpha": cfg["lora"]["alpha"], "lora_dropout": cfg["lora"]["dropout"],
        "targets": ", ".join(cfg["lora"]["target_modules"]), "quantization": cfg["model"].get("quantization") or "none",
        "batch": f"{t['batch_size']} × {t['grad_accum']} × {result.get('world_size', 1)}",
        "lr": t["lr"], "warmup": t["warmup_steps"], "scheduler": t["scheduler"], "steps": result.get("steps"),
        "trainable": f"{result.get('trainable_params', 0):,}", "total": f"{result.get('total_params', 0):,}",
        "first_loss": f"{losses[0]:.4f}" if losses else "n/a", "last_loss": f"{losses[-1]:.4f}" if losses else "n/a",
        "tokens_per_s": result.get("tokens_per_s"), "samples_per_s": result.get("samples_per_s"),
        "world_size": result.get("world_size", 1),
        "merge_diff": result.get("merge_max_abs_diff", "n/a"),
        "config": yaml.safe_dump(public_config(cfg), sort_keys=False).strip(),
    }
    if template is not None:
        return templates.render_string(template, **fields)
    return templates.render(templates.SMOLVLM_MODEL_CARD, **fields)


def write_model_card(out: Path, cfg: dict, result: dict) -> Path:
    tpl = cfg.get("card", {}).get("template")
    template = Path(tpl).read_text(encoding="utf-8") if tpl else None
    licences = training_licences(cfg)
    for d, kind in ((out, "run"), (out / "merged", "merged"), (out / "adapter", "adapter")):
        if d.is_dir():
            write_licences(d, licences)
            (d / "README.md").write_text(render(cfg, result, template, kind, licences))
    return out / "README.md"

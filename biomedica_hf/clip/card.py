"""Model card (README.md) for an exported CLIP, rendered from ``biomedica_hf/templates/clip_model_card.md.j2``
(also at ``model_cards/clip_model_card.md``).

YAML front matter: library_name, pipeline_tag ``zero-shot-image-classification``, base_model (a Hub id, when
one is known), datasets, license, tags, widget candidate_labels, and the ``model-index`` block of a real
``biomedica eval`` run when its ``model_index.yaml`` is given. Body: data + subset, recipe, hyper-parameters,
eval table (``results.md`` next to ``model_index.yaml``), intended use, limitations.

Facts only: ``datasets:`` lists Hub ids only - the training data's own id when it was streamed from the Hub
(``data.path`` = ``ORG/NAME`` or ``hf://datasets/ORG/NAME``), or ``export.dataset_id`` when the user states the
local folder was published under that id; a local folder is otherwise described in prose, never linked.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from biomedica_hf import templates
from biomedica_hf.dataset.licences import DataLicences, data_licences, write_licences
from biomedica_hf.filters import described_filters

WIDGET_LABELS = ["chest X-ray", "brain MRI", "histopathology slide", "bar chart", "fluorescence microscopy"]

_FORMATS = {
    "open_clip": ("open_clip", "open_clip hf-hub layout: open_clip_config.json + open_clip_model.safetensors",
                  ("import open_clip\n"
                   "model, preprocess = open_clip.create_model_from_pretrained('hf-hub:{repo}')  # or 'local-dir:PATH'\n"
                   "tokenizer = open_clip.get_tokenizer('hf-hub:{repo}')")),
    "transformers": ("transformers", "transformers CLIPModel + CLIPProcessor",
                     ("from transformers import pipeline\n"
                      "clf = pipeline('zero-shot-image-classification', model='{repo}')\n"
                      "clf('figure.png', candidate_labels={labels})")),
}


def _base_model(model_cfg: dict) -> str:
    if model_cfg.get("kind") == "transformers":
        return str(model_cfg.get("name_or_path") or "custom")
    name, tag = model_cfg.get("name", "custom"), model_cfg.get("pretrained")
    if model_cfg.get("model_cfg"):
        return f"{name} (custom config, random initialisation)"
    return f"{name}:{tag}" if tag else name


def _hub_base_model(model_cfg: dict) -> str | None:
    """A Hub id for ``base_model`` when one is known (open_clip tags map to laion/ repos)."""
    if model_cfg.get("kind") == "transformers":
        p = model_cfg.get("name_or_path")
        return p if p and not os.path.exists(p) and p.count("/") == 1 else None
    known = {("ViT-L-14", "commonpool_xl_clip_s13b_b90k"): "laion/CLIP-ViT-L-14-CommonPool.XL.clip-s13B-b90K",
             ("ViT-B-16", "laion2b_s34b_b88k"): "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"}
    name = model_cfg.get("name", "")
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:")
    return known.get((name, model_cfg.get("pretrained")))


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_dataset_id(path: str | None) -> str | None:
    """The Hub id of a dataset reference (``ORG/NAME``, ``hf://datasets/ORG/NAME[/...]``), None for a local folder."""
    if not path:
        return None
    p = str(path)
    if p.startswith("hf://datasets/"):
        parts = p.removeprefix("hf://datasets/").split("/")
        return "/".join(parts[:2]).split("@")[0] if len(parts) >= 2 else None
    if os.path.exists(p) or not HUB_ID.match(p):
        return None
    return p


def training_data(cfg: dict) -> dict:
    """{hub_id, local, prose}: what the model was trained on, from the config (see the module docstring)."""
    d, e = cfg.get("data", {}), cfg.get("export", {})
    path = d.get("path")
    hub = hub_dataset_id(path)
    if hub:
        return {"hub_id": hub, "local": None,
                "prose": f"[{hub}](https://huggingface.co/datasets/{hub}) (streamed from the Hub)"}
    declared = hub_dataset_id(e.get("dataset_id"))
    local = str(path) if path else "a local folder"
    # the card names no local path (it is published): the folder's own name only
    name = Path(local).name if path else ""
    if declared:
        return {"hub_id": declared, "local": local,
                "prose": f"a local dataset folder, published as "
                         f"[{declared}](https://huggingface.co/datasets/{declared})"}
    return {"hub_id": None, "local": local,
            "prose": "a dataset folder built locally with `biomedica build` from PMC-OA"
                     + (f" (`{name}`; not on the Hub)" if name else " (not on the Hub)")}


def training_licences(cfg: dict) -> DataLicences:
    """The licences of the samples the config's ``data`` selects (subset + filters), read from the dataset."""
    d = cfg.get("data", {})
    data = training_data(cfg)
    return data_licences(d.get("path"), d.get("subset", "commercial"), d,
                         data=data["hub_id"] or "a local dataset folder built with `biomedica build`")


def _eval_sources(model_index: Path) -> list[str]:
    """``dataset (source)`` lines of the run whose ``model_index.yaml`` is given (from its summary.json)."""
    import json

    summary = model_index.with_name("summary.json")
    if not summary.is_file():
        return []
    tasks = json.loads(summary.read_text()).get("tasks", {})
    return list(dict.fromkeys(f"`{t.get('source') or t['dataset']['type']}` ({name})" for name, t in tasks.items()))


def render_model_card(cfg: dict, fmt: str, stats: dict[str, Any], template: str | os.PathLike | None = None,
                      licences: DataLicences | None = None) -> str:
    """The card text for one export format (``open_clip`` or ``transformers``); ``template``: a path to a Jinja
    template of your own instead of the packaged one. ``licences``: the training data's licences
    (:func:`training_licences`, read here when not given) decide ``license`` (see ``dataset.licences``)."""
    if template is not None and not Path(template).is_file():
        raise FileNotFoundError(f"model card template {template} not found")
    t, d, e = cfg["train"], cfg["data"], cfg["export"]
    subset = d.get("subset", "commercial")
    subset_s = subset if isinstance(subset, str) else ", ".join(subset)
    lib, hint, usage = _FORMATS[fmt]
    repo = e.get("repo_id") or "OWNER/NAME"
    licences = licences if licences is not None else training_licences(cfg)
    licence_meta = licences.front_matter()
    if not licences.counts and e.get("license"):   # facts first; a stated licence only when none could be read
        licence_meta = {"license": e["license"]}
    meta: dict[str, Any] = {
        "library_name": lib,
        "pipeline_tag": "zero-shot-image-classification",
        **licence_meta,
        "tags": ["clip", "biomedical", "biomedica", "pubmed-central", "zero-shot-image-classification", lib]
                + (["lora", "peft"] if cfg["lora"].get("enabled") else []),
        "widget": [{"candidate_labels": ", ".join(WIDGET_LABELS)}],
    }
    data = training_data(cfg)
    if data["hub_id"]:
        meta["datasets"] = [data["hub_id"]]
    hub_base = _hub_base_model(cfg["model"])
    if hub_base:
        meta["base_model"] = hub_base
    eval_section = ("No evaluation yet: run `biomedica eval --model THIS_FOLDER --tasks ...` (for example "
                    "`--tasks imagefolder:PATH` on your own labelled images) and regenerate this card with "
                    "`export.model_index` pointing at the run's `model_index.yaml`.")
    mi = e.get("model_index")
    if mi and Path(mi).is_file():
        meta.update(yaml.safe_load(Path(mi).read_text()) or {})
        results = Path(mi).with_name("results.md")
        eval_section = results.read_text().split("\n", 1)[1].strip() if results.is_file() else \
            "See the `model-index` block in the metadata above."
        sources = _eval_sources(Path(mi))
        if sources:
            eval_section = ("Evaluated with `biomedica eval` on: " + "; ".join(sources) + ".\n\n" + eval_section)
    lora = cfg["lora"]
    rows = {
        "global batch (per step)": t["batch_size"] * stats.get("world_size", 1) * t.get("grad_accum", 1),
        "per-process micro-batch": t["batch_size"], "processes": stats.get("world_size", 1),
        "gradient accumulation": t.get("grad_accum", 1), "learning rate": t["lr"],
        "AdamW betas": tuple(t["betas"]), "eps": t.get("eps"), "weight decay": t.get("weight_decay"),
        "warmup steps": t["warmup_steps"], "schedule": "cosine", "max steps": t["max_steps"],
        "gradient clipping (norm)": t.get("grad_clip"), "precision": t.get("mixed_precision"),
        "gradient checkpointing": t.get("grad_checkpointing"), "shuffle buffer": d.get("shuffle_buffer", 0),
        "reference sentences as captions (prob.)": d.get("reference_prob", 0.0),
    }
    if lora.get("enabled"):
        rows.update({"LoRA r": lora["r"], "LoRA alpha": lora["alpha"], "LoRA dropout": lora["dropout"]})
    if cfg["wise_ft"].get("alpha") is not None:
        rows["WiSE-FT alpha"] = cfg["wise_ft"]["alpha"]
    filters = "".join(f", {k} {v}" for k, v in described_filters(d))
    final = stats.get("final_loss")
    return _render(
        template,
        metadata=yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(),
        title=e.get("title") or f"BMC-CLIP {cfg['model'].get('name') or cfg['model'].get('name_or_path') or ''}".strip(),
        base_model=_base_model(cfg["model"]), format_name=lib, format_hint=hint,
        usage=usage.format(repo=repo, labels=WIDGET_LABELS[:3]), data_prose=data["prose"], subset=subset_s,
        filters=f" (filters{filters})" if filters else "", licences=licences.summary(),
        reference_note=("in-text reference sentences replace the caption with probability "
                        f"{d.get('reference_prob')}." if d.get("reference_prob") else "the figure caption is the text."),
        shuffle_buffer=d.get("shuffle_buffer", 0), world_size=stats.get("world_size", 1),
        lora_note=f", LoRA (r={lora['r']}) on attention/MLP projections of both towers, merged" if lora.get("enabled") else "",
        wise_note=(f", WiSE-FT interpolation with the base weights (alpha={cfg['wise_ft']['alpha']})"
                   if cfg["wise_ft"].get("alpha") is not None else ""),
        hparams="\n".join(f"| {k} | {v} |" for k, v in rows.items()), steps=stats.get("step", "?"),
        samples=stats.get("samples", "?"), final_loss="-" if final is None else f"{final:.4f}",
        eval_section=eval_section)


def _render(template: str | os.PathLike | None, **fields: Any) -> str:
    if template is None:
        return templates.render(templates.CLIP_MODEL_CARD, **fields)
    return templates.render_string(Path(template).read_text(encoding="utf-8"), **fields)


def write_model_card(folder: str | os.PathLike, cfg: dict, fmt: str, stats: dict[str, Any],
                     template: str | os.PathLike | None = None, licences: DataLicences | None = None) -> Path:
    """``README.md`` and ``LICENSES.md`` (the training data's licences and counts) of an exported model folder."""
    licences = licences if licences is not None else training_licences(cfg)
    write_licences(folder, licences)
    path = Path(folder) / "README.md"
    path.write_text(render_model_card(cfg, fmt, stats, template, licences))
    return path

"""Model card for a SmolVLM fine-tuning run, from ``model_cards/smolvlm_model_card.md``."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

TEMPLATE = Path(str(resources.files("model_cards").joinpath("smolvlm_model_card.md")))  # packaged with the wheel
_FALLBACK = "# {run_name}\n\nBase model: {base_model}\n\nDataset: {dataset}\n\nResults: {tokens_per_s} tokens/s\n\n```yaml\n{config}\n```\n"


def render(cfg: dict, result: dict, template: str | None = None) -> str:
    t = cfg["train"]
    losses = result.get("losses") or []
    fields = {
        "run_name": Path(cfg["output_dir"]).name,
        "base_model": "tiny random Idefics3 (smoke test)" if cfg["model"].get("tiny") else cfg["model"]["name"],
        "qlora": " (QLoRA, 4-bit nf4)" if cfg["model"].get("quantization") else "",
        "dataset": cfg["data"]["path"], "subset": cfg["data"]["subset"],
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
        "config": yaml.safe_dump(cfg, sort_keys=False).strip(),
    }
    if template is None:
        template = TEMPLATE.read_text() if TEMPLATE.exists() else _FALLBACK
    return template.format(**fields)


def write_model_card(out: Path, cfg: dict, result: dict) -> Path:
    tpl = cfg.get("card", {}).get("template")
    text = render(cfg, result, Path(tpl).read_text() if tpl else None)
    for d in (out, out / "merged", out / "adapter"):
        if d.is_dir():
            (d / "README.md").write_text(text)
    return out / "README.md"

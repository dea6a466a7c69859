r"""SmolVLM fine-tuning under ``accelerate``: LoRA / QLoRA (PEFT), gradient checkpointing, accumulation,
warmup, checkpoints + resume, adapter save, merge-and-unload export and a model card.

    accelerate launch -m biomedica_hf.train.smolvlm --config smolvlm_256m_lora --set data.path=DATASET_DIR
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m biomedica_hf.train.smolvlm \
        --config cpu_smoke --set data.path=DATASET_DIR --threads 1
    python -m biomedica_hf.train.smolvlm --config my.yaml --set train.max_steps=10 --set output_dir=runs/x
    python -m biomedica_hf.train.smolvlm --list-configs

Config (:class:`biomedica_hf.train.config.SmolVLMConfig`, bundled ones in ``biomedica_hf/train/configs/smolvlm``):
``model`` (``name`` or ``tiny: true``, ``dtype``, ``quantization: nf4|null``), ``lora`` (``r``, ``alpha``,
``dropout``, ``target_modules``), ``data`` (``path``, ``subset``, the ``load_biomedica`` filters, ``tasks``,
``longest_edge``, ``max_length``, ``min_answer_tokens``), ``train`` (``batch_size`` per process,
``grad_accum``, ``lr``, ``warmup_steps``, ``max_steps``, ``grad_checkpointing``, ``save_every``, ``resume``),
``export`` (``enabled``, ``adapter``, ``merge``), ``card`` (``enabled``, ``template``). Unknown keys are errors.

Checkpoints (:mod:`biomedica_hf.train.checkpoint`): ``output_dir/checkpoints/step_N`` holds
``accelerator.save_state`` (model, optimizer, scheduler, RNG), ``trainer_state.json`` (step) and
``data_state_rank{r}.json`` (samples consumed by that rank); ``train.resume: auto`` (the default) picks the
latest one of the same config and fast-forwards the data stream without decoding images; another config over
the folder is refused unless ``--overwrite`` (:mod:`biomedica_hf.train.rundir`). Each rank reads its own share of
the selected samples (``load_biomedica(rank=)``, shares differ by at most one sample); rank 0 prints a start
line and a progress bar; ``log.jsonl`` is described in docs/training.md. Exports load with transformers 4.46 too
(:mod:`biomedica_hf.vlm.compat`).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from biomedica_hf.errors import BiomedicaError
from biomedica_hf.train import checkpoint
from biomedica_hf.train.config import (
    DEFAULT_TARGETS,
    SmolVLMConfig,
    SmolVLMLora,
    SmolVLMModel,
    check_config,
    resolve_precision,
    section,
    to_dict,
)
from biomedica_hf.train.config import load_config as _load_config
from biomedica_hf.train.distributed import end_run

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_TARGETS", "QLoRAUnavailable", "export", "load_config", "load_model", "main", "quantization_config",
           "resolve_model_dir", "train"]


class QLoRAUnavailable(BiomedicaError, RuntimeError):
    """QLoRA was asked for where it cannot run (no bitsandbytes or no CUDA GPU)."""

    exit_code = 2


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML file (a path or a bundled name) <- ``key.sub=value`` overrides, checked (a plain dict)."""
    return _load_config("smolvlm", path, overrides or ())


# --------------------------------------------------------------------------------------------- model
def _dtype(name: str | None):
    import torch

    return {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]


def quantization_config(mcfg: SmolVLMModel | dict):
    """``BitsAndBytesConfig`` for QLoRA (nf4, double quant), or a clear error when it cannot run here."""
    mcfg = section(SmolVLMModel, mcfg, "model")
    q = mcfg.quantization
    if not q:
        return None
    if q != "nf4":
        raise ValueError(f"model.quantization must be 'nf4' or null, got {q!r}")
    import importlib.util

    import torch

    missing = [w for w, ok in (("the bitsandbytes package (pip install bitsandbytes)",
                                importlib.util.find_spec("bitsandbytes") is not None),
                               ("a CUDA GPU", torch.cuda.is_available())) if not ok]
    if missing:
        raise QLoRAUnavailable("QLoRA (model.quantization: nf4) needs " + " and ".join(missing)
                           + "; use a LoRA config (model.quantization: null) on this machine.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=_dtype(mcfg.dtype or "bfloat16"))


def resolve_model_dir(cfg: SmolVLMConfig | dict, accelerator=None, texts=()) -> str:
    """The model to load: ``model.name`` (Hub id or folder), or for ``model.tiny`` a random tiny Idefics3
    written once to ``output_dir/base_model`` (rank 0 writes, others wait)."""
    cfg = check_config("smolvlm", cfg)
    if not cfg.model.tiny:
        return cfg.model.name
    out = os.path.join(cfg.output_dir, "base_model")
    if not os.path.exists(os.path.join(out, "config.json")) and (accelerator is None or accelerator.is_main_process):
        from biomedica_hf.vlm.tiny import save_tiny_model

        save_tiny_model(out, texts, seed=cfg.seed)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out


def load_model(model_dir: str, mcfg: SmolVLMModel | dict, lora: SmolVLMLora | dict | None,
               grad_checkpointing: bool = False):
    """``AutoModelForImageTextToText`` (+ 4-bit quantization) wrapped with a PEFT LoRA adapter (the recipe's
    ``model`` and ``lora`` sections; a mapping is checked into them)."""
    from transformers import AutoModelForImageTextToText

    mcfg = section(SmolVLMModel, mcfg, "model")
    lora = None if lora is None else section(SmolVLMLora, lora, "lora")
    kwargs: dict[str, Any] = {}
    qc = quantization_config(mcfg)
    if qc is not None:
        kwargs["quantization_config"] = qc
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if mcfg.attn_implementation:
        kwargs["attn_implementation"] = mcfg.attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=_dtype(mcfg.dtype), **kwargs)
    if grad_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):      # transformers >= 5.2x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if qc is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None and lora.enabled:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules,
            init_lora_weights=lora.init_lora_weights, task_type=None))
    return model


# --------------------------------------------------------------------------------------------- train
def _dataset_captions(path: str, n: int = 2000) -> list[str]:
    import pyarrow.parquet as pq

    from biomedica_hf.layout import FIGURES_INDEX

    f = Path(path) / FIGURES_INDEX
    if not f.exists():
        return []
    cols = pq.read_schema(f).names
    col = "caption" if "caption" in cols else None
    return [] if col is None else [c for c in pq.read_table(f, columns=[col]).column(col).to_pylist()[:n] if c]


def train(cfg: dict | SmolVLMConfig) -> dict:
    """Run the recipe (a config dict or :class:`~biomedica_hf.train.config.SmolVLMConfig`, checked here, then used
    as the typed config down to every value's use)."""
    import torch
    from accelerate import Accelerator

    cfg = check_config("smolvlm", cfg)
    from biomedica_hf.dataset.loader import check_dataset_path

    check_dataset_path(cfg.data.path)       # a wrong data.path: one line, before any model is loaded
    tcfg = cfg.train
    quantization_config(cfg.model)          # fail fast (before any download) when QLoRA cannot run here
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu = tcfg.cpu or not torch.cuda.is_available()
    accelerator = Accelerator(gradient_accumulation_steps=tcfg.grad_accum, cpu=tcfg.cpu,
                              mixed_precision=resolve_precision(tcfg.mixed_precision,
                                                                not cpu and torch.cuda.is_bf16_supported()))
    result = _train(accelerator, cfg, out)    # the model, optimizer and stream die with its frame ...
    end_run(accelerator)                      # ... before the process group is destroyed
    return result


def _train(accelerator, cfg: SmolVLMConfig, out: Path) -> dict:
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoProcessor, get_scheduler

    from biomedica_hf.train import rundir
    from biomedica_hf.train.progress import Progress, banner
    from biomedica_hf.vlm.data import SkipLog, collate, example_stream, set_longest_edge

    tcfg, dcfg = cfg.train, cfg.data
    set_seed(cfg.seed)
    world = accelerator.num_processes
    rundir.open_run(accelerator, out, cfg, tcfg.overwrite)   # warning, refusal or a clean start
    model_dir = resolve_model_dir(cfg, accelerator, _dataset_captions(dcfg.path) if cfg.model.tiny else ())
    processor = AutoProcessor.from_pretrained(model_dir)
    set_longest_edge(processor, dcfg.longest_edge)
    model = load_model(model_dir, cfg.model, cfg.lora, tcfg.grad_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable, n_total = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    sched = get_scheduler(tcfg.scheduler, opt, num_warmup_steps=tcfg.warmup_steps, num_training_steps=tcfg.max_steps)
    # the scheduler is stepped by hand once per optimizer step (a prepared one steps num_processes times)
    model, opt = accelerator.prepare(model, opt)
    accelerator.register_for_checkpointing(sched)

    step, consumed = 0, 0
    ck = checkpoint.resume_checkpoint(tcfg.resume, out)
    if ck is not None:
        accelerator.load_state(str(ck))
        step = checkpoint.read_trainer_state(ck)["step"]
        data_state = checkpoint.read_data_state(ck, accelerator.process_index)
        if data_state is None:
            raise FileNotFoundError(f"{ck} has no {checkpoint.data_state_file(accelerator.process_index)}: "
                                    f"was it written with another number of processes?")
        consumed = data_state["seen"]
        accelerator.print(f"resumed from {ck} at step {step}")

    skips = SkipLog()
    position = {"seen": consumed}
    stream = example_stream(dcfg.path, processor, selection=dcfg.selection(), tasks=dcfg.tasks,
                            max_length=dcfg.max_length, min_answer_tokens=dcfg.min_answer_tokens,
                            rank=accelerator.process_index, world_size=accelerator.num_processes, seed=cfg.seed,
                            skip_samples=consumed, skips=skips, position=position)
    pad_id = processor.tokenizer.pad_token_id
    bs, accum, max_steps = tcfg.batch_size, tcfg.grad_accum, tcfg.max_steps
    counts = torch.tensor([position["rank_samples"]], device=accelerator.device)
    rank_samples = [int(c) for c in (accelerator.gather(counts) if world > 1 else counts).tolist()]
    if min(rank_samples) == 0:
        raise BiomedicaError(f"{sum(rank_samples)} selected sample(s) for {world} processes: every process needs "
                             f"at least one", "use fewer processes or select more data")
    steps_per_epoch = -(-max(rank_samples) // (bs * accum))
    device = accelerator.device.type + (f", {accelerator.distributed_type.value}" if world > 1 else "")
    if accelerator.is_main_process:
        rundir.trim_log(out, step)
        print(banner("smolvlm", world, device, rank_samples, steps_per_epoch, bs, accum, max_steps, step),
              file=sys.stderr, flush=True)
        with open(out / "log.jsonl", "a") as logf:
            logf.write(json.dumps({"event": "start", "step": step, "world_size": world, "device": device,
                                   "rank_samples": rank_samples, "steps_per_epoch": steps_per_epoch,
                                   "max_steps": max_steps, "batch_size": bs, "grad_accum": accum}) + "\n")
    progress = Progress(max_steps, step, accelerator.is_main_process, desc="smolvlm")
    t_step = time.perf_counter()
    losses: list[float] = []
    tokens = samples = 0
    t0 = time.perf_counter()
    model.train()
    while step < max_steps:
        batch_ex = [next(stream) for _ in range(bs)]
        # samples consumed from the stream (skipped ones included) for exact fast-forward on resume
        batch = {k: v.to(accelerator.device) for k, v in collate(batch_ex, pad_id).items()}
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and tcfg.grad_clip:
                accelerator.clip_grad_norm_(params, tcfg.grad_clip)
            opt.step()
            if accelerator.sync_gradients:
                sched.step()
            opt.zero_grad()
        tokens += int(batch["attention_mask"].sum())
        samples += len(batch_ex)
        if not accelerator.sync_gradients:
            continue
        step += 1
        consumed = position["seen"]
        lv = accelerator.reduce(loss.detach().float(), reduction="mean").item()
        losses.append(lv)
        now = time.perf_counter()
        progress.update(step, consumed // max(1, max(rank_samples)), lv,
                        bs * accum * world / max(now - t_step, 1e-9))
        t_step = now
        if accelerator.is_main_process and (step % tcfg.log_every == 0 or step == max_steps):
            with open(out / "log.jsonl", "a") as logf:
                logf.write(json.dumps({"step": step, "epoch": consumed // max(1, max(rank_samples)), "loss": lv, "lr": sched.get_last_lr()[0],
                                       "elapsed_s": round(time.perf_counter() - t0, 3)}) + "\n")
        if tcfg.save_every and step % tcfg.save_every == 0 and step < max_steps:
            _save_checkpoint(accelerator, out, step, consumed)
    progress.close()
    elapsed = time.perf_counter() - t0
    _save_checkpoint(accelerator, out, step, consumed)
    # the rows this rank read (first ones): the data is split once, each rank reads only its share
    (out / f"data_rank{accelerator.process_index}_reads.json").write_text(json.dumps(position.get("read_keys", [])))
    totals = accelerator.reduce(torch.tensor([tokens, samples], dtype=torch.float64, device=accelerator.device),
                                reduction="sum").tolist()
    result = {"steps": step, "losses": losses, "trainable_params": n_trainable, "total_params": n_total,
              "tokens": int(totals[0]), "samples": int(totals[1]), "elapsed_s": round(elapsed, 3),
              "tokens_per_s": round(totals[0] / max(elapsed, 1e-9), 1),
              "samples_per_s": round(totals[1] / max(elapsed, 1e-9), 2),
              "skips_rank0": skips.counts, "skip_examples_rank0": skips.examples[:5],
              "world_size": accelerator.num_processes, "model_dir": model_dir}
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if cfg.export.enabled:
            result |= export(accelerator.unwrap_model(model), processor, out, cfg)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        if cfg.card.enabled:
            from biomedica_hf.vlm.card import write_model_card

            write_model_card(out, to_dict(cfg), result)   # the card renders the config as the run saved it
    accelerator.wait_for_everyone()
    return result


def _save_checkpoint(accelerator, out: Path, step: int, consumed: int) -> None:
    ck = checkpoint.checkpoint_dir(out, step)
    accelerator.save_state(str(ck))
    # each rank's own stream position (skipped samples make them differ)
    checkpoint.write_data_state(ck, accelerator.process_index, {"seen": consumed})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoint.write_trainer_state(ck, {"step": step, "world_size": accelerator.num_processes})
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------- export
def export(model, processor, out: Path, cfg: SmolVLMConfig | dict) -> dict:
    """Save the adapter (``out/adapter``) and the merged full model (``out/merged``), both with the processor,
    and check the round trip: merged.from_pretrained logits == adapter logits on a probe batch."""
    import torch

    from biomedica_hf.vlm.compat import make_legacy_compatible

    cfg = check_config("smolvlm", cfg)
    res: dict[str, Any] = {}
    is_peft = hasattr(model, "peft_config")
    if is_peft and cfg.export.adapter:
        model.save_pretrained(out / "adapter")
        processor.save_pretrained(out / "adapter")
        make_legacy_compatible(out / "adapter")
        res["adapter_dir"] = str(out / "adapter")
    if cfg.export.merge:
        if is_peft and cfg.model.quantization:
            # merging into 4-bit weights is lossy: reload the base in the compute dtype and merge there
            from peft import PeftModel
            from transformers import AutoModelForImageTextToText

            base = AutoModelForImageTextToText.from_pretrained(model.peft_config["default"].base_model_name_or_path,
                                                               dtype=_dtype(cfg.model.dtype))
            merged = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
        else:
            model.eval()
            probe = _probe_batch(processor, model)
            with torch.no_grad():
                before = model(**probe).logits.float()
            merged = model.merge_and_unload() if is_peft else model
            with torch.no_grad():
                after = merged(**probe).logits.float()
            res["merge_max_abs_diff"] = float((before - after).abs().max())
        merged.save_pretrained(out / "merged")
        processor.save_pretrained(out / "merged")
        make_legacy_compatible(out / "merged")      # loads with transformers 4.46 too (biomedica_hf.vlm.compat)
        res["merged_dir"] = str(out / "merged")
    from biomedica_hf.io.atomic import share_tree

    for key in ("adapter_dir", "merged_dir"):
        if res.get(key):
            share_tree(res[key])      # 0755/0644 unless the umask says otherwise (safetensors writes 0600)
    return res


def _probe_batch(processor, model):
    from PIL import Image

    from biomedica_hf.vlm.data import messages

    img = Image.new("RGB", (48, 40), (200, 30, 30))
    text = processor.apply_chat_template(messages("Describe this figure.", "A red square."), tokenize=False)
    b = processor(text=[text], images=[[img]], return_tensors="pt")
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return {k: (v.to(dev, dtype) if k == "pixel_values" else v.to(dev)) for k, v in b.items()}


def _summary(result: dict) -> dict:
    losses = result["losses"] or [None]
    return {k: v for k, v in result.items() if k != "losses"} | {"first_loss": losses[0], "last_loss": losses[-1]}


def main(argv: list[str] | None = None) -> int:
    """``python -m biomedica_hf.train.smolvlm`` (and ``finetune/smolvlm/train.py``)."""
    from biomedica_hf.train.cli import run_recipe

    return run_recipe("smolvlm", __doc__, argv, train, _summary)


if __name__ == "__main__":
    sys.exit(main())

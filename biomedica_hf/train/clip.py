"""The CLIP continual pre-training loop (one loop for open_clip and transformers models).

``train(config)`` runs under ``accelerate launch`` (or plain ``python`` for one process):

* data: :func:`.data.build_stream` (sharded once, by node; the DataLoader is not ``prepare``d);
  ranks stop together when any rank runs out (an all-reduce per micro-batch), so unequal data never hangs;
* loss: :class:`.loss.ClipLoss`, local logits against gathered features (exact for world size > 1);
* AdamW (config betas), linear warmup + cosine decay, gradient accumulation (each micro-batch is its own
  contrastive batch of ``batch_size x world_size``), grad-norm clipping, bf16 autocast on CUDA,
  gradient checkpointing and PEFT LoRA options, WiSE-FT with the base weights after training;
* checkpoints ``output_dir/checkpoints/step_N``: ``accelerator.save_state`` (model, optimizer, scheduler,
  RNG) + every rank's ``IterableDataset.state_dict()`` + step/epoch; ``train.resume_from`` resumes exactly
  (with ``num_workers: 0``; the shuffle buffer's content is not part of a ``datasets`` state and is
  refilled on resume, so use ``shuffle_buffer: 0`` where bit-exact resume matters);
* logs: ``output_dir/log.jsonl``: step, epoch, loss, lr, logit_scale, grad_norm, samples/s, data-wait fraction.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from biomedica_hf.clip.data import Collate, build_stream
from biomedica_hf.clip.loss import ClipLoss
from biomedica_hf.clip.model import build_model
from biomedica_hf.train.config import load_recipe_config
from biomedica_hf.train.distributed import end_run

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/clip",
    "model": {"kind": "open_clip", "name": "ViT-L-14", "pretrained": "commonpool_xl_clip_s13b_b90k"},
    "data": {"path": None, "subset": "commercial", "shuffle_buffer": 0, "num_workers": 0, "reference_prob": 0.0},
    "train": {"batch_size": 1024, "grad_accum": 1, "lr": 1e-6, "betas": [0.9, 0.95], "eps": 1e-6,
              "weight_decay": 0.2, "warmup_steps": 1000, "max_steps": None, "max_epochs": 1000, "grad_clip": 1.0,
              "mixed_precision": "auto", "grad_checkpointing": False, "log_every": 10, "save_every": None,
              "resume_from": None, "max_logit_scale": 100.0},
    "lora": {"enabled": False, "r": 16, "alpha": 32, "dropout": 0.05, "target_modules": None},
    "wise_ft": {"alpha": None},
    "export": {"enabled": True, "formats": ["open_clip", "transformers"], "lora": "merge", "card": True,
               "model_index": None, "repo_id": None, "dataset_id": None},
}


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """DEFAULTS <- YAML file <- ``key.sub=value`` overrides (values parsed as YAML)."""
    return load_recipe_config(DEFAULTS, path, overrides or ())


def lr_lambda(warmup: int, total: int):
    """Linear warmup to 1 over ``warmup`` steps, then cosine to 0 at ``total``."""
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, embeddings and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or any(s in name for s in ("bn", "ln", "bias", "logit_scale", "embedding", "norm"))
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Batches:
    """Micro-batches for ever (epoch after epoch), synchronised across ranks: all stop when one runs out."""

    def __init__(self, accelerator, ds, loader_factory, collate: Collate, epoch: int, max_epochs: int) -> None:
        self.acc, self.ds, self.factory, self.collate = accelerator, ds, loader_factory, collate
        self.epoch, self.max_epochs, self.it, self.wait = epoch, max_epochs, None, 0.0

    def _start(self) -> None:
        self.ds.set_epoch(self.epoch)
        self.collate.epoch = self.epoch
        self.it = iter(self.factory())

    def next(self) -> dict | None:
        t0 = time.perf_counter()
        try:
            while self.epoch < self.max_epochs:
                if self.it is None:
                    self._start()
                batch = next(self.it, None)
                ok = torch.tensor([0 if batch is None else 1], device=self.acc.device)
                if self.acc.num_processes > 1:   # every rank must take the same decision
                    ok = self.acc.reduce(ok, reduction="sum") == self.acc.num_processes
                if bool(ok.all()):
                    return batch
                self.epoch, self.it = self.epoch + 1, None
            return None
        finally:
            self.wait += time.perf_counter() - t0


def train(cfg: dict) -> dict:
    """Run a recipe; returns ``{"step", "log", "export", ...}`` (on every rank)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    mp = cfg["train"].get("mixed_precision", "auto")
    mp = ("bf16" if cuda and torch.cuda.is_bf16_supported() else "no") if mp == "auto" else mp
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mp)
    result = _train(accelerator, cfg)   # the model, optimizer and stream die with its frame ...
    end_run(accelerator)                # ... before the process group is destroyed
    return result


def _train(accelerator, cfg: dict) -> dict:
    from accelerate.utils import set_seed

    t_cfg, d_cfg = cfg["train"], cfg["data"]
    cuda = accelerator.device.type == "cuda"
    rank, world = accelerator.process_index, accelerator.num_processes
    seed = int(cfg["seed"])
    set_seed(seed)
    out = Path(cfg["output_dir"])
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(__import__("yaml").safe_dump(cfg, sort_keys=False))

    clip = build_model(cfg["model"], seed=seed)
    base_state = ({k: v.detach().clone().cpu() for k, v in clip.base_core().state_dict().items()}
                  if cfg["wise_ft"].get("alpha") is not None else None)
    if t_cfg.get("grad_checkpointing"):
        clip.set_grad_checkpointing(True)
    lora = cfg["lora"]
    if lora.get("enabled"):
        clip.apply_lora(lora["r"], lora["alpha"], lora["dropout"], lora.get("target_modules"))

    max_steps = t_cfg.get("max_steps")
    if not max_steps:
        raise ValueError("train.max_steps is required (a stream has no known length; it sets the cosine schedule)")
    optimizer = torch.optim.AdamW(_param_groups(clip, float(t_cfg["weight_decay"])), lr=float(t_cfg["lr"]),
                                  betas=tuple(float(b) for b in t_cfg["betas"]), eps=float(t_cfg["eps"]))
    # not prepare()d: accelerate's scheduler wrapper would step it once per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(t_cfg["warmup_steps"]), int(max_steps)))
    model, optimizer = accelerator.prepare(clip, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    ds = build_stream(d_cfg, rank, world, seed)
    collate = Collate(clip, float(d_cfg.get("reference_prob", 0.0)), seed)
    num_workers = int(d_cfg.get("num_workers", 0))
    bs = int(t_cfg["batch_size"])

    def loader():
        return torch.utils.data.DataLoader(ds, batch_size=bs, collate_fn=collate, num_workers=num_workers,
                                           drop_last=True, pin_memory=cuda)

    step, epoch, samples = 0, 0, 0
    resume = t_cfg.get("resume_from")
    if resume:
        accelerator.load_state(resume)
        state = json.loads((Path(resume) / "trainer_state.json").read_text())
        step, epoch, samples = state["step"], state["epoch"], state["samples"]
        data_state = Path(resume) / f"data_state_rank{rank}.json"
        ds.set_epoch(epoch)
        if num_workers == 0 and data_state.is_file():
            ds.load_state_dict(json.loads(data_state.read_text()))
    batches = _Batches(accelerator, ds, loader, collate, epoch, int(t_cfg.get("max_epochs") or 10**9))

    loss_fn = ClipLoss()
    accum = int(t_cfg.get("grad_accum", 1))
    log_every, save_every = int(t_cfg.get("log_every") or 1), t_cfg.get("save_every")
    max_scale = math.log(float(t_cfg.get("max_logit_scale", 100.0)))
    log_path = out / "log.jsonl"
    losses: list[float] = []
    model.train()

    def save(dirname: Path) -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(dirname))
        if num_workers == 0:
            (dirname / f"data_state_rank{rank}.json").write_text(json.dumps(ds.state_dict()))
        if accelerator.is_main_process:
            (dirname / "trainer_state.json").write_text(json.dumps(
                {"step": step, "epoch": batches.epoch, "samples": samples, "world_size": world}))
        accelerator.wait_for_everyone()

    done = False
    while step < max_steps and not done:
        t0, batches.wait, step_loss, n_local = time.perf_counter(), 0.0, 0.0, 0
        for micro in range(accum):
            batch = batches.next()
            if batch is None:
                done = True
                break
            batch = {k: v.to(accelerator.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            sync = accelerator.no_sync(model) if micro < accum - 1 else _nullcontext()
            with sync:
                with accelerator.autocast():
                    img, txt, scale = model(**batch)
                    loss = loss_fn(img, txt, scale)
                accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
            n_local += batch["pixel_values"].shape[0]
        if done:   # the stream ended: an incomplete accumulation is dropped
            optimizer.zero_grad(set_to_none=True)
            break
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), float(t_cfg["grad_clip"])) \
            if t_cfg.get("grad_clip") else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            clip.base_core().logit_scale.clamp_(0, max_scale)
        step += 1
        n_global = n_local * world
        samples += n_global
        loss_value = float(accelerator.reduce(step_loss.reshape(1), reduction="mean").item())
        losses.append(loss_value)
        dt = time.perf_counter() - t0
        if accelerator.is_main_process and (step % log_every == 0 or step == max_steps):
            record = {"step": step, "epoch": batches.epoch, "samples": samples, "loss": loss_value,
                      "lr": scheduler.get_last_lr()[0],
                      "logit_scale": float(clip.base_core().logit_scale.detach().exp().item()),
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "samples_per_s": n_global / dt, "data_wait_frac": batches.wait / dt}
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if save_every and step % int(save_every) == 0:
            save(out / "checkpoints" / f"step_{step}")

    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"step": step, "samples": samples, "losses": losses, "log": str(log_path)}
    if step and (not save_every or step % int(save_every)):
        save(out / "checkpoints" / f"step_{step}")
    clip = accelerator.unwrap_model(model)
    e_cfg = cfg["export"]
    export_dir = out / "export"
    if clip.is_lora and e_cfg.get("enabled") and e_cfg.get("lora") == "adapter" and accelerator.is_main_process:
        clip.model.save_pretrained(export_dir / "lora_adapter")   # the trained adapter, before any WiSE-FT
    if cfg["wise_ft"].get("alpha") is not None:
        from biomedica_hf.clip.export import wise_ft

        clip.merge_lora()
        wise_ft(clip.base_core(), base_state, float(cfg["wise_ft"]["alpha"]))
    if e_cfg.get("enabled") and accelerator.is_main_process:
        from biomedica_hf.clip.card import write_model_card
        from biomedica_hf.clip.export import export_model

        written = export_model(clip, export_dir, tuple(e_cfg["formats"]), "merge")   # adapter saved above
        if (export_dir / "lora_adapter").is_dir():
            written["lora_adapter"] = str(export_dir / "lora_adapter")
        if e_cfg.get("card", True):
            for fmt in ("open_clip", "transformers"):
                if fmt in written:
                    write_model_card(Path(written[fmt]), cfg, fmt, {"step": step, "samples": samples,
                                                                     "world_size": world, "final_loss":
                                                                     losses[-1] if losses else None})
        result["export"] = written
    accelerator.wait_for_everyone()
    return result


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

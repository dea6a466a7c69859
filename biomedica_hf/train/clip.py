r"""The CLIP continual pre-training loop (one loop for open_clip and transformers models).

    accelerate launch -m biomedica_hf.train.clip --config bmc_clip_vitl14_8gpu      # a bundled config
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m biomedica_hf.train.clip \
        --config cpu_smoke --set data.path=DATASET_DIR
    python -m biomedica_hf.train.clip --config my.yaml --set train.max_steps=10 --set output_dir=runs/x
    python -m biomedica_hf.train.clip --list-configs

``train(config)`` runs under ``accelerate launch`` (or plain ``python`` for one process):

* data: :func:`biomedica_hf.clip.data.build_stream` (each rank reads its own contiguous share of the selected
  samples, shares differ by at most one; the DataLoader is not ``prepare``d); micro-batches are padded to
  ``batch_size`` with masked rows and the epoch ends when every rank's share is done (an all-reduce per
  micro-batch; a rank that ran out joins with an all-padding batch), so every sample is trained on exactly once
  per epoch and unequal data never hangs (:class:`_Batches`); ``train.max_epochs`` alone trains whole epochs;
* loss: :class:`biomedica_hf.clip.loss.ClipLoss`, local logits against gathered features (exact for world size > 1);
* AdamW (config betas), linear warmup + cosine decay, gradient accumulation (each micro-batch is its own
  contrastive batch of ``batch_size x world_size``), grad-norm clipping, bf16 autocast on CUDA,
  gradient checkpointing and PEFT LoRA options, WiSE-FT with the base weights after training;
* checkpoints ``output_dir/checkpoints/step_N`` (:mod:`biomedica_hf.train.checkpoint`): ``accelerator.save_state``
  (model, optimizer, scheduler, RNG) + every rank's ``IterableDataset.state_dict()`` + step/epoch;
  ``train.resume`` (``auto``, the default | PATH | null; :mod:`biomedica_hf.train.rundir`: an output folder
  holds one run, ``--overwrite`` clears it) resumes exactly (with ``num_workers: 0``; the shuffle buffer's
  content is not part of a ``datasets`` state and is refilled on resume, so use ``shuffle_buffer: 0`` where
  bit-exact resume matters);
* output: a start line (world size, device, samples per rank, steps per epoch), a progress bar on rank 0
  (:mod:`biomedica_hf.train.progress`); ``output_dir/log.jsonl``: step, epoch, samples, loss, lr, logit_scale,
  grad_norm, samples/s, data-wait fraction, plus ``start`` and ``epoch_end`` events (per-rank sample counts);
  see docs/training.md.

The config (:class:`biomedica_hf.train.config.ClipConfig`) is checked (unknown keys are errors) and used as that
typed object down to every value's use; only ``config.yaml`` and the model card see it as a mapping.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_hf.train import checkpoint
from biomedica_hf.train.config import ClipConfig, check_config, resolve_precision, to_dict
from biomedica_hf.train.config import load_config as _load_config
from biomedica_hf.train.distributed import end_run

if TYPE_CHECKING:
    import torch


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML file (a path or a bundled name) <- ``key.sub=value`` overrides, checked (a plain dict)."""
    return _load_config("clip", path, overrides or ())


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


def pad_batch(batch: dict, size: int) -> dict:
    """``batch`` padded to ``size`` rows (copies of its first row) with ``valid`` marking the real ones."""
    import torch

    n = batch["pixel_values"].shape[0]
    out = {k: v for k, v in batch.items() if not isinstance(v, torch.Tensor)}
    idx = torch.cat([torch.arange(n), torch.zeros(max(0, size - n), dtype=torch.long)])
    for k, v in batch.items():
        if isinstance(v, torch.Tensor) and k != "valid":
            out[k] = v if n == size else v.index_select(0, idx)
    out["valid"] = torch.arange(size) < n
    return out


class _Batches:
    """Micro-batches epoch after epoch, the same number on every rank, every sample once per epoch.

    Every rank reads its own share of the selected samples (``load_biomedica(rank=)``: shares differ by at most
    one sample) and pads its micro-batches to ``batch_size`` (``valid`` marks the real rows; DataLoader workers
    each end with a partial batch). The epoch ends when every rank's share is exhausted: a rank that ran out
    first joins the remaining micro-batches with an all-padding batch (weight 0), so no sample is dropped and no
    rank waits forever. One all-reduce per micro-batch decides; at the end of an epoch the ranks' counts of real
    samples are gathered (``epoch_counts``, the run log's ``epoch_end`` record)."""

    def __init__(self, accelerator, ds, loader_factory, collate, epoch: int, max_epochs: int, batch_size: int,
                 template_factory, epoch_samples: int = 0) -> None:
        self.acc, self.ds, self.factory, self.collate = accelerator, ds, loader_factory, collate
        self.epoch, self.max_epochs, self.it, self.wait = epoch, max_epochs, None, 0.0
        self.batch_size, self.template_factory, self.template = batch_size, template_factory, None
        self.epoch_samples, self.exhausted, self.ended = epoch_samples, False, []

    def _start(self) -> None:
        self.ds.set_epoch(self.epoch)
        self.collate.epoch = self.epoch
        self.it = iter(self.factory())

    def _dummy(self) -> dict:
        if self.template is None:        # resumed after this rank's share ended: one sample of a fresh stream
            self.template = pad_batch(self.template_factory(), self.batch_size)
        return self.template | {"valid": torch_zeros_like(self.template["valid"])}

    def next(self) -> dict | None:
        import torch

        t0 = time.perf_counter()
        try:
            while self.epoch < self.max_epochs:
                if self.it is None:
                    self._start()
                batch = None if self.exhausted else next(self.it, None)
                self.exhausted = batch is None
                more = torch.tensor([0 if batch is None else 1], device=self.acc.device)
                if self.acc.num_processes > 1:   # every rank must take the same decision
                    more = self.acc.reduce(more, reduction="sum")
                if int(more.item()) > 0:
                    if batch is None:
                        return self._dummy()
                    n = batch["pixel_values"].shape[0]
                    self.epoch_samples += n
                    batch = pad_batch(batch, self.batch_size)
                    self.template = batch
                    return batch
                counts = torch.tensor([self.epoch_samples], device=self.acc.device)
                if self.acc.num_processes > 1:
                    counts = self.acc.gather(counts)
                self.ended.append((self.epoch, [int(c) for c in counts.tolist()]))
                self.epoch, self.it, self.exhausted, self.epoch_samples = self.epoch + 1, None, False, 0
            return None
        finally:
            self.wait += time.perf_counter() - t0


def torch_zeros_like(t):
    import torch

    return torch.zeros_like(t)


def train(cfg: dict | ClipConfig) -> dict:
    """Run a recipe (a config dict or :class:`~biomedica_hf.train.config.ClipConfig`, checked here, then used as
    the typed config down to every value's use); returns ``{"step", "log", "export", ...}`` (on every rank)."""
    import torch
    from accelerate import Accelerator

    cfg = check_config("clip", cfg)
    from biomedica_hf.dataset.loader import check_dataset_path

    check_dataset_path(cfg.data.path)       # a wrong data.path: one line, before any model is built
    cpu = cfg.train.cpu or not torch.cuda.is_available()
    bf16_ok = not cpu and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(cpu=cpu, mixed_precision=resolve_precision(cfg.train.mixed_precision, bf16_ok))
    result = _train(accelerator, cfg)   # the model, optimizer and stream die with its frame ...
    end_run(accelerator)                # ... before the process group is destroyed
    return result


def _train(accelerator, cfg: ClipConfig) -> dict:
    import torch
    from accelerate.utils import set_seed

    from biomedica_hf.clip.data import Collate, build_stream
    from biomedica_hf.clip.loss import ClipLoss
    from biomedica_hf.clip.model import build_model
    from biomedica_hf.train import rundir
    from biomedica_hf.train.progress import Progress, banner, micro_batches

    t_cfg, d_cfg = cfg.train, cfg.data
    cuda = accelerator.device.type == "cuda"
    rank, world = accelerator.process_index, accelerator.num_processes
    seed = cfg.seed
    set_seed(seed)
    out = Path(cfg.output_dir)
    rundir.open_run(accelerator, out, cfg, t_cfg.overwrite)   # warning, refusal or a clean start

    clip = build_model(to_dict(cfg.model), seed=seed)     # clip/ sits below train/: it takes the section's fields
    base_state = ({k: v.detach().clone().cpu() for k, v in clip.base_core().state_dict().items()}
                  if cfg.wise_ft.alpha is not None else None)
    if t_cfg.grad_checkpointing:
        clip.set_grad_checkpointing(True)
    lora = cfg.lora
    if lora.enabled:
        clip.apply_lora(lora.r, lora.alpha, lora.dropout, lora.target_modules)

    selection = d_cfg.selection()
    num_workers = d_cfg.num_workers

    def stream():
        return build_stream(d_cfg.path, selection, rank, world, seed, num_workers=num_workers,
                            shuffle_buffer=d_cfg.shuffle_buffer)

    ds = stream()
    collate = Collate(clip, d_cfg.reference_prob, seed)
    bs = t_cfg.batch_size
    accum = t_cfg.grad_accum
    n_local = ds.info.splits["train"].num_examples
    counts = torch.tensor([n_local], device=accelerator.device)
    rank_samples = [int(c) for c in (accelerator.gather(counts) if world > 1 else counts).tolist()]
    if min(rank_samples) == 0:
        from biomedica_hf.errors import BiomedicaError

        raise BiomedicaError(f"{sum(rank_samples)} selected sample(s) for {world} processes: every process needs "
                             f"at least one", "use fewer processes or select more data")
    steps_per_epoch = math.ceil(max(micro_batches(n, bs, num_workers) for n in rank_samples) / accum)
    max_epochs = t_cfg.max_epochs or 10**9
    max_steps = t_cfg.max_steps or (steps_per_epoch * max_epochs if t_cfg.max_epochs else None)
    if not max_steps:
        raise ValueError("train.max_steps (or train.max_epochs) is required: it sets the cosine schedule")
    optimizer = torch.optim.AdamW(_param_groups(clip, t_cfg.weight_decay), lr=t_cfg.lr, betas=tuple(t_cfg.betas),
                                  eps=t_cfg.eps)
    # not prepare()d: accelerate's scheduler wrapper would step it once per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t_cfg.warmup_steps, max_steps))
    model, optimizer = accelerator.prepare(clip, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    def loader():
        return torch.utils.data.DataLoader(ds, batch_size=bs, collate_fn=collate, num_workers=num_workers,
                                           drop_last=False, pin_memory=cuda)

    def template():     # one sample of the rank's share, for an all-padding batch after a resume at its end
        return collate(list(stream().take(1)))

    step, epoch, samples, epoch_samples = 0, 0, 0, 0
    ck = checkpoint.resume_checkpoint(t_cfg.resume, out)
    if ck is not None:
        accelerator.load_state(str(ck))
        state = checkpoint.read_trainer_state(ck)
        step, epoch, samples = state["step"], state["epoch"], state["samples"]
        ds.set_epoch(epoch)
        data_state = checkpoint.read_data_state(ck, rank) if num_workers == 0 else None
        if data_state is not None:
            epoch_samples = int(data_state.pop("epoch_samples", 0))
            ds.load_state_dict(data_state.get("stream", data_state))
        accelerator.print(f"resumed from {ck} at step {step}")
    if accelerator.is_main_process:
        rundir.trim_log(out, step)
    batches = _Batches(accelerator, ds, loader, collate, epoch, max_epochs, bs, template, epoch_samples)

    loss_fn = ClipLoss()
    record_keys = d_cfg.record_keys
    log_every, save_every = t_cfg.log_every or 1, t_cfg.save_every
    max_scale = math.log(t_cfg.max_logit_scale)
    log_path = out / "log.jsonl"
    losses: list[float] = []
    device = f"{accelerator.device.type}" + (f", {accelerator.distributed_type.value}" if world > 1 else "")
    if accelerator.is_main_process:
        print(banner("clip", world, device, rank_samples, steps_per_epoch, bs, accum, max_steps, step),
              file=sys.stderr, flush=True)
        with log_path.open("a") as fh:
            fh.write(json.dumps({"event": "start", "step": step, "world_size": world, "device": device,
                                 "rank_samples": rank_samples, "steps_per_epoch": steps_per_epoch,
                                 "max_steps": max_steps, "batch_size": bs, "grad_accum": accum,
                                 "num_workers": num_workers}) + "\n")
    progress = Progress(max_steps, step, accelerator.is_main_process, desc="clip")
    model.train()

    def save(dirname: Path) -> None:
        accelerator.wait_for_everyone()
        accelerator.save_state(str(dirname))
        if num_workers == 0:
            checkpoint.write_data_state(dirname, rank, {"stream": ds.state_dict(),
                                                        "epoch_samples": batches.epoch_samples})
        if accelerator.is_main_process:
            checkpoint.write_trainer_state(dirname, {"step": step, "epoch": batches.epoch, "samples": samples,
                                                     "world_size": world})
        accelerator.wait_for_everyone()

    def log_epochs() -> None:
        while batches.ended:
            ended, per_rank = batches.ended.pop(0)
            if accelerator.is_main_process:
                with log_path.open("a") as fh:
                    fh.write(json.dumps({"event": "epoch_end", "step": step, "epoch": ended,
                                         "rank_samples": per_rank, "samples": sum(per_rank)}) + "\n")

    done = False
    until_data_ends = not t_cfg.max_steps     # max_epochs: the last epoch ends when its data does
    while (until_data_ends or step < max_steps) and not done:
        t0, batches.wait, step_loss, n_local = time.perf_counter(), 0.0, 0.0, 0
        micro = 0
        for micro in range(accum):
            batch = batches.next()
            log_epochs()
            if batch is None:
                done = True
                break
            valid, keys = batch["valid"].to(accelerator.device), batch.get("keys") or []
            batch = {k: v.to(accelerator.device) for k, v in batch.items()
                     if isinstance(v, torch.Tensor) and k != "valid"}
            sync = accelerator.no_sync(model) if micro < accum - 1 else _nullcontext()
            with sync:
                with accelerator.autocast():
                    img, txt, scale = model(**batch)
                    loss = loss_fn(img, txt, scale, valid)
                accelerator.backward(loss / accum)
            step_loss += loss.detach() / accum
            n_real = int(valid.sum())
            n_local += n_real
            if record_keys and n_real:
                with (out / f"keys_rank{rank}.jsonl").open("a") as fh:
                    fh.write(json.dumps({"step": step + 1, "epoch": batches.epoch, "keys": keys[:n_real]}) + "\n")
        else:
            micro = accum
        if done and micro == 0:
            optimizer.zero_grad(set_to_none=True)
            break
        if done:   # the data ended inside an accumulation: average the micro-batches it had, on every rank
            for p in model.parameters():
                if p.grad is not None:
                    if world > 1:
                        p.grad = accelerator.reduce(p.grad, reduction="mean")
                    p.grad.mul_(accum / micro)
            step_loss = step_loss * (accum / micro)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), t_cfg.grad_clip) if t_cfg.grad_clip else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            clip.base_core().logit_scale.clamp_(0, max_scale)
        step += 1
        n_global = int(accelerator.reduce(torch.tensor([n_local], device=accelerator.device), reduction="sum").item()) \
            if world > 1 else n_local
        samples += n_global
        loss_value = float(accelerator.reduce(step_loss.reshape(1), reduction="mean").item())
        losses.append(loss_value)
        dt = time.perf_counter() - t0
        progress.update(step, batches.epoch, loss_value, n_global / dt)
        if accelerator.is_main_process and (step % log_every == 0 or step == max_steps):
            record = {"step": step, "epoch": batches.epoch, "samples": samples, "loss": loss_value,
                      "lr": scheduler.get_last_lr()[0],
                      "logit_scale": float(clip.base_core().logit_scale.detach().exp().item()),
                      "grad_norm": None if grad_norm is None else float(grad_norm),
                      "samples_per_s": n_global / dt, "data_wait_frac": batches.wait / dt}
            with log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if save_every and step % save_every == 0:
            save(checkpoint.checkpoint_dir(out, step))
    progress.close()

    accelerator.wait_for_everyone()
    result: dict[str, Any] = {"step": step, "samples": samples, "losses": losses, "log": str(log_path)}
    if step and (not save_every or step % save_every):
        save(checkpoint.checkpoint_dir(out, step))
    clip = accelerator.unwrap_model(model)
    e_cfg = cfg.export
    export_dir = out / "export"
    if clip.is_lora and e_cfg.enabled and e_cfg.adapter and accelerator.is_main_process:
        from biomedica_hf.clip.export import save_lora_adapter

        m_cfg = cfg.model
        open_clip = m_cfg.kind == "open_clip"
        save_lora_adapter(clip, export_dir / "lora_adapter",     # the trained adapter, before any WiSE-FT
                          m_cfg.name if open_clip else m_cfg.name_or_path,
                          {"kind": m_cfg.kind, "pretrained": m_cfg.pretrained if open_clip else None,
                           "data": d_cfg.path, "subset": d_cfg.subset, "steps": step})
    if cfg.wise_ft.alpha is not None:
        from biomedica_hf.clip.export import wise_ft

        clip.merge_lora()
        wise_ft(clip.base_core(), base_state, cfg.wise_ft.alpha)
    if e_cfg.enabled and accelerator.is_main_process:
        from biomedica_hf.clip.card import write_model_card
        from biomedica_hf.clip.export import export_model

        written = export_model(clip, export_dir, tuple(e_cfg.formats), "merge")   # adapter saved above
        if (export_dir / "lora_adapter").is_dir():
            written["lora_adapter"] = str(export_dir / "lora_adapter")
        if cfg.card.enabled:
            for fmt in ("open_clip", "transformers"):
                if fmt in written:       # the card renders the config as the run saved it (config.yaml)
                    write_model_card(Path(written[fmt]), to_dict(cfg), fmt,
                                     {"step": step, "samples": samples, "world_size": world,
                                      "final_loss": losses[-1] if losses else None}, cfg.card.template)
        result["export"] = written
    accelerator.wait_for_everyone()
    return result


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "losses"} | {"last_loss": (result["losses"] or [None])[-1]}


def main(argv: list[str] | None = None) -> int:
    """``python -m biomedica_hf.train.clip`` (and ``finetune/clip/train.py``)."""
    from biomedica_hf.train.cli import run_recipe

    return run_recipe("clip", __doc__, argv, train, _summary)


if __name__ == "__main__":
    sys.exit(main())

"""Check that the gathered contrastive loss is exact for world size > 1.

    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 finetune/clip/check_gather.py OUT.json

A tiny two-tower linear model is trained one step on a fixed global batch: every rank takes its slice,
computes :class:`biomedica_hf.clip.ClipLoss` (local logits vs gathered features) under DDP, and the
rank-mean loss and the averaged gradients are compared with one process computing the same global batch.
"""
from __future__ import annotations

import json
import sys

import torch


class Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.img, self.txt = torch.nn.Linear(12, 8), torch.nn.Linear(10, 8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x, t):
        return self.img(x), self.txt(t), self.logit_scale.exp()


def main(out_path: str) -> None:
    from accelerate import Accelerator

    from biomedica_hf.train.distributed import end_run

    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    check(acc, out_path)     # the DDP model dies with its frame, before the process group (see end_run)
    end_run(acc)


def check(acc, out_path: str, global_batch: int = 8) -> None:
    from biomedica_hf.clip.loss import ClipLoss

    torch.manual_seed(0)
    model = Towers()
    x, t = torch.randn(global_batch, 12), torch.randn(global_batch, 10)
    # reference: one process, the whole global batch (before DDP touches anything)
    ref = Towers()
    ref.load_state_dict(model.state_dict())
    ref_loss = ClipLoss(gather=False)(*ref(x, t))
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in ref.named_parameters()}
    ddp = acc.prepare(model)
    n = global_batch // acc.num_processes
    sl = slice(acc.process_index * n, (acc.process_index + 1) * n)
    loss = ClipLoss()(*ddp(x[sl], t[sl]))
    acc.backward(loss)
    mean_loss = acc.reduce(loss.detach().reshape(1), reduction="mean").item()
    unwrapped = acc.unwrap_model(ddp)
    grad_err = max(float((p.grad - ref_grads[name]).abs().max()) for name, p in unwrapped.named_parameters())
    if acc.is_main_process:
        with open(out_path, "w") as fh:
            json.dump({"world_size": acc.num_processes, "distributed_loss": mean_loss,
                       "single_process_loss": ref_loss.item(), "max_grad_abs_diff": grad_err}, fh)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])

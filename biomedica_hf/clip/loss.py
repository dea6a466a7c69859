"""Contrastive (InfoNCE) loss with features gathered across processes.

Each rank computes *local* logits: its own rows (local images / local texts) against the features of
the whole global batch. ``gather_features`` is an all-gather whose backward all-reduces (sums) the
gradient and keeps the local slice, so the gradient of every rank's loss reaches the features that
produced it: with the per-rank loss being the mean over local rows, the mean over ranks is exactly the
single-process loss on the global batch, and DDP's gradient averaging gives exactly its gradient.
(All-reduce instead of reduce-scatter so that gloo / CPU runs work too.)

Uneven data: every rank's micro-batch is padded to the same size and ``valid`` marks its real rows. Padding
rows are neither anchors nor negatives (their logits columns are masked, their rows weigh 0), and the loss is
the sum over the real rows divided by the mean number of real rows per rank, so that DDP's gradient average is
exactly the gradient of the mean loss over the real rows of the global batch (a rank with no real row gives a
zero loss that still takes part in every collective).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), dist.get_world_size(), x.shape[0]
        out = [torch.empty_like(x) for _ in range(ctx.world)]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_mask(valid: torch.Tensor) -> torch.Tensor:
    """The ``valid`` masks of all ranks, concatenated in rank order (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return valid
    out = [torch.empty_like(valid) for _ in range(dist.get_world_size())]
    dist.all_gather(out, valid.contiguous())
    return torch.cat(out, 0)


def gather_features(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(features of all ranks concatenated in rank order, offset of this rank's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


class ClipLoss(torch.nn.Module):
    """Symmetric InfoNCE on L2-normalised features; equal local batch sizes on every rank are required (pad
    them and pass ``valid``, the mask of real rows, for uneven data).

    ``gather=False`` computes the loss of the local batch only (a single-process reference).
    """

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        if self.gather:
            all_images, offset = gather_features(image_features)
            all_texts, _ = gather_features(text_features)
        else:
            all_images, all_texts, offset = image_features, text_features, 0
        scale = logit_scale.float()
        logits_per_image = scale * image_features @ all_texts.T
        logits_per_text = scale * text_features @ all_images.T
        labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
        if valid is None:
            return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
        valid = valid.to(device=image_features.device, dtype=torch.float32)
        all_valid = gather_mask(valid) if self.gather else valid
        pad_columns = all_valid[None, :] == 0
        logits_per_image = logits_per_image.masked_fill(pad_columns, -1e4)
        logits_per_text = logits_per_text.masked_fill(pad_columns, -1e4)
        per_row = (F.cross_entropy(logits_per_image, labels, reduction="none")
                   + F.cross_entropy(logits_per_text, labels, reduction="none")) / 2
        ranks = all_valid.shape[0] / valid.shape[0]
        return (per_row * valid).sum() / (all_valid.sum() / ranks).clamp_min(1e-9)

"""Exact image<->text retrieval ranks without the N x N similarity matrix.

For every query the correct item's rank only needs two counts over the gallery: items scoring
strictly higher, and other items scoring the same (see :mod:`.metrics` for the tie rule). They are
accumulated block by block: a (query_chunk x gallery_chunk) score block is the only quadratic
object ever allocated.

Memory bound (float32 embeddings of dimension d, N pairs):
  embeddings        2 * N * d * 4 bytes     (1 M x 512: 4.1 GB; pass float16 to halve it)
  one score block   query_chunk * gallery_chunk * 8 bytes at most (float32 scores + boolean masks)
                    = 128 MiB with the defaults 1,024 x 16,384, independent of N
  counts            2 * N * 8 bytes per direction
Work is 2 * N^2 * d multiply-adds per direction (1 M pairs, d = 512: ~1e15 flops; minutes on a GPU,
hours on a CPU), and the counts are exact for any N that fits in int64.

Scores within ``tie_eps`` of the correct item's score are ties: float32 cosine similarities carry
~1e-7 relative rounding that depends on the matmul's blocking, so identical embeddings (duplicate
captions, duplicate images) can differ in the last bits. ``tie_eps=0`` compares exactly.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from biomedica_hf.eval.metrics import TieRule, retrieval_metrics

DEFAULT_QUERY_CHUNK = 1024
DEFAULT_GALLERY_CHUNK = 16384
DEFAULT_TIE_EPS = 1e-6


@torch.no_grad()
def chunked_rank_counts(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor | None = None, *,
                        query_chunk: int = DEFAULT_QUERY_CHUNK, gallery_chunk: int = DEFAULT_GALLERY_CHUNK,
                        tie_eps: float = DEFAULT_TIE_EPS, device: str | torch.device | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (#gallery items scoring higher than the correct one, #other items tying with it).

    ``queries`` (n, d) and ``gallery`` (m, d) are embeddings (normalised for cosine similarity);
    ``targets[i]`` is the gallery index of query i's correct item (default ``i``).
    """
    device = torch.device(device) if device is not None else queries.device
    n, m = queries.shape[0], gallery.shape[0]
    targets = torch.arange(n) if targets is None else torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (n,) or (n and (int(targets.min()) < 0 or int(targets.max()) >= m)):
        raise ValueError("targets must hold one gallery index per query")
    higher = torch.zeros(n, dtype=torch.long)
    ties = torch.zeros(n, dtype=torch.long)
    compute = torch.float32                   # storage may be float16; scores are always float32
    for q0 in range(0, n, query_chunk):
        q = queries[q0:q0 + query_chunk].to(device, compute)
        tgt = targets[q0:q0 + query_chunk].to(device)
        # the correct score in float64: the reference every block is compared with
        correct = (q.double() * gallery[tgt.to(gallery.device)].to(device).double()).sum(dim=1)
        upper = (correct + tie_eps).to(compute)[:, None]
        lower = (correct - tie_eps).to(compute)[:, None]
        h = torch.zeros(q.shape[0], dtype=torch.long, device=device)
        t = torch.zeros(q.shape[0], dtype=torch.long, device=device)
        for g0 in range(0, m, gallery_chunk):
            block = q @ gallery[g0:g0 + gallery_chunk].to(device, compute).T
            inside = (tgt >= g0) & (tgt < g0 + block.shape[1])
            if inside.any():                     # the correct item is neither higher nor a tie of itself
                rows = inside.nonzero(as_tuple=True)[0]
                block[rows, tgt[rows] - g0] = float("nan")
            h += (block > upper).sum(dim=1)
            t += ((block >= lower) & (block <= upper)).sum(dim=1)
            del block
        higher[q0:q0 + q.shape[0]] = h.cpu()
        ties[q0:q0 + q.shape[0]] = t.cpu()
    return higher.numpy(), ties.numpy()


def retrieval_scores(image_emb: torch.Tensor, text_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10, 100),
                     rule: TieRule = "pessimistic", **chunk_kwargs) -> dict:
    """Both directions for paired embeddings (row i of each is pair i): ``{"image_to_text": ..., "text_to_image": ...}``."""
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError("image and text embeddings must pair row by row")
    i2t = chunked_rank_counts(image_emb, text_emb, **chunk_kwargs)
    t2i = chunked_rank_counts(text_emb, image_emb, **chunk_kwargs)
    return {"image_to_text": retrieval_metrics(*i2t, ks=ks, rule=rule),
            "text_to_image": retrieval_metrics(*t2i, ks=ks, rule=rule)}

"""Evaluation throughput on CPU: images/s through the harness for a tiny and a ViT-B-16-sized model.

    python benchmarks/bench_eval.py                    # both models, BCCD crops from ../shared/fixtures/eval
    python benchmarks/bench_eval.py --threads 1 --base-images 32 --pairs 10000

Images are real BCCD blood-cell crops (PNG, ~100-250 px), cycled to the requested count. Each row
times the harness's image path (decode + preprocess + forward + normalise, batched) with random
weights (no download); the last column times decode + preprocess alone. A last table times
the exact chunked retrieval ranking on random 512-d embeddings and extrapolates it to 1 M pairs (O(N^2)).
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from biomedica_hf.eval.adapters import load_model
from biomedica_hf.eval.evalset import decode_image, read_evalset
from biomedica_hf.eval.retrieval import chunked_rank_counts
from biomedica_hf.eval.tasks import DataContext, get_task
from biomedica_hf.eval.tiny import tiny_open_clip
from biomedica_hf.eval.zeroshot import image_embeddings


def bench_images(adapter, blobs: list[bytes], batch: int) -> dict:
    """Seconds for the image path and for decode + preprocess alone."""
    image_embeddings(adapter, blobs[:batch], batch)                      # warm-up
    t0 = time.perf_counter()
    emb = image_embeddings(adapter, blobs, batch)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in blobs:
        adapter.preprocess(decode_image(b).convert("RGB"))
    pre = time.perf_counter() - t0
    assert emb.shape[0] == len(blobs)
    return {"seconds": total, "preprocess": pre}


def bench_ranking(n: int, dim: int = 512) -> float:
    """Seconds for exact ranks in both directions of n random pairs."""
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.5 * torch.randn(n, dim, generator=g), dim=-1)
    t0 = time.perf_counter()
    chunked_rank_counts(img, txt)
    chunked_rank_counts(txt, img)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures-dir", default=None, help="shared/fixtures/eval (default: found beside the repo)")
    ap.add_argument("--tiny-images", type=int, default=512)
    ap.add_argument("--base-images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--pairs", type=int, default=20_000, help="pairs for the retrieval-ranking timing (0: skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ctx = DataContext.from_env(fixtures_dir=args.fixtures_dir)
    blobs = read_evalset(get_task("fixtures/bccd").source.files(ctx)).images

    def cycle(n: int) -> list[bytes]:
        return [blobs[i % len(blobs)] for i in range(n)]

    tiny, _, _ = tiny_open_clip(seed=0)
    base = load_model("ViT-B-16", "cpu")                                  # random weights, ViT-B-16 size
    rows = []
    for label, adapter, n in (("tiny (open_clip ViT, 32 px)", tiny, args.tiny_images),
                              ("ViT-B-16 (random weights, 224 px)", base, args.base_images)):
        params = sum(p.numel() for p in adapter.model.parameters())
        r = bench_images(adapter, cycle(n), args.batch)
        rows.append((label, params, n, r))
    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"torch {torch.__version__}\n")
    print("| model | parameters | images | batch | seconds | images/s | images/s per thread "
          "| decode + preprocess alone, images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, params, n, r in rows:
        ips = n / r["seconds"]
        print(f"| {label} | {params / 1e6:.1f} M | {n} | {args.batch} | {r['seconds']:.2f} | {ips:,.1f} | "
              f"{ips / args.threads:,.1f} | {n / r['preprocess']:,.0f} |")
    if args.pairs:
        secs = bench_ranking(args.pairs)
        at_1m = secs * (1_000_000 / args.pairs) ** 2
        print("\n| exact retrieval ranks (both directions, d = 512) | pairs | seconds | pairs/s | 1 M pairs (extrapolated) |")
        print("|---|---:|---:|---:|---:|")
        print(f"| chunked, 1,024 x 16,384 blocks | {args.pairs:,} | {secs:.2f} | {args.pairs / secs:,.0f} | "
              f"{at_1m / 3600:.1f} h |")


if __name__ == "__main__":
    main()

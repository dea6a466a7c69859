"""Evaluation throughput on CPU: images/s through the harness for a tiny and a ViT-B-16-sized model.

    python benchmarks/bench_eval.py                    # both models, BCCD crops from ../shared/fixtures/eval
    python benchmarks/bench_eval.py --threads 1 --base-images 32 --pairs 10000

Images are real BCCD blood-cell crops (PNG, ~100-250 px), cycled to the requested count. Each row
times the harness's image path (decode + preprocess + forward + normalise, batched) with random
weights (no download); the last column times decode + preprocess alone. A last table times
the exact chunked retrieval ranking on random 512-d embeddings and extrapolates it to 1 M pairs (O(N^2)).

Two more tables:

* **probes** - the linear probe (C grid on val, refit) and few-shot (k = 1..16, N seeds) fits on the
  tiny model's embeddings of the 1,133 BCCD crops, next to the time to embed the same images (the
  anchor: the forward passes a probe needs anyway; a bigger model makes embedding slower, the fits
  only see the embedding width);
* **pixels** - open_clip's eval transform against transformers' ``CLIPImageProcessor`` (default
  torchvision backend and the PIL backend) at 224 px on every real image in the fixtures (eval sets
  and PMC figures): how many get a shifted centre crop and the pixel differences.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from biomedica_hf.clip.model import load_model
from biomedica_hf.clip.tiny import tiny_open_clip
from biomedica_hf.eval.evalset import decode_image, read_evalset
from biomedica_hf.eval.retrieval import chunked_rank_counts
from biomedica_hf.eval.tasks import DataContext, get_task
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


def bench_probes(adapter, ctx, batch: int, seeds: int) -> list[tuple]:
    """Seconds to embed BCCD train/val/test and to fit the probes on those embeddings."""
    import numpy as np

    from biomedica_hf.eval.probe import Splits, few_shot, linear_probe
    from biomedica_hf.eval.zeroshot import class_space

    task = get_task("fixtures/bccd")
    parts = [read_evalset(task.source.with_split(s).files(ctx)) for s in ("train", "val", "test")]
    t0 = time.perf_counter()
    emb = [image_embeddings(adapter, p.images, batch).double().numpy() for p in parts]
    embed_s = time.perf_counter() - t0
    names = class_space(parts[0])[0]
    ys = [np.array([names.index(o[a]) for o, a in zip(p.options, p.answer_idx)]) for p in parts]
    s = Splits(emb[0], ys[0], emb[1], ys[1], emb[2], ys[2])
    t0 = time.perf_counter()
    lp = linear_probe(s, names)
    lp_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fs = few_shot(s, names, seeds=tuple(range(seeds)))
    fs_s = time.perf_counter() - t0
    n = sum(len(p) for p in parts)
    return [("embed train + val + test (anchor)", n, embed_s, "-"),
            (f"linear probe: {len(lp['c_curve'])} C values + refit", len(parts[0]), lp_s,
             f"{100 * lp['balanced_accuracy']:.1f}"),
            (f"few-shot: k = 1,2,4,8,16 x {seeds} seeds (C chosen on val each)", len(parts[0]), fs_s,
             f"{100 * fs['16']['balanced_accuracy']:.1f} (k=16)")]


def bench_pixels(fixtures: str) -> list[tuple]:
    """open_clip eval transform vs CLIPImageProcessor (two backends) on every real fixture image at 224 px."""
    from pathlib import Path

    import numpy as np
    import open_clip
    from PIL import Image
    from transformers import CLIPImageProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from biomedica_hf.clip.export import compare_preprocessing

    root = Path(fixtures).parent
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff")
                   and "bccd_cells" not in p.parts)
    images = []
    for f in files:
        try:
            im = Image.open(f)
            im.load()
            if min(im.size) >= 32:
                images.append(im.convert("RGB"))
        except Exception:  # noqa: BLE001, S112 - a fixture that is deliberately broken
            continue
    kw = {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
          "image_mean": list(open_clip.OPENAI_DATASET_MEAN), "image_std": list(open_clip.OPENAI_DATASET_STD)}
    transform = open_clip.image_transform(224, is_train=False)
    rows = []
    for label, proc in (("CLIPImageProcessor (torchvision backend, the default)", CLIPImageProcessor(**kw)),
                        ("CLIPImageProcessorPil (backend='pil')", CLIPImageProcessorPil(**kw))):
        cmp = compare_preprocessing(transform, proc, images)
        shifted = np.array([r["crop_differs"] for r in cmp])
        same = [r["max_abs_diff"] for r, s in zip(cmp, shifted) if not s]
        moved = [r["mean_abs_diff"] for r, s in zip(cmp, shifted) if s]
        rows.append((label, len(images), int(shifted.sum()), max(same) if same else 0.0,
                     float(np.mean(moved)) if moved else float("nan")))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixtures-dir", default=None, help="shared/fixtures/eval (default: found beside the repo)")
    ap.add_argument("--tiny-images", type=int, default=512)
    ap.add_argument("--base-images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--pairs", type=int, default=20_000, help="pairs for the retrieval-ranking timing (0: skip)")
    ap.add_argument("--seeds", type=int, default=5, help="few-shot seeds in the probe table (0: skip the table)")
    ap.add_argument("--no-pixels", action="store_true", help="skip the preprocessing-agreement table")
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
    if args.seeds:
        print("\n| probes on the tiny model's embeddings of BCCD (random weights, d = 32) | images | seconds | "
              "test balanced acc. % |")
        print("|---|---:|---:|---:|")
        for label, n, secs, acc in bench_probes(tiny, ctx, args.batch, args.seeds):
            print(f"| {label} | {n} | {secs:.2f} | {acc} |")
    if not args.no_pixels:
        print("\n| open_clip eval transform (224 px) vs | images | shifted crop | max abs pixel diff, same crop "
              "| mean abs pixel diff, shifted crop |")
        print("|---|---:|---:|---:|---:|")
        for label, n, shifted, diff, mean_shift in bench_pixels(str(ctx.fixtures_dir)):
            print(f"| {label} | {n} | {shifted} | {diff:.4f} | {mean_shift:.4f} |")


if __name__ == "__main__":
    main()

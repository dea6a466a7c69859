"""Embedding throughput on CPU: images/s of ``biomedica embed`` on real fixture figures.

The fixture articles with images are replicated (``bench_build.replicate``) to >= --figures figures and
built into a dataset folder; then, for DINOv2 configurations with RANDOM weights (no checkpoint is
reachable offline; speed does not depend on the weights):

* tiny:  the test model (hidden 32, 2 layers, with registers), saved and loaded via ``from_pretrained``
* base:  ``Dinov2Config()`` defaults = ViT-B/14 (hidden 768, 12 layers, 12 heads), 86 M parameters
* large: ViT-L/14 with 4 registers (hidden 1024, 24 layers, 16 heads), the architecture of the
         default ``facebook/dinov2-with-registers-large``, 304 M parameters

it measures decode + preprocess alone (read by byte offset, JPEG draft decode, pad to 224), the
forward pass alone on one batch of preprocessed images, and ``embed_dataset`` end to end (decode
threads overlapping the model). Prints a Markdown table.

    python benchmarks/bench_embed.py [--figures 120] [--batch 32] [--models tiny,base,large] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_build import replicate

from biomedica_hf.ingest.pipeline import BuildConfig, build
from biomedica_hf.clip.backbones import embed_images
from biomedica_hf.clip.pixels import prepare_image
from biomedica_hf.concepts.embed import embed_dataset, load_job, read_info
from biomedica_hf.concepts.layout import shard_index_files
from biomedica_hf.io.ranges import LocalFile

IMAGE_SIZE = 224
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]   # DINOv2's processor normalisation


def configs() -> dict[str, tuple[str, object]]:
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    return {
        "tiny": ("tiny (test config, registers)", Dinov2WithRegistersConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=56, patch_size=14)),
        "base": ("ViT-B/14 (`Dinov2Config()`)", Dinov2Config()),
        "large": ("ViT-L/14 + registers", Dinov2WithRegistersConfig(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=518,
            num_register_tokens=4)),
    }


def all_image_bytes(ds: Path) -> list[bytes]:
    out = []
    for path in shard_index_files(ds):
        job = load_job(path)
        if job is None:
            continue
        with LocalFile(ds / job.shard) as fh:
            out += list(fh.ranges(job.image_offsets, job.image_sizes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--figures", type=int, default=120)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--models", default="tiny,base,large")
    ap.add_argument("--keep", type=Path, default=None, help="keep the dataset folder here")
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, BitImageProcessor

    work = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    try:
        packages = work / "packages"
        packages.mkdir()
        replicate(packages, args.figures)
        ds = args.keep or work / "ds"
        build(BuildConfig(out=ds, source="local", source_opts={"path": str(packages)}, progress=False,
                          dedup_images=False))   # copies have identical bytes: keep them all
        datas = all_image_bytes(ds)
        n = len(datas)

        t = time.perf_counter()
        images = [prepare_image(d, IMAGE_SIZE) for d in datas]
        decode_rate = n / (time.perf_counter() - t)

        processor = BitImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                      image_mean=MEAN, image_std=STD)
        rows = []
        for name in args.models.split(","):
            label, config = configs()[name]
            torch.manual_seed(0)
            model = AutoModel.from_config(config).eval()
            params = sum(p.numel() for p in model.parameters())
            if name == "tiny":                          # the from_pretrained path, as the tests
                folder = work / "tiny-model"
                model.save_pretrained(folder)
                processor.save_pretrained(folder)
                model_arg, proc_arg = str(folder), None
            else:
                model_arg, proc_arg = model, processor
            batch = images[: args.batch] * max(1, -(-args.batch // len(images[: args.batch])))
            batch = batch[: args.batch]
            embed_images(model, processor, batch[:2])                # warm-up
            t = time.perf_counter()
            emb = embed_images(model, processor, batch)
            forward_rate = len(batch) / (time.perf_counter() - t)
            embed_dataset(ds, model_arg, batch_size=args.batch, device="cpu", image_size=IMAGE_SIZE,
                          progress=False, processor=proc_arg, force=True)
            run = read_info(ds)["last_run"]
            rows.append((label, params, emb.shape[1], forward_rate, n / run["compute_seconds"]))
            del model

        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\n{n} real fixture figures (JPEG/PNG, fixtures replicated), {IMAGE_SIZE} px, "
              f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} CPUs (load average {load:.1f} at the end), random weights\n")
        print(f"Decode + preprocess alone (1 thread): {decode_rate:,.0f} images/s\n")
        print("| model | parameters | dim | forward only, images/s | `embed_dataset` end to end, images/s |")
        print("|---|---:|---:|---:|---:|")
        for label, params, dim, fwd, e2e in rows:
            size = f"{params / 1e6:,.1f} M" if params >= 1e6 else f"{params / 1e3:,.0f} k"
            print(f"| {label} | {size} | {dim} | {fwd:,.1f} | {e2e:,.1f} |")
        print()
        print(json.dumps({"samples": n, "decode_per_s": decode_rate,
                          "rows": [dict(zip(("model", "params", "dim", "forward_per_s", "e2e_per_s"), r))
                                   for r in rows]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

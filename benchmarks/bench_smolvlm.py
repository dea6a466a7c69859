"""SmolVLM fine-tuning throughput for the tiny random config on CPU (one process): tokens/s and samples/s for
data encoding (decode + processor + chat template) and for LoRA training steps (forward + backward + AdamW),
with and without gradient checkpointing.

    python benchmarks/bench_smolvlm.py                       # builds the fixture dataset in a temp dir
    python benchmarks/bench_smolvlm.py --dataset DS --steps 20 --batch-sizes 1 2 4 --threads 1
"""
from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None, help="a `biomedica build` folder (default: build the PMC fixtures)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--longest-edge", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from transformers import AutoProcessor

    from biomedica_hf.train.config import SmolVLMLora, SmolVLMModel
    from biomedica_hf.train.smolvlm import load_model
    from biomedica_hf.vlm.data import collate, example_stream, set_longest_edge
    from biomedica_hf.vlm.tiny import save_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_smolvlm_"))
    ds = args.dataset
    if ds is None:
        ds = str(tmp / "ds")
        subprocess.run([str(Path(sys.executable).parent / "biomedica"), "build", "--input",
                        str(REPO.parent / "shared" / "fixtures" / "pmc" / "articles"), "--out", ds, "--no-progress",
                        "--shard-samples", "4"], check=True, capture_output=True)
    model_dir = save_tiny_model(tmp / "tiny", ["Describe this figure."])
    processor = AutoProcessor.from_pretrained(model_dir)
    set_longest_edge(processor, args.longest_edge)

    rows = []
    n_enc = 0
    stream = example_stream(ds, processor, max_length=args.max_length, cycle=True)
    t0 = time.perf_counter()
    pool = list(itertools.islice(stream, 48))
    dt = time.perf_counter() - t0
    n_enc = len(pool)
    rows.append(("encode (decode+processor)", "-", "-", sum(len(e.input_ids) for e in pool) / dt, n_enc / dt))

    lora = SmolVLMLora()                              # the recipe's default LoRA
    for gc, bs in itertools.product([False, True], args.batch_sizes):
        mcfg = SmolVLMModel(dtype="float32", quantization=None)
        torch.manual_seed(0)
        model = load_model(model_dir, mcfg, lora, grad_checkpointing=gc)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        batches = [collate([pool[(i * bs + j) % len(pool)] for j in range(bs)], processor.tokenizer.pad_token_id)
                   for i in range(args.steps + 2)]
        for b in batches[:2]:                                  # warm-up
            model(**b).loss.backward(); opt.step(); opt.zero_grad()
        tokens = 0
        t0 = time.perf_counter()
        for b in batches[2:]:
            model(**b).loss.backward()
            opt.step()
            opt.zero_grad()
            tokens += int(b["attention_mask"].sum())
        dt = time.perf_counter() - t0
        rows.append((f"train LoRA r={lora['r']}", bs, "on" if gc else "off", tokens / dt, args.steps * bs / dt))

    print(f"\nSmolVLM tiny random config (Idefics3: vision 1x32, text 2x32, 32-px tiles, 4 tokens/tile), CPU, "
          f"{args.threads} thread(s), torch {torch.__version__}, max_length {args.max_length}, "
          f"longest_edge {args.longest_edge}, {args.steps} steps\n")
    print(f"| {'stage':<26} | {'batch':>5} | {'grad ckpt':>9} | {'tokens/s':>10} | {'samples/s':>9} |")
    print(f"|{'-' * 28}|{'-' * 6}:|{'-' * 10}:|{'-' * 11}:|{'-' * 10}:|")
    for name, bs, gc, tps, sps in rows:
        print(f"| {name:<26} | {bs!s:>5} | {gc:>9} | {tps:>10,.0f} | {sps:>9,.1f} |")


if __name__ == "__main__":
    main()

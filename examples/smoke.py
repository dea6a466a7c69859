#!/usr/bin/env python
"""Every stage of biomedica-hf end to end on the bundled sample, offline, on CPU, with TINY RANDOM models.

    python examples/smoke.py --out smoke_out        # or: make smoke

build -> card -> embed -> cluster -> annotation-sheets -> label (a generated annotation file) -> CLIP
recipe -> SmolVLM recipe -> caption -> eval -> index -> serve + one query -> RAG example. Only the
public command lines are called (``biomedica ...``, ``accelerate launch -m biomedica_hf.train.<recipe>``,
``examples/rag_agent.py``). The models are ``tiny-random-*`` (configs in ``examples/smoke/``, random
weights): the run checks that each stage works and feeds the next, never the quality of what comes out.
Writes ``OUT/smoke_summary.json`` (each stage: command, seconds, what it produced) and exits non-zero
at the first failing stage, with that stage's output.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "smoke"
BIN = Path(sys.executable).parent
BANNER = ("SMOKE RUN WITH TINY RANDOM MODELS (tiny-random-dinov2, tiny-random-clip, tiny-random-lm and the "
          "recipes' tiny configs): random weights, so every embedding, cluster, score, caption and answer below "
          "is meaningless. This checks that each stage runs and feeds the next, not quality.")
# the generated "annotator": cluster i gets ANNOTATION[i % 4] (real taxonomy names; not a real annotation)
ANNOTATION = [("multiple", "multiple panels: images & plots", "Plots and Charts", "bar plot"),
              ("single", "single panel", "Microscopy", "light microscopy"),
              ("single", "single panel", "Clinical Imaging", "x-ray radiography"),
              ("single", "single panel", "Illustrative Diagrams", "flowchart")]
QUESTION = "What do membrane invaginations do during cell division?"


def tool(name: str) -> str:
    """An executable of this environment (``biomedica``, ``accelerate``), next to this Python first."""
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


class Smoke:
    def __init__(self, out: Path, processes: int, timeout: int):
        self.out, self.processes, self.timeout = out, processes, timeout
        self.ds = out / "ds"
        self.models = out / "models"
        self.summary: dict = {"banner": BANNER, "stages": []}
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                    "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}

    # ------------------------------------------------------------------ plumbing
    def run(self, stage: str, cmd: list, produced: Path | list[Path] | None = None, env: dict | None = None) -> str:
        cmd = [str(c) for c in cmd]
        print(f"\n=== {stage}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=REPO, env={**self.env, **(env or {})},
                           timeout=self.timeout)
        seconds = round(time.perf_counter() - t0, 1)
        if r.returncode != 0:
            print(r.stdout[-4000:], r.stderr[-6000:], sep="\n", file=sys.stderr)
            self.record(stage, cmd, seconds, ok=False)
            raise SystemExit(f"smoke: stage {stage!r} failed (exit {r.returncode}); output above")
        tail = "\n".join((r.stdout.strip() or r.stderr.strip()).splitlines()[-4:])
        if tail:
            print(tail)
        paths = [produced] if isinstance(produced, Path) else (produced or [])
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            self.record(stage, cmd, seconds, ok=False)
            raise SystemExit(f"smoke: stage {stage!r} exited 0 but did not write {missing}")
        self.record(stage, cmd, seconds, ok=True, produced=[str(p) for p in paths])
        print(f"--- {stage}: ok in {seconds} s", flush=True)
        return r.stdout

    def record(self, stage: str, cmd: list[str], seconds: float, ok: bool, **extra) -> None:
        self.summary["stages"].append({"stage": stage, "ok": ok, "seconds": seconds, "command": cmd, **extra})
        (self.out / "smoke_summary.json").write_text(json.dumps(self.summary, indent=1))

    # ------------------------------------------------------------------ tiny random models from the configs
    def make_models(self) -> None:
        t0 = time.perf_counter()
        self.models.mkdir(parents=True, exist_ok=True)
        import torch
        from transformers import AutoConfig, AutoModel, BitImageProcessor

        spec = json.loads((CONFIGS / "tiny-random-dinov2.json").read_text())
        dino = self.models / "tiny-random-dinov2"
        if not (dino / "config.json").exists():
            torch.manual_seed(0)
            cfg = dict(spec["config"])
            AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(dino)
            BitImageProcessor(**spec["image_processor"]).save_pretrained(dino)
        clip = self.models / "tiny-random-clip"   # open_clip config only: seeded random weights when loaded
        shutil.copytree(CONFIGS / "tiny-random-clip", clip, dirs_exist_ok=True)
        self.record("tiny random models", ["(made from examples/smoke/*)"], round(time.perf_counter() - t0, 1),
                    ok=True, produced=[str(dino), str(clip)])
        print(f"made {dino.name}, {clip.name} in {self.models}")

    def make_lm(self) -> Path:
        """tiny-random-lm: a random GPT-2 and a BPE tokenizer trained on the built dataset's captions."""
        import pyarrow.parquet as pq
        import torch
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

        lm = self.models / "tiny-random-lm"
        if (lm / "config.json").exists():
            return lm
        spec = json.loads((CONFIGS / "tiny-random-lm.json").read_text())
        captions = [c for c in pq.read_table(self.ds / "figures.parquet", columns=["caption"])["caption"].to_pylist()
                    if c]
        bpe = Tokenizer(models.BPE(unk_token=None))
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        bpe.train_from_iterator(captions, trainers.BpeTrainer(
            vocab_size=spec["tokenizer"]["vocab_size"], special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                      pad_token="<|endoftext|>")
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                                           eos_token_id=tok.eos_token_id, **spec["config"]))
        model.save_pretrained(lm)
        tok.save_pretrained(lm)
        return lm

    def annotation_file(self) -> Path:
        """A generated annotation for every cluster of the blank file ``annotation-sheets`` wrote."""
        blank = json.loads((self.ds / "concepts" / "sheets" / "annotations_blank.json").read_text())
        labels = {}
        for c in blank:
            ptype, subtype, glob, local = ANNOTATION[int(c) % len(ANNOTATION)]
            labels[c] = {"panel_type": ptype, "panel_subtype": subtype, "global_class": [glob],
                         "local_class": [local]}
        path = self.out / "annotations" / "smoke_annotator.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(labels, indent=1))
        return path

    def serve_and_query(self, index: Path) -> dict:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [tool("biomedica"), "serve", str(index), "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
        print(f"\n=== serve + query: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        log = open(self.out / "serve.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"smoke: serve exited with {proc.returncode}: "
                                     f"{(self.out / 'serve.log').read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(base + "/health", timeout=2) as r:
                        health = json.load(r)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("smoke: serve did not answer /health in 120 s") from None
                    time.sleep(0.3)
            query = urllib.parse.urlencode({"q": "membrane invagination cell division", "limit": 3})
            with urllib.request.urlopen(f"{base}/search?{query}", timeout=60) as r:
                result = json.load(r)
            with urllib.request.urlopen(base + result["results"][0]["thumbnail_url"], timeout=60) as r:
                thumb = r.read()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()
        if not result["results"] or not thumb.startswith(b"\xff\xd8"):
            raise SystemExit(f"smoke: the query found nothing or the thumbnail is not a JPEG: {result}")
        top = result["results"][0]
        print(f"{health['figures']} figures; GET /search?{query} -> total {result['total']}, "
              f"top: {top['key']} ({top['title']!r})")
        self.record("serve + query", cmd + [f"GET /search?{query}"], round(time.perf_counter() - t0, 1), ok=True,
                    total=result["total"], top=top["key"])
        return result

    # ------------------------------------------------------------------ the stages
    def main(self) -> None:
        print("=" * 100 + "\n" + BANNER + "\n" + "=" * 100, flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        bm = tool("biomedica")
        accelerate = [tool("accelerate"), "launch", "--num_machines", "1", "--mixed_precision", "no",
                      "--dynamo_backend", "no", "--num_processes", str(self.processes),
                      *(["--multi_gpu"] if self.processes > 1 else [])]
        cpu = {"ACCELERATE_USE_CPU": "1"}
        self.make_models()
        self.run("build", [bm, "build", "--sample", "--out", self.ds, "--workers", 2, "--no-progress"],
                 self.ds / "figures.parquet")
        self.run("card", [bm, "card", self.ds], self.ds / "README.md")
        self.run("embed", [bm, "embed", self.ds, "--model", self.models / "tiny-random-dinov2", "--batch", 8,
                           "--device", "cpu", "--image-size", 56, "--no-progress"], self.ds / "embeddings")
        self.run("cluster", [bm, "cluster", self.ds, "--pca", 8, "--k", 4, "--no-progress"], self.ds / "concepts")
        self.run("annotation-sheets", [bm, "annotation-sheets", self.ds, "--per-cluster", 4, "--no-progress"],
                 self.ds / "concepts" / "sheets" / "index.html")
        self.run("label", [bm, "label", self.ds, "--annotations", self.annotation_file()],
                 self.ds / "concepts" / "labels.parquet")
        clip_run = self.out / "runs" / "clip"
        self.run("CLIP recipe", [*accelerate, "-m", "biomedica_hf.train.clip", "--config",
                                 "cpu_smoke", "--set", f"data.path={self.ds}",
                                 "--set", f"output_dir={clip_run}"], clip_run / "export" / "open_clip", env=cpu)
        vlm_run = self.out / "runs" / "smolvlm"
        self.run("SmolVLM recipe", [*accelerate, "-m", "biomedica_hf.train.smolvlm", "--config",
                                    "cpu_smoke", "--set", f"data.path={self.ds}",
                                    "--set", f"output_dir={vlm_run}", "--threads", 1], vlm_run / "merged", env=cpu)
        figure = self.out / "figure.jpg"
        self._first_image(figure)
        self.run("caption", [bm, "caption", figure, "--model", vlm_run / "merged", "--max-new-tokens", 8])
        self.run("eval", [bm, "eval", "--model", clip_run / "export" / "open_clip", "--tasks",
                          f"retrieval:{self.ds}", "--out", self.out / "runs" / "eval", "--device", "cpu",
                          "--name", "tiny-random-clip (smoke)"], self.out / "runs" / "eval")
        index = self.ds / "search_index"
        self.run("index", [bm, "index", self.ds, "--encoder", f"local-dir:{self.models / 'tiny-random-clip'}",
                           "--no-progress"], index / "index.json")
        self.serve_and_query(index)
        lm = self.make_lm()
        answer = self.out / "rag_answer.json"
        out = self.run("RAG example", [sys.executable, "examples/rag_agent.py", "--index", index, "--model", lm,
                                       "--question", QUESTION, "--k", 3, "--max-new-tokens", 16, "--json"])
        result = json.loads(out.strip().splitlines()[-1])
        answer.write_text(json.dumps(result, indent=1))
        if not result["sources"]:
            raise SystemExit("smoke: the RAG example retrieved no sources")
        total = sum(s["seconds"] for s in self.summary["stages"])
        self.summary.update(ok=True, seconds=round(total, 1))
        (self.out / "smoke_summary.json").write_text(json.dumps(self.summary, indent=1))
        print("\n" + "\n".join(f"  {s['stage']:<20} {s['seconds']:>6} s" for s in self.summary["stages"]))
        print(f"smoke: all {len(self.summary['stages'])} stages passed in {total:.0f} s "
              f"(tiny random models: outputs are meaningless) -> {self.out}")

    def _first_image(self, dest: Path) -> None:
        """The first figure of the built dataset, as a JPEG file (the input of `biomedica caption`)."""
        import io

        import pyarrow.parquet as pq
        from PIL import Image

        from biomedica_hf.io.ranges import read_range

        row = pq.read_table(self.ds / "figures.parquet", columns=["shard", "image_offset", "image_size"]).slice(0, 1)
        row = row.to_pylist()[0]
        data = read_range(self.ds / row["shard"], row["image_offset"], row["image_size"])
        Image.open(io.BytesIO(data)).convert("RGB").save(dest, "JPEG")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("smoke_out"), help="working folder (created) [smoke_out]")
    ap.add_argument("--processes", type=int, default=2, help="processes per recipe (accelerate launch) [2]")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per stage [600]")
    ap.add_argument("--clean", action="store_true", help="delete OUT first")
    args = ap.parse_args(argv)
    if args.clean and args.out.exists():
        shutil.rmtree(args.out)
    Smoke(args.out.resolve(), args.processes, args.timeout).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

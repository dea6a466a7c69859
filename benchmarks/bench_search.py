#!/usr/bin/env python
"""Search latency and throughput at 10 k, 100 k and 1 M figures, next to published numbers.

* **Index-only**: a query already encoded -> dense top-100 (the index type ``biomedica index`` picks
  for that size and memory budget) + BM25 top-100 + reciprocal rank fusion (k = 60) -> top 10.
* **End-to-end**: the same plus encoding the query text with the real all-MiniLM-L6-v2 (384-d).
* Vectors at size are synthetic (a mixture of 1,000 Gaussian clusters on the unit sphere, 384-d) and
  BM25 documents are synthetic Zipf token streams; recall@10 of the approximate indexes is measured
  against exact search on the same vectors.
* **Correctness on real vectors**: MiniLM embeddings of real sentences from the PMC fixture articles,
  held-out sentences as queries, recall@10 of IVF-Flat and IVF-PQ (forced at this small size) vs exact.

One query at a time, one thread for torch and FAISS (as ``biomedica serve --threads 1``); queries/s
is 1 / mean latency on one core. References: the BIOMEDICA agent's retrieval ~124 ms per query;
clip-retrieval ~50 ms per query on memory-mapped indices. Goals: < 20 ms index-only, < 60 ms end-to-end.

    python benchmarks/bench_search.py                      # 10k, 100k, 1M (~1.5 GB RAM at 1M)
    python benchmarks/bench_search.py --sizes 10000 --queries 100
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from biomedica_hf.io.xml import safe_parser
from biomedica_hf.search.bm25 import BM25Index  # noqa: E402
from biomedica_hf.search.dense import DenseIndex, build_index, choose_params, write_f16  # noqa: E402
from biomedica_hf.search.fusion import rrf  # noqa: E402

DIM = 384
REFERENCES = {"BIOMEDICA agent (Biomedica Index)": 124.0, "clip-retrieval": 50.0}
GOALS = {"index-only": 20.0, "end-to-end": 60.0}


def set_threads(n: int) -> None:
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


def synthetic_vectors(n: int, dim: int = DIM, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (built in blocks to bound memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x = centres[rng.integers(0, clusters, e - s)] + rng.standard_normal((e - s, dim)).astype(np.float32) * 0.06
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def synthetic_bm25(n: int, vocab: int = 50_000, mean_len: int = 48, seed: int = 0) -> tuple[BM25Index, list[str]]:
    """A BM25 index over ``n`` Zipf-distributed token streams; words are ``w<rank>``."""
    import bm25s

    from biomedica_hf.search.bm25 import _tokenizer

    rng = np.random.default_rng(seed)
    lengths = rng.poisson(mean_len, n).clip(5)
    ranks = (rng.zipf(1.2, int(lengths.sum())) - 1) % vocab
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    ids = [ranks[bounds[i]:bounds[i + 1]].tolist() for i in range(n)]
    words = {f"w{i}": i for i in range(vocab)}
    retriever = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    retriever.index(bm25s.tokenization.Tokenized(ids=ids, vocab=words), show_progress=False)
    tok = _tokenizer()
    tok.word_to_id = dict(words)  # queries are tokenised against the synthetic vocabulary
    return BM25Index(retriever, tok), [f"w{i}" for i in range(vocab)]


def exact_topk(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = np.zeros((len(q), 0), np.float32)
    ids = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(x), 200_000):
        sc = q @ x[s:s + 200_000].T
        scores = np.concatenate([scores, sc], axis=1)
        ids = np.concatenate([ids, np.broadcast_to(np.arange(s, s + sc.shape[1]), sc.shape)], axis=1)
        keep = np.argsort(-scores, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    return ids


def recall(found: list[np.ndarray], truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "qps": float(1000 / a.mean())}


def real_sentences(limit: int) -> list[str]:
    """Sentences of the PMC fixture articles' full text (or the bundled sample's XML text)."""
    import pyarrow.parquet as pq
    from lxml import etree

    texts: list[str] = []
    shared = REPO.parent / "shared" / "fixtures" / "pmc" / "articles"
    roots = [shared] if shared.is_dir() else [REPO / "biomedica_hf" / "sample_data"]
    for root in roots:
        for xml in sorted(root.rglob("*.*xml")):
            try:
                tree = etree.parse(str(xml), safe_parser(recover=True))
            except (etree.XMLSyntaxError, OSError):
                continue
            for p in tree.iter("{*}p", "p"):
                texts.append(" ".join("".join(p.itertext()).split()))
    sentences = [s for t in texts for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", t) if 40 <= len(s) <= 400]
    del pq
    return list(dict.fromkeys(sentences))[:limit]


def bench_real(model, n_sentences: int) -> dict:
    sentences = real_sentences(n_sentences)
    t = time.perf_counter()
    vecs = np.concatenate([model.encode_text(sentences[i:i + 64]) for i in range(0, len(sentences), 64)])
    encode_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    held = rng.choice(len(vecs), min(100, len(vecs) // 10), replace=False)
    mask = np.ones(len(vecs), bool)
    mask[held] = False
    base, queries = vecs[mask], vecs[held]
    truth = exact_topk(base, queries, 10)
    out = {"sentences": len(sentences), "indexed": len(base), "queries": len(queries),
           "encode_per_sentence_ms": 1000 * encode_s / len(sentences)}
    for label, budget in (("ivf_flat", 1 << 40), ("ivf_pq", len(base) * DIM * 2)):  # PQ: half of float32
        p = choose_params(len(base), DIM, budget, flat_max=0)
        assert p.kind == label, p
        idx = DenseIndex(build_index(base, p), p)
        if p.kind == "ivf_pq":
            idx.vectors = base.astype(np.float16)
        found = [idx.search(q, 10)[1] for q in queries]
        out[label] = {"factory": p.factory, "nprobe": p.nprobe, "recall@10": recall(found, truth)}
    return out


def bench_size(n: int, n_queries: int, budget: int, model, tmp: Path) -> dict:
    t0 = time.perf_counter()
    x = synthetic_vectors(n)
    params = choose_params(n, DIM, budget)
    index = build_index(x, params)
    dense = DenseIndex(index, params)
    if params.refine:  # as built: float16 copy on disk, memory-mapped
        path = tmp / f"vectors_{n}.f16.npy"
        write_f16(path, x, DIM)
        dense.vectors = np.load(path, mmap_mode="r")
    bm25, words = synthetic_bm25(n)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(7)
    picks = rng.choice(n, n_queries, replace=False)
    qv = x[picks] + rng.standard_normal((n_queries, DIM)).astype(np.float32) * 0.03
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    qt = [" ".join(words[int(w)] for w in rng.integers(20, 3000, 3)) for _ in range(n_queries)]
    truth = exact_topk(x, qv, 10)
    for i in range(min(20, n_queries)):  # warm-up (page cache, allocator)
        dense.search(qv[i], 100)
        bm25.search(qt[i], 100)
    t_dense, t_bm25, t_hybrid, found = [], [], [], []
    for v, text in zip(qv, qt):
        t = time.perf_counter()
        ids = dense.search(v, 100)[1]
        t_dense.append((time.perf_counter() - t) * 1000)
        found.append(ids)
        t = time.perf_counter()
        bm25.search(text, 100)
        t_bm25.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        lists = {"text": dense.search(v, 100)[1], "bm25": bm25.search(text, 100)[1]}
        rrf(lists)[:10]
        t_hybrid.append((time.perf_counter() - t) * 1000)
    t_e2e = []
    topics = ("chest CT", "histology", "western blot") * n_queries
    sentences = [f"{text} figure showing {w}" for text, w in zip(qt, topics)]
    for v, text, sentence in zip(qv, qt, sentences):
        t = time.perf_counter()
        model.encode_text([sentence])
        lists = {"text": dense.search(v, 100)[1], "bm25": bm25.search(text, 100)[1]}
        rrf(lists)[:10]
        t_e2e.append((time.perf_counter() - t) * 1000)
    res = {"n": n, "index": params.factory, "nprobe": params.nprobe, "refine": params.refine,
           "index_bytes": params.estimated_bytes, "build_s": build_s, "recall@10": recall(found, truth),
           "dense": percentiles(t_dense), "bm25": percentiles(t_bm25), "index_only": percentiles(t_hybrid),
           "end_to_end": percentiles(t_e2e)}
    del x, index, dense, bm25
    gc.collect()
    return res


def table(results: list[dict], real: dict | None) -> str:
    lines = ["| figures | dense index | recall@10 | dense p50 | BM25 p50 | index-only p50 / p95 | q/s | "
             "end-to-end p50 / p95 | q/s |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['n']:,} | {r['index']}{' + f16 re-rank' if r['refine'] else ''} (nprobe {r['nprobe']}) | "
                     f"{r['recall@10']:.3f} | {r['dense']['p50']:.2f} ms | {r['bm25']['p50']:.2f} ms | "
                     f"{r['index_only']['p50']:.2f} / {r['index_only']['p95']:.2f} ms | {r['index_only']['qps']:.0f} | "
                     f"{r['end_to_end']['p50']:.1f} / {r['end_to_end']['p95']:.1f} ms | {r['end_to_end']['qps']:.0f} |")
    for name, ms in REFERENCES.items():
        lines.append(f"| {name} (published) | | | | | {ms:.0f} ms | ~{1000 / ms:.0f} | | |")
    lines.append(f"| goal | | | | | < {GOALS['index-only']:.0f} ms | | < {GOALS['end-to-end']:.0f} ms | |")
    if real:
        lines.append("")
        lines.append(f"Real vectors (all-MiniLM-L6-v2 on {real['indexed']:,} PMC sentences, {real['queries']} held-out "
                     f"queries): recall@10 vs exact: {real['ivf_flat']['factory']} "
                     f"{real['ivf_flat']['recall@10']:.3f}, "
                     f"{real['ivf_pq']['factory']} + re-rank {real['ivf_pq']['recall@10']:.3f}; "
                     f"encoding {real['encode_per_sentence_ms']:.1f} ms/sentence in batches.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--memory-budget-mb", type=int, default=1024,
                    help="per dense index (biomedica index splits --memory-budget between image and caption)")
    ap.add_argument("--real-sentences", type=int, default=2000, help="0 to skip the real-vector check")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    set_threads(1)
    from biomedica_hf.search.encoders import load_encoders

    model = load_encoders("minilm").text
    set_threads(os.cpu_count() or 1)  # batch encoding of the real sentences: all cores
    real = bench_real(model, args.real_sentences) if args.real_sentences else None
    set_threads(1)  # queries: one thread, as `biomedica serve --threads 1`
    for _ in range(5):
        model.encode_text(["warm up"])
    if real:
        print(json.dumps(real), flush=True)
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            r = bench_size(n, args.queries, args.memory_budget_mb * 1024 * 1024, model, Path(tmp))
            print(json.dumps(r), flush=True)
            results.append(r)
    print()
    print(table(results, real))
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "real": real}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

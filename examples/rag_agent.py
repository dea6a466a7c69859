#!/usr/bin/env python
"""Retrieval-augmented answers grounded in BIOMEDICA figures: Retriever -> numbered sources -> a
transformers ``pipeline("text-generation")`` -> answer + citations.

    biomedica index ds --encoder text=minilm,image=clip:ViT-B-32
    python examples/rag_agent.py --index ds/search_index --model HuggingFaceTB/SmolLM2-360M-Instruct \\
        --question "How was person-to-person transmission of the 2019 novel coronavirus shown?"

Chat models (tokenizers with a chat template) get system + user messages; base models a plain prompt.
Sources are dropped from the end until the prompt fits the model's context, so every [n] the model
sees is listed under "Sources".
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from biomedica_hf.filters import Selection
from biomedica_hf.search import Retriever


def fit_context(ctx, tokenizer, max_prompt_tokens: int, chat: bool):
    """Drop trailing passages until the prompt fits ``max_prompt_tokens``."""
    while ctx.passages:
        if chat:
            ids = tokenizer.apply_chat_template(ctx.messages(), add_generation_prompt=True, tokenize=True)
            n = len(ids["input_ids"] if isinstance(ids, dict) else ids)
        else:
            n = len(tokenizer(ctx.prompt())["input_ids"])
        if n <= max_prompt_tokens:
            break
        ctx.passages = ctx.passages[:-1]
    return ctx


def answer(index: str, model: str, question: str, k: int = 5, max_new_tokens: int = 128,
           subsets: list[str] | None = None, dataset: str | None = None) -> dict:
    """Retrieve, prompt, generate; returns prompt, answer, citations and the source numbers the answer cites."""
    from transformers import pipeline

    retriever = Retriever(index, k=k, filters=Selection(subset=subsets or "all"), dataset=dataset)
    ctx = retriever.context(question)
    generator = pipeline("text-generation", model=model, device=-1)
    tok = generator.tokenizer
    chat = bool(getattr(tok, "chat_template", None))
    limit = getattr(generator.model.config, "max_position_embeddings", None) or getattr(
        generator.model.config, "n_positions", 2048)
    ctx = fit_context(ctx, tok, limit - max_new_tokens, chat)
    inputs = ctx.messages(question) if chat else ctx.prompt(question)
    out = generator(inputs, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    text = out[0]["generated_text"]
    if isinstance(text, list):  # chat pipelines return the message list
        text = text[-1]["content"]
    numbers = {p.n for p in ctx.passages}
    cited = sorted({int(n) for n in re.findall(r"\[(\d+)\]", text)} & numbers)
    return {"question": question, "prompt": inputs if isinstance(inputs, str) else json.dumps(inputs),
            "answer": text.strip(), "cited": cited, "citations": ctx.citations(),
            "sources": [{"n": p.n, "key": p.key, "pmcid": p.pmcid, "title": p.title, "url": p.url, "score": p.score}
                        for p in ctx.passages]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--index", required=True, help="index folder from `biomedica index`")
    ap.add_argument("--model", required=True, help="causal LM: Hub id or local folder")
    ap.add_argument("--question", required=True)
    ap.add_argument("--k", type=int, default=5, help="figures to retrieve")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--subset", action="append", help="commercial / noncommercial / other (repeatable)")
    ap.add_argument("--dataset", help="dataset folder, if not where index.json says")
    ap.add_argument("--show-prompt", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result = answer(args.index, args.model, args.question, args.k, args.max_new_tokens, args.subset, args.dataset)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    if args.show_prompt:
        print("## Prompt\n" + result["prompt"] + "\n")
    print("## Answer\n" + result["answer"] + "\n")
    print("## Sources\n" + result["citations"])
    if not result["cited"]:
        print("\n(the answer cites no source)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

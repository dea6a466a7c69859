"""Retriever -> grounded prompt with numbered citations -> a real transformers text-generation pipeline.

The language model is a tiny RANDOM GPT-2 with a byte-level BPE tokenizer trained here on the fixture
captions: its text is garbage; the test checks the plumbing (citations in the prompt, the pipeline
runs, the example script's output).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_search_support import REPO, dataset, engine, hybrid_index

from biomedica_hf.search import Filters, Retriever


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A random 2-layer GPT-2 and a 2,000-token BPE tokenizer trained on the captions, saved to a folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    captions = pq.read_table(dataset(tmp_path_factory) / "figures.parquet")["caption"].to_pylist()
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    out = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_retriever_passages_and_prompt(tmp_path_factory):
    r = Retriever(engine(tmp_path_factory, "hybrid"), k=4)
    ctx = r.context("person-to-person transmission of the novel coronavirus in a family")
    assert [p.n for p in ctx.passages] == [1, 2, 3, 4]
    top = ctx.passages[0]
    assert top.pmcid == "PMC7159286"
    assert top.title
    assert top.caption
    assert top.references
    assert top.score > 0
    assert top.url == "https://pmc.ncbi.nlm.nih.gov/articles/PMC7159286/"
    prompt = ctx.prompt()
    for p in ctx.passages:
        assert f"[{p.n}] " in prompt
        assert p.key in prompt
        assert p.pmcid in prompt
    assert "Cited in the text:" in prompt
    assert prompt.rstrip().endswith("Answer:")
    assert "[1] or [2][3]" in prompt  # the citation instruction
    assert ctx.citations().splitlines()[0].startswith(f"[1] {top.title}. PMC7159286. https://pmc.ncbi.nlm.nih.gov/")
    msgs = ctx.messages()
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[4]" in msgs[1]["content"]
    # filters and the tool form
    only = Retriever(engine(tmp_path_factory, "hybrid"), k=3, filters=Filters(subsets=["commercial"]))
    assert {p.pmcid for p in only.retrieve("coronavirus")} <= {"eLife_00353", "eLife_19405"}
    assert r("coronavirus", k=2).startswith("[1] ")


def test_context_feeds_a_text_generation_pipeline(tmp_path_factory, tiny_lm):
    from transformers import pipeline

    ctx = Retriever(engine(tmp_path_factory, "hybrid"), k=2, max_caption_chars=300).context("coronavirus phylogeny")
    gen = pipeline("text-generation", model=str(tiny_lm), device=-1)
    prompt = ctx.prompt()
    assert len(gen.tokenizer(prompt)["input_ids"]) < 1024 - 16
    out = gen(prompt, max_new_tokens=16, do_sample=False, return_full_text=True,
              pad_token_id=gen.tokenizer.eos_token_id)
    text = out[0]["generated_text"]
    assert text.startswith(prompt)
    assert len(text) > len(prompt)  # the prompt, with its citations, went in


def test_example_script_end_to_end(tmp_path_factory, tiny_lm):
    idx = hybrid_index(tmp_path_factory)
    cmd = [sys.executable, str(REPO / "examples" / "rag_agent.py"), "--index", str(idx), "--model", str(tiny_lm),
           "--question", "How was person-to-person transmission of 2019-nCoV shown?", "--k", "5",
           "--max-new-tokens", "12", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    n = len(result["sources"])
    assert 1 <= n <= 5
    assert result["sources"][0]["pmcid"] == "PMC7159286"
    # sources that did not fit the 1,024-token context were dropped, so every [n] in the prompt is listed
    assert sorted({int(x) for x in re.findall(r"^\[(\d+)\] ", result["prompt"], re.M)}) == list(range(1, n + 1))
    assert len(result["citations"].splitlines()) == n
    assert isinstance(result["answer"], str)
    assert set(result["cited"]) <= set(range(1, n + 1))

"""BM25 over figure captions + in-text reference sentences (``bm25s``: sparse score matrix, memory-mappable)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

SPLITTER = r"(?u)\b\w\w+\b"
PARAMS = {"method": "lucene", "k1": 1.5, "b": 0.75}


def document_text(caption: str | None, references: Sequence[str] | None) -> str:
    """The text BM25 indexes for one figure."""
    return " ".join([caption or "", *(references or [])])


def _tokenizer(stemmer=None):
    import bm25s.tokenization

    return bm25s.tokenization.Tokenizer(lower=True, splitter=SPLITTER, stopwords="en", stemmer=stemmer)


class BM25Index:
    """A bm25s retriever plus the tokenizer vocabulary it was built with."""

    def __init__(self, retriever, tokenizer):
        self.retriever = retriever
        self.tokenizer = tokenizer

    @classmethod
    def build(cls, texts: Sequence[str]) -> "BM25Index":
        import bm25s

        tok = _tokenizer()
        ids = tok.tokenize(list(texts), update_vocab=True, show_progress=False, return_as="tuple")
        retriever = bm25s.BM25(**PARAMS)
        retriever.index(ids, show_progress=False)
        return cls(retriever, tok)

    @property
    def num_docs(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.retriever.save(str(folder), show_progress=False)
        self.tokenizer.save_vocab(str(folder))
        self.tokenizer.save_stopwords(str(folder))
        (folder / "biomedica_bm25.json").write_text(json.dumps({"splitter": SPLITTER, **PARAMS}, indent=1))

    @classmethod
    def load(cls, folder: Path, mmap: bool = True) -> "BM25Index":
        import bm25s

        retriever = bm25s.BM25.load(str(folder), mmap=mmap, show_progress=False, verbosity=0)
        tok = _tokenizer()
        tok.load_vocab(str(folder))
        tok.load_stopwords(str(folder))
        return cls(retriever, tok)

    def query_ids(self, text: str) -> list[int]:
        """Index ids of the query's known tokens (stopwords and unknown words dropped)."""
        tokens = self.tokenizer.tokenize([text], update_vocab=False, show_progress=False, return_as="string")[0]
        vocab = self.retriever.vocab_dict
        return [int(vocab[t]) for t in tokens if t and t in vocab]

    def search(self, text: str, k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, row ids) with a positive score; rows where ``mask`` is False are left out."""
        ids = self.query_ids(text)
        if not ids or k <= 0:
            return np.empty(0, np.float32), np.empty(0, np.int64)
        scores = np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        order = hits[np.lexsort((hits, -scores[hits]))]
        return scores[order], order.astype(np.int64)

"""Hybrid search over an index folder: BM25 + dense lists fused by reciprocal rank fusion.

Ranked lists (``sources``), each a top-``depth`` list under the same filter mask:

* ``bm25``        query text vs captions + in-text references
* ``text``        query text vector vs caption vectors
* ``text2image``  query text vector vs image vectors (joint CLIP space only)
* ``image``       query image vector vs image vectors
* ``image2text``  query image vector vs caption vectors (joint space only; off by default)

Defaults: a text query uses ``bm25``, ``text`` and ``text2image``; an image query uses ``image``
(the image's own nearest neighbours); both together use the union. Fusion: RRF, k = 60.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq

from biomedica_hf.filters import Selection
from biomedica_hf.io.ranges import read_range
from biomedica_hf.search import layout
from biomedica_hf.search.bm25 import BM25Index
from biomedica_hf.search.dense import DenseIndex, DenseParams
from biomedica_hf.search.encoders import EncoderSet, load_encoders
from biomedica_hf.search.fusion import RRF_K, rrf
from biomedica_hf.search.meta import Filters, Metadata

SOURCES = ("bm25", "text", "text2image", "image", "image2text")
DEFAULT_DEPTH = 100
PMC_ID = re.compile(r"^PMC\d+$")
MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}


def pmc_url(pmcid: str | None) -> str | None:
    """The article's PMC page (only for real PMCIDs)."""
    return f"https://pmc.ncbi.nlm.nih.gov/articles/{pmcid}/" if pmcid and PMC_ID.match(pmcid) else None


def set_threads(n: int) -> None:
    """Threads torch and FAISS use per query (process-wide)."""
    import faiss
    import torch

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)


class QueryError(ValueError):
    """A query the index cannot answer (e.g. an image query on a text-only index)."""


@dataclass
class SearchResponse:
    """One page of fused results."""

    total: int                         # fused candidates that passed the filters (>= what is reachable)
    offset: int
    limit: int
    hits: list[dict[str, Any]]
    sources: list[str]
    timings_ms: dict[str, float] = field(default_factory=dict)


class SearchEngine:
    """An index folder loaded for querying (metadata, FAISS, BM25 and the query encoders)."""

    def __init__(self, index_dir: str | Path, dataset: str | Path | None = None, encoders: EncoderSet | None = None,
                 load_query_encoders: bool = True, mmap: bool = False, threads: int | None = None):
        if threads:  # one query at a time per thread: oversubscribed OpenMP pools are slower, not faster
            set_threads(threads)
        self.index_dir = Path(index_dir)
        self.manifest = layout.read_manifest(self.index_dir)
        self.dataset = layout.resolve_dataset(self.index_dir, self.manifest, Path(dataset) if dataset else None)
        self.meta = Metadata.load(self.index_dir / layout.META)
        self.dense: dict[str, DenseIndex] = {}
        for name, p in self.manifest["dense"].items():
            params = DenseParams(**{k: v for k, v in p.items() if k in DenseParams.__dataclass_fields__})
            self.dense[name] = DenseIndex.load(self.index_dir / p["file"], params,
                                               layout.vectors_path(self.index_dir, name), mmap=mmap)
        self.bm25 = BM25Index.load(self.index_dir / layout.BM25_DIR)
        self.rrf_k = int(self.manifest.get("fusion", {}).get("k", RRF_K))
        self.encoders = encoders
        self._encode_lock = threading.Lock()  # fast tokenizers are not safe to call from several threads
        if self.encoders is None and load_query_encoders:
            self.encoders = load_encoders(self.manifest["encoder"]["spec"])
        if self.encoders is not None:
            self._check_fingerprints()
        articles = self.index_dir / layout.ARTICLES
        self._articles = pq.read_table(articles) if articles.exists() else None
        self._article_rows: dict[str, int] | None = None
        self._pmcid_rows: dict[str, list[int]] | None = None

    def _check_fingerprints(self) -> None:
        for part in ("text", "image"):
            want = (self.manifest["encoder"].get(part) or {}).get("fingerprint")
            enc = getattr(self.encoders, part)
            if want and enc is not None and enc.fingerprint != want:
                raise ValueError(f"{part} encoder differs from the one the index was built with "
                                 f"(fingerprint {enc.fingerprint} != {want}): rebuild the index or load "
                                 "the same weights")

    # ------------------------------------------------------------------ capabilities
    @property
    def joint(self) -> bool:
        return bool(self.manifest["encoder"].get("joint"))

    @property
    def image_search(self) -> bool:
        """Whether image queries can be answered: image (or joint caption) vectors and an image encoder."""
        has_vectors = "image" in self.dense or (self.joint and "caption" in self.dense)
        return has_vectors and self.encoders is not None and self.encoders.image is not None

    def available_sources(self) -> list[str]:
        have = ["bm25"]
        if "caption" in self.dense:
            have.append("text")
            if self.joint and "image" in self.dense:
                have.append("image2text")
        if "image" in self.dense:
            have.append("image")
            if self.joint:
                have.append("text2image")
        return [s for s in SOURCES if s in have]

    def default_sources(self, has_text: bool, has_image: bool) -> list[str]:
        want = (["bm25", "text", "text2image"] if has_text else []) + (["image"] if has_image else [])
        return [s for s in want if s in self.available_sources()]

    def _resolve_sources(self, sources: Sequence[str] | None, has_text: bool, has_image: bool) -> list[str]:
        if not has_text and not has_image:
            raise QueryError("empty query: give text and/or an image")
        if has_image and "image" not in self.dense and not (self.joint and "caption" in self.dense):
            raise QueryError("this index has no image vectors: image queries are not supported")
        if not sources:
            chosen = self.default_sources(has_text, has_image)
            if not chosen:
                raise QueryError("no search source can answer this query")
            return chosen
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise QueryError(f"unknown source(s) {bad}: choose from {list(SOURCES)}")
        missing = [s for s in sources if s not in self.available_sources()]
        if missing:
            raise QueryError(f"source(s) {missing} not available in this index (available: {self.available_sources()})")
        needs_text = [s for s in sources if s in ("bm25", "text", "text2image") and not has_text]
        needs_image = [s for s in sources if s in ("image", "image2text") and not has_image]
        if needs_text or needs_image:
            raise QueryError(f"source(s) {needs_text + needs_image} need a "
                             f"{'text' if needs_text else 'image'} query")
        return list(dict.fromkeys(sources))

    # ------------------------------------------------------------------ encoding
    def encode_text(self, text: str) -> np.ndarray:
        if self.encoders is None or self.encoders.text is None:
            raise QueryError("no text encoder loaded")
        with self._encode_lock:
            return self.encoders.text.encode_text([text])[0]

    def encode_image(self, image: bytes | Any) -> np.ndarray:
        if self.encoders is None or self.encoders.image is None:
            raise QueryError("no image encoder loaded")
        with self._encode_lock:
            return self.encoders.image.encode_images([image])[0]

    # ------------------------------------------------------------------ search
    def rank(self, sources: Sequence[str], text: str | None, text_vec: np.ndarray | None,
             image_vec: np.ndarray | None, mask: np.ndarray | None, depth: int) -> dict[str, np.ndarray]:
        """Each source's ranked row ids (index-only part of a search: vectors already encoded)."""
        lists: dict[str, np.ndarray] = {}
        for s in sources:
            if s == "bm25":
                lists[s] = self.bm25.search(text or "", depth, mask)[1]
            elif s == "text":
                lists[s] = self.dense["caption"].search(text_vec, depth, mask)[1]
            elif s == "text2image":
                lists[s] = self.dense["image"].search(text_vec, depth, mask)[1]
            elif s == "image":
                lists[s] = self.dense["image"].search(image_vec, depth, mask)[1]
            elif s == "image2text":
                lists[s] = self.dense["caption"].search(image_vec, depth, mask)[1]
        return lists

    def search(self, text: str | None = None, image: bytes | Any | None = None,
               filters: Selection | Filters | None = None, offset: int = 0, limit: int = 10,
               sources: Sequence[str] | None = None, depth: int | None = None) -> SearchResponse:
        """One page of hybrid results for a text and/or image query: one hit per figure.

        * Panels of one figure (the ``<graphic>`` s of one ``<fig>``, same caption) are one hit, ranked by
          its best panel, with every panel listed in ``hit["panels"]``.
        * With the default sources, a text query none of whose terms occurs in any caption or reference
          (``zzzzqqq xxyy``) has no hits: the dense lists are nearest neighbours of anything and would
          otherwise return every figure. Ask for ``sources=["text"]`` for purely semantic search.
        * ``total`` counts the figures in the fused lists (each list holds the figures it matched, at most
          ``depth`` of them).
        """
        t0 = time.perf_counter()
        text = (text or "").strip() or None
        chosen = self._resolve_sources(sources, text is not None, image is not None)
        matched_terms = self.bm25.query_ids(text) if text else []
        if not sources and text and not matched_terms:  # no lexical evidence: text-derived lists say nothing
            chosen = [s for s in chosen if s not in ("bm25", "text", "text2image")]
        timings: dict[str, float] = {}
        text_vec = image_vec = None
        if any(s in ("text", "text2image") for s in chosen):
            text_vec = self.encode_text(text)
        if any(s in ("image", "image2text") for s in chosen):
            image_vec = self.encode_image(image)
        t1 = time.perf_counter()
        timings["encode"] = (t1 - t0) * 1000
        mask = self.meta.mask(filters if filters is not None else Filters())
        want = offset + limit
        depth = max(depth or DEFAULT_DEPTH, want)
        while True:  # panels collapse into figures: deepen the lists until the page is full or they are exhausted
            lists = self.rank(chosen, text, text_vec, image_vec, mask, depth)
            figures = self._collapse(rrf(lists, k=self.rrf_k))
            if len(figures) >= want or all(len(v) < depth for v in lists.values()) or depth >= len(self.meta):
                break
            depth = min(depth * 2, len(self.meta))
        t2 = time.perf_counter()
        timings["retrieve"] = (t2 - t1) * 1000
        page = figures[offset:offset + limit]
        rows = self.meta.rows([d for d, _, _ in page])
        hits = []
        for i, ((doc, score, ranks), row) in enumerate(zip(page, rows)):
            panel_rows = self.meta.panels(doc)
            panels = ([{"key": p["key"], "panel_index": p.get("panel_index")} for p in self.meta.rows(panel_rows)]
                      if len(panel_rows) > 1 else [{"key": row["key"], "panel_index": row.get("panel_index")}])
            row.update(rank=offset + i + 1, row=doc, score=round(score, 6), ranks=ranks, panels=panels,
                       pmc_url=pmc_url(row["pmcid"]))
            hits.append(row)
        timings["fuse"] = (time.perf_counter() - t2) * 1000
        timings["total"] = (time.perf_counter() - t0) * 1000
        return SearchResponse(total=len(figures), offset=offset, limit=limit, hits=hits, sources=chosen,
                              timings_ms={k: round(v, 3) for k, v in timings.items()})

    def _collapse(self, fused: list[tuple[int, float, dict[str, int]]]) -> list[tuple[int, float, dict[str, int]]]:
        """One entry per figure: its best-ranked panel (fused score and ranks of that panel)."""
        group = self.meta.group
        seen: set[int] = set()
        out = []
        for doc, score, ranks in fused:
            g = int(group[doc])
            if g not in seen:
                seen.add(g)
                out.append((doc, score, ranks))
        return out

    # ------------------------------------------------------------------ lookups
    def figure(self, key: str) -> dict[str, Any] | None:
        row = self.meta.key_to_row.get(key)
        if row is None:
            return None
        fig = self.meta.rows([row])[0]
        fig["row"] = row
        fig["pmc_url"] = pmc_url(fig["pmcid"])
        fig["article"] = self.article(fig["pmcid"], with_figures=False)
        return fig

    def image_bytes(self, key: str) -> tuple[bytes, str] | None:
        """(bytes, MIME type) of a figure's image, read from its shard; None for an unknown key."""
        row = self.meta.key_to_row.get(key)
        if row is None:
            return None
        if self.dataset is None:
            raise FileNotFoundError("the dataset folder with the shards is not available (serve --dataset DIR)")
        fig = self.meta.rows([row])[0]
        data = read_range(self.dataset / fig["shard"], fig["image_offset"], fig["image_size"])
        return data, MIME.get(str(fig.get("image_ext") or "").lower(), "application/octet-stream")

    def article(self, pmcid: str, with_figures: bool = True) -> dict[str, Any] | None:
        """Article metadata (and its figures' keys) by PMCID."""
        if self._pmcid_rows is None:
            self._pmcid_rows = {}
            for i, p in enumerate(self.meta.table["pmcid"].to_pylist()):
                self._pmcid_rows.setdefault(p, []).append(i)
        if self._articles is not None and self._article_rows is None:
            self._article_rows = {p: i for i, p in enumerate(self._articles["pmcid"].to_pylist())}
        art: dict[str, Any] | None = None
        if self._articles is not None and pmcid in (self._article_rows or {}):
            art = self._articles.slice(self._article_rows[pmcid], 1).to_pylist()[0]
        elif pmcid in self._pmcid_rows:
            first = self.meta.rows([self._pmcid_rows[pmcid][0]])[0]
            art = {"pmcid": pmcid, **{k: first.get(k) for k in ("title", "journal", "year")}}
        if art is None:
            return None
        art["pmc_url"] = pmc_url(pmcid)
        if with_figures:
            rows = self.meta.rows(self._pmcid_rows.get(pmcid, []))
            art["figures"] = [{"key": r["key"], "figure_label": r.get("figure_label"), "caption": r["caption"]}
                              for r in rows]
        return art

    def facets(self) -> dict[str, Any]:
        return self.meta.facets()

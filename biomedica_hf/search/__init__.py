"""Search over a BIOMEDICA dataset folder: multimodal index, web API + page, and a retriever for agents.

Modules: ``encoders`` (text / image encoders from a spec), ``dense`` (FAISS, chosen by size and memory
budget), ``bm25`` (captions + references), ``fusion`` (RRF), ``meta`` (metadata, filters), ``build``
(``biomedica index``), ``engine`` (hybrid search), ``app`` + ``page`` (``biomedica serve``),
``retriever`` (passages with citations), ``cli`` (click commands).

Heavy dependencies (torch, faiss, fastapi) load only when the names below are used.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Retriever": "retriever", "Passage": "retriever", "Context": "retriever",
    "SearchEngine": "engine", "SearchResponse": "engine", "Filters": "meta",
    "build_search_index": "build", "IndexConfig": "build", "create_app": "app", "Limits": "app",
    "load_encoders": "encoders", "rrf": "fusion",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(name)

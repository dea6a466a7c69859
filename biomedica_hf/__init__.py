"""biomedica-hf: PMC-OA -> Hugging Face-native biomedical image-caption dataset."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Selection", "__version__", "load_biomedica"]


def __getattr__(name: str) -> Any:
    """``biomedica_hf.load_biomedica`` is :func:`biomedica_hf.dataset.loader.load_biomedica` itself (real signature and
    docstring for ``help()``), imported on first use so that ``import biomedica_hf`` stays light."""
    if name == "load_biomedica":
        from biomedica_hf.dataset.loader import load_biomedica

        globals()["load_biomedica"] = load_biomedica
        return load_biomedica
    if name == "Selection":        # which samples: load_biomedica(selection=), the search, eval, the recipes
        from biomedica_hf.filters import Selection

        globals()["Selection"] = Selection
        return Selection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "load_biomedica", "Selection"})

"""The label vocabulary: BIOMEDICA's expert taxonomy (global -> local concepts) and the panel fields.

The shipped copies live in ``taxonomy/`` beside this module (source and MIT licence in its README).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TAXONOMY_FILE = "taxonomy_collapsed_and_filtered.json"
PANEL_FILE = "panel_vocabulary.json"
ANNOTATION_FIELDS = ("panel_type", "panel_subtype", "global_class", "local_class")
PLOTS_AND_CHARTS = "Plots and Charts"   # the over-represented global concept (~51% of BIOMEDICA)


@dataclass(frozen=True)
class Vocabulary:
    """Allowed values of each field of a cluster-annotation file."""

    taxonomy: dict[str, list[str]]       # global concept -> local concepts
    panel_types: tuple[str, ...]
    panel_subtypes: tuple[str, ...]
    source: str = ""

    @property
    def global_concepts(self) -> frozenset[str]:
        return frozenset(self.taxonomy)

    @property
    def local_concepts(self) -> frozenset[str]:
        return frozenset(x for locals_ in self.taxonomy.values() for x in locals_)

    def allowed(self, field: str) -> frozenset[str]:
        return {"panel_type": frozenset(self.panel_types), "panel_subtype": frozenset(self.panel_subtypes),
                "global_class": self.global_concepts, "local_class": self.local_concepts}[field]


def _shipped(name: str) -> str:
    return resources.files(__package__).joinpath("taxonomy", name).read_text()


def load_vocabulary(taxonomy: str | Path | dict[str, list[str]] | None = None,
                    panels: str | Path | dict[str, list[str]] | None = None) -> Vocabulary:
    """The shipped vocabulary, or a taxonomy / panel vocabulary given as a JSON file or a dict."""
    def load(value, shipped: str):
        if value is None:
            return json.loads(_shipped(shipped)), f"biomedica_hf/concepts/taxonomy/{shipped}"
        if isinstance(value, dict):
            return value, "<dict>"
        return json.loads(Path(value).read_text()), str(value)

    tax, tax_src = load(taxonomy, TAXONOMY_FILE)
    pan, _ = load(panels, PANEL_FILE)
    if not isinstance(tax, dict) or not all(isinstance(v, list) for v in tax.values()):
        raise ValueError(f"{tax_src}: a taxonomy is a JSON object {{global concept: [local concepts]}}")
    return Vocabulary(taxonomy={str(k): [str(x) for x in v] for k, v in tax.items()},
                      panel_types=tuple(pan["panel_type"]), panel_subtypes=tuple(pan["panel_subtype"]),
                      source=tax_src)


def blank_annotation(k: int) -> dict[str, dict]:
    """An empty cluster-annotation file for clusters ``0 .. k-1`` (BIOMEDICA's cluster_labels.json format)."""
    return {str(c): {"panel_type": "", "panel_subtype": "", "global_class": [], "local_class": []} for c in range(k)}


__all__ = ["ANNOTATION_FIELDS", "PLOTS_AND_CHARTS", "Vocabulary", "blank_annotation", "load_vocabulary"]

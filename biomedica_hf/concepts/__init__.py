"""Concept annotation, after BIOMEDICA: DINOv2 embeddings -> PCA + k-means clusters -> expert labels
(contact sheets, majority vote over annotators, taxonomy validation) -> labels on every sample ->
concept subsets (``concept-filtered``, ``concept-balanced``) and card plots.

One module per step (torch / transformers / scikit-learn are imported only where needed)::

    embed.py     embed_dataset        DIR/embeddings/<subset>/NNNNNN.npy (+ keys, completion marker)
    cluster.py   fit_clusters         DIR/concepts/cluster_model.npz, clusters.parquet
    sheets.py    annotation_sheets    DIR/concepts/sheets/cluster_XXXX.png, index.html, blank annotations
    label.py     apply_labels         votes -> figures.parquet / per-shard Parquet / labels.parquet columns
    subsets.py   build_concept_subsets  DIR/concepts/<name>.parquet + DIR/<name>/*.tar + card configs
    plots.py     concept_plots        DIR/card/*.png for the dataset card
    hooks.py     card_section ...     the card's concept section, configs and plots (biomedica_hf.hooks)
    cli.py       COMMANDS             the click commands
    vocab.py     load_vocabulary      the shipped taxonomy (taxonomy/, MIT) and panel vocabulary
    layout.py    file layout and byte-range reading
    hooks.py     index_columns        what the build and the card get through biomedica_hf.hooks
"""
from __future__ import annotations

from biomedica_hf.concepts.cluster import ClusterModel, fit_clusters, load_cluster_model
from biomedica_hf.concepts.embed import DEFAULT_MODEL, embed_dataset
from biomedica_hf.concepts.hooks import register_hooks
from biomedica_hf.concepts.label import AnnotationError, apply_labels, labels_extra_columns, read_labels
from biomedica_hf.concepts.plots import card_markdown, concept_plots
from biomedica_hf.concepts.sheets import annotation_sheets
from biomedica_hf.concepts.subsets import build_concept_subsets, concept_card_configs
from biomedica_hf.concepts.vocab import load_vocabulary

register_hooks()   # index columns, card section/configs/plots (biomedica_hf.hooks; uninstalled checkouts too)

__all__ = [
           "DEFAULT_MODEL",
           "AnnotationError",
           "ClusterModel",
           "annotation_sheets",
           "apply_labels",
           "build_concept_subsets",
           "card_markdown",
           "concept_card_configs",
           "concept_plots",
           "embed_dataset",
           "fit_clusters",
           "labels_extra_columns",
           "load_cluster_model",
           "load_vocabulary",
           "read_labels",
]

"""Concept plots for the dataset card (PNG, written atomically into ``DIR/card/``).

* ``concepts_global.png``  samples per global concept (share of all samples in the labels)
* ``concepts_local.png``   samples per local concept (top 30)
* ``cluster_sizes.png``    cluster sizes by rank (log scale): how even the k-means partition is
* ``embeddings_2d.png``    a seeded sample of up to 5,000 images on the first two principal
                           components of the clustering PCA, coloured by global concept

``card_markdown`` returns a Markdown section (plots + the concept subsets table) for the card.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from biomedica_hf.concepts.cluster import load_cluster_model, projected_path
from biomedica_hf.concepts.layout import LABELS, concepts_dir, key_priority
from biomedica_hf.io.atomic import atomic_write_bytes
from biomedica_hf.layout import CARD_DIR

MAP_POINTS = 5000
TOP_LOCAL = 30
MAX_COLOURS = 10
UNLABELLED = "(no concept)"


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _barh(counts: list[tuple[str, int]], total: int, title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [c for c, _ in counts][::-1]
    values = [n for _, n in counts][::-1]
    fig, ax = plt.subplots(figsize=(7.5, max(2.4, 0.3 * len(counts) + 1.1)), dpi=110)
    from matplotlib.ticker import MaxNLocator

    bars = ax.barh(labels, values, color=["#b0b0b0" if c == UNLABELLED else "#3b7dd8" for c in labels])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,} ({100 * v / max(total, 1):.0f}%)",
                va="center", fontsize=8)
    ax.set_xlim(0, max(values or [1]) * 1.25)
    ax.set_xlabel("samples")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def concept_counts(labels: list[list[str]], top: int | None = None) -> list[tuple[str, int]]:
    """(concept, samples) by decreasing count (the ``top`` first), then the samples without a concept
    under ``UNLABELLED``."""
    counts = Counter(c for row in labels for c in (row or []))
    empty = sum(1 for row in labels if not row)
    out = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return out + ([(UNLABELLED, empty)] if empty else [])


def cluster_sizes_plot(sizes: np.ndarray, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = np.sort(np.asarray(sizes))[::-1]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(np.arange(1, len(ranked) + 1), np.maximum(ranked, 0.8), marker="o" if len(ranked) <= 50 else None,
            color="#3b7dd8", lw=1.2)
    ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cluster rank")
    ax.set_ylabel("samples")
    empty = int((ranked == 0).sum())
    ax.set_title(f"Cluster sizes (k = {len(ranked)}, median {int(np.median(ranked))}, {empty} empty)")
    fig.tight_layout()
    return _save(fig, path)


def embedding_map(xy: np.ndarray, concepts: list[str], path: Path, title: str) -> Path:
    """Scatter of 2-D points coloured by concept (the most frequent ``MAX_COLOURS``; the rest grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    freq = [c for c, _ in Counter(concepts).most_common() if c != UNLABELLED][:MAX_COLOURS]
    colours = dict(zip(freq, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(7, 5.2), dpi=110)
    groups = [(c, colours[c]) for c in freq] + [("other", "#b0b0b0"), (UNLABELLED, "#e0e0e0")]
    for name, colour in groups[::-1]:
        if name == "other":
            mask = np.array([c not in colours and c != UNLABELLED for c in concepts])
        else:
            mask = np.array([c == name for c in concepts])
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=10 if len(xy) < 1000 else 3, color=colour,
                       label=f"{name} ({int(mask.sum())})", alpha=0.8, linewidths=0)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
              markerscale=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def _map_sample(out: Path, n_points: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """(first two PCA coordinates, first global concept) of a seeded sample of the labelled samples."""
    pf = pq.ParquetFile(concepts_dir(out) / LABELS)
    keys = pq.read_table(concepts_dir(out) / LABELS, columns=["key"])["key"].to_pylist()
    chosen = np.zeros(len(keys), bool)
    chosen[np.argsort(key_priority(keys, seed), kind="stable")[:n_points]] = True
    xy, concepts, start = [], [], 0
    for i in range(pf.num_row_groups):
        rg = pf.read_row_group(i, columns=["shard", "concepts"])
        stop = start + rg.num_rows
        rows = np.flatnonzero(chosen[start:stop])
        if len(rows):
            z = np.load(projected_path(out, rg["shard"][0].as_py()), mmap_mode="r")
            xy.append(np.asarray(z[rows, :2], dtype=np.float32))
            concepts += [(c or [UNLABELLED])[0] for c in rg["concepts"].take(rows).to_pylist()]
        start = stop
    return (np.concatenate(xy) if xy else np.zeros((0, 2), np.float32)), concepts


def concept_plots(dataset_dir: str | Path, folder: str | Path | None = None, seed: int = 0,
                  map_points: int = MAP_POINTS) -> list[Path]:
    """Write the concept plots (module doc) and return their paths."""
    out = Path(dataset_dir)
    folder = Path(folder) if folder is not None else out / CARD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    labels = pq.read_table(concepts_dir(out) / LABELS, columns=["concepts", "local_concepts"])
    total = labels.num_rows
    paths = [
        _barh(concept_counts(labels["concepts"].to_pylist()), total, "Samples per global concept",
              folder / "concepts_global.png"),
        _barh(concept_counts(labels["local_concepts"].to_pylist(), TOP_LOCAL), total,
              f"Samples per local concept (top {TOP_LOCAL})", folder / "concepts_local.png"),
    ]
    model = load_cluster_model(out)
    paths.append(cluster_sizes_plot(np.asarray(model.params.get("sizes", [])), folder / "cluster_sizes.png"))
    if model.components.shape[0] >= 2:
        xy, concepts = _map_sample(out, map_points, seed)
        ev = model.explained_variance_ratio[:2].sum() * 100
        paths.append(embedding_map(xy, concepts, folder / "embeddings_2d.png",
                                   f"Image embeddings: {len(xy):,} samples on PC 1-2 ({ev:.0f}% of variance)"))
    return paths


def card_markdown(dataset_dir: str | Path) -> str:
    """A Markdown section for the dataset card: how concepts were made, the plots, the subsets."""
    out = Path(dataset_dir)
    params = load_cluster_model(out).params
    subsets = json.loads((concepts_dir(out) / "subsets.json").read_text()) \
        if (concepts_dir(out) / "subsets.json").exists() else {}
    report = json.loads((concepts_dir(out) / "label_report.json").read_text()) \
        if (concepts_dir(out) / "label_report.json").exists() else {}
    lines = [
        "## Concepts", "",
        (f"Image embeddings ({params.get('embedding') or 'DINOv2'}, CLS token, L2-normalised) were reduced with PCA "
         f"to {params.get('pca_dims')} dimensions and clustered with k-means (k = {params.get('k')}); "
         f"{len(report.get('annotation_files', []))} annotators labelled the clusters with BIOMEDICA's expert "
         "taxonomy (panel type, global and local concepts); labels were decided by majority vote and propagated "
         "to every image of a cluster. Columns `concepts`, `local_concepts`, `panel_type`, `panel_subtype`, "
         "`cluster` of `figures.parquet`."), "",
        "![global concepts](card/concepts_global.png)", "", "![local concepts](card/concepts_local.png)", "",
        "![cluster sizes](card/cluster_sizes.png)", "", "![embedding map](card/embeddings_2d.png)", "",
    ]
    if subsets:
        from biomedica_hf.concepts.subsets import licence_counts
        from biomedica_hf.schema import SUBSETS

        lines += ["Each selection is published as one config per licence subset (a config never mixes licences):",
                  "", "| config | samples | licences (samples) | selection |", "|---|---:|---|---|"]
        for name, s in sorted(subsets.items(), key=lambda kv: kv[0] != "concept-filtered"):
            p = s.get("params", {})
            rule = (f"excludes {', '.join(p['exclude'])}" if "exclude" in p
                    else f"at most {p.get('cap')} samples per concept (seed {p.get('seed')})")
            codes = licence_counts(out, name)
            for subset in SUBSETS:
                n = (s.get("by_subset") or {}).get(subset, 0)
                if n:
                    lic = ", ".join(f"{c} ({k:,})" for c, k in codes.get(subset, {}).items()) or "?"
                    lines.append(f"| `{subset}-{name}` | {n:,} | {subset}: {lic} | {rule} |")
        lines.append("")
    return "\n".join(lines)


__all__ = ["card_markdown", "cluster_sizes_plot", "concept_counts", "concept_plots", "embedding_map"]

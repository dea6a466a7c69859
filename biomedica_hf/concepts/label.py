"""Expert cluster labels -> majority vote -> validation -> propagation to every sample.

**Annotation files** are BIOMEDICA's ``cluster_labels.json`` format, one file per annotator::

    {"0": {"panel_type": "single", "panel_subtype": "single panel",
           "global_class": ["Microscopy"], "local_class": ["light microscopy"]}, ...}

A cluster whose four fields are all empty was not labelled by that annotator (the blank file from
``annotation_sheets`` is all empty) and does not count towards that cluster's votes.

**Vote**, per cluster, over the annotators who labelled it (``n``):

* ``panel_type`` / ``panel_subtype``: plurality of the non-empty answers. A tie goes to the value of
  the earliest annotation file among the tied ones (list the senior annotator first), and is reported.
* ``global_class`` / ``local_class`` (lists): a label is kept when **more than half** of the ``n``
  annotators chose it (``2 * votes > n``). With an even ``n`` a label chosen by exactly half is a tie:
  dropped and reported. If no global label reaches a majority the cluster keeps no global concept
  (reported under ``no_majority``) rather than a guess.
* Every field where the annotators did not all agree is reported under ``disagreements``.

**Validation** (before anything is written): every label must be in the taxonomy (global concepts
are its keys, local concepts any of its values) or the panel vocabulary, every cluster id must exist
in the fitted model, and no unknown field may appear; the error names the file and the cluster.
Like BIOMEDICA's own labels, a local concept need not sit under one of the chosen global concepts.

**Propagation.** The per-sample JSON inside the tars is WebDataset content and stays immutable
(rewriting it would rewrite every shard and change its bytes/offsets). The labels go instead to

* ``concepts/labels.parquet``: key, shard, cluster, panel_type, panel_subtype, concepts, local_concepts
  (the per-sample label metadata; one row group per shard);
* the per-shard Parquet files ``<subset>/NNNNNN.parquet`` (same columns appended);
* ``figures.parquet``: the same columns (``concepts`` = global, ``local_concepts``, ``panel_type``,
  ``panel_subtype``, ``cluster``), rewritten atomically row group by row group, other columns kept.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.concepts.cluster import load_cluster_model
from biomedica_hf.concepts.layout import (
    LABEL_COLUMNS,
    LABEL_REPORT,
    LABEL_SCHEMA,
    LABELS,
    concepts_dir,
    figures_index_path,
    shard_index_files,
)
from biomedica_hf.concepts.vocab import ANNOTATION_FIELDS, Vocabulary, load_vocabulary
from biomedica_hf.io.atomic import atomic_path, atomic_write_json, write_table

log = logging.getLogger(__name__)
SCALAR_FIELDS = ("panel_type", "panel_subtype")
LIST_FIELDS = ("global_class", "local_class")
MAX_ERRORS = 25
CLUSTER_ID_DIGITS = 9
CLUSTER_ID = re.compile(rf"[0-9]{{1,{CLUSTER_ID_DIGITS}}}")

Annotation = dict[int, dict[str, Any]]


class AnnotationError(ValueError):
    """An annotation file that does not fit the format or the vocabulary."""


# ------------------------------------------------------------------------------------ reading
def read_annotation(path: str | Path) -> Annotation:
    """Parse one annotation file into ``{cluster: {field: value}}`` (structure only; see ``validate``)."""
    path = Path(path)
    repeated: list[str] = []

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                repeated.append(k)
            out[k] = v
        return out

    try:
        raw = json.loads(path.read_text(), object_pairs_hook=no_repeats)
    except (OSError, ValueError, RecursionError) as exc:
        raise AnnotationError(f"{path}: not a readable JSON file: {type(exc).__name__}: {exc}") from exc
    if repeated:     # JSON keeps the last of a repeated key: an annotator's first answer would vanish silently
        raise AnnotationError(f"{path}: key(s) {sorted(set(repeated))} repeated; each cluster (and each field of "
                              f"a cluster) must appear once")
    if not isinstance(raw, dict):
        raise AnnotationError(f"{path}: expected a JSON object {{cluster id: labels}}")
    errors, out, spelled = [], {}, {}
    for key, entry in raw.items():
        where = f"{path}: cluster {key}"
        if not CLUSTER_ID.fullmatch(key):
            errors.append(f"{where}: cluster ids are non-negative integers (ASCII digits, at most "
                          f"{CLUSTER_ID_DIGITS})")
            continue
        if int(key) in spelled:       # "3" and "03": the same cluster twice
            errors.append(f"{where}: cluster ids {spelled[int(key)]!r} and {key!r} are the same cluster {int(key)}")
            continue
        spelled[int(key)] = key
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected an object with {', '.join(ANNOTATION_FIELDS)}")
            continue
        unknown = sorted(set(entry) - set(ANNOTATION_FIELDS))
        if unknown:
            errors.append(f"{where}: unknown field(s) {unknown} (allowed: {', '.join(ANNOTATION_FIELDS)})")
        clean: dict[str, Any] = {}
        for field in SCALAR_FIELDS:
            value = entry.get(field) or ""
            if not isinstance(value, str):
                errors.append(f"{where}: {field} must be a string")
                value = ""
            clean[field] = value.strip()
        for field in LIST_FIELDS:
            value = entry.get(field) or []
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                errors.append(f"{where}: {field} must be a list of strings")
                value = []
            clean[field] = list(dict.fromkeys(x.strip() for x in value if x.strip()))
        out[int(key)] = clean
    _raise(errors)
    return out


def is_labelled(entry: dict[str, Any]) -> bool:
    return any(entry.get(f) for f in ANNOTATION_FIELDS)


def validate(annotation: Annotation, vocab: Vocabulary, k: int | None = None, name: str = "") -> list[str]:
    """Problems of one parsed annotation: unknown labels / clusters, each naming file and cluster."""
    errors = []
    for cluster, entry in sorted(annotation.items()):
        where = f"{name}: cluster {cluster}"
        if k is not None and cluster >= k and is_labelled(entry):
            errors.append(f"{where}: no such cluster (the cluster model has k={k}: ids 0..{k - 1})")
        for field in ANNOTATION_FIELDS:
            values = entry[field] if field in LIST_FIELDS else ([entry[field]] if entry[field] else [])
            allowed = vocab.allowed(field)
            for value in values:
                if value not in allowed:
                    kind = "taxonomy" if field in LIST_FIELDS else "panel vocabulary"
                    errors.append(f"{where}: unknown {field} {value!r} (not in the {kind} {vocab.source})")
    return errors


def _raise(errors: list[str]) -> None:
    if errors:
        more = f"\n... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise AnnotationError("invalid annotations:\n" + "\n".join(errors[:MAX_ERRORS]) + more)


# ------------------------------------------------------------------------------------ the vote (pure)
def vote_cluster(entries: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """Majority labels of one cluster from its annotators' entries (in annotator order).

    Returns (labels, ties, disagreements); see the module doc for the rules.
    """
    entries = [e for e in entries if is_labelled(e)]
    n = len(entries)
    labels: dict[str, Any] = {}
    ties: list[dict] = []
    disagreements: list[dict] = []
    for field in SCALAR_FIELDS:
        answers = [e[field] for e in entries if e[field]]
        counts = Counter(answers)
        if not counts:
            labels[field] = ""
            continue
        top = max(counts.values())
        tied = [v for v in dict.fromkeys(answers) if counts[v] == top]   # in annotator order
        labels[field] = tied[0]
        if len(tied) > 1:
            ties.append({"field": field, "candidates": tied, "chosen": tied[0], "votes": dict(counts)})
        if len(counts) > 1 or len(answers) < n:
            disagreements.append({"field": field, "votes": dict(counts), "chosen": tied[0],
                                  "blank": n - len(answers)})
    for field in LIST_FIELDS:
        counts = Counter(x for e in entries for x in e[field])
        order = list(dict.fromkeys(x for e in entries for x in e[field]))
        kept = sorted((x for x in order if 2 * counts[x] > n), key=lambda x: (-counts[x], order.index(x)))
        labels[field] = kept
        half = [x for x in order if 2 * counts[x] == n]
        if half:
            ties.append({"field": field, "candidates": half, "chosen": None, "votes": dict(counts)})
        if any(counts[x] < n for x in order):
            disagreements.append({"field": field, "votes": dict(counts), "kept": kept,
                                  "dropped": [x for x in order if x not in kept]})
    return labels, ties, disagreements


def vote(annotations: Sequence[tuple[str, Annotation]], k: int) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Vote every cluster ``0..k-1``; returns (labels per labelled cluster, report)."""
    labels: dict[int, dict[str, Any]] = {}
    report: dict[str, Any] = {"annotation_files": [n for n, _ in annotations], "k": k, "clusters": {},
                              "ties": [], "disagreements": [], "no_majority": [], "unlabelled_clusters": []}
    for c in range(k):
        entries = [a[c] for _, a in annotations if c in a and is_labelled(a[c])]
        names = [n for n, a in annotations if c in a and is_labelled(a[c])]
        if not entries:
            report["unlabelled_clusters"].append(c)
            continue
        result, ties, disagreements = vote_cluster(entries)
        labels[c] = result
        report["clusters"][str(c)] = {"annotators": names, **result}
        report["ties"] += [{"cluster": c, **t} for t in ties]
        report["disagreements"] += [{"cluster": c, **d} for d in disagreements]
        for field in LIST_FIELDS:
            if not result[field] and any(e[field] for e in entries):
                report["no_majority"].append({"cluster": c, "field": field})
    return labels, report


# ------------------------------------------------------------------------------------ propagation
def cluster_label_arrays(labels: dict[int, dict[str, Any]], k: int) -> dict[str, pa.Array]:
    """Per-cluster label columns (index = cluster id); unlabelled clusters: null panel, empty lists."""
    get = lambda c, f, default: labels[c][f] if c in labels and labels[c][f] else default
    return {
        "panel_type": pa.array([get(c, "panel_type", None) for c in range(k)], pa.string()),
        "panel_subtype": pa.array([get(c, "panel_subtype", None) for c in range(k)], pa.string()),
        "concepts": pa.array([get(c, "global_class", []) for c in range(k)], pa.list_(pa.string())),
        "local_concepts": pa.array([get(c, "local_class", []) for c in range(k)], pa.list_(pa.string())),
    }


def write_labels_table(out: Path, per_cluster: dict[str, pa.Array]) -> Path:
    """``concepts/labels.parquet`` from ``clusters.parquet`` (one row group per shard, as it goes)."""
    path = concepts_dir(out) / LABELS
    clusters = pq.ParquetFile(concepts_dir(out) / "clusters.parquet")
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, LABEL_SCHEMA, compression="zstd") as writer:
        for i in range(clusters.num_row_groups):
            rg = clusters.read_row_group(i, columns=["key", "shard", "cluster"])
            idx = rg["cluster"].combine_chunks()
            cols = {"key": rg["key"], "shard": rg["shard"], "cluster": pc.cast(idx, pa.int32())}
            cols.update({name: per_cluster[name].take(idx) for name in ("panel_type", "panel_subtype", "concepts",
                                                                          "local_concepts")})
            writer.write_table(pa.table(cols, schema=LABEL_SCHEMA))
    return path


def _labels_for(labels_path: Path, shards: Iterable[str]) -> pa.Table:
    import pyarrow.dataset as pads   # here, not at import: it imports pandas (~0.3 CPU s in every command's start-up)

    return pads.dataset(labels_path).to_table(filter=pc.field("shard").isin(pa.array(sorted(set(shards)), pa.string())))


def with_labels(table: pa.Table, labels: pa.Table) -> pa.Table:
    """``table`` (with a ``key`` column) with the label columns replaced by those of ``labels`` (by key).

    Keys without a label (added after clustering) get null cluster/panel and empty concept lists.
    """
    table = table.drop_columns([c for c in LABEL_COLUMNS if c in table.column_names])
    idx = pc.index_in(table["key"], value_set=labels["key"])
    for name in LABEL_COLUMNS:
        col = labels[name].take(idx)
        if pa.types.is_list(col.type) and col.null_count:
            col = pa.array([v or [] for v in col.to_pylist()], col.type)
        table = table.append_column(pa.field(name, LABEL_SCHEMA.field(name).type), col)
    return table


def propagate(out: Path, labels_path: Path) -> dict[str, int]:
    """Write the label columns into every per-shard Parquet and into ``figures.parquet`` (atomically)."""
    counts = {"shards": 0, "rows": 0}
    for path in shard_index_files(out):
        table = pq.read_table(path)
        shard = table["shard"][0].as_py() if table.num_rows else None
        write_table(path, with_labels(table, _labels_for(labels_path, [shard] if shard else [])))
        counts["shards"] += 1
    index = figures_index_path(out)
    source = pq.ParquetFile(index)
    base = [f for f in source.schema_arrow if f.name not in LABEL_COLUMNS]
    schema = pa.schema(base + [LABEL_SCHEMA.field(c) for c in LABEL_COLUMNS])
    with atomic_path(index) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=100_000):
            table = pa.Table.from_batches([batch])
            labelled = with_labels(table, _labels_for(labels_path, pc.unique(table["shard"]).to_pylist()))
            writer.write_table(labelled.select(schema.names).cast(schema), row_group_size=100_000)
            counts["rows"] += table.num_rows
    return counts


def apply_labels(dataset_dir: str | Path, annotation_files: Sequence[str | Path],
                 taxonomy: str | Path | dict | None = None, panels: str | Path | dict | None = None,
                 workers: int = 1, executor: str = "local", address: str | None = None) -> dict[str, Any]:
    """Vote, validate and propagate cluster labels; returns the report (also ``concepts/label_report.json``).

    ``taxonomy`` defaults to the shipped ``taxonomy_collapsed_and_filtered.json``; raises
    ``AnnotationError`` (naming file and cluster) before writing anything if a file is invalid.
    """
    out = Path(dataset_dir)
    if not annotation_files:
        raise AnnotationError("no annotation files given")
    vocab = load_vocabulary(taxonomy, panels)
    k = load_cluster_model(out).k
    annotations, errors = [], []
    for f in annotation_files:
        parsed = read_annotation(f)
        errors += validate(parsed, vocab, k, name=str(f))
        annotations.append((str(f), parsed))
    _raise(errors)
    labels, report = vote(annotations, k)
    labels_path = write_labels_table(out, cluster_label_arrays(labels, k))
    counts = propagate(out, labels_path)
    from .stamp import stamp_labels

    # the labels into the licence shards' json members, in place (shards in parallel)
    stamped = stamp_labels(out, workers=workers, executor=executor, address=address)
    table = pq.read_table(labels_path, columns=["cluster", "concepts"])
    labelled = np.isin(table["cluster"].to_numpy(), np.array(sorted(labels), dtype=np.int64))
    report["taxonomy"] = vocab.source
    report["samples"] = {"total": table.num_rows, "in_labelled_clusters": int(labelled.sum()),
                         "with_global_concept": int((pc.list_value_length(table["concepts"]).to_numpy() > 0).sum())}
    report["updated"] = counts
    report["shards_stamped"] = stamped
    atomic_write_json(concepts_dir(out) / LABEL_REPORT, report)
    log.info("labels: %d of %d clusters labelled, %d ties, %d disagreements", len(labels), k, len(report["ties"]),
             len(report["disagreements"]))
    return report


def read_labels(dataset_dir: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    path = concepts_dir(Path(dataset_dir)) / LABELS
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `biomedica label {dataset_dir} --annotations ...` first")
    return pq.read_table(path, columns=list(columns) if columns else None)


def has_labels(dataset_dir: str | Path) -> bool:
    """Whether ``biomedica label`` has propagated concept labels in this folder."""
    return (concepts_dir(Path(dataset_dir)) / LABELS).exists()


def labels_extra_columns(dataset_dir: str | Path) -> dict[str, pa.Array] | None:
    """Label columns aligned with a fresh ``build_figures_index`` (per-shard tables in index order).

    The concepts' ``hooks.INDEX_COLUMNS`` provider (:func:`biomedica_hf.concepts.hooks.index_columns`): the
    build's ``build_figures_index`` keeps only the schema's columns and asks the hooks for the rest, so the
    labels survive a rebuilt index. None when the folder has no labels.
    """
    out = Path(dataset_dir)
    if not has_labels(out):
        return None
    keys = pa.concat_arrays([pq.read_table(p, columns=["key"])["key"].combine_chunks() for p in shard_index_files(out)]
                            or [pa.array([], pa.string())])
    labelled = with_labels(pa.table({"key": keys}), read_labels(out))
    return {name: labelled[name].combine_chunks() for name in LABEL_COLUMNS}


__all__ = [
    "AnnotationError",
    "apply_labels",
    "has_labels",
    "labels_extra_columns",
    "propagate",
    "read_annotation",
    "read_labels",
    "validate",
    "vote",
    "vote_cluster",
    "with_labels",
]

"""What the dataset card says about duplicates and contamination.

:func:`card_section` is the built-in provider of ``hooks.CARD_QUALITY_SECTIONS`` (:mod:`biomedica_hf.hooks`), so
the card never imports this package; an unreadable file it needs is an error naming the file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from biomedica_hf.layout import BUILD_SUMMARY, DECONTAMINATION_DIR, DUPLICATES, FIGURES_INDEX
from biomedica_hf.neardup.groups import DEFAULT_THRESHOLD
from biomedica_hf.neardup.hashing import HASH_BITS, HASH_NAME


def _column(path: Path, name: str):
    if not path.is_file() or name not in pq.read_schema(path).names:
        return None
    return pq.read_table(path, columns=[name])[name]


def card_stats(dataset_dir: str | os.PathLike) -> dict:
    """Exact duplicates (``duplicates.parquet``), near-duplicate and caption-duplicate groups
    (``figures.parquet``'s ``near_dup_of`` / ``caption_dup_of`` when present) and the contamination report
    (``decontamination/report.json`` when present). Absent sources give ``None``, never an error."""
    root = Path(dataset_dir)
    stats: dict = {"hash": HASH_NAME, "hash_bits": HASH_BITS, "threshold": DEFAULT_THRESHOLD}
    summary_path = root / BUILD_SUMMARY
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except ValueError:
        summary = {}
    dup = root / DUPLICATES
    if dup.is_file():
        t = pq.read_table(dup)
        n = sum(len(x or []) for x in t["duplicate_keys"].to_pylist()) if "duplicate_keys" in t.column_names else 0
        # the removals the build counted from its ledger (the one source of the console, the summary and the card)
        stats["exact"] = {"groups": t.num_rows, "duplicates": int(summary.get("duplicates_removed", n))}
    else:
        stats["exact"] = None
    stats["near_removed"] = int(summary.get("near_duplicates_removed", 0) or 0)
    figures = root / FIGURES_INDEX
    stats["samples"] = pq.ParquetFile(figures).metadata.num_rows if figures.is_file() else None
    for col, name in (("near_dup_of", "near"), ("caption_dup_of", "caption")):
        c = _column(figures, col)
        if c is None:
            stats[name] = None
            continue
        flagged = c.drop_null()
        stats[name] = {"duplicates": len(flagged), "groups": len(pc.unique(flagged))}
    phash = _column(figures, "phash")
    stats["hashed"] = None if phash is None else len(phash) - phash.null_count
    report = root / DECONTAMINATION_DIR / "report.json"
    try:
        stats["contamination"] = json.loads(report.read_text()) if report.is_file() else None
    except ValueError as exc:
        raise ValueError(f"{report} is not a JSON report ({exc}): rerun `biomedica decontaminate`") from exc
    return stats


def card_section(dataset_dir: str | os.PathLike) -> str:
    """A Markdown section: exact duplicates, near duplicates, caption duplicates, contamination per task."""
    s = card_stats(dataset_dir)
    total = s["samples"]

    def pct(n: int) -> str:
        return f" ({100 * n / total:.2f}% of {total:,} samples)" if total else ""

    out = ["## Duplicates and evaluation contamination", ""]
    if s["exact"] is not None:
        out.append(f"* **Exact duplicates** (same image bytes): {s['exact']['duplicates']:,} images removed, kept "
                   f"once in {s['exact']['groups']:,} samples (the most permissive subset; `also_in` lists the "
                   "other articles).")
    else:
        out.append("* **Exact duplicates**: not computed for this folder (no `duplicates.parquet`).")
    removed = s["near_removed"]
    removed_text = (f" {removed:,} near-duplicate images were removed by the build (`--near-dedup`), like exact "
                    "duplicates (ledger reason `near_duplicate_image`)." if removed else "")
    if s["near"] is not None:
        out.append(f"* **Near duplicates** (re-encoded / resized copies; {s['hash_bits']}-bit pHash, distance <= "
                   f"{s['threshold']} bits): {s['near']['duplicates']:,} samples{pct(s['near']['duplicates'])} in "
                   f"{s['near']['groups']:,} groups, flagged in `near_dup_of` (the key kept for the group, "
                   "chosen like exact duplicates: the most permissive subset, then the smallest key)." + removed_text)
    elif removed:
        out.append("* **Near duplicates**:" + removed_text)
    else:
        out.append("* **Near duplicates**: not computed for this folder (no `near_dup_of` column).")
    if s["caption"] is not None:
        out.append(f"* **Caption near-duplicates** (MinHash over word 3-grams, Jaccard >= 0.9): "
                   f"{s['caption']['duplicates']:,} samples{pct(s['caption']['duplicates'])} in "
                   f"{s['caption']['groups']:,} groups, flagged in `caption_dup_of`, not dropped.")
    c = s["contamination"]
    if c:
        head = (f"**Evaluation contamination** (`biomedica decontaminate`, {c.get('hash', HASH_NAME)}, "
                f"distance <= {c.get('threshold')} bits; exclusion list: "
                "[decontamination/exclusions.txt](decontamination/exclusions.txt), report: "
                "[decontamination/report.json](decontamination/report.json), "
                f"{c.get('excluded_keys', 0):,} keys):")
        out += ["", head, "",
                "| task | eval images | contaminated eval images | % | matched training samples |",
                "|---|---:|---:|---:|---:|"]
        for name, t in sorted(c.get("tasks", {}).items()):
            n, k = t.get("eval_images", 0), t.get("contaminated_eval_images", 0)
            out.append(f"| {name} | {n:,} | {k:,} | {100 * k / n if n else 0:.2f} | "
                       f"{t.get('matched_training_samples', 0):,} |")
    else:
        out.append("* **Evaluation contamination**: no report yet (`biomedica decontaminate DIR --against TASKS`).")
    return "\n".join(out) + "\n"

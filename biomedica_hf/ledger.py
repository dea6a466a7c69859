"""The ledger: every listed article, every figure panel and every package file ends in exactly one
state (kept / skipped / failed) with a reason. Written as ``ledger.parquet`` plus a human summary."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from biomedica_hf.schema import FAILED, KEPT, LEDGER_FIELDS, SKIPPED, STATES, LedgerEntry, arrow_schema

LEDGER_SCHEMA = arrow_schema(LEDGER_FIELDS)
KINDS = ("article", "figure", "file")


def check_unique(entries: Iterable[LedgerEntry]) -> list[tuple[str, str]]:
    """(kind, id) pairs that occur more than once: each item must have exactly one fate."""
    seen = Counter((e.kind, e.id) for e in entries)
    return sorted(k for k, n in seen.items() if n > 1)


def summarize(entries: list[LedgerEntry], top: int = 10) -> dict:
    """Counts by kind and state, reasons by kind/state, and the most frequent failure details."""
    counts: dict[str, dict[str, int]] = {k: {s: 0 for s in STATES} for k in KINDS}
    reasons: dict[str, Counter] = defaultdict(Counter)
    errors: Counter = Counter()
    examples: dict[str, str] = {}
    for e in entries:
        counts.setdefault(e.kind, {s: 0 for s in STATES})[e.state] += 1
        if e.state != KEPT:
            reasons[f"{e.kind}/{e.state}"][e.reason] += 1
        if e.state == FAILED:
            errors[e.reason] += 1
            examples.setdefault(e.reason, e.detail[:160] if e.detail else "")
    return {
        "counts": counts,
        "reasons": {k: dict(v.most_common()) for k, v in sorted(reasons.items())},
        "top_errors": [[r, n, examples.get(r, "")] for r, n in errors.most_common(top)],
    }


def format_summary(summary: dict) -> str:
    lines = ["Ledger", "------", f"{'':10s}{'kept':>9s}{'skipped':>9s}{'failed':>9s}{'total':>9s}"]
    for kind, c in summary["counts"].items():
        total = sum(c.values())
        lines.append(f"{kind:10s}{c[KEPT]:9d}{c[SKIPPED]:9d}{c[FAILED]:9d}{total:9d}")
    for group, reasons in summary["reasons"].items():
        lines.append(f"\n{group}:")
        lines.extend(f"  {n:7d}  {r}" for r, n in reasons.items())
    if summary["top_errors"]:
        lines.append("\nTop errors (by reason, with an example):")
        for reason, n, *example in summary["top_errors"]:
            ex = f"  e.g. {example[0]}" if example and example[0] else ""
            lines.append(f"  {n:7d}  {reason}{ex}")
    return "\n".join(lines) + "\n"


def ledger_summary(path: Path, top: int = 10) -> dict:
    """:func:`summarize` of a ``ledger.parquet``, streamed batch by batch (pyarrow group-by: bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    counts = {kind: {st: 0 for st in STATES} for kind in KINDS}
    reasons: dict[str, Counter] = {}
    errors: Counter = Counter()
    examples: dict[str, str] = {}
    if Path(path).exists():
        for batch in pq.ParquetFile(path).iter_batches(batch_size=200_000,
                                                       columns=["kind", "state", "reason", "detail"]):
            t = pa.Table.from_batches([batch])
            g = t.group_by(["kind", "state", "reason"]).aggregate([("reason", "count"), ("detail", "max")])
            for r in g.to_pylist():
                counts.setdefault(r["kind"], {st: 0 for st in STATES})[r["state"]] += r["reason_count"]
                if r["state"] != KEPT:
                    reasons.setdefault(f"{r['kind']}/{r['state']}", Counter())[r["reason"]] += r["reason_count"]
                if r["state"] == FAILED:
                    errors[r["reason"]] += r["reason_count"]
                    if r["detail_max"]:
                        examples.setdefault(r["reason"], r["detail_max"][:160])
    return {"counts": counts, "reasons": {k: dict(v.most_common()) for k, v in sorted(reasons.items())},
            "top_errors": [[r, n, examples.get(r, "")] for r, n in errors.most_common(top)]}


#: ledger reasons of the figures a build removed as duplicates (exact bytes / near copies with --near-dedup)
EXACT_DUPLICATE = "duplicate_image"
NEAR_DUPLICATE = "near_duplicate_image"


def removals(summary: dict) -> dict[str, int]:
    """``{"exact": n, "near": m}``: figures removed as exact / near duplicates, from the ledger's reasons — the one
    source the console, ``build_summary.json`` and the card all report."""
    skipped = summary.get("reasons", {}).get("figure/skipped", {})
    return {"exact": int(skipped.get(EXACT_DUPLICATE, 0)), "near": int(skipped.get(NEAR_DUPLICATE, 0))}


__all__ = ["EXACT_DUPLICATE", "FAILED", "KEPT", "NEAR_DUPLICATE", "SKIPPED", "check_unique", "format_summary",
           "ledger_summary", "removals", "summarize"]

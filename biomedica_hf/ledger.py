"""The ledger: every listed article, every figure panel and every package file ends in exactly one
state (kept / skipped / failed) with a reason. Written as ``ledger.parquet`` plus a human summary."""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from .schema import FAILED, KEPT, LEDGER_FIELDS, SKIPPED, STATES, LedgerEntry, arrow_schema
from .writer import atomic_write_bytes, write_parquet

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


def merge_summaries(summaries: Iterable[dict], top: int = 10) -> dict:
    """One summary from per-partition summaries (bounded: counts by kind/state/reason, not rows)."""
    counts: dict[str, dict[str, int]] = {k: {s: 0 for s in STATES} for k in KINDS}
    reasons: dict[str, Counter] = defaultdict(Counter)
    errors: Counter = Counter()
    examples: dict[str, str] = {}
    for sm in summaries:
        for kind, c in sm["counts"].items():
            for state, n in c.items():
                counts.setdefault(kind, {s: 0 for s in STATES})[state] += n
        for group, rs in sm["reasons"].items():
            reasons[group].update(rs)
        for reason, n, *example in sm["top_errors"]:
            errors[reason] += n
            if example and example[0]:
                examples.setdefault(reason, example[0])
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


def write_ledger(out: Path, entries: list[LedgerEntry]) -> dict:
    """Write ``ledger.parquet`` (sorted, reproducible) and ``ledger_summary.txt``; return the summary."""
    rows = sorted((e.as_dict() for e in entries), key=lambda r: (KINDS.index(r["kind"]), r["pmcid"], r["id"]))
    write_parquet(Path(out) / "ledger.parquet", rows, LEDGER_SCHEMA)
    summary = summarize(entries)
    atomic_write_bytes(Path(out) / "ledger_summary.txt", format_summary(summary).encode())
    return summary


def write_ledger_parts(out: Path, parts: list[Path]) -> int:
    """``ledger.parquet`` streamed from per-partition parts (never one list of every row)."""
    import pyarrow.parquet as pq

    from .writer import atomic_path

    n = 0
    with atomic_path(Path(out) / "ledger.parquet") as tmp:
        writer = pq.ParquetWriter(tmp, LEDGER_SCHEMA, compression="zstd")
        try:
            for p in parts:
                t = pq.read_table(p, schema=LEDGER_SCHEMA)
                if t.num_rows:
                    writer.write_table(t)
                    n += t.num_rows
        finally:
            writer.close()
    return n


__all__ = ["FAILED", "KEPT", "SKIPPED", "check_unique", "format_summary", "merge_summaries", "summarize", "write_ledger", "write_ledger_parts"]

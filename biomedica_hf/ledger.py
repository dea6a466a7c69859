"""The ledger: every listed article, every figure panel and every package file ends in exactly one
state (kept / skipped / failed) with a reason. Written as ``ledger.parquet`` plus a human summary."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

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
    for e in entries:
        counts.setdefault(e.kind, {s: 0 for s in STATES})[e.state] += 1
        if e.state != KEPT:
            reasons[f"{e.kind}/{e.state}"][e.reason] += 1
        if e.state == FAILED:
            errors[f"{e.reason}: {e.detail[:120]}" if e.detail else e.reason] += 1
    return {
        "counts": counts,
        "reasons": {k: dict(v.most_common()) for k, v in sorted(reasons.items())},
        "top_errors": errors.most_common(top),
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
        lines.append("\nTop errors:")
        lines.extend(f"  {n:7d}  {msg}" for msg, n in summary["top_errors"])
    return "\n".join(lines) + "\n"


def write_ledger(out: Path, entries: list[LedgerEntry]) -> dict:
    """Write ``ledger.parquet`` (sorted, reproducible) and ``ledger_summary.txt``; return the summary."""
    rows = sorted((e.as_dict() for e in entries), key=lambda r: (KINDS.index(r["kind"]), r["pmcid"], r["id"]))
    write_parquet(Path(out) / "ledger.parquet", rows, LEDGER_SCHEMA)
    summary = summarize(entries)
    atomic_write_bytes(Path(out) / "ledger_summary.txt", format_summary(summary).encode())
    return summary


__all__ = ["KEPT", "SKIPPED", "FAILED", "check_unique", "summarize", "format_summary", "write_ledger"]

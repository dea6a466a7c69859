"""A build's input, checked before anything is written, and the one-line errors of a build that has nothing.

* :func:`check_input` - ``--input`` exists and can be read (a legacy mirror root has its file list), before the
  output folder is touched;
* :func:`nothing_listed` - the error of a first listing with no article: what was looked for, what was left out
  and why (the source's ``unlisted`` / ``listing_problems``), and the fix;
* :func:`nothing_kept` - the error of a finished build whose dataset holds no sample, with the ledger's top reasons.

Each is a :class:`~biomedica_hf.errors.BiomedicaError`: the CLI prints it as one ``Error:`` line with its exit code.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from biomedica_hf.errors import InputError, NothingKeptError

#: What ``--source local`` looks for (also in the error of a folder that has none of it).
LOOKED_FOR = "JATS *.nxml / *.xml files, *.tar.gz / *.tgz packages and Cloud-layout PMCid.V/ folders"
INPUT_HINT = ("give --input the folder (or the .nxml / .xml / .tar.gz file) of your PMC articles; "
              "`biomedica build --sample --out DIR` builds the bundled sample")


def check_input(source: str, input_path: Path | None, filelist: Path | None = None) -> None:
    """Raise :class:`InputError` when ``--input`` is missing or cannot be read (nothing is written)."""
    if input_path is None or source == "cloud":
        return
    p = Path(input_path)
    try:
        os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"--input {p} does not exist", INPUT_HINT) from None
    except OSError as e:
        raise InputError(f"--input {p} cannot be read ({e.strerror or e})", f"check its permissions (ls -ld {p})") \
            from None
    try:
        if os.path.isdir(p):
            with os.scandir(p) as it:
                next(it, None)
        else:
            with open(p, "rb") as fh:
                fh.read(1)
    except OSError as e:
        raise InputError(f"--input {p} cannot be read ({e.strerror or e})", f"check its permissions (ls -ld {p})") \
            from None
    if source == "legacy" and filelist is None and os.path.isdir(p) and not (p / "oa_file_list.csv").is_file():
        raise InputError(f"--input {p} has no oa_file_list.csv",
                         "pass the mirror's file list with --filelist FILE (or use --source local for a folder of "
                         "packages)")


def _left_out(source: Any) -> str:
    reasons = Counter(str(r).split(":")[0] for _, r in getattr(source, "unlisted", None) or [])
    bad = len(getattr(source, "listing_problems", None) or [])
    parts = [f"{n} {r}" for r, n in reasons.most_common(4)]
    if bad:
        parts.append(f"{bad} unreadable listing row(s)")
    return f" (left out: {', '.join(parts)})" if parts else ""


def nothing_listed(source_kind: str, source_opts: dict, source: Any) -> InputError:
    """The error of a first listing that holds no article (call before the source's reasons are drained)."""
    left = _left_out(source)
    if source_kind == "local":
        return InputError(f"no article in {source_opts.get('path')}{left}: looked for {LOOKED_FOR}",
                          f"{INPUT_HINT}; `biomedica inspect PATH` shows what the parser sees")
    what = ", ".join(f"--{k.replace('_file', 's').replace('_', '-')} {v}" for k, v in source_opts.items()
                     if k in ("pmcid_file", "filelist") and v) or f"the {source_kind} listing"
    return InputError(f"the listing is empty: {what} names no article{left}",
                      "give --pmcids a file with one PMCID per line (PMC123 or PMC123.2), or --filelist a PMC file "
                      "list")


def nothing_kept(summary: dict, out: Path, samples: int) -> NothingKeptError | None:
    """The error of a build whose dataset holds no sample (``None`` when it holds some)."""
    if samples:
        return None
    counts = summary.get("counts", {}).get("article", {})
    total = sum(counts.values())
    reasons: Counter = Counter()
    for group in ("article/failed", "article/skipped"):
        reasons.update(summary.get("reasons", {}).get(group, {}))
    examples = {r: ex for r, _, ex in (summary.get("top_errors") or []) if ex}
    top = "; ".join(f"{r} {n}" + (f" (e.g. {examples[r][:120]})" if r in examples else "")
                    for r, n in reasons.most_common(3))
    failed = counts.get("failed", 0)
    head = (f"the build kept no figure: {failed} of {total} article(s) failed" if failed
            else f"the build kept no figure: {total} article(s), none with a figure to keep")
    return NothingKeptError(f"{head}{': ' + top if top else ''}",
                            f"every fate is in {Path(out) / 'ledger.parquet'} ({Path(out) / 'ledger_summary.txt'}); "
                            "fix the cause and rerun the same command (failed downloads are retried, "
                            "--retry-failed retries every failure)")

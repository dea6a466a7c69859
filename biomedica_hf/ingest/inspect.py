"""``biomedica inspect``: what the parser sees in a file, an article folder, a package or a folder of them.

A file (``.xml`` / ``.nxml`` / ``.tar.gz``) is :func:`biomedica_hf.ingest.parse.inspect_path`'s report. A folder is
listed exactly as ``biomedica build --source local --input FOLDER`` lists it (the source of the same
:class:`~biomedica_hf.ingest.sources.spec.SourceSpec`, a :class:`LocalSource`): every article
it finds - an extracted article folder, a package, a Cloud-layout ``PMCid.V/`` folder - is inspected, and what the
build would leave out is reported with the reason. The folder's report has the same keys as a file's
(``file``, ``kind``, ``articles``, ``warnings``) plus ``items``: one file report per XML file or package.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, cast

from biomedica_hf.ingest.parse import format_inspection, inspect_path
from biomedica_hf.ingest.sources import SourceSpec, make_source
from biomedica_hf.ingest.sources.base import XML_SUFFIXES, looks_like_jats
from biomedica_hf.ingest.sources.local import CLOUD, DIR, LocalSource


def _article_xmls(folder: Path, kind: str) -> list[Path]:
    """The JATS files of one listed article folder (a Cloud-layout folder: its ``PMCid.V.xml``)."""
    if kind == CLOUD:
        return [folder / f"{folder.name}.xml"]
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(XML_SUFFIXES))
    return [folder / f for f in names if looks_like_jats(folder / f)]


def inspect_any(path: str | os.PathLike[str]) -> dict[str, Any]:
    """JSON-able report on a file, an article folder, a package or a folder of any of them."""
    path = Path(path)
    if not path.is_dir():
        return inspect_path(path)
    source = cast(LocalSource, make_source(SourceSpec("local", str(path))))
    items: list[dict[str, Any]] = []
    for entry in source.scan():
        if entry.kind in (DIR, CLOUD):
            items += [inspect_path(x) for x in _article_xmls(entry.path, entry.kind)]
        else:
            items.append(inspect_path(entry.path))
    warnings = [f"left out {p}: {why}" for p, why in source.unlisted]
    warnings += [f"{it['file']}: {w}" for it in items for w in it["warnings"]]
    if not items:
        warnings.append("no article found (looked for JATS *.nxml / *.xml files, *.tar.gz packages and "
                        "PMCid.V/ folders)")
    return {"file": str(path), "kind": "folder", "articles": [a for it in items for a in it["articles"]],
            "warnings": warnings, "items": items}


def format_any(report: dict[str, Any]) -> str:
    """Readable text of :func:`inspect_any`'s report: a folder's items one after the other."""
    if report.get("kind") != "folder":
        return format_inspection(report)
    out = io.StringIO()
    out.write(f"{report['file']} (folder: {len(report['articles'])} article(s) in {len(report['items'])} "
              f"file(s) or package(s))\n")
    for w in report["warnings"]:
        if w.startswith("left out "):
            out.write(f"  ! {w}\n")
    for item in report["items"]:
        out.write("\n" + format_inspection(item))
    return out.getvalue()

"""The licences of the data a model was trained on, read from the dataset itself, and what a model card says of them.

:func:`data_licences` applies the training config's selection (``subset`` and the ``load_biomedica`` filters) to the
dataset's ``figures.parquet`` index (a local folder or a Hub dataset) and counts the selected samples and articles
per licence: the normalised ``license_code`` of the index, with the Creative Commons version read from the
article's ``license_url`` in ``articles.parquet`` when the URL names one (``.../licenses/by/4.0/`` -> ``4.0``).

:meth:`DataLicences.front_matter` is the card's licence metadata from those facts:

* every selected sample under one licence with a Hub licence identifier (``CC BY`` 4.0 -> ``cc-by-4.0``,
  ``CC0`` -> ``cc0-1.0``): ``license: <that id>``;
* anything else (several licences, a licence without a Hub identifier or version, licences that could not be
  read): ``license: other`` with ``license_name`` and ``license_link: LICENSES.md``, the file
  :meth:`DataLicences.markdown` writes beside the card (licences, versions, sample and article counts, the
  data, subset and filters).
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from biomedica_hf.filters import Selection

LICENSES_FILE = "LICENSES.md"

# Hub licence identifiers (https://huggingface.co/docs/hub/repositories-licenses) per (code, version)
_HUB_IDS = {
    ("CC0", "1.0"): "cc0-1.0", ("CC0", None): "cc0-1.0",
    **{("CC BY", v): f"cc-by-{v}" for v in ("2.0", "2.5", "3.0", "4.0")},
    **{("CC BY-SA", v): f"cc-by-sa-{v}" for v in ("3.0", "4.0")},
    **{("CC BY-NC", v): f"cc-by-nc-{v}" for v in ("2.0", "3.0", "4.0")},
    **{("CC BY-ND", v): f"cc-by-nd-{v}" for v in ("4.0",)},
    **{("CC BY-NC-ND", v): f"cc-by-nc-nd-{v}" for v in ("3.0", "4.0")},
    **{("CC BY-NC-SA", v): f"cc-by-nc-sa-{v}" for v in ("2.0", "3.0", "4.0")},
}
_VERSION = re.compile(r"creativecommons\.org/+(?:licen[cs]es/+[a-z-]+|publicdomain/+zero)/+(\d\.\d)", re.IGNORECASE)


def cc_version(url: str | None) -> str | None:
    """The Creative Commons version a licence URL names (``4.0``), else None."""
    m = _VERSION.search(url or "")
    return m.group(1) if m else None


@dataclass(frozen=True)
class LicenceCount:
    code: str                 # normalised code (biomedica_hf.licenses): "CC BY", "CC BY-NC-ND", "PHE", ...
    version: str | None       # Creative Commons version from the licence URL, when stated
    samples: int
    articles: int

    @property
    def name(self) -> str:
        return f"{self.code} {self.version}" if self.version else self.code

    @property
    def hub_id(self) -> str | None:
        return _HUB_IDS.get((self.code, self.version))


@dataclass
class DataLicences:
    """What the training data's licences are: counts per licence of the selected samples (empty when unknown)."""

    data: str                                   # how the data is named in the card (Hub id or "a local folder")
    subset: str
    filters: dict[str, Any] = field(default_factory=dict)
    counts: list[LicenceCount] = field(default_factory=list)
    error: str | None = None                    # why the licences could not be read

    @property
    def samples(self) -> int:
        return sum(c.samples for c in self.counts)

    @property
    def hub_id(self) -> str | None:
        """The Hub licence id when every selected sample shares one licence that has one."""
        return self.counts[0].hub_id if len(self.counts) == 1 else None

    def front_matter(self) -> dict[str, str]:
        """``license`` (and ``license_name`` / ``license_link`` when it is ``other``) for a model card."""
        if self.hub_id:
            return {"license": self.hub_id}
        if len(self.counts) == 1:
            name = re.sub(r"[^a-z0-9]+", "-", self.counts[0].name.lower()).strip("-") or "other"
        else:
            name = "mixed-training-data-licences" if self.counts else "training-data-licences-unknown"
        return {"license": "other", "license_name": name, "license_link": LICENSES_FILE}

    def summary(self) -> str:
        """One sentence for the card body."""
        if not self.counts:
            return f"The training data's licences could not be read; see [{LICENSES_FILE}]({LICENSES_FILE})."
        parts = ", ".join(f"{c.name} ({c.samples:,} samples)" for c in self.counts)
        return (f"Licences of the {self.samples:,} training samples: {parts} (see [{LICENSES_FILE}]({LICENSES_FILE})).")

    def markdown(self) -> str:
        """``LICENSES.md``: the licences of the training data, with counts, data, subset and filters."""
        filters = ", ".join(f"`{k}={v!r}`" for k, v in self.filters.items()) or "none"
        lines = ["# Licences of the training data", "",
                 f"Data: {self.data}; subset `{self.subset}`; filters: {filters}.", ""]
        if not self.counts:
            lines += [f"The licences could not be read: {self.error or 'no data'}. The licence of each sample is "
                      "in the dataset's `figures.parquet` (`license_code`, `subset`).", ""]
            return "\n".join(lines)
        lines += ["Counted from the dataset's index (`figures.parquet`: `license_code`; versions from the "
                  "articles' `license_url`) over the samples the training configuration selects.", "",
                  "| licence | version | Hub id | samples | articles |", "|---|---|---|---:|---:|"]
        lines += [f"| {c.code} | {c.version or 'not stated'} | {c.hub_id or '-'} | {c.samples:,} | {c.articles:,} |"
                  for c in self.counts]
        lines += [f"| **total** | | | {self.samples:,} | {sum(c.articles for c in self.counts):,} |", "",
                  "Each licence's terms apply to the samples under it; articles of non-commercial licences "
                  "(`CC BY-NC*`) and of `other` terms (e.g. the COVID-19 public-health-emergency statements, `PHE`) "
                  "are not licensed for commercial use.", ""]
        return "\n".join(lines)


def _articles_versions(path: str, pmcids: set[str]) -> dict[str, str | None]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from biomedica_hf.dataset.loader import dataset_file_url
    from biomedica_hf.layout import ARTICLES_TABLE

    url = dataset_file_url(path, ARTICLES_TABLE)
    if url.startswith("hf://"):
        import fsspec

        with fsspec.open(url, "rb") as fh:
            table = pq.read_table(fh, columns=["pmcid", "license_url"])
    else:
        table = pq.read_table(url, columns=["pmcid", "license_url"])
    table = table.filter(pc.is_in(table["pmcid"], value_set=pa.array(sorted(pmcids), pa.string())))
    return {p: cc_version(u) for p, u in zip(table["pmcid"].to_pylist(), table["license_url"].to_pylist())}


def data_licences(path: str | os.PathLike | None, selection: Selection | str | Sequence[str] = "commercial",
                  filters: dict[str, Any] | None = None, data: str | None = None) -> DataLicences:
    """Count the licences of the samples ``load_biomedica(path, selection=selection)`` selects (module doc).

    ``selection``: a :class:`biomedica_hf.filters.Selection`, or a subset with the other filters in the mapping
    ``filters`` (e.g. a training config's ``data`` section: its other keys are ignored).
    Never raises: a dataset that cannot be read gives a :class:`DataLicences` without counts and its ``error``."""
    from biomedica_hf.filters import FIELDS, Selection

    out = DataLicences(data=data or (str(path) if path else "unknown"), subset="")
    try:
        if not isinstance(selection, Selection):
            selection = Selection(subset=selection, **{k: v for k, v in (filters or {}).items()
                                                       if k in FIELDS and k != "subset" and v is not None})
        out.subset = selection.subset if isinstance(selection.subset, str) else ", ".join(selection.subset)
        out.filters = selection.filters()
    except (TypeError, ValueError) as e:
        out.subset = selection if isinstance(selection, str) else ", ".join(map(str, selection))
        out.error = f"{type(e).__name__}: {e}"
        return out
    if not path:
        out.error = "no data path in the configuration"
        return out
    try:
        from biomedica_hf.dataset.loader import dataset_file_url, select_ranges
        from biomedica_hf.layout import FIGURES_INDEX

        selected = select_ranges(dataset_file_url(path, FIGURES_INDEX), selection,
                                 columns=["license_code", "pmcid"], with_columns=True)
        samples: Counter = Counter()
        articles: dict[str, str] = {}
        for _, cols in selected.values():
            codes, pmcids = cols["license_code"].to_pylist(), cols["pmcid"].to_pylist()
            samples.update(zip(codes, pmcids))
            articles.update(zip(pmcids, codes))
        try:
            versions = _articles_versions(str(path), set(articles))
        except Exception:  # noqa: BLE001 - versions are a refinement: without articles.parquet they are unknown
            versions = {}
        by: dict[tuple[str, str | None], list[int]] = {}
        for (code, pmcid), n in samples.items():
            acc = by.setdefault((code or "unknown", versions.get(pmcid)), [0, 0])
            acc[0] += n
            acc[1] += 1
        out.counts = sorted((LicenceCount(c, v, n, a) for (c, v), (n, a) in by.items()),
                            key=lambda c: (-c.samples, c.code, c.version or ""))
    except Exception as e:  # noqa: BLE001 - the card says the licences are unknown rather than failing an export
        msg = f"{type(e).__name__}: {e}"
        for p in {os.path.abspath(str(path)), str(path)}:     # LICENSES.md is published: no local path
            msg = msg.replace(p, "<data>")
        out.error = msg
    return out


def write_licences(folder: str | os.PathLike, licences: DataLicences) -> Path:
    """Write ``LICENSES.md`` into a model folder."""
    from biomedica_hf.io.atomic import atomic_write_bytes

    path = Path(folder) / LICENSES_FILE
    atomic_write_bytes(path, licences.markdown().encode())
    return path


__all__ = ["LICENSES_FILE", "DataLicences", "LicenceCount", "cc_version", "data_licences", "write_licences"]

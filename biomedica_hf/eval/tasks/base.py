"""Task definitions and their data sources.

A :class:`Task` says what to evaluate (zero-shot classification or retrieval), in which domain,
with which prompts and metric, and where its data comes from (a :class:`Source`). Every
classification source ends as Parquet files in the eval-set layout (:mod:`..evalset`), so the
BIOMEDICA suite, the local fixtures and any user set share one code path.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from biomedica_hf.eval.evalset import DATA_HINT, DataNotFoundError, parquet_files

EVALSET_REPO = "BIOMEDICA/Biomedica2025EvalSet"


def _default_fixtures_dir() -> Path | None:
    here = Path(__file__).resolve()
    for cand in (Path.cwd().parent / "shared" / "fixtures" / "eval", here.parents[3].parent / "shared" / "fixtures" / "eval"):
        if cand.is_dir():
            return cand
    return None


@dataclass
class DataContext:
    """Where task data is looked for (CLI flags, else environment variables, else defaults)."""

    data_dir: Path | None = None        # --data-dir / BIOMEDICA_EVAL_DIR: local copy of the eval set(s)
    fixtures_dir: Path | None = None    # --fixtures-dir / BIOMEDICA_EVAL_FIXTURES: raw fixture files
    cache_dir: Path | None = None       # --cache-dir / BIOMEDICA_EVAL_CACHE: converted Parquet, downloads
    revision: str | None = None         # Hub revision of the eval set
    allow_download: bool = True         # False when HF_HUB_OFFLINE=1

    def __post_init__(self) -> None:
        for name in ("data_dir", "fixtures_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value).expanduser())

    @classmethod
    def from_env(cls, data_dir: str | os.PathLike | None = None, fixtures_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, revision: str | None = None) -> DataContext:
        env = os.environ
        data = data_dir or env.get("BIOMEDICA_EVAL_DIR")
        fixtures = fixtures_dir or env.get("BIOMEDICA_EVAL_FIXTURES")
        cache = cache_dir or env.get("BIOMEDICA_EVAL_CACHE") or Path.home() / ".cache" / "biomedica_hf" / "eval"
        offline = env.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        return cls(Path(data).expanduser() if data else None,
                   Path(fixtures).expanduser() if fixtures else _default_fixtures_dir(),
                   Path(cache).expanduser(), revision, not offline)


class Source(Protocol):
    """Where a task's Parquet files come from."""

    def files(self, ctx: DataContext) -> list[Path]:
        """The task's eval-set Parquet files; raises :class:`DataNotFoundError` when absent."""
        ...

    def describe(self) -> str:
        ...


@dataclass(frozen=True)
class SuiteSource:
    """One suite (folder) of an eval set in the Parquet layout: ``DATA_DIR/**/<suite>/*.parquet`` or the Hub."""

    suite: str
    repo_id: str = EVALSET_REPO

    def _local(self, root: Path) -> list[Path]:
        for cand in [root / self.suite, *sorted(p for p in root.glob(f"*/{self.suite}") if p.is_dir())]:
            files = parquet_files(cand) if cand.exists() else []
            if files:
                return files
        return []

    def files(self, ctx: DataContext) -> list[Path]:
        looked = []
        for root in [ctx.data_dir, ctx.cache_dir / "hub" / self.repo_id.replace("/", "--") if ctx.cache_dir else None]:
            if root is not None:
                looked.append(str(root))
                if files := self._local(root):
                    return files
        if ctx.allow_download and ctx.cache_dir is not None:
            try:
                from huggingface_hub import snapshot_download

                local = snapshot_download(self.repo_id, repo_type="dataset", revision=ctx.revision,
                                          allow_patterns=[f"*{self.suite}/*", f"{self.suite}/*"],
                                          local_dir=ctx.cache_dir / "hub" / self.repo_id.replace("/", "--"))
                if files := self._local(Path(local)):
                    return files
            except Exception as exc:  # noqa: BLE001 - offline, gated, absent: all mean "not here"
                looked.append(f"hf://datasets/{self.repo_id} ({type(exc).__name__})")
        where = " or ".join(looked) or "any data dir"
        raise DataNotFoundError(f"{DATA_HINT} (suite {self.suite!r} of {self.repo_id}: no Parquet under {where})",
                                suite=self.suite, looked=f"{self.repo_id}: no Parquet under {where}")

    def describe(self) -> str:
        return f"hf://datasets/{self.repo_id}/**/{self.suite}"

    def provenance(self, ctx: DataContext) -> dict:
        """Where the suite's files really came from: the Hub (a snapshot download) or a local folder.

        A folder counts as the Hub eval set only when ``snapshot_download`` wrote it (its
        ``.cache/huggingface`` marker); any other local folder in the same layout is named by its path,
        so a user's own data converted to this layout is never reported as the BIOMEDICA suite.
        """
        files = self.files(ctx)
        folder = files[0].parent
        for parent in [folder, *folder.parents]:
            if (parent / ".cache" / "huggingface").is_dir():
                return {"from_hub": True, "source": f"hf://datasets/{self.repo_id}/**/{self.suite}",
                        "type": self.repo_id}
        return {"from_hub": False, "source": str(folder), "type": str(folder)}


@dataclass(frozen=True)
class ParquetSource:
    """An explicit Parquet file or folder in the eval-set layout."""

    path: Path

    def files(self, ctx: DataContext) -> list[Path]:
        files = parquet_files(self.path) if self.path.exists() else []
        if not files:
            raise DataNotFoundError(f"{DATA_HINT} (no Parquet at {self.path})")
        return files

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class Task:
    """One evaluation task."""

    name: str
    domain: str
    kind: str                                   # "zero-shot" | "retrieval"
    source: Source | None = None                # zero-shot: eval-set Parquet; retrieval: see retrieval_source
    task_filter: str | None = None              # value of the ``task`` column (None: every row)
    split: str | None = None                    # value of the ``split`` column where present
    templates: tuple[str, ...] = ("{}",)        # prompt templates; "{}" is replaced by the class phrase
    classnames: Mapping[str, str] = field(default_factory=dict)   # option text -> class phrase
    dataset_name: str = ""
    dataset_type: str = ""
    description: str = ""
    reference: str = ""                         # where the task and its name come from
    retrieval_source: object | None = None      # retrieval: a RetrievalSource
    primary_metric: str = "accuracy"
    ordered_classes: tuple[str, ...] | None = None   # ordinal classes, in order: adds quadratic weighted kappa

    def phrase(self, option: str) -> str:
        """The class phrase put into the templates for an option text."""
        return self.classnames.get(option, option)

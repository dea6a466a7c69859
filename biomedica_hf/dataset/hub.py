"""Publish a built dataset folder to the Hugging Face Hub as a dataset repository.

Two layers:

* :func:`plan_upload` (pure, local, no network): exactly the dataset's own files (shards paired by stem
  with their Parquet and stats, ``sizes.json``, the tables, ``README.md``, the plots the card links, the
  table-config tars and the files of the card's configs), with sizes and kinds; what is left out and why
  (symlinks, hidden files, other files under ``card/``, stray files); and the problems that block an
  upload (no card, an unfinished build, and everything ``biomedica verify``'s fast check finds: shards
  that disagree with their stats, ``sizes.json`` or ``figures.parquet``, stale or duplicated shards).
* :func:`push_folder`: validate the plan, then ``create_repo`` (idempotent), ``create_branch`` for a
  revision other than ``main``, compare with the remote's file list (sizes, git / LFS hashes from the Hub
  API) and upload only the files that changed, deleting in the same commit the remote dataset files the
  folder no longer has (shards replaced by an update). Re-running the same push resumes an interrupted one.

The upload is given the planned paths themselves as ``allow_patterns``, so nothing outside the plan is sent.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biomedica_hf.io.atomic import TEMP_GLOB
from biomedica_hf.io.digest import file_sha256
from biomedica_hf.io.markers import STATS
from biomedica_hf.io.sizes import human_size
from biomedica_hf.layout import (
    BUILD_SUMMARY,
    CARD,
    CARD_DIR,
    LEDGER_SUMMARY,
    ROOT_FILES,
    SIZES,
    SUB_FOLDER_GLOB,
    TABLE_CONFIGS,
    WORK_DIR,
)
from biomedica_hf.schema import SUBSETS

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
DEFAULT_REVISION = "main"
#: files per commit: the Hub refuses 100 or more over its HTTP API
FILES_PER_COMMIT = 90
#: the Hub allows 128 commits per hour per repository; a 429 answer is waited out this many times
RATE_LIMIT_RETRIES = 5

#: Never uploaded. Matched like ``huggingface_hub`` does (``fnmatch``: ``*`` also crosses ``/``).
UPLOAD_IGNORE: tuple[str, ...] = (
    f"{WORK_DIR}/**",          # build staging and caches
    ".cache/**",               # huggingface_hub's resumable-upload state (.cache/huggingface/)
    "**/.cache/**",
    TEMP_GLOB, f"**/{TEMP_GLOB}",  # atomic-write temp files of an interrupted build
    "*.part", "**/*.part",      # partial downloads
    "*.tmp", "**/*.tmp",
    ".*", "**/.*",              # any other hidden file or folder (.DS_Store, .git, editor swap files)
)

#: The published layout; anything else in the folder stays local.
UPLOAD_ALLOW: tuple[str, ...] = (
    CARD,
    f"{CARD_DIR}/*",
    *(p for s in SUBSETS for d in (s, f"{s}/{SUB_FOLDER_GLOB}")   # flat and in sub-folders (layout.shard_folder)
      for p in (f"{d}/*.tar", f"{d}/*.parquet", f"{d}/*{STATS}", f"{d}/{SIZES}")),
    *(f"{t}/*.tar" for t in TABLE_CONFIGS),  # the tables again as WebDataset configs (articles/, figures/)
    "*.parquet",
    LEDGER_SUMMARY,
    BUILD_SUMMARY,
)

#: File kinds of a plan, in display order.
KINDS: tuple[str, ...] = ("shard", "index", "stats", "table", "summary", "card", "plot", "config", "other")
SHARED = "(shared)"  # the by_subset bucket of files outside the licence subsets (tables, card, summaries)

#: a shard's file, flat (``commercial/<stem>.tar``) or in its Hub-scale sub-folder (``commercial/s000/g000/...``)
_SHARD_RE = re.compile(r"^(?P<subset>[^/]+)/(?:s\d{3}/g\d{3}/)?(?P<stem>[^/]+?)(?P<suffix>_stats\.json|\.tar|"
                       r"\.parquet)$")
_SIZES_RE = re.compile(r"^(?P<subset>[^/]+)/(?:s\d{3}/g\d{3}/)?sizes\.json$")
_CARD_LINK_RE = re.compile(r"""(?:\]\(\s*<?|src\s*=\s*["']|href\s*=\s*["'])(?:\./)?([^)"'\s#?>]+)""")
_PLOT_EXT = (".png", ".jpg", ".jpeg", ".svg", ".webp", ".gif")
_REPO_PART_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
# Folders never walked: their contents are all ignored, and _work/ may hold millions of files.
_PRUNED = {
    WORK_DIR: "build staging and caches (_work/): never uploaded",
    ".cache": "huggingface_hub upload state (.cache/huggingface/): never uploaded",
    ".git": "git metadata: never uploaded",
}


class HubError(Exception):
    """Base class of the errors of this module (the CLI turns them into a clean message)."""


class InvalidRepoIdError(HubError, ValueError):
    """``repo_id`` is not of the form ``ORG/NAME``."""


class UploadBlockedError(HubError):
    """The plan has problems that must be fixed before uploading."""

    def __init__(self, plan: UploadPlan) -> None:
        self.plan = plan
        lines = "\n".join(f"  - {p}" for p in plan.problems)
        super().__init__(f"cannot upload {plan.folder}: {len(plan.problems)} problem(s)\n{lines}")


@dataclass(frozen=True)
class PlannedFile:
    """One file that would be uploaded."""

    path: str              # relative, "/"-separated: the path in the repository
    size: int              # bytes
    kind: str              # one of KINDS
    subset: str | None     # the subset folder, None for files at the root or in card/


@dataclass(frozen=True)
class ExcludedEntry:
    """A file (or a whole folder, ``path`` ending in ``/``) that stays local, and why."""

    path: str
    reason: str
    size: int | None = None  # None for folders that are not walked


@dataclass
class UploadPlan:
    """What :func:`push_folder` would upload from ``folder``; ``problems`` block the upload."""

    folder: Path
    allow_patterns: list[str] = field(default_factory=lambda: list(UPLOAD_ALLOW))
    ignore_patterns: list[str] = field(default_factory=lambda: list(UPLOAD_IGNORE))
    files: list[PlannedFile] = field(default_factory=list)
    excluded: list[ExcludedEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    uploaded: list[str] | None = None   # after a push: the files sent (changed or new)
    deleted: list[str] | None = None    # after a push: remote files removed (no longer in the dataset)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def paths(self) -> list[str]:
        return [f.path for f in self.files]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def by_kind(self) -> dict[str, tuple[int, int]]:
        """``{kind: (files, bytes)}`` in :data:`KINDS` order, kinds without files left out."""
        return _tally(self.files, lambda f: f.kind, KINDS)

    @property
    def by_subset(self) -> dict[str, tuple[int, int]]:
        """``{subset: (files, bytes)}``; files outside the licence subsets under :data:`SHARED`."""
        return _tally(self.files, lambda f: f.subset or SHARED, (*SUBSETS, SHARED))

    def text(self, max_files: int | None = 60) -> str:
        """A readable report for ``--dry-run``: totals per kind and subset, files, exclusions, problems.

        At most ``max_files`` files are listed one by one (``None``: all).
        """
        out = [f"Upload plan for {self.folder}", ""]
        out += _table(["kind", "files", "size"], [[k, f"{n:,}", human_size(b)] for k, (n, b) in self.by_kind.items()],
                      total=["total", f"{len(self.files):,}", human_size(self.total_bytes)])
        out.append("")
        out += _table(["subset", "files", "size"],
                      [[s, f"{n:,}", human_size(b)] for s, (n, b) in self.by_subset.items()])
        out += ["", f"Files ({len(self.files):,}, {human_size(self.total_bytes)}):"]
        shown = self.files if max_files is None else self.files[:max_files]
        out += ["  " + line for line in _table(["path", "kind", "size"],
                                                [[f.path, f.kind, human_size(f.size)] for f in shown], align="llr")]
        if len(shown) < len(self.files):
            rest = self.files[len(shown):]
            out.append(f"  ... and {len(rest):,} more ({human_size(sum(f.size for f in rest))})")
        if self.excluded:
            out += ["", f"Not uploaded ({len(self.excluded):,}):"]
            out += ["  " + line for line in _table(
                ["path", "size", "reason"],
                [[e.path, "-" if e.size is None else human_size(e.size), e.reason] for e in self.excluded], align="lrl")]
        if self.warnings:
            out += ["", "Warnings:"] + [f"  - {w}" for w in self.warnings]
        if self.problems:
            out += ["", f"PROBLEMS ({len(self.problems)}), the upload is blocked:"] + [f"  - {p}" for p in self.problems]
        else:
            out += ["", f"Ready to upload {len(self.files):,} files, {human_size(self.total_bytes)}."]
        return "\n".join(out)


# --------------------------------------------------------------------------------------- planning


def plan_upload(folder: str | Path, verify: bool = True) -> UploadPlan:
    """Plan the upload of a dataset folder (local only; reads the folder, never writes).

    With ``verify`` (default) the fast ``biomedica verify`` check runs and its problems block the upload.
    """
    folder = Path(folder)
    plan = UploadPlan(folder=folder)
    if not folder.is_dir():
        plan.problems.append(f"{folder} is not a folder (build one with `biomedica build --out {folder}`)")
        return plan

    card_patterns = _card_patterns(folder, plan)
    card_res = [_glob_regex(p.removeprefix("./")) for p in card_patterns]
    links = _card_links(folder)
    sizes, pruned, links_out = _walk(folder)
    plan.excluded += [ExcludedEntry(f"{d}/", _PRUNED[d]) for d in pruned]
    # the folders of the card's other configs (concept subsets, ...): their sizes.json and stats go with their tars
    config_dirs = {rel.rsplit("/", 1)[0] for rel in sizes if "/" in rel and not _hidden(rel)
                   and rel.split("/", 1)[0] not in (*SUBSETS, *TABLE_CONFIGS, CARD_DIR)
                   and any(r.fullmatch(rel) for r in card_res)}
    for rel in sorted(sizes):
        own = (_is_dataset_file(rel, links) or (any(r.fullmatch(rel) for r in card_res) and not _hidden(rel))
               or _config_companion(rel, config_dirs))
        if own:
            kind, subset = classify(rel)
            if kind == "other":
                kind = "stats" if _config_companion(rel, config_dirs) else "card" if rel in links else "config"
            plan.files.append(PlannedFile(rel, sizes[rel], kind, subset))
        else:
            reason = exclusion_reason(rel)
            if reason == "not part of the dataset layout" and rel.startswith(f"{CARD_DIR}/"):
                reason = f"not linked from {CARD}"
            plan.excluded.append(ExcludedEntry(rel, reason, sizes[rel]))
    plan.excluded += [ExcludedEntry(rel, "symbolic link: never uploaded (it may point outside the dataset)")
                      for rel in links_out]
    plan.excluded.sort(key=lambda e: e.path)
    plan.allow_patterns = [f.path for f in plan.files]

    _check_card(folder, plan, card_patterns)
    _check_card_links(plan, links)
    _check_shards(folder, plan)
    if verify and not any("no shards" in p for p in plan.problems):
        from biomedica_hf.dataset.verify import verify_folder

        plan.problems += [p for p in verify_folder(folder).problems if p not in plan.problems]
    _check_build_summary(folder, plan)
    temps = [e.path for e in plan.excluded if e.reason.startswith("temporary")]
    if temps:
        plan.warnings.append(f"{len(temps)} temporary file(s) of an interrupted write left out, e.g. {temps[0]} "
                             "(`biomedica build` removes them when it resumes)")
    strays = [e.path for e in plan.excluded if e.reason in ("not part of the dataset layout", "symbolic link")]
    if strays:
        plan.warnings.append(f"{len(strays)} file(s) in the folder are not part of the dataset and stay local: "
                             f"{', '.join(strays[:5])}")
    return plan


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") for p in rel.split("/"))


def _config_companion(rel: str, config_dirs: set[str]) -> bool:
    """``sizes.json`` or a shard's ``*_stats.json`` in the folder of one of the card's configs."""
    folder, _, name = rel.rpartition("/")
    return folder in config_dirs and (name == SIZES or name.endswith(STATS))


def _is_dataset_file(rel: str, card_links: set[str]) -> bool:
    """A file of the published layout (see the module doc); hidden and temporary names never are."""
    if _hidden(rel) or rel.endswith((".part", ".tmp")):
        return False
    if rel in card_links and rel.split("/", 1)[0] not in _PRUNED:   # a file the card links (plots, reports)
        return True
    parts = rel.split("/")
    if len(parts) == 1:
        return rel in ROOT_FILES
    if parts[0] in SUBSETS:
        return bool(_SIZES_RE.match(rel) or _SHARD_RE.match(rel))
    if len(parts) == 2 and parts[0] in TABLE_CONFIGS:
        return parts[1].endswith(".tar")
    return parts[0] == CARD_DIR and rel in card_links


def _card_links(folder: Path) -> set[str]:
    """The files of the folder the card's Markdown / HTML links to (relative links: ``card/*.png``,
    ``decontamination/report.json``, ...; URLs and anchors are not files of the folder)."""
    try:
        text = (folder / CARD).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    links = {m.group(1) for m in _CARD_LINK_RE.finditer(text)}
    return {link for link in links if not re.match(r"^[a-zA-Z][\w+.-]*:", link) and not link.startswith(("/", "#"))
            and ".." not in link.split("/")}


def _check_card_links(plan: UploadPlan, links: set[str]) -> None:
    """Every file the card links must be uploaded: a card must not cite what the repository will not have."""
    planned = set(plan.paths)
    for link in sorted(links - planned):
        plan.problems.append(f"{CARD} links {link}, which would not be uploaded (missing from the folder or not part "
                             f"of the dataset): regenerate the card with `biomedica card {plan.folder}` or add the "
                             "file")


def filter_paths(paths: Any, allow: Any = UPLOAD_ALLOW, ignore: Any = UPLOAD_IGNORE) -> list[str]:
    """The relative paths ``huggingface_hub`` uploads with these patterns (and its default ignores)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    return list(filter_repo_objects(list(paths), allow_patterns=list(allow),
                                    ignore_patterns=list(ignore) + list(DEFAULT_IGNORE_PATTERNS)))


def classify(rel: str) -> tuple[str, str | None]:
    """``(kind, subset)`` of an uploaded relative path."""
    m = _SHARD_RE.match(rel)
    if m and m["subset"] in SUBSETS:
        return {".tar": "shard", ".parquet": "index", "_stats.json": "stats"}[m["suffix"]], m["subset"]
    parts = rel.split("/")
    if parts[0] in SUBSETS and _SIZES_RE.match(rel):
        return "stats", parts[0]
    if rel == CARD:
        return "card", None
    if parts[0] == CARD_DIR and len(parts) > 1:
        return ("plot" if rel.lower().endswith(_PLOT_EXT) else "card"), None
    if len(parts) == 1 and rel.endswith(".parquet"):
        return "table", None
    if len(parts) == 2 and parts[0] in TABLE_CONFIGS and parts[1].endswith(".tar"):
        return "table", None
    if rel in (BUILD_SUMMARY, LEDGER_SUMMARY):
        return "summary", None
    return "other", (parts[0] if parts[0] in SUBSETS else None)


def exclusion_reason(rel: str) -> str:
    """Why a relative path is not uploaded."""
    name = rel.rsplit("/", 1)[-1]
    if rel.split("/", 1)[0] in _PRUNED:
        return _PRUNED[rel.split("/", 1)[0]]
    if fnmatchcase(name, TEMP_GLOB) or fnmatchcase(name, "*.tmp"):
        return "temporary file of an interrupted write"
    if name.endswith(".part"):
        return "partial download"
    if any(p.startswith(".") for p in rel.split("/")):
        return "hidden file"
    return "not part of the dataset layout"


def _walk(folder: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """``{relative path: size}`` of the regular files, the top-level folders skipped unwalked, and the
    symbolic links (files or folders; never followed, never uploaded)."""
    sizes: dict[str, int] = {}
    pruned: list[str] = []
    links: list[str] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        rel_root = Path(root).relative_to(folder).as_posix()
        if rel_root == ".":
            pruned = sorted(d for d in dirs if d in _PRUNED)
            dirs[:] = [d for d in dirs if d not in _PRUNED]
        prefix = "" if rel_root == "." else f"{rel_root}/"
        links += [f"{prefix}{d}/" for d in dirs if (Path(root) / d).is_symlink()]
        dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
        for name in files:
            p = Path(root) / name
            if p.is_symlink():
                links.append(f"{prefix}{name}")
            elif p.is_file():
                sizes[f"{prefix}{name}"] = p.stat().st_size
    return sizes, pruned, sorted(links)


def _card_metadata(folder: Path) -> dict[str, Any] | None:
    """The YAML front matter of the card (None without one); raises ValueError if it is not valid YAML."""
    import yaml

    text = (folder / CARD).read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(?:\n|$)", text, re.DOTALL)
    if not m:
        return None
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0]) from e
    if data is not None and not isinstance(data, dict):
        raise ValueError("the front matter is not a mapping")
    return data or {}


def _card_patterns(folder: Path, plan: UploadPlan) -> list[str]:
    """The ``data_files`` patterns of the card's ``configs:``, in order (problems noted in ``plan``)."""
    if not (folder / CARD).is_file():
        return []
    try:
        meta = _card_metadata(folder)
    except ValueError as e:
        plan.problems.append(f"{CARD}: the YAML front matter is invalid ({e}); regenerate it with "
                             f"`biomedica card {folder}`")
        return []
    if meta is None:
        plan.warnings.append(f"{CARD} has no YAML front matter: the Hub will not know the configs, "
                             f"licence or task (regenerate it with `biomedica card {folder}`)")
        return []
    out: list[str] = []
    for config in meta.get("configs") or []:
        for pattern in _data_file_patterns(config.get("data_files") if isinstance(config, dict) else None):
            if pattern not in out:
                out.append(pattern)
    return out


def _data_file_patterns(spec: Any) -> list[str]:
    """Flatten a ``data_files`` value (str, list of str, list of {split, path}, {split: path})."""
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, dict):
        return _data_file_patterns(spec["path"] if "path" in spec else list(spec.values()))
    if isinstance(spec, list):
        return [p for item in spec for p in _data_file_patterns(item)]
    return []


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A ``datasets``/fsspec glob (``*`` within a folder, ``**`` across folders) as a regex."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _check_card(folder: Path, plan: UploadPlan, card_patterns: list[str]) -> None:
    """A card must be uploaded, and every ``data_files`` pattern of its configs must match uploaded files."""
    if not any(f.path == CARD for f in plan.files):
        plan.problems.append(f"no dataset card {CARD}: write it with `biomedica card {folder}`")
        return
    for pattern in card_patterns:
        rx = _glob_regex(pattern.removeprefix("./"))
        if not any(rx.fullmatch(f.path) for f in plan.files):
            plan.problems.append(f"{CARD} has a config with data_files {pattern!r} but no uploaded file matches it "
                                 f"(regenerate the card with `biomedica card {folder}`)")


def _check_shards(folder: Path, plan: UploadPlan) -> None:
    """There must be shards; their consistency is ``biomedica verify``'s fast check (run by :func:`plan_upload`)."""
    if not any(f.kind == "shard" for f in plan.files):
        plan.problems.append("no shards (<subset>/*.tar) to upload: is this a `biomedica build` output folder?")


def _check_build_summary(folder: Path, plan: UploadPlan) -> None:
    """``build_summary.json`` is written last by a build: its shard list must match the folder."""
    if not (folder / BUILD_SUMMARY).is_file():
        plan.problems.append(f"no {BUILD_SUMMARY}: the build did not finish (rerun `biomedica build`)")
        return
    summary = _read_json(folder / BUILD_SUMMARY, plan)
    listed = summary.get("shards") if isinstance(summary, dict) else None
    if not isinstance(listed, dict):
        return
    # by subset and base name (names are unique): flat (``commercial/<name>``) or in sub-folders (``sNNN/gNNN/``)
    expected = {f"{s}/{n.rsplit('/', 1)[-1]}" for s, names in listed.items() for n in (names or [])}
    present = {f"{f.subset}/{f.path.rsplit('/', 1)[-1]}": f.path for f in plan.files if f.kind == "shard"}
    missing, extra = sorted(expected - set(present)), sorted(present[k] for k in set(present) - expected)
    if missing:
        plan.problems.append(f"{BUILD_SUMMARY} lists shard(s) missing from the folder: {', '.join(missing[:5])}")
    if extra:
        plan.problems.append(f"shard(s) not listed in {BUILD_SUMMARY} (left by another build?): "
                             f"{', '.join(extra[:5])}")


def _read_json(path: Path, plan: UploadPlan) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        plan.problems.append(f"{path.relative_to(plan.folder).as_posix()} is unreadable ({e})")
        return None


def _tally(files: list[PlannedFile], key: Any, order: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    acc: dict[str, list[int]] = {}
    for f in files:
        n = acc.setdefault(key(f), [0, 0])
        n[0] += 1
        n[1] += f.size
    return {k: (acc[k][0], acc[k][1]) for k in sorted(acc, key=lambda k: (order.index(k) if k in order else 99, k))}


def _table(header: list[str], rows: list[list[str]], total: list[str] | None = None, align: str = "lrr") -> list[str]:
    """Columns aligned per ``align`` (``l`` or ``r`` per column); an optional total row under a rule."""
    allrows = [header, *rows, *([total] if total else [])]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    lines = [fmt(header), *(fmt(r) for r in rows)]
    if total:
        lines += ["-" * len(fmt(header)), fmt(total)]
    return lines


# ------------------------------------------------------------------------------------------- push


def validate_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is ``ORG/NAME`` as the Hub accepts it, else raise :class:`InvalidRepoIdError`."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(parts):
        raise InvalidRepoIdError(f"repo id {repo_id!r} must be ORG/NAME (a user or organisation, '/', a dataset name), "
                                 "e.g. my-org/biomedica")
    for part in parts:
        if not _REPO_PART_RE.match(part) or "--" in part or ".." in part:
            raise InvalidRepoIdError(
                f"repo id {repo_id!r}: {part!r} must be 1-96 letters, digits, '-', '_' or '.', not starting or "
                "ending with '-' or '.', without '--' or '..'")
    if parts[1].endswith(".git"):
        raise InvalidRepoIdError(f"repo id {repo_id!r} cannot end with '.git'")
    return repo_id


def push_folder(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                dry_run: bool = False, num_workers: int | None = None, token: str | None = None,
                api: HfApi | None = None, commit_message: str | None = None,
                files_per_commit: int = FILES_PER_COMMIT) -> UploadPlan:
    """Upload a built dataset folder to the dataset repository ``repo_id``; return the plan.

    Raises :class:`InvalidRepoIdError` or :class:`UploadBlockedError` before any network call.
    With ``dry_run`` nothing else happens (no network). Otherwise: ``create_repo(exist_ok=True)``,
    refuse to push to an existing public repo when ``private`` was asked, ``create_branch`` for a
    ``revision`` other than ``main``, then the remote's file list is compared with the plan
    (:func:`remote_changes`) and only new or changed files are uploaded, remote dataset files the folder no
    longer has being deleted in the same commit (``plan.uploaded`` / ``plan.deleted`` say what happened;
    re-running the same push resumes an interrupted one). ``num_workers`` is used where the installed
    ``huggingface_hub`` has ``upload_large_folder``; ``api`` may be an ``HfApi(endpoint=...)``. Otherwise files go
    up in commits of at most ``files_per_commit`` (:func:`commit_batches`); a commit answered 429 is retried after
    its ``Retry-After`` (:func:`_with_rate_limit`).
    """
    validate_repo_id(repo_id)
    if revision is not None and not revision.strip():
        raise HubError("revision must not be empty")
    plan = plan_upload(folder)
    if not plan.ok:
        raise UploadBlockedError(plan)
    if dry_run:
        return plan

    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise HubError("HF_HUB_OFFLINE is set: the Hub cannot be reached; unset it to push "
                       "(or use --dry-run to check the folder)")
    api = api if api is not None else HfApi(token=token)
    url = api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True, token=token)
    log.info("repository %s", url)
    if private:
        info = api.repo_info(repo_id, repo_type=REPO_TYPE, token=token)
        if info.private is False:
            raise HubError(f"{repo_id} already exists and is public, but a private push was asked: make it "
                           "private on the Hub first, or push without --private")
    if revision and revision != DEFAULT_REVISION and not revision.startswith("refs/"):
        api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True, token=token)

    changed, deleted = remote_changes(api, repo_id, plan, revision=revision, token=token)
    plan.uploaded, plan.deleted = changed, deleted
    if not changed and not deleted:
        log.info("%s is up to date with %s: nothing to upload", repo_id, plan.folder)
        return plan
    message = commit_message or _commit_message(Path(folder))
    allow, ignore = [_fn_escape(p) for p in changed], list(plan.ignore_patterns)  # hf extends ignore in place
    large = getattr(api, "upload_large_folder", None)
    if large is not None:  # huggingface_hub 0.25-1.x: resumable, state in FOLDER/.cache/huggingface/
        if changed:
            large(repo_id=repo_id, folder_path=str(folder), repo_type=REPO_TYPE, revision=revision,
                  private=private, allow_patterns=allow, ignore_patterns=ignore, num_workers=num_workers)
        if deleted:
            _delete(api, repo_id, deleted, revision, token, message)
    elif changed:  # huggingface_hub 2.x: upload_folder, in commits of < 100 files (the Hub's limit over HTTP)
        if num_workers is not None:
            log.info("num_workers is not used by this huggingface_hub (upload_folder manages its concurrency)")
        batches = commit_batches(changed, files_per_commit)
        for i, batch in enumerate(batches, 1):
            last = i == len(batches)
            suffix = f" ({i}/{len(batches)})" if len(batches) > 1 else ""
            log.info("commit %d/%d: %d file(s)", i, len(batches), len(batch))
            _with_rate_limit(lambda batch=batch, last=last, suffix=suffix: api.upload_folder(
                repo_id=repo_id, folder_path=str(folder), repo_type=REPO_TYPE, revision=revision,
                allow_patterns=[_fn_escape(p) for p in batch], ignore_patterns=list(ignore), token=token,
                commit_message=message + suffix,
                delete_patterns=([_fn_escape(p) for p in deleted] or None) if last else None))
    else:
        _delete(api, repo_id, deleted, revision, token, message)
    return plan




def commit_batches(paths: list[str], size: int = FILES_PER_COMMIT) -> list[list[str]]:
    """``paths`` in commits of at most ``size`` files: shards and their indexes first, each shard with its index and
    stats in one commit where possible, the card and ``build_summary.json`` in the last one, so that an interrupted
    push never leaves a card that cites files the repository does not have yet (a rerun uploads what is missing)."""
    last = [p for p in paths if p in (CARD, BUILD_SUMMARY)]
    rest = sorted((p for p in paths if p not in last), key=lambda p: (p.rsplit("/", 1)[0], p))
    batches = [rest[i:i + size] for i in range(0, len(rest), size)]
    if last:
        if batches and len(batches[-1]) + len(last) <= size:
            batches[-1] += last
        else:
            batches.append(last)
    return batches




class RateLimitedError(HubError):
    """The Hub kept refusing commits (429) after every retry: rerun the push later, it resumes."""


def _with_rate_limit(commit: Any) -> Any:
    """Run one commit; a 429 (128 commits per hour) is waited out (``Retry-After``, else a minute) and retried,
    :data:`RATE_LIMIT_RETRIES` times (on top of ``huggingface_hub``'s own retries, which honour ``Retry-After``
    too); beyond, :class:`RateLimitedError` (what was committed stays: a rerun of the push uploads only the rest)."""
    import time

    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            return commit()
        except HfHubHTTPError as e:
            response = getattr(e, "response", None)
            if response is None or response.status_code != 429:
                raise
            wait = float(response.headers.get("Retry-After") or 60)
            if attempt == RATE_LIMIT_RETRIES:
                raise RateLimitedError(f"the Hub still rate-limits commits (429, retry after {wait:.0f} s): rerun "
                                       "the push later, it uploads only what is missing") from e
            log.warning("the Hub rate-limits commits (429): waiting %.0f s", wait)
            time.sleep(wait)
    return None


def _fn_escape(path: str) -> str:
    """``path`` as an fnmatch pattern matching only itself."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _delete(api: HfApi, repo_id: str, paths: list[str], revision: str | None, token: str | None,
            message: str) -> None:
    from huggingface_hub import CommitOperationDelete

    api.create_commit(repo_id, [CommitOperationDelete(path_in_repo=p) for p in paths], commit_message=message,
                      repo_type=REPO_TYPE, revision=revision, token=token)


def _owned_remote(path: str, plan: UploadPlan) -> bool:
    """A remote path this tool publishes (so it may delete it when the folder no longer has it)."""
    parts = path.split("/")
    if _hidden(path):
        return False
    if len(parts) == 1:
        return path in ROOT_FILES
    config_dirs = {p.split("/", 1)[0] for p in plan.paths if "/" in p}
    return parts[0] in (*SUBSETS, *TABLE_CONFIGS, CARD_DIR) or parts[0] in config_dirs


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remote_changes(api: HfApi, repo_id: str, plan: UploadPlan, revision: str | None = None,
                   token: str | None = None) -> tuple[list[str], list[str]]:
    """``(changed, deleted)``: planned files missing on the remote or different there (size, then the git blob
    sha1 or LFS sha256 the Hub API lists), and remote dataset files the plan no longer has."""
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = list(api.list_repo_tree(repo_id, recursive=True, repo_type=REPO_TYPE, revision=revision,
                                          token=token))
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        entries = []
    remote = {e.path: e for e in entries if isinstance(e, RepoFile)}
    changed = []
    for f in plan.files:
        r = remote.get(f.path)
        local = plan.folder / f.path
        if r is None or r.size != f.size:
            changed.append(f.path)
        elif r.lfs is not None:
            if file_sha256(local) != r.lfs.sha256:
                changed.append(f.path)
        elif _git_blob_sha1(local) != r.blob_id:
            changed.append(f.path)
    planned = set(plan.paths)
    deleted = sorted(p for p in remote if p not in planned and _owned_remote(p, plan))
    return changed, deleted


def _commit_message(folder: Path) -> str:
    try:
        summary = json.loads((folder / BUILD_SUMMARY).read_text(encoding="utf-8"))
        samples = sum(int(v) for v in summary.get("samples", {}).values())
        return f"Upload BIOMEDICA dataset ({samples:,} figures, biomedica-hf {summary.get('version', '?')})"
    except (OSError, ValueError, TypeError, AttributeError):
        return "Upload BIOMEDICA dataset"


__all__ = [
    "KINDS",
    "SHARED",
    "UPLOAD_ALLOW",
    "UPLOAD_IGNORE",
    "ExcludedEntry",
    "HubError",
    "InvalidRepoIdError",
    "PlannedFile",
    "UploadBlockedError",
    "UploadPlan",
    "classify",
    "commit_batches",
    "exclusion_reason",
    "filter_paths",
    "plan_upload",
    "push_folder",
    "remote_changes",
    "validate_repo_id",
]

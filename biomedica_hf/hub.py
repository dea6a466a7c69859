"""Publish a built dataset folder to the Hugging Face Hub as a dataset repository.

Two layers:

* :func:`plan_upload` (pure, local, no network): which files of the folder would be uploaded, with
  sizes and kinds, what is left out and why, and the problems that must block an upload (no dataset
  card, an unfinished build, shards that do not match their completion markers).
* :func:`push_folder`: validate the plan, then ``create_repo`` (idempotent), ``create_branch`` for a
  revision other than ``main``, and a resumable folder upload restricted by :data:`UPLOAD_ALLOW` /
  :data:`UPLOAD_IGNORE`. Re-running the same push resumes an interrupted one; unchanged files are not
  committed again.

The plan applies exactly the pattern matching ``huggingface_hub`` applies (``filter_repo_objects``
with its default ignores), so the dry run lists what the real upload sends.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .index import TABLE_CONFIGS
from .schema import SUBSETS

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
DEFAULT_REVISION = "main"
WORK_DIR = "_work"
CARD = "README.md"
CARD_DIR = "card"
BUILD_SUMMARY = "build_summary.json"

#: Never uploaded. Matched like ``huggingface_hub`` does (``fnmatch``: ``*`` also crosses ``/``).
UPLOAD_IGNORE: tuple[str, ...] = (
    f"{WORK_DIR}/**",          # build staging and caches
    ".cache/**",               # huggingface_hub's resumable-upload state (.cache/huggingface/)
    "**/.cache/**",
    ".*.tmp-*", "**/.*.tmp-*",  # atomic-write temp files of an interrupted build
    "*.part", "**/*.part",      # partial downloads
    "*.tmp", "**/*.tmp",
    ".*", "**/.*",              # any other hidden file or folder (.DS_Store, .git, editor swap files)
)

#: The published layout; anything else in the folder stays local.
UPLOAD_ALLOW: tuple[str, ...] = (
    CARD,
    f"{CARD_DIR}/*",
    *(p for s in SUBSETS for p in (f"{s}/*.tar", f"{s}/*.parquet", f"{s}/*_stats.json", f"{s}/sizes.json")),
    *(f"{t}/*.tar" for t in TABLE_CONFIGS),  # the tables again as WebDataset configs (articles/, figures/)
    "*.parquet",
    "ledger_summary.txt",
    BUILD_SUMMARY,
)

#: File kinds of a plan, in display order.
KINDS: tuple[str, ...] = ("shard", "index", "stats", "table", "summary", "card", "plot", "config", "other")
SHARED = "(shared)"  # the by_subset bucket of files outside the licence subsets (tables, card, summaries)

_SHARD_RE = re.compile(r"^(?P<subset>[^/]+)/(?P<stem>\d+)(?P<suffix>\.tar|\.parquet|_stats\.json)$")
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


def plan_upload(folder: str | Path) -> UploadPlan:
    """Plan the upload of a dataset folder (local only; reads the folder, never writes)."""
    folder = Path(folder)
    plan = UploadPlan(folder=folder)
    if not folder.is_dir():
        plan.problems.append(f"{folder} is not a folder (build one with `biomedica build --out {folder}`)")
        return plan

    card_patterns = _card_patterns(folder, plan)
    plan.allow_patterns += [p for p in card_patterns if p not in plan.allow_patterns]
    sizes, pruned = _walk(folder)
    plan.excluded += [ExcludedEntry(f"{d}/", _PRUNED[d]) for d in pruned]
    uploaded = set(filter_paths(sizes, plan.allow_patterns, plan.ignore_patterns))
    card_res = [_glob_regex(p) for p in card_patterns]
    for rel in sorted(sizes):
        if rel in uploaded:
            kind, subset = classify(rel)
            if kind == "other" and any(r.fullmatch(rel) for r in card_res):
                kind = "config"
            plan.files.append(PlannedFile(rel, sizes[rel], kind, subset))
        else:
            plan.excluded.append(ExcludedEntry(rel, exclusion_reason(rel), sizes[rel]))

    _check_card(folder, plan, card_patterns)
    _check_shards(folder, plan)
    _check_build_summary(folder, plan)
    temps = [e.path for e in plan.excluded if e.reason.startswith("temporary")]
    if temps:
        plan.warnings.append(f"{len(temps)} temporary file(s) of an interrupted write left out, e.g. {temps[0]} "
                             "(`biomedica build` removes them when it resumes)")
    strays = [f.path for f in plan.files if f.kind == "other"]  # matched by a broad pattern such as *.parquet
    if strays:
        plan.warnings.append(f"{len(strays)} file(s) match the upload patterns but are not part of the dataset "
                             f"layout and will be uploaded: {', '.join(strays[:5])}")
    return plan


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
    if len(parts) == 2 and parts[0] in SUBSETS and parts[1] == "sizes.json":
        return "stats", parts[0]
    if rel == CARD:
        return "card", None
    if parts[0] == CARD_DIR and len(parts) > 1:
        return ("plot" if rel.lower().endswith(_PLOT_EXT) else "card"), None
    if len(parts) == 1 and rel.endswith(".parquet"):
        return "table", None
    if len(parts) == 2 and parts[0] in TABLE_CONFIGS and re.fullmatch(r"\d+\.tar", parts[1]):
        return "table", None
    if rel in (BUILD_SUMMARY, "ledger_summary.txt"):
        return "summary", None
    return "other", (parts[0] if parts[0] in SUBSETS else None)


def exclusion_reason(rel: str) -> str:
    """Why a relative path is not uploaded."""
    name = rel.rsplit("/", 1)[-1]
    if rel.split("/", 1)[0] in _PRUNED:
        return _PRUNED[rel.split("/", 1)[0]]
    if fnmatchcase(name, ".*.tmp-*") or fnmatchcase(name, "*.tmp"):
        return "temporary file of an interrupted write"
    if name.endswith(".part"):
        return "partial download"
    if any(p.startswith(".") for p in rel.split("/")):
        return "hidden file"
    return "not part of the dataset layout"


def human_size(n: float) -> str:
    """Decimal units as the Hub shows them: ``1.09 MB``."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        n /= 1000
        if n < 999.5 or unit == "PB":
            break
    return f"{n:.2f} {unit}" if n < 9.995 else f"{n:.1f} {unit}" if n < 99.95 else f"{n:.0f} {unit}"


def _walk(folder: Path) -> tuple[dict[str, int], list[str]]:
    """``{relative path: size}`` of the regular files, and the top-level folders skipped unwalked."""
    sizes: dict[str, int] = {}
    pruned: list[str] = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        if rel_root == ".":
            pruned = sorted(d for d in dirs if d in _PRUNED)
            dirs[:] = [d for d in dirs if d not in _PRUNED]
        dirs.sort()
        for name in files:
            p = Path(root) / name
            if p.is_file():  # follows symlinks, as huggingface_hub does
                rel = name if rel_root == "." else f"{rel_root}/{name}"
                sizes[rel] = p.stat().st_size
    return sizes, pruned


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
    """Every shard complete: tar + parquet + stats marker, stats matching the tar, sizes.json listing them."""
    shards: dict[tuple[str, str], dict[str, PlannedFile]] = defaultdict(dict)
    for f in plan.files:
        m = _SHARD_RE.match(f.path)
        if m and f.subset:
            shards[(f.subset, m["stem"])][m["suffix"]] = f
    if not any(".tar" in parts for parts in shards.values()):
        plan.problems.append("no shards (<subset>/NNNNNN.tar) to upload: is this a `biomedica build` output folder?")
    for (subset, stem), parts in sorted(shards.items()):
        base = f"{subset}/{stem}"
        if ".tar" not in parts:
            plan.problems.append(f"{base}.tar is missing but {', '.join(base + s for s in sorted(parts))} exist(s): "
                                 "the build did not finish (rerun `biomedica build` with the same options)")
            continue
        if "_stats.json" not in parts:
            plan.problems.append(f"{base}.tar has no completion marker {base}_stats.json: the build did not finish "
                                 "(rerun `biomedica build` with the same options to resume)")
            continue
        if ".parquet" not in parts:
            plan.problems.append(f"{base}.tar has no index {base}.parquet: the build did not finish "
                                 "(rerun `biomedica build` with the same options)")
        stats = _read_json(folder / f"{base}_stats.json", plan)
        tar_bytes = stats.get("tar_bytes") if isinstance(stats, dict) else None
        if isinstance(tar_bytes, int) and tar_bytes != parts[".tar"].size:
            plan.problems.append(f"{base}.tar is {parts['.tar'].size:,} bytes but {base}_stats.json records "
                                 f"{tar_bytes:,}: the shard changed or is truncated (rerun `biomedica build`)")
    for subset in SUBSETS:
        tars = sorted(f"{stem}.tar" for (s, stem), parts in shards.items() if s == subset and ".tar" in parts)
        if not tars:
            continue
        sizes_path = folder / subset / "sizes.json"
        if not sizes_path.is_file():
            plan.problems.append(f"{subset}/sizes.json is missing: the build did not finish (rerun `biomedica build`)")
            continue
        listed = _read_json(sizes_path, plan)
        if isinstance(listed, dict) and sorted(listed) != tars:
            plan.problems.append(f"{subset}/sizes.json lists {sorted(listed)} but the folder has {tars}: "
                                 "rerun `biomedica build` to bring the folder up to date")


def _check_build_summary(folder: Path, plan: UploadPlan) -> None:
    """``build_summary.json`` is written last by a build: its shard list must match the folder."""
    if not (folder / BUILD_SUMMARY).is_file():
        plan.problems.append(f"no {BUILD_SUMMARY}: the build did not finish (rerun `biomedica build`)")
        return
    summary = _read_json(folder / BUILD_SUMMARY, plan)
    listed = summary.get("shards") if isinstance(summary, dict) else None
    if not isinstance(listed, dict):
        return
    expected = {n if "/" in n else f"{s}/{n}" for s, names in listed.items() for n in (names or [])}
    present = {f.path for f in plan.files if f.kind == "shard"}
    missing, extra = sorted(expected - present), sorted(present - expected)
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
                api: HfApi | None = None, commit_message: str | None = None) -> UploadPlan:
    """Upload a built dataset folder to the dataset repository ``repo_id``; return the plan.

    Raises :class:`InvalidRepoIdError` or :class:`UploadBlockedError` before any network call.
    With ``dry_run`` nothing else happens (no network). Otherwise: ``create_repo(exist_ok=True)``,
    refuse to push to an existing public repo when ``private`` was asked, ``create_branch`` for a
    ``revision`` other than ``main``, then a resumable upload of the planned files (re-running the same
    push resumes; unchanged files are not committed again). ``num_workers`` is used where the installed
    ``huggingface_hub`` has ``upload_large_folder``; ``api`` may be an ``HfApi(endpoint=...)``.
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

    allow, ignore = list(plan.allow_patterns), list(plan.ignore_patterns)  # copies: hf extends ignore in place
    large = getattr(api, "upload_large_folder", None)
    if large is not None:  # huggingface_hub 0.25-1.x: resumable, state in FOLDER/.cache/huggingface/
        large(repo_id=repo_id, folder_path=str(folder), repo_type=REPO_TYPE, revision=revision, private=private,
              allow_patterns=allow, ignore_patterns=ignore, num_workers=num_workers)
    else:  # huggingface_hub 2.x: upload_folder is streamed, multi-commit and resumable (hf_xet)
        if num_workers is not None:
            log.info("num_workers is not used by this huggingface_hub (upload_folder manages its concurrency)")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=REPO_TYPE, revision=revision,
                          allow_patterns=allow, ignore_patterns=ignore, token=token,
                          commit_message=commit_message or _commit_message(Path(folder)))
    return plan


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
    "exclusion_reason",
    "filter_paths",
    "human_size",
    "plan_upload",
    "push_folder",
    "validate_repo_id",
]

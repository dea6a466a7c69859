"""Where a dataset's files are: a local folder or a Hub dataset repo, and the shard paths its index may name.

Shared by the figure loader (``loader.py``), the panel loader (``panel_loader.py``), ``verify`` and ``licences``, so
that none of them imports another for these three functions.
"""
from __future__ import annotations

import os
import posixpath
from urllib.parse import quote

from biomedica_hf.layout import FIGURES_INDEX


def is_local(path_or_repo_id: str | os.PathLike) -> bool:
    """A local dataset folder (else a Hub dataset repo id)."""
    return os.path.isdir(path_or_repo_id)


def dataset_file_url(path_or_repo_id: str | os.PathLike, relpath: str, revision: str | None = None) -> str:
    """Where ``relpath`` of the dataset lives: a local path, or ``hf://datasets/{repo}@{revision}/{relpath}``.

    Revisions are percent-encoded (``refs/pr/1`` -> ``refs%2Fpr%2F1``), as ``HfFileSystem`` expects.
    """
    root = os.fspath(path_or_repo_id)
    if is_local(root):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos; {root} is a local folder")
        return os.path.join(os.path.abspath(root), *relpath.split("/"))
    if os.path.isabs(root) or root.startswith((".", "~")) or root.count("/") > 1:
        raise FileNotFoundError(f"{root}: no such folder (and not a Hub dataset repo id like 'owner/name')")
    return f"hf://datasets/{root}@{quote(revision or 'main', safe='')}/{relpath}"


def check_shard_path(rel: str) -> str:
    """``rel`` if it is a relative path inside the dataset (``subset/name.tar``), else ``ValueError``."""
    if (not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\\" in rel or ":" in rel
            or "@" in rel or posixpath.normpath(rel) != rel or ".." in rel.split("/") or "\0" in rel):
        raise ValueError(f"{FIGURES_INDEX} lists shard {rel!r}, which is not a relative path inside the dataset "
                         f"(absolute, '..', another repo or a URL): refusing to read it; rebuild the index")
    return rel


__all__ = ["check_shard_path", "dataset_file_url", "is_local"]

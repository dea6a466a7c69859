"""What a build records about how it was made, without the paths of the machine that made it.

``build_summary.json`` (and the card, which quotes it) is published with the dataset, so the recorded command keeps
every option but replaces each local path by its role: ``biomedica build --input /home/me/pmc --out /scratch/ds``
is recorded as ``biomedica build --input <input> --out <out>``. A URL is kept (it is public) unless it is a
``file://`` URL; any other argument that is an absolute path becomes ``<path>``.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

#: options whose value is a local path, and the role that replaces it
PATH_OPTIONS = {"--input": "<input>", "--out": "<out>", "--filelist": "<filelist>", "--pmcids": "<pmcids>"}


def _is_local_path(value: str) -> bool:
    if value.startswith("file://"):
        return True
    if "://" in value:
        return False
    return os.path.isabs(value) or value.startswith(("~", "./", "../")) or (os.path.sep in value and os.path.exists(value))


def public_value(option: str | None, value: str) -> str:
    """``value`` of ``option`` as recorded: its role when it is a local path."""
    if option in PATH_OPTIONS and "://" not in value:
        return PATH_OPTIONS[option]
    if option == "--base-url" and value.startswith("file://"):
        return "<mirror>"
    return "<path>" if _is_local_path(value) else value


def public_command(program: str, args: Sequence[str]) -> str:
    """The command line as recorded: options kept, local paths replaced by their role (module doc)."""
    out = [program]
    option: str | None = None
    for arg in args:
        if option is not None:
            out.append(public_value(option, arg))
            option = None
            continue
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            out.append(f"{name}={public_value(name, value)}")
        elif arg in PATH_OPTIONS or arg == "--base-url":
            out.append(arg)
            option = arg
        else:
            out.append(public_value(None, arg) if not arg.startswith("-") else arg)
    return " ".join(a if a.startswith("<") or "=<" in a else shlex.quote(a) for a in out)


def public_options(opts: dict[str, Any]) -> dict[str, str]:
    """A source's options as recorded (``build_summary.json``'s ``source_opts``): local paths by their role."""
    roles = {"path": "<input>", "root": "<input>", "input": "<input>", "base": "<input>", "filelist": "<filelist>",
             "pmcids": "<pmcids>"}
    out = {}
    for key, value in opts.items():
        text = str(value)
        if value is None:
            out[key] = "None"
        elif _is_local_path(text) or (hasattr(value, "__fspath__")):
            out[key] = roles.get(key, "<path>")
        else:
            out[key] = text
    return out


__all__ = ["PATH_OPTIONS", "public_command", "public_options", "public_value"]

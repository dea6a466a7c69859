"""What the resume and fault tests of the build share: a folder's published files as bytes (timings and dates left
out), a build stopped at a named point as a kill would, and damage done to one file of ``_work/``."""
from __future__ import annotations

import json
from pathlib import Path

from biomedica_hf.ingest import state
from biomedica_hf.ingest.pipeline import BuildConfig, build

OPS = ("delete", "cut", "flip", "junk")


def outputs(out: Path) -> dict[str, bytes]:
    """Every published file by relative path (not ``_work``); stats and the summary without their timings
    and dates (they name when the work ran, not what it made)."""
    got = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or "_work" in p.relative_to(out).parts:
            continue
        rel = p.relative_to(out).as_posix()
        if p.name.endswith("_stats.json"):
            d = json.loads(p.read_text())
            d.pop("timings", None)
            got[rel] = json.dumps(d, sort_keys=True).encode()
        elif p.name == "build_summary.json":
            d = json.loads(p.read_text())
            d.pop("timings", None)
            for h in d.get("snapshots", []):
                h.pop("date", None)
                h.pop("elapsed_seconds", None)
            got[rel] = json.dumps(d, sort_keys=True).encode()
        else:
            got[rel] = p.read_bytes()
    return got


def killed(cfg: BuildConfig, point: str, nth: int = 1) -> bool:
    """Run the build, stopped the ``nth`` time it reaches ``point``; True when it was stopped."""
    state.arm(point, nth)
    try:
        build(cfg)
    except state.SimulatedKill:
        return True
    finally:
        state.disarm()
    return False


def damage(path: Path, op: str) -> None:
    """One of :data:`OPS` done to ``path``: deleted, cut in half, one bit flipped in its middle, junk appended."""
    data = path.read_bytes()
    if op == "delete":
        path.unlink()
    elif op == "cut":
        path.write_bytes(data[: len(data) // 2])
    elif op == "flip":
        b = bytearray(data)
        i = len(b) // 2 if b else 0
        if b:
            b[i] ^= 0x10
        path.write_bytes(bytes(b))
    else:
        path.write_bytes(data + b"\x00junk\xff" * 16)

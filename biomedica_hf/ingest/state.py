"""Resume state that proves itself: sealed JSON records, file digests, and the test hook that stops a build
at a named stage boundary as a kill would.

Every file under ``OUT/_work`` that a rerun trusts either is a **sealed record** (JSON whose ``_seal`` is the
sha256 of the rest, written atomically: a cut or flipped file reads as missing) or is named, with its length
and sha256, by a sealed record (:func:`file_seal`: partition manifests in ``layout.json``, a partition's
hash files in ``staged.json``, its table parts in its done marker). A rerun that finds a piece missing, cut
or inconsistent discards that partition's state and redoes the partition from its inputs.

:func:`checkpoint` is the fault-injection hook of the tests (``tests/ingest/test_resume_state.py``): with
``BIOMEDICA_FAULT_AT=<point>`` in the environment the process SIGKILLs itself when it reaches that point
(``<point>:<n>``: the n-th time); :func:`arm` does the same inside one process by raising
:class:`SimulatedKill` (a ``BaseException``: nothing of the build catches it). Unarmed it costs one dict
lookup. The points are :data:`FAULT_POINTS`.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from biomedica_hf.io.atomic import atomic_write_bytes
from biomedica_hf.io.digest import file_seal, file_sha256

SEAL = "_seal"
FAULT_ENV = "BIOMEDICA_FAULT_AT"
FAULT_POINTS = (
    "listed",            # the listing is spooled, no manifest written yet
    "planned",           # manifests and layout written
    "staged_article",    # one article appended to a partition's staging
    "staged",            # a partition's staging marked complete
    "slice_staged",      # a slice of a partition staged (staged in slices: the last partitions of a build)
    "deduped",           # decisions written
    "shard_written",     # one shard of a partition written
    "partition_written",  # a partition's parts and done marker written, its staging not yet removed
    "revised",           # (updates) one shard revised, its old files not retired yet
    "retired",           # (updates) the old shards moved out, the index not rebuilt yet
    "tables_ready",      # articles/ledger tables staged, not moved into place
    "index_written",     # figures.parquet written, build_summary.json not yet
    "summary_written",   # build_summary.json written, the snapshot not marked complete
)


class StateError(Exception):
    """A piece of resume state is missing, cut or inconsistent (the caller redoes what depends on it)."""


class SimulatedKill(BaseException):
    """Raised by an armed :func:`checkpoint` (tests): the build stops there as if killed."""


_ARMED: dict[str, int] = {}     # point -> passages left before the simulated kill (arm)
_COUNTS: dict[str, int] = {}    # point -> passages so far (BIOMEDICA_FAULT_AT)


def arm(point: str, nth: int = 1) -> None:
    """Stop the build (raise :class:`SimulatedKill`) the ``nth`` time it reaches ``point``."""
    if point not in FAULT_POINTS:
        raise ValueError(f"unknown fault point {point!r}; one of {FAULT_POINTS}")
    _ARMED.clear()
    _ARMED[point] = nth


def disarm() -> None:
    _ARMED.clear()


def checkpoint(point: str) -> None:
    """A stage boundary: does nothing unless a test armed it (see the module doc)."""
    if point in _ARMED:
        _ARMED[point] -= 1
        if _ARMED[point] <= 0:
            _ARMED.clear()
            raise SimulatedKill(point)
    env = os.environ.get(FAULT_ENV)
    if env:
        name, _, nth = env.partition(":")
        if name == point:
            n = _COUNTS[point] = _COUNTS.get(point, 0) + 1
            if n >= int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)



# ------------------------------------------------------------------------------- sealed records
def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str).encode()


def write_sealed(path: Path, obj: dict[str, Any]) -> None:
    """Write ``obj`` atomically with its seal (sha256 of its canonical JSON)."""
    body = {k: v for k, v in obj.items() if k != SEAL}
    body[SEAL] = hashlib.sha256(_canonical(body)).hexdigest()
    atomic_write_bytes(path, (json.dumps(body, indent=1, sort_keys=True, ensure_ascii=False, default=str)
                              + "\n").encode())


def read_sealed(path: Path) -> dict[str, Any] | None:
    """The record without its seal; None when missing, cut, unsealed or changed."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get(SEAL), str):
        return None
    seal = obj.pop(SEAL)
    return obj if hashlib.sha256(_canonical(obj)).hexdigest() == seal else None


def file_digest(path: Path) -> str:
    """SHA-256 of a file (:func:`biomedica_hf.io.digest.file_sha256`)."""
    return file_sha256(path)


def matches(path: Path, seal: Any) -> bool:
    """True when ``path`` exists with the length and sha256 of ``seal``."""
    try:
        if not isinstance(seal, (list, tuple)) or len(seal) != 2 or Path(path).stat().st_size != seal[0]:
            return False
        return file_digest(path) == seal[1]
    except OSError:
        return False


__all__ = ["FAULT_POINTS", "SimulatedKill", "StateError", "arm", "checkpoint", "disarm", "file_digest",
           "file_seal", "matches", "read_sealed", "write_sealed"]

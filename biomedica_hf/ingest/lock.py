"""One build per output folder: an exclusive lock held for the whole build.

``OUT/_work/build.lock`` is locked with ``flock`` (released by the kernel when the holder dies, so a
stale lock of a dead process is simply taken over) and records who holds it (pid, host, start time)
so that a refused build can say which one is running.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
from pathlib import Path

from biomedica_hf.layout import WORK_DIR


class BuildLockedError(RuntimeError):
    """Another build holds the folder."""


class BuildLock:
    def __init__(self, folder: Path):
        self.path = Path(folder) / WORK_DIR / "ingest.lock"
        self._fh = None

    def acquire(self) -> BuildLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            try:
                who = json.loads(fh.read() or "{}")
            except ValueError:
                who = {}
            fh.close()
            raise BuildLockedError(
                f"another build is running into {self.path.parent.parent}: pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')}, started {who.get('started', '?')} ({self.path}). Wait for it to finish "
                f"or stop it; a dead build's lock is taken over automatically.") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> BuildLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

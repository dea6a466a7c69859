"""How the `biomedica` console script ends (`biomedica_hf.cli.run`): after the command, the exit CPython's own would
begin with (threads joined, every atexit handler run, stdout/stderr flushed, the command's status), without the
teardown that frees every imported module object by object (~0.3 s after a build). The cases run both ways:
quick, and with BIOMEDICA_FULL_EXIT=1 (the interpreter's usual exit), and the user sees the same thing."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support.paths import ARTICLES, REPO

BOTH = pytest.mark.parametrize("full", [False, True], ids=["quick", "full"])


def _env(full: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("BIOMEDICA_FULL_EXIT", "BIOMEDICA_DEBUG",
                                                             "PYTHONDEVMODE")}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    if full:
        env["BIOMEDICA_FULL_EXIT"] = "1"
    return env


def _script(*args: str, full: bool) -> subprocess.CompletedProcess:
    """The installed console script when there is one (what users run), else ``python -m biomedica_hf.cli``."""
    exe = Path(sys.executable).with_name("biomedica")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "biomedica_hf.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, env=_env(full), cwd=REPO, timeout=300)


def _ends(tmp_path: Path, full: bool, code: str = "0") -> tuple[subprocess.CompletedProcess, set[str]]:
    """``run()`` in a fresh interpreter holding a module global whose ``__del__`` runs only in the teardown, an
    atexit handler, a thread that is not a daemon, and a command that exits with ``code``; which ran."""
    marks = tmp_path / ("full" if full else "quick")
    marks.mkdir()
    program = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        import click
        import biomedica_hf.cli as cli

        MARKS = Path({str(marks)!r})

        class Teardown:
            def __del__(self):
                (MARKS / "teardown").write_text("ran")

        KEEP = Teardown()
        atexit.register(lambda: (MARKS / "atexit").write_text("ran"))

        def late():
            time.sleep(0.3)
            (MARKS / "thread").write_text("ran")

        @cli.main.command("exit-with")
        def exit_with():
            threading.Thread(target=late).start()
            print("x" * 200_000)                # more than a pipe holds: must be flushed whole
            sys.exit({code})

        sys.argv = ["biomedica", "exit-with"]
        cli.run()
    """)
    r = subprocess.run([sys.executable, "-c", program], capture_output=True, env=_env(full), cwd=REPO, timeout=120)
    return r, {p.name for p in marks.iterdir()}


@BOTH
def test_atexit_handlers_threads_and_output_survive_the_quick_exit_and_only_the_teardown_is_skipped(tmp_path, full):
    r, ran = _ends(tmp_path, full)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == b"x" * 200_000 + b"\n"
    assert {"atexit", "thread"} <= ran
    assert ("teardown" in ran) == full          # the one thing the quick exit leaves out


@BOTH
@pytest.mark.parametrize("code, status, stderr", [("3", 3, b""), ("None", 0, b""), ("'it broke'", 1, b"it broke\n")])
def test_the_commands_exit_status_is_the_process_status(tmp_path, full, code, status, stderr):
    r, ran = _ends(tmp_path, full, code)
    assert r.returncode == status
    assert r.stderr == stderr
    assert "atexit" in ran


def test_a_profiler_or_tracer_gets_the_usual_exit(tmp_path):
    """cProfile writes its file after the script returns: the quick exit would lose it."""
    prof = tmp_path / "out.prof"
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "biomedica_hf.cli", "--version"],
                       capture_output=True, env=_env(False), cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"biomedica" in r.stdout
    assert prof.stat().st_size > 0


def test_user_facing_commands_print_and_exit_the_same_either_way(tmp_path):
    """A command with a lot of output, a usage error and a user error: the same bytes and status both ways."""
    (tmp_path / "notes.xml").write_text("not XML at all")
    for args in (("inspect", str(ARTICLES), "--json"), ("build", "--no-such-flag"),
                 ("inspect", str(tmp_path / "notes.xml"))):
        quick, full = (_script(*args, full=f) for f in (False, True))
        assert (quick.returncode, quick.stdout, quick.stderr) == (full.returncode, full.stdout, full.stderr), args
        if args[-1] == "--json":
            assert quick.returncode == 0 and quick.stdout.count(b"\n") > 50, quick.stderr[-2000:]
        elif args[0] == "build":
            assert quick.returncode == 2 and b"No such option" in quick.stderr
        else:
            assert quick.returncode == 1 and quick.stderr.splitlines()[-1].startswith(b"Error:")

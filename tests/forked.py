"""``latentbench <args>`` in a child process forked from a warm server, for tests that kill runs.

A fresh ``python -m latentbench.cli`` spends ~20 s importing torch, Lightning, W&B and friends
before it trains a step; a fault-injection test starts dozens of runs (each one killed, then
resumed). ``multiprocessing``'s forkserver imports those modules once, in a process that has
run nothing else (so no thread pool is copied into a fork), and forks a clean child per run:
each child then behaves as the command line does, with its own environment, working directory,
argv, stdout and stderr, and exit code (``-9`` when it was SIGKILLed).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["latentbench.cli", "latentbench.launch", "latentbench.train", "tests.helpers", "tests.warm_imports"]
_context = None


def forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(args: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["latentbench", *args]
    from latentbench.cli import main

    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 (a traceback, as the command line would print it)
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_forked(args: list[str], cwd: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """Run ``latentbench <args>`` in a forked child; the result reads like ``subprocess.run``'s."""
    with tempfile.TemporaryDirectory() as scratch:
        out, err = os.path.join(scratch, "stdout"), os.path.join(scratch, "stderr")
        child = forkserver().Process(target=_child, args=(list(args), str(cwd), dict(env), out, err))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(["latentbench", *args], timeout)
        return subprocess.CompletedProcess(["latentbench", *args], child.exitcode,
                                           Path(out).read_text(errors="replace"), Path(err).read_text(errors="replace"))

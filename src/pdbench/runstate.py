"""A failed stage tells the other stages of its Snakemake run to stop waiting.

After a job fails, Snakemake starts nothing new but waits for the jobs that still run,
and only then runs ``onerror`` (which stops the servers and cancels the holders). A stage
of another point that waits meanwhile (a holder queued behind the failed point's own
allocation, a readiness wait, a fill, a client that has an hour to go) would keep the
whole run, and the failed point's nodes, waiting. So a stage that fails writes
``<results>/.pdbench/run-failed``; every waiting stage checks for it and ends with an
error naming the stage that failed first. The marker belongs to one run: it is removed
when the next run starts (Snakemake's onstart: a real run, once it holds its lock).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from .errors import PdbenchError
from .layout import ResultsPaths
from .slurm import pid_alive


class RunFailed(PdbenchError):
    """Another stage of this run failed; this one stops waiting."""


class RunLocked(PdbenchError):
    """Another live Snakemake run owns this results tree."""


def lock_path(results: str | os.PathLike) -> Path:
    return ResultsPaths(Path(results)).run_lock


def acquire(results: str | os.PathLike, *, pid: int | None = None) -> dict:
    """Make this run the one owner of ``results/``: its resolved config, run-failed marker
    and the servers it records are shared by every stage, so a second live run would
    rewrite what the first one's stages read, and its failure would stop them. A lock
    whose process is gone (on this host) is taken over; one of another host is refused,
    since its process cannot be checked from here."""
    path = lock_path(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"host": socket.gethostname(), "pid": pid or os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for _ in range(3):
        try:
            with open(path, "x") as fh:
                json.dump(mine, fh)
            return mine
        except FileExistsError:
            pass
        try:
            held = json.loads(path.read_text())
            host, other = str(held["host"]), int(held["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            held, host, other = {}, "", 0  # unreadable (a crash mid-write): stale
        if host == mine["host"] and other == mine["pid"]:
            return mine
        if host and (host != mine["host"] or pid_alive(other)):
            raise RunLocked(
                f"{results} is in use by another Snakemake run (pid {other} on {host}, "
                f"since {held.get('since')}); wait for it to end or stop it. If it is gone "
                f"(killed, or its host is down), remove {path} and run again")
        path.unlink(missing_ok=True)  # its process is gone: take over
    raise RunLocked(f"{path}: could not take the run lock")


def release(results: str | os.PathLike, *, pid: int | None = None) -> None:
    """Give the lock back if this run holds it."""
    path = lock_path(results)
    try:
        held = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if held.get("host") == socket.gethostname() and held.get("pid") == (pid or os.getpid()):
        path.unlink(missing_ok=True)


def marker(results: str | os.PathLike) -> Path:
    return ResultsPaths(Path(results)).run_failed


def _keep_going(results: str | os.PathLike) -> Path:
    """Written at the start of a run with --keep-going: a failure then stops only its
    own point, and the other points go on."""
    return ResultsPaths(Path(results)).keep_going


def mark_failed(results: str | os.PathLike, what: str, *, stop_all: bool = False) -> None:
    """Record the first failure of this run (later ones leave it as it is). With
    --keep-going a failure stops only its own point, unless ``stop_all`` (the run was
    told to stop)."""
    if _keep_going(results).exists() and not stop_all:
        return
    path = marker(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as fh:
            fh.write(what.strip()[:2000] + "\n")
    except FileExistsError:
        pass


def check(results: str | os.PathLike) -> None:
    """Raise RunFailed when this run failed or was told to stop, or when the Snakemake
    that owns the tree is gone (killed with SIGKILL: its stages must not go on alone)."""
    path = marker(results)
    try:
        first = path.read_text().strip()
    except FileNotFoundError:
        first = None
    if first is not None:
        raise RunFailed(f"stopped: another stage of this run failed ({path}):\n{first}")
    owner = lock_owner(results)
    if owner and owner["host"] == socket.gethostname() and not pid_alive(owner["pid"]):
        raise RunFailed(
            f"stopped: the Snakemake run that started this stage (pid {owner['pid']}) is "
            f"gone; {lock_path(results)} names it")


def lock_owner(results: str | os.PathLike) -> dict | None:
    """The live run's lock record, if a readable one exists."""
    try:
        held = json.loads(lock_path(results).read_text())
        return {"host": str(held["host"]), "pid": int(held["pid"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_run(results: str | os.PathLike, *, keep_going: bool = False) -> None:
    """A new run: forget the previous run's failure; note whether it keeps going."""
    marker(results).unlink(missing_ok=True)
    flag = _keep_going(results)
    if keep_going:
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    else:
        flag.unlink(missing_ok=True)

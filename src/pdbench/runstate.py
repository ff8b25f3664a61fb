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

import os
from pathlib import Path

from .errors import PdbenchError
from .layout import ResultsPaths


class RunFailed(PdbenchError):
    """Another stage of this run failed; this one stops waiting."""


def marker(results: str | os.PathLike) -> Path:
    return ResultsPaths(Path(results)).run_failed


def _keep_going(results: str | os.PathLike) -> Path:
    """Written at the start of a run with --keep-going: a failure then stops only its
    own point, and the other points go on."""
    return ResultsPaths(Path(results)).keep_going


def mark_failed(results: str | os.PathLike, what: str) -> None:
    """Record the first failure of this run (later ones leave it as it is)."""
    if _keep_going(results).exists():
        return
    path = marker(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x") as fh:
            fh.write(what.strip()[:2000] + "\n")
    except FileExistsError:
        pass


def check(results: str | os.PathLike) -> None:
    path = marker(results)
    try:
        first = path.read_text().strip()
    except FileNotFoundError:
        return
    raise RunFailed(f"stopped: another stage of this run failed ({path}):\n{first}")


def start_run(results: str | os.PathLike, *, keep_going: bool = False) -> None:
    """A new run: forget the previous run's failure; note whether it keeps going."""
    marker(results).unlink(missing_ok=True)
    flag = _keep_going(results)
    if keep_going:
        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.touch()
    else:
        flag.unlink(missing_ok=True)

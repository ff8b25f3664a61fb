"""Slurm: the allocation holder, its state, and steps placed into it.

The allocation is a holder job (``sbatch --wrap 'sleep infinity'``) or an adopted one
(``SLURM_JOB_ID`` when Snakemake runs inside ``salloc``, or ``site.allocation_job_id``).
Servers are steps placed into it from outside with ``srun --jobid J --overlap``; a step
lives exactly as long as its ``srun`` client, so the client is started in a session of
its own (it must outlive the rule that starts it) and its pid and step id are recorded.

Every Slurm command runs with a timeout; a failure names the command and its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import PdbenchError

COMMAND_TIMEOUT_S = 60.0
# Job states in which the allocation can still become or is usable.
PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING"}


class SlurmError(PdbenchError):
    """A Slurm command failed or the allocation is not usable."""


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S, check: bool = True) -> str:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found on PATH (is this a Slurm client host?)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv)} did not answer within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        raise SlurmError(f"{' '.join(argv)} failed (exit {proc.returncode}): {output}")
    return proc.stdout


@dataclass(frozen=True)
class JobInfo:
    job_id: int
    state: str
    nodelist: str
    reason: str

    @property
    def alive(self) -> bool:
        return self.state in PENDING_STATES | RUNNING_STATES


def job_info(job_id: int) -> JobInfo:
    """State of a job from squeue; a job squeue no longer lists is reported as GONE."""
    out = run(["squeue", "-h", "-j", str(job_id), "-o", "%T|%N|%r"], check=False)
    line = out.strip().splitlines()[0] if out.strip() else ""
    if not line:
        return JobInfo(job_id, "GONE", "", "")
    state, nodelist, reason = (line.split("|") + ["", ""])[:3]
    return JobInfo(job_id, state, nodelist, reason)


def holder_sbatch_argv(site: Mapping, nodes: int, job_name: str, log_path: str) -> list[str]:
    """sbatch for a job that only holds the nodes; servers are steps placed into it."""
    argv = [
        "sbatch",
        "--parsable",
        "--job-name",
        job_name,
        "--nodes",
        str(nodes),
        "--ntasks-per-node",
        "1",
        f"--gpus-per-node={site['gpus_per_node']}",
        "--time",
        site["time_limit"],
        "--output",
        log_path,
    ]
    for flag, key in (("--partition", "partition"), ("--account", "account"),
                      ("--qos", "qos"), ("--reservation", "reservation")):
        if site.get(key):
            argv += [flag, str(site[key])]
    if site.get("exclusive"):
        argv.append("--exclusive")
    if site.get("mem") is not None:
        argv.append(f"--mem={site['mem']}")
    segment = site.get("segment")
    if segment:
        # auto: the whole point in one segment (one NVL72 rack on GB200), as the
        # runbook's `salloc -N 14 --segment=14`; points of 14, 16 and 18 nodes differ.
        argv.append(f"--segment={nodes if segment == 'auto' else segment}")
    argv += list(site.get("sbatch_extra", []))
    argv += ["--wrap", "exec sleep infinity"]
    return argv


def submit_holder(sbatch_argv: list[str]) -> int:
    """Submit a holder job (:func:`holder_sbatch_argv`); its job id."""
    out = run(sbatch_argv).strip()
    try:
        return int(out.split(";")[0])
    except ValueError:
        raise SlurmError(f"sbatch printed {out!r}, not a job id") from None


def wait_running(
    job_id: int,
    timeout_s: float,
    progress: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
    poll_s: float = 2.0,
    check_run: Callable[[], None] = lambda: None,
) -> JobInfo:
    """Wait until the job runs; report its state while it queues. ``check_run`` raises
    to stop waiting (another stage of the run failed)."""
    start = time.monotonic()
    last = None
    while True:
        check_run()
        info = job_info(job_id)
        if info.state in RUNNING_STATES and info.nodelist:
            return info
        if not info.alive:
            raise SlurmError(f"allocation job {job_id} ended before it ran (state {info.state})")
        waited = time.monotonic() - start
        if (info.state, info.reason) != last or int(waited) % 60 == 0:
            progress(
                f"waiting for allocation {job_id}: {info.state}"
                + (f" ({info.reason})" if info.reason and info.reason != "None" else "")
                + f", {waited:.0f}/{timeout_s:.0f} s"
            )
            last = (info.state, info.reason)
        if waited > timeout_s:
            raise SlurmError(
                f"allocation job {job_id} still {info.state} after {timeout_s:.0f} s "
                f"(reason: {info.reason or 'unknown'}); it was left queued"
            )
        time.sleep(poll_s)


def cancel(job_or_step: str) -> None:
    run(["scancel", str(job_or_step)], check=False)


def signal_step(step_id: str, signal_name: str) -> str:
    """Send a signal to every task of a step (``scancel --signal``; the step goes on).

    Returns scancel's complaint, if any: it may report an error for a signal that was
    delivered, so the caller confirms delivery by what the tasks do."""
    try:
        run(["scancel", f"--signal={signal_name}", str(step_id)])
    except SlurmError as exc:
        return str(exc)
    return ""


def steps(job_id: int) -> list[tuple[str, str]]:
    """(step id, step name) of every step of the job."""
    out = run(["squeue", "-h", "-s", "-j", str(job_id), "-o", "%i|%j"], check=False)
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]


def find_step(job_id: int, name: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for step_id, step_name in steps(job_id):
            if step_name == name:
                return step_id
        time.sleep(0.5)
    raise SlurmError(f"step {name!r} of job {job_id} did not appear within {timeout_s:.0f} s")


def start_detached(argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> int:
    """Start ``argv`` in a new session (it outlives the caller); stdout+stderr to log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    return proc.pid


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def stop_process_group(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group started by start_detached, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.2)

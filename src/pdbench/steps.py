"""The Slurm side of running servers: steps placed into a point's allocation, and
whether they still run.

Each server (and the router, and the client) is one ``srun --jobid J --overlap`` step
with one task per node; the node's command is chosen by ``SLURM_NODEID`` in a launcher
script written to ``commands/<step>.sh`` (the exact commands, for provenance). The
``srun`` client runs in a session of its own so the step outlives the stage that started
it; its pid and the step id go into the stage's marker. A step is alive while Slurm lists
it and its srun client runs. With the local launcher (``site.launcher: local``,
:mod:`pdbench.localhost`) the same launcher script runs as a process group on this host
in place of the ``srun`` client (the marker's ``srun_pid``), and a step is alive while
that process runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import commands, localhost, slurm
from .context import PointContext
from .errors import PdbenchError
from .layout import read_json, write_text


class ServerError(PdbenchError):
    """A server failed to start or died; the message names it and quotes its log."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line[:300]}" for line in tail) or f"(empty log {path})"


def last_line(path: Path) -> str:
    tail = log_tail(path, 1).strip()
    return tail[:160]


def step_name(ctx: PointContext, server: str) -> str:
    return f"pdbench-{ctx.point.experiment}-{ctx.point.name}-{server}"


@dataclass(frozen=True)
class StepLaunch:
    """Everything one step of a point runs, before anything is written or started: the
    launcher script (every node's command, by ``SLURM_NODEID``), what starts it
    (``srun``, or the local step script), and the file that holds that."""

    server: str
    step_name: str
    nodes: list[str]
    script_path: Path
    script: str
    srun: list[str]
    runner_path: Path
    runner: str
    local: bool = False
    """Started by the local launcher (``site.launcher: local``), not ``srun``."""


def step_launch(ctx: PointContext, server: str, argvs: list[list[str]], env: dict,
                nodes: list[str], log_role: str) -> StepLaunch:
    script_path = ctx.paths.launcher_script(server)
    script = commands.node_launcher_script(
        argvs,
        env,
        log_dir=ctx.paths.logs.resolve(),
        role_name=log_role,
        node_names=nodes,
        required_env=ctx.cfg["site"]["secret_env"],
    )
    name = step_name(ctx, server)
    runner_path = ctx.paths.srun_script(server)
    if localhost.is_local(ctx.allocation):
        task = commands.local_task_argv(ctx.cfg, script_path.resolve())
        runner = localhost.step_script(ctx.allocation, nodes, task, name)
        return StepLaunch(server, name, list(nodes), script_path, script,
                          ["bash", str(runner_path.resolve())], runner_path, runner, local=True)
    srun = commands.srun_argv(ctx.cfg, job_id=ctx.job_id, nodes=nodes,
                              script_path=script_path.resolve(), step_name=name)
    runner = "#!/usr/bin/env bash\n" + commands.render_shell(srun) + "\n"
    return StepLaunch(server, name, list(nodes), script_path, script, srun, runner_path, runner)


def start_step(ctx: PointContext, launch: StepLaunch) -> dict:
    """Write the launcher script, start its srun (or local step) detached, return the
    step record."""
    write_text(launch.script_path, launch.script)
    write_text(launch.runner_path, launch.runner)
    srun_log = ctx.paths.srun_log(launch.server)
    pid = slurm.start_detached(launch.srun, srun_log)
    if launch.local:
        return {"step_id": f"{localhost.STEP_PREFIX}{pid}", "step_name": launch.step_name,
                "srun_pid": pid, "srun_log": str(srun_log), "script": str(launch.script_path)}
    try:
        step_id = slurm.find_step(ctx.job_id, launch.step_name)
    except slurm.SlurmError:
        slurm.stop_process_group(pid)
        raise ServerError(
            f"{launch.server}: srun did not start a step in allocation {ctx.job_id}:\n"
            + log_tail(srun_log)
        ) from None
    except BaseException:
        slurm.stop_process_group(pid)  # interrupted: never leave the detached srun behind
        raise
    return {"step_id": step_id, "step_name": launch.step_name, "srun_pid": pid,
            "srun_log": str(srun_log), "script": str(launch.script_path)}


def listed_steps(job_id: int | str) -> set[str]:
    """Ids of the job's steps Slurm lists (one squeue for checking several markers);
    none for the local launcher's allocation (its steps are processes)."""
    if job_id == localhost.JOB_ID:
        return set()
    return {step_id for step_id, _ in slurm.steps(job_id)}


def server_alive(marker: dict, listed: set[str] | None = None) -> bool:
    """The step still runs: listed by Slurm (``listed``, else asked now) and, where
    visible, its srun client alive; a local step while its process runs."""
    if localhost.is_local_step(marker["step_id"]):
        return slurm.pid_alive(int(marker["srun_pid"]))
    if listed is None:
        listed = listed_steps(marker["job_id"])
    return marker["step_id"] in listed and slurm.pid_alive(int(marker["srun_pid"]))


def marker_alive(marker_path: Path, listed: set[str] | None = None) -> bool:
    """:func:`server_alive` for a marker file; an unreadable marker is not alive."""
    try:
        return server_alive(read_json(marker_path), listed)
    except Exception:  # noqa: BLE001 - an unreadable marker is stale
        return False


def describe_step(step: dict) -> str:
    """How messages name a step: ``Slurm step 123.4`` or ``local step local.5678``."""
    kind = "local" if localhost.is_local_step(step["step_id"]) else "Slurm"
    return f"{kind} step {step['step_id']}"


def stop_step(step: dict) -> None:
    """Stop a step: ``scancel`` it and its srun client, or a local step's process group."""
    if not localhost.is_local_step(step["step_id"]):
        slurm.cancel(step["step_id"])
    slurm.stop_process_group(int(step["srun_pid"]), grace_s=10.0)


def signal_step(step: dict, signal_name: str) -> str:
    """Send a signal to every task of a step; a complaint, if any (see
    :func:`pdbench.slurm.signal_step`)."""
    if localhost.is_local_step(step["step_id"]):
        return localhost.signal_tasks(int(step["srun_pid"]), signal_name)
    return slurm.signal_step(step["step_id"], signal_name)


def allocation_alive(allocation: dict) -> bool:
    """The allocation still holds its nodes (the local launcher's host always does)."""
    if localhost.is_local(allocation):
        return True
    return slurm.job_info(int(allocation["job_id"])).alive


def release_allocation(allocation: dict) -> bool:
    """Cancel the holder job pdbench submitted (never an adopted allocation, and nothing
    for the local launcher); whether one was cancelled."""
    if allocation.get("adopted") or localhost.is_local(allocation):
        return False
    slurm.cancel(str(allocation["job_id"]))
    return True


def check_servers(ctx: PointContext, servers: list[str]) -> None:
    """Raise ServerError naming the first of ``servers`` whose step stopped running."""
    listed = listed_steps(ctx.job_id)
    for server in servers:
        marker = read_json(ctx.paths.ready(server))
        if not server_alive(marker, listed):
            # srun names the node whose task ended first ("srun: error: node03: task 1:
            # Killed"); each node's log follows.
            logs = "\n".join(f"  {log}:\n{log_tail(Path(log), 5)}" for log in marker["logs"])
            raise ServerError(
                f"{server} ({describe_step(marker)} on {','.join(marker['nodes'])}) "
                f"stopped running; srun ({marker['srun_log']}) ends:\n"
                f"{log_tail(Path(marker['srun_log']), 5)}\nits logs end:\n" + logs
            )

"""The local launcher (``site.launcher: local``): a point's planned nodes are slots on this
host, and its steps are process groups started here instead of ``srun`` steps.

For one host with GPUs and no Slurm (a workstation, a single multi-GPU node, a lent
machine). The allocation is a record of slots, ``local0`` … ``localN-1``, each with the
GPUs of ``site.local.gpus`` it gets (``site.gpus_per_node`` of them; slots wrap around
the host's GPUs only with ``site.local.share_gpus``, servers then share a GPU by memory
fraction). Every slot has the address ``site.local.address``, so the node plan gives each
server its own ports, as on the local test cluster.

A step runs the same launcher script ``srun`` would run, once per node of the step, with
``PDBENCH_NODE_RANK`` (the script's fallback for ``SLURM_NODEID``) and
``CUDA_VISIBLE_DEVICES`` set, in a session of its own. Like ``srun
--kill-on-bad-exit=1`` it stops the other tasks when one fails, with that task's status.
Its id is ``local.<pid>``; it is alive while that process is.
"""

from __future__ import annotations

import os
import shlex
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import ConfigError
from .topology import compress_nodelist

LAUNCHER = "local"
JOB_ID = "local"
STEP_PREFIX = "local."


def is_local(allocation: Mapping) -> bool:
    """An allocation record of the local launcher."""
    return allocation.get("launcher") == LAUNCHER


def is_local_step(step_id: object) -> bool:
    return isinstance(step_id, str) and step_id.startswith(STEP_PREFIX)


def slot_gpus(site: Mapping, slots: int) -> list[list[int]]:
    """The GPUs of each of ``slots`` slots: consecutive runs of ``site.gpus_per_node`` of
    ``site.local.gpus``, wrapping around only with ``site.local.share_gpus``."""
    local, per_slot = site["local"], site["gpus_per_node"]
    gpus = list(local["gpus"])
    fits = len(gpus) // per_slot
    if fits == 0:
        raise ConfigError(
            f"config key site.local.gpus: {len(gpus)} GPU(s) {gpus} hold no slot of "
            f"site.gpus_per_node = {per_slot}")
    if slots > fits and not local["share_gpus"]:
        raise ConfigError(
            f"config key site.local.gpus: the point needs {slots} slot(s) of "
            f"{per_slot} GPU(s) but {gpus} hold {fits}; add GPUs, lower the grid, or set "
            "site.local.share_gpus: true (servers then share GPUs: leave each its memory "
            "with server_args mem-fraction-static)")
    return [gpus[(k % fits) * per_slot:(k % fits + 1) * per_slot] for k in range(slots)]


def gpus_held(site: Mapping, nodes: int) -> int:
    """GPUs that ``nodes`` planned nodes hold: on Slurm ``site.gpus_per_node`` each; with
    the local launcher the distinct GPUs of their slots (slots that share GPUs count them
    once)."""
    if site.get("launcher") != LAUNCHER:
        return nodes * int(site["gpus_per_node"])
    return len({gpu for slot in slot_gpus(site, nodes) for gpu in slot})


def allocation_record(site: Mapping, slots: int) -> dict:
    """The allocation record of ``slots`` slots on this host (``allocation.json``)."""
    nodes = [f"local{k}" for k in range(slots)]
    gpus = slot_gpus(site, slots)
    return {
        "job_id": JOB_ID,
        "launcher": LAUNCHER,
        "adopted": False,
        "nodelist": compress_nodelist(nodes),
        "nodes": nodes,
        "addresses": {node: site["local"]["address"] for node in nodes},
        "gpus": {node: ",".join(map(str, g)) for node, g in zip(nodes, gpus)},
    }


def step_script(allocation: Mapping, nodes: Sequence[str], task_argv: Sequence[str],
                step_name: str) -> str:
    """The bash script of one local step: ``task_argv`` (the launcher script, in its
    container where one is configured) once per node, each with its rank and GPUs."""
    q = shlex.quote
    gpus = allocation.get("gpus") or {}
    lines = [
        "#!/usr/bin/env bash",
        f"# pdbench local step {q(step_name)}: one task per planned node on this host "
        "(site.launcher: local).",
        "# A task that fails stops the others (srun --kill-on-bad-exit).",
        "set -u",
        "tasks=()",
    ]
    command = " ".join(q(str(a)) for a in task_argv)
    for rank, node in enumerate(nodes):
        env = f"PDBENCH_NODE_RANK={rank}"
        if node in gpus:
            env += f" CUDA_VISIBLE_DEVICES={q(gpus[node])}"
        lines.append(f"env {env} {command} &")
        lines.append("tasks+=($!)")
    lines += [
        "trap 'kill -TERM \"${tasks[@]}\" 2>/dev/null' TERM INT",
        "status=0",
        'for _ in "${tasks[@]}"; do',
        "  wait -n",
        "  rc=$?",
        '  if [ "$rc" -ne 0 ]; then status=$rc; kill -TERM "${tasks[@]}" 2>/dev/null; break; fi',
        "done",
        "wait",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def task_pids(step_pid: int) -> list[int]:
    """The tasks of a local step: the direct children of its process."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[1] == str(step_pid):
            children.append(int(entry.name))
    return sorted(children)


def signal_tasks(step_pid: int, signal_name: str) -> str:
    """Send a signal to every task of a local step (``scancel --signal``'s counterpart);
    a complaint, if any (the caller confirms delivery by what the tasks do)."""
    sig = getattr(signal, f"SIG{signal_name}")
    pids = task_pids(step_pid)
    if not pids:
        return f"local step {step_pid} has no running task"
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return ""

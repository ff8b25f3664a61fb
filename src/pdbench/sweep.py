"""The liveness sweep before a real run.

Two halves. :func:`plan_sweep` only reads (squeue, pids, marker files): the workflow
runs it when it is parsed, in every mode (``-n`` included), and hides each stale marker
from the DAG, so the stage that makes it runs again where something needs it. Markers of
live things are kept, so a restarted Snakemake reuses the running servers.
:func:`apply_sweep` changes things (stops steps, sets measurements aside, removes
markers): only Snakemake's ``onstart`` of a real run calls it, once Snakemake holds its
lock and before any job (``pdbench sweep`` does both halves by hand). Durable results are
never deleted.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import localhost, slurm
from .layout import PointPaths, ResultsPaths, read_json
from .steps import listed_steps, marker_alive, stop_step


def plan_sweep(results: str | os.PathLike) -> dict:
    """What is stale in a results tree, read-only (needs squeue; changes nothing).

    A marker is stale when what it describes is gone: an allocation that ended (with
    the node plan made for it), a server step that stopped, a benchmark client that
    ended or was let go on live servers (only the client starts again then). When a
    point's servers are gone before its measurement finished (no ``bench/bench.jsonl``
    yet), what they left belongs to them: the batch they held is gone, and their logs
    (which give each snapshot's batch) would be overwritten by a relaunch, so the point's
    ``fill/``, ``profile/``, ``bench/`` and ``logs/`` are to be set aside. A finished
    measurement is never touched. A point that was torn down keeps its markers on disk
    as the record of what ran (its manifest reads them); they are stale all the same,
    so a stage rerun on that point starts on a new allocation.

    Returns ``{"points": [{"point_dir", "job_id", "stale": [...], "stop": [...],
    "set_aside": bool, "record": bool}], "pending": [...]}``: ``stop`` are stale markers
    whose steps still run; ``record``: torn down, its markers stay on disk.
    :func:`apply_sweep` carries it out.
    """
    import shutil

    has_slurm = shutil.which("squeue") is not None
    points, skipped = [], []
    tree = ResultsPaths(Path(results))
    for paths in tree.point_dirs():
        try:
            alloc = read_json(paths.allocation)
            if not localhost.is_local(alloc) and not has_slurm:
                skipped.append(str(paths.root))
                continue
            if localhost.is_local(alloc):
                job_id, alive = alloc["job_id"], True
            else:
                job_id = int(alloc["job_id"])
                alive = slurm.job_info(job_id).state in slurm.RUNNING_STATES
        except Exception:  # noqa: BLE001 - an unreadable marker is stale
            job_id, alive = None, False
        stale, stop = _stale_markers(paths, job_id if alive else None)
        if not stale:
            continue
        # A client that starts again on live servers keeps the servers' logs in place.
        aside = any(path != paths.client for path in stale) and _unfinished(paths)
        if aside and paths.client.exists() and paths.client not in stale:
            # Setting the measurement aside takes the client's marker with it (bench/):
            # the client starts again too, and its step, if it still runs, is stopped.
            stale.append(paths.client)
            if marker_alive(paths.client):
                stop.append(paths.client)
        points.append({"point_dir": str(paths.root), "job_id": job_id,
                       "stale": [str(p) for p in stale], "stop": [str(p) for p in stop],
                       "set_aside": aside, "record": paths.teardown.exists()})
    pending = []
    for path in tree.pending_allocations() if has_slurm else []:
        # A queued holder whose job is gone (a run stopped while it queued); one that is
        # still queued may belong to a run in progress and is left alone.
        try:
            gone = not slurm.job_info(int(read_json(path)["job_id"])).alive
        except Exception:  # noqa: BLE001 - an unreadable marker is stale
            gone = True
        if gone:
            pending.append(str(path))
    result = {"points": points, "pending": pending}
    if skipped:
        result["skipped"] = f"squeue not found: liveness of {', '.join(skipped)} not checked"
    return result


def stale_paths(plan: dict) -> list[str]:
    """Every marker a sweep plan finds stale (their stages run again)."""
    return [path for point in plan["points"] for path in point["stale"]]


def apply_sweep(plan: dict) -> dict:
    """Carry out :func:`plan_sweep`'s plan: stop the steps of stale markers that still
    run, set aside unfinished measurements, remove the stale markers (those of a torn-down
    point stay: the record of what ran) and pending files."""
    removed, aside = [], []
    for point in plan["points"]:
        for marker in point["stop"]:
            _stop_marker_step(Path(marker))
        if point["set_aside"]:
            moved = PointPaths(Path(point["point_dir"])).set_aside(point["job_id"])
            if moved["moved"]:
                aside.append(moved)
        if point.get("record"):
            continue
        for marker in point["stale"]:
            Path(marker).unlink(missing_ok=True)
            removed.append(marker)
    for path in plan["pending"]:
        Path(path).unlink(missing_ok=True)
        removed.append(path)
    return {"removed": removed, "set_aside": aside}


def describe(result: dict) -> list[str]:
    """What :func:`apply_sweep` did, one line each (for the run's log)."""
    return [*(f"pdbench: removed stale marker {m}" for m in result["removed"]),
            *(f"pdbench: moved {', '.join(a['moved'])} of {a['from']} to {a['to']}"
              for a in result["set_aside"])]


def _stale_markers(paths: PointPaths, live_job_id: int | None) -> tuple[list[Path], list[Path]]:
    """The stale markers of a point, and those of them whose steps still run.

    ``live_job_id`` is the point's running allocation (None: gone or unreadable)."""
    markers = paths.ready_markers()
    # The benchmark client is a live thing until the fill is done; after that it ends by
    # itself and its marker only says where its output is.
    client = paths.client
    held = [client] if client.exists() and not paths.filled.exists() else []
    if live_job_id is None:
        # The node plan (node_list_env.sh, plan.json) describes this allocation's nodes:
        # it goes with it, so a new allocation gets a plan of its own.
        plan = [p for p in (paths.env_sh, paths.plan) if p.exists()]
        return [paths.allocation, *plan, *markers, *held], []
    listed = listed_steps(live_job_id)
    dead = [path for path in markers if not marker_alive(path, listed)]
    if dead:
        # The router was set up for the servers that are gone: start it afresh. In the
        # middle of a measurement every server goes: what the others hold (the batch,
        # their logs) belongs to the attempt that is set aside.
        router = paths.ready("router")
        restart = [*markers, *held] if _unfinished(paths) else \
            [router] if router.exists() else []
        stale = dead + [path for path in restart if path not in dead]
    elif held and (read_json(client).get("go_at") or not marker_alive(client, listed)):
        # A failed benchmark on live servers: its client ended, or a fill that did not
        # finish let it go. Only the client starts again; the requests it sent were
        # aborted by SGLang when their connections closed.
        stale = [client]
    else:
        return [], []
    # Steps still running are to be stopped; a gone step's srun pid may be reused.
    return stale, [p for p in stale if p not in dead and marker_alive(p, listed)]


def _stop_marker_step(marker_path: Path) -> None:
    """Stop the step a stale marker names, in case it still runs (no-op if gone)."""
    try:
        marker = read_json(marker_path)
        stop_step(marker)
    except Exception:  # noqa: BLE001 - nothing to stop
        pass


def _unfinished(paths: PointPaths) -> bool:
    """Servers of this point ran (logs or a fill) and its measurement is not finished."""
    if paths.finished():
        return False
    return paths.filled.exists() or paths.any_server_logs()

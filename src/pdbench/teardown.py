"""Teardown on failure or interrupt, and the liveness sweep before a run.

``stop_all`` (Snakemake's ``onerror``, which also runs after Ctrl-C) stops every step
and ``srun`` client recorded under a results tree and cancels the holder jobs pdbench
submitted; adopted allocations are left running, only pdbench's steps in them end.

``sweep_stale`` runs when the workflow is parsed: markers of things that are gone
(an allocation that ended, with the node plan made for it; a server step that
stopped) are removed so Snakemake re-creates them, while markers of live things are
kept so a restarted Snakemake reuses the running servers. Durable results are never
touched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import slurm
from .layout import read_json
from .servers import listed_steps, server_alive, stop_step


def _point_dirs(results: str | os.PathLike) -> list[Path]:
    return sorted(p.parent for p in Path(results).glob("*/*/allocation.json"))


def stop_all(results: str | os.PathLike, reason: str = "requested", *,
             keep_servers: bool = False) -> dict:
    """Stop every step and holder a results tree records; with ``keep_servers`` only the
    clients and the holders still queued (the servers and their allocations stay)."""
    stopped, cancelled, kept = [], [], []
    for point_dir in _point_dirs(results):
        alloc = read_json(point_dir / "allocation.json")
        markers = [] if keep_servers else sorted((point_dir / "ready").glob("*.json"))
        client = point_dir / "bench" / "client.json"
        for marker_path in [*markers, *([client] if client.exists() else [])]:
            try:
                marker = read_json(marker_path)
                if marker_path == client and keep_servers and not _step_alive(client):
                    continue  # a finished client: its srun pid may be reused
                stop_step(int(marker["job_id"]), marker)
                stopped.append(marker["step_id"])
            except Exception:  # noqa: BLE001 - teardown must go on with the rest
                continue
        alive = slurm.job_info(int(alloc["job_id"])).alive
        if keep_servers:
            if alive:
                kept.append(f"{point_dir} (job {alloc['job_id']})")
        elif not alloc.get("adopted") and alive:
            slurm.cancel(str(alloc["job_id"]))
            cancelled.append(alloc["job_id"])
    # Holders still queued: their allocation stage is waiting for them (and ends when
    # they are cancelled).
    for pending in sorted(Path(results).glob("*/*/allocation.pending.json")):
        try:
            job_id = int(read_json(pending)["job_id"])
            if slurm.job_info(job_id).alive:
                slurm.cancel(str(job_id))
                cancelled.append(job_id)
        except Exception:  # noqa: BLE001 - teardown must go on with the rest
            continue
    return {"reason": reason, "stopped_steps": stopped, "cancelled_jobs": cancelled,
            "kept": kept}


def sweep_stale(results: str | os.PathLike) -> dict:
    """Remove markers of allocations and server steps that are gone (needs squeue).

    When a point's servers are gone before its measurement finished (no
    ``bench/bench.jsonl`` yet), what they left belongs to them: the batch they held is
    gone, and their logs (which give each snapshot's batch) would be overwritten by a
    relaunch. The point's ``fill/``, ``profile/``, ``bench/`` and ``logs/`` are moved to
    ``attempts/<time>-job<id>/`` (kept, never deleted), and the measurement starts again
    on new servers. A finished measurement is never touched.
    """
    import shutil

    if shutil.which("squeue") is None:
        return {"removed": [], "set_aside": [], "skipped": "squeue not found: liveness not checked"}
    removed, aside = [], []
    for point_dir in _point_dirs(results):
        try:
            job_id = int(read_json(point_dir / "allocation.json")["job_id"])
            alive = slurm.job_info(job_id).state in slurm.RUNNING_STATES
        except Exception:  # noqa: BLE001 - an unreadable marker is stale
            job_id, alive = None, False
        stale = _stale_markers(point_dir, job_id if alive else None)
        client = point_dir / "bench" / "client.json"
        # A client that starts again on live servers keeps the servers' logs in place.
        if any(path != client for path in stale) and _unfinished(point_dir):
            moved = set_aside(point_dir, job_id)
            if moved:
                aside.append(moved)
        for path in stale:
            path.unlink(missing_ok=True)
            removed.append(str(path))
    for pending in sorted(Path(results).glob("*/*/allocation.pending.json")):
        # A queued holder whose job is gone (a run stopped while it queued); one that is
        # still queued may belong to a run in progress and is left alone.
        try:
            gone = not slurm.job_info(int(read_json(pending)["job_id"])).alive
        except Exception:  # noqa: BLE001 - an unreadable marker is stale
            gone = True
        if gone:
            pending.unlink(missing_ok=True)
            removed.append(str(pending))
    return {"removed": removed, "set_aside": aside}


def _stale_markers(point_dir: Path, live_job_id: int | None) -> list[Path]:
    """The markers of ``point_dir`` to remove; steps of them that still run are stopped.

    ``live_job_id`` is the point's running allocation (None: gone or unreadable)."""
    markers = sorted((point_dir / "ready").glob("*.json"))
    # The benchmark client is a live thing until the fill is done; after that it ends by
    # itself and its marker only says where its output is.
    client = point_dir / "bench" / "client.json"
    held = [client] if client.exists() and not (point_dir / "fill" / "filled.json") \
        .exists() else []
    if live_job_id is None:
        # The node plan (node_list_env.sh, plan.json) describes this allocation's nodes:
        # it goes with it, so a new allocation gets a plan of its own.
        plan = [p for p in (point_dir / "node_list_env.sh", point_dir / "plan.json")
                if p.exists()]
        return [point_dir / "allocation.json", *plan, *markers, *held]
    listed = listed_steps(live_job_id)
    dead = [path for path in markers if not _step_alive(path, listed)]
    if dead:
        # The router was set up for the servers that are gone: start it afresh. In the
        # middle of a measurement every server goes: what the others hold (the batch,
        # their logs) belongs to the attempt that is set aside.
        router = point_dir / "ready" / "router.json"
        restart = [*markers, *held] if _unfinished(point_dir) else \
            [router] if router.exists() else []
        stale = dead + [path for path in restart if path not in dead]
    elif held and (read_json(client).get("go_at") or not _step_alive(client, listed)):
        # A failed benchmark on live servers: its client ended, or a fill that did not
        # finish let it go. Only the client starts again; the requests it sent were
        # aborted by SGLang when their connections closed.
        stale = [client]
    else:
        return []
    # Steps still running are stopped; a gone step's srun pid may be reused.
    for path in stale:
        if path not in dead and _step_alive(path, listed):
            _stop_marker_step(path)
    return stale


def _step_alive(marker_path: Path, listed: set[str] | None = None) -> bool:
    try:
        return server_alive(read_json(marker_path), listed)
    except Exception:  # noqa: BLE001 - an unreadable marker is stale
        return False


def _stop_marker_step(marker_path: Path) -> None:
    """Stop the step a stale marker names, in case it still runs (no-op if gone)."""
    try:
        marker = read_json(marker_path)
        stop_step(int(marker["job_id"]), marker)
    except Exception:  # noqa: BLE001 - nothing to stop
        pass


def _unfinished(point_dir: Path) -> bool:
    """Servers of this point ran (logs or a fill) and its measurement is not finished."""
    if any((point_dir / f).exists() for f in ("bench/bench.jsonl", "teardown.json")):
        return False
    return (point_dir / "fill" / "filled.json").exists() or any(
        (point_dir / "logs").glob("launch_server_*_node_rank_*.log"))


MEASUREMENT_DIRS = ("fill", "profile", "bench")


def set_aside(point_dir: Path, job_id, names: tuple[str, ...] = (*MEASUREMENT_DIRS, "logs"),
              why: str = "") -> dict:
    """Move ``names`` of a point to ``attempts/<time>[-job<id>][-<why>]/``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = point_dir / "attempts" / "-".join(
        [stamp, *([f"job{job_id}"] if job_id else []), *([why] if why else [])])
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for name in names:
        if (point_dir / name).exists():
            (point_dir / name).replace(dest / name)
            moved.append(name)
    return {"from": str(point_dir), "to": str(dest), "moved": moved}

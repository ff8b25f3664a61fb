"""Teardown on failure or interrupt, and the liveness sweep before a run.

``stop_all`` (Snakemake's ``onerror``, which also runs after Ctrl-C) stops every step
and ``srun`` client recorded under a results tree and cancels the holder jobs pdbench
submitted; adopted allocations are left running, only pdbench's steps in them end.

``sweep_stale`` runs when the workflow is parsed: markers of things that are gone
(an allocation that ended, a server step that stopped) are removed so Snakemake
re-creates them, while markers of live things are kept so a restarted Snakemake reuses
the running servers. Durable results are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import slurm
from .layout import read_json
from .servers import server_alive, stop_step


def _point_dirs(results: str | os.PathLike) -> list[Path]:
    return sorted(p.parent for p in Path(results).glob("*/*/allocation.json"))


def stop_all(results: str | os.PathLike, reason: str = "requested") -> dict:
    stopped, cancelled = [], []
    for point_dir in _point_dirs(results):
        alloc = read_json(point_dir / "allocation.json")
        markers = sorted((point_dir / "ready").glob("*.json"))
        client = point_dir / "bench" / "client.json"
        for marker_path in [*markers, *([client] if client.exists() else [])]:
            try:
                marker = read_json(marker_path)
                stop_step(int(marker["job_id"]), marker)
                stopped.append(marker["step_id"])
            except Exception:  # noqa: BLE001 - teardown must go on with the rest
                continue
        if not alloc.get("adopted") and slurm.job_info(int(alloc["job_id"])).alive:
            slurm.cancel(str(alloc["job_id"]))
            cancelled.append(alloc["job_id"])
    return {"reason": reason, "stopped_steps": stopped, "cancelled_jobs": cancelled}


def sweep_stale(results: str | os.PathLike) -> dict:
    """Remove markers of allocations and server steps that are gone (needs squeue)."""
    import shutil

    if shutil.which("squeue") is None:
        return {"removed": [], "skipped": "squeue not found: liveness not checked"}
    removed = []
    for point_dir in _point_dirs(results):
        alloc_path = point_dir / "allocation.json"
        try:
            alloc = read_json(alloc_path)
            alive = slurm.job_info(int(alloc["job_id"])).state in slurm.RUNNING_STATES
        except Exception:  # noqa: BLE001 - an unreadable marker is stale
            alive = False
        markers = sorted((point_dir / "ready").glob("*.json"))
        if not alive:
            for path in [alloc_path, *markers]:
                path.unlink(missing_ok=True)
                removed.append(str(path))
            continue
        stale = []
        for path in markers:
            try:
                live = server_alive(read_json(path))
            except Exception:  # noqa: BLE001
                live = False
            if not live:
                stale.append(path)
        router = point_dir / "ready" / "router.json"
        if stale and router.exists() and router not in stale:
            # The router was set up for the servers that are gone: start it afresh.
            try:
                stop_step(int(read_json(router)["job_id"]), read_json(router))
            except Exception:  # noqa: BLE001
                pass
            stale.append(router)
        for path in stale:
            path.unlink(missing_ok=True)
            removed.append(str(path))
    return {"removed": removed}

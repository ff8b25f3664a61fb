"""Stage 1: obtain the nodes of a grid point, or adopt an allocation that exists.

Adoption, in order: ``site.allocation_job_id``; else ``SLURM_JOB_ID`` of the
environment Snakemake was started in (inside ``salloc``). Otherwise a holder job is
submitted with the site settings and waited for while it queues. ``allocation.json``
records the job id, whether it was adopted (an adopted allocation is never cancelled by
pdbench, only the steps pdbench started in it), the node list and each node's address.
With the local launcher (``site.launcher: local``) the allocation is the record of the
point's slots on this host and their GPUs (:mod:`pdbench.localhost`); nothing is submitted.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import localhost, runstate, slurm, topology
from .grid import Point
from .context import now, progress
from .errors import ConfigError
from .layout import PointPaths, write_json



def allocate(cfg: dict, point: Point, paths: PointPaths, *, adopt_job_id: int | None = None,
             queue_timeout_s: float = 24 * 3600.0) -> dict:
    site = cfg["site"]
    if site["launcher"] == localhost.LAUNCHER:
        record = {**localhost.allocation_record(site, point.allocated_nodes),
                  "start_time": now("seconds"), "point": f"{point.experiment}/{point.name}"}
        write_json(paths.allocation, record)
        progress(f"local launcher: {point.allocated_nodes} slot(s) on this host, GPUs "
                 + " | ".join(f"{n}: {g}" for n, g in record["gpus"].items()))
        return record
    adopted = site["allocation_job_id"] or adopt_job_id
    reused = _reusable(cfg, point, paths)
    if reused and not adopted:
        record = {**reused, "point": f"{point.experiment}/{point.name}",
                  "reused_from": reused["point"], "start_time": now("seconds")}
        write_json(paths.allocation, record)
        progress(f"allocation {record['job_id']} reused from {reused['point']}")
        return record
    if adopted:
        info = slurm.job_info(int(adopted))
        if info.state not in slurm.RUNNING_STATES:
            raise slurm.SlurmError(
                f"allocation {adopted} to adopt is {info.state}, not running "
                "(site.allocation_job_id or SLURM_JOB_ID)"
            )
        job_id, submitted = int(adopted), False
    else:
        paths.logs.mkdir(parents=True, exist_ok=True)
        job_id = slurm.submit_holder(holder_sbatch_argv(cfg, point, paths))
        submitted = True
        write_json(paths.pending_allocation, {"job_id": job_id, "submitted_at": now("seconds"),
                                              "point": f"{point.experiment}/{point.name}"})
        progress(f"submitted holder job {job_id} ({point.allocated_nodes} nodes) for "
                 f"{point.experiment}/{point.name}")
    try:
        info = slurm.wait_running(job_id, queue_timeout_s, progress,
                                  check_run=lambda: runstate.check(paths.results.root))
        nodes = topology.expand_nodelist(info.nodelist)
        if len(nodes) < point.allocated_nodes:
            raise ConfigError(
                f"allocation {job_id} has {len(nodes)} nodes ({info.nodelist}); "
                f"{point.experiment}/{point.name} needs {point.allocated_nodes}"
            )
        addresses = topology.slurm_node_addresses(nodes)
        record = {
            "job_id": job_id,
            "adopted": not submitted,
            "nodelist": info.nodelist,
            "nodes": nodes,
            "addresses": addresses,
            "start_time": now("seconds"),
            "point": f"{point.experiment}/{point.name}",
        }
        write_json(paths.allocation, record)
    except BaseException:
        # Never leave a queued or running holder behind when this stage fails.
        if submitted:
            slurm.cancel(str(job_id))
            progress(f"cancelled holder job {job_id}")
        raise
    finally:
        if submitted:
            paths.pending_allocation.unlink(missing_ok=True)
    progress(f"allocation {job_id}: {info.nodelist}")
    return record


def holder_sbatch_argv(cfg: dict, point: Point, paths: PointPaths) -> list[str]:
    """The ``sbatch`` of the job that holds a point's nodes."""
    return slurm.holder_sbatch_argv(cfg["site"], point.allocated_nodes,
                                    f"pdbench-{point.experiment}-{point.name}",
                                    str(Path(paths.holder_log()).resolve()))


def _reusable(cfg: dict, point: Point, paths: PointPaths) -> dict | None:
    """The live allocation of the previous point of the same size (site.reuse_allocation)."""
    from .grid import allocation_neighbours
    from .layout import read_json

    previous, _ = allocation_neighbours(cfg, point)
    if previous is None:
        return None
    record_path = paths.results.point(previous.experiment, previous.name).allocation
    if not record_path.exists():
        return None
    record = read_json(record_path)
    if slurm.job_info(int(record["job_id"])).state not in slurm.RUNNING_STATES:
        return None
    return record


def adopt_from_environment() -> int | None:
    """The allocation to adopt: ``PDBENCH_ADOPT_JOB_ID``, else ``SLURM_JOB_ID`` (Snakemake
    started inside ``salloc``). A value that is not a job id is an error, never pasted."""
    for name in ("PDBENCH_ADOPT_JOB_ID", "SLURM_JOB_ID"):
        value = os.environ.get(name)
        if not value:
            continue
        if not re.fullmatch(r"[0-9]{1,12}", value) or int(value) < 1:
            raise ConfigError(f"environment variable {name}={value!r} is not a Slurm job id "
                              "(digits); unset it or give the id of a running allocation")
        return int(value)
    return None

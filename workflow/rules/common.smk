# Helpers shared by every stage: the validated config, the grid, and paths.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pdbench import config as pdconfig
from pdbench import runstate
from pdbench.errors import ConfigError
from pdbench.teardown import sweep_stale

try:
    CFG = pdconfig.validate(config, source="config")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

POINTS = pdconfig.grid_points(CFG)
RESULTS = "results"
# The validated, merged config (config/config.yaml plus any --configfile/--config) is
# what every pdbench command of this run reads; one stable path, rewritten when changed.
CONFIG_FILE = pdconfig.write_resolved(CFG, f"{RESULTS}/.pdbench/config.json")
# Snakemake started inside `salloc`: adopt that allocation. Read now, before the Slurm
# executor plugin removes SLURM_* from the environment.
ADOPT_JOB_ID = os.environ.get("PDBENCH_ADOPT_JOB_ID") or os.environ.get("SLURM_JOB_ID")

KEEP_SERVERS_OPTION = "--keep-servers" if CFG["site"]["keep_servers_on_failure"] else ""

# Markers of allocations or servers that are gone are removed before the DAG is built,
# so Snakemake re-creates them; markers of live things are kept and reused. Only the
# main Snakemake sweeps: jobs submitted to Slurm parse this file too, on a node where
# the srun clients that keep the servers' steps alive are not visible.
if workflow.is_main_process:
    # A failure recorded by the previous run (pdbench.runstate) does not stop this one.
    runstate.start_run(
        RESULTS, keep_going=getattr(workflow.execution_settings, "keep_going", False)
    )
    _swept = sweep_stale(RESULTS)
    for _removed in _swept["removed"]:
        print(f"pdbench: removed stale marker {_removed}", file=sys.stderr)
    for _aside in _swept["set_aside"]:
        print(
            f"pdbench: the servers of {_aside['from']} are gone before its measurement"
            f" finished: moved its {', '.join(_aside['moved'])} to {_aside['to']};"
            " the measurement starts again on new servers",
            file=sys.stderr,
        )


wildcard_constraints:
    experiment=r"ep\d+",
    point=r"p[1-3](-eplb_(static|online))?",
    group=r"[1-3]",
    snapshot=r"[1-9]\d*",


def get_point(wildcards):
    return pdconfig.find_point(CFG, wildcards.experiment, wildcards.point)


def get_final_output():
    return [f"{RESULTS}/{exp}/report.html" for exp in pdconfig.experiments(CFG)]


def get_experiment_points(wildcards):
    return [p for p in POINTS if p.experiment == wildcards.experiment]


def get_point_csvs(wildcards):
    return [
        f"{RESULTS}/{p.experiment}/{p.name}/throughput.csv"
        for p in get_experiment_points(wildcards)
    ]


def get_prefill_ready(wildcards):
    point = get_point(wildcards)
    return [
        f"{RESULTS}/{wildcards.experiment}/{wildcards.point}/ready/prefill-{g}.json"
        for g in range(1, point.prefill_groups + 1)
    ]


def get_previous_snapshot(wildcards):
    """Snapshots run one after the other: snapshot k waits for k-1."""
    k = int(wildcards.snapshot)
    if k == 1:
        return []
    return f"{RESULTS}/{wildcards.experiment}/{wildcards.point}/profile/{k - 1}/snapshot.json"


def get_allocation_predecessor(wildcards):
    """With site.reuse_allocation, a point waits for the previous point of its size."""
    previous, _ = pdconfig.allocation_neighbours(CFG, get_point(wildcards))
    if previous is None:
        return []
    return f"{RESULTS}/{previous.experiment}/{previous.name}/teardown.json"


def get_adopt_option(wildcards):
    return f"--adopt {ADOPT_JOB_ID}" if ADOPT_JOB_ID else ""


def get_snapshots(wildcards):
    return [
        f"{RESULTS}/{wildcards.experiment}/{wildcards.point}/profile/{k}/snapshot.json"
        for k in range(1, CFG["profile"]["snapshots"] + 1)
    ]


def point_dir(wildcards):
    return f"{RESULTS}/{wildcards.experiment}/{wildcards.point}"

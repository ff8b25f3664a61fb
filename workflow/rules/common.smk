# Helpers shared by every stage: the validated config, the grid, and paths.
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pdbench import config as pdconfig
from pdbench.errors import ConfigError

try:
    CFG = pdconfig.validate(config, source="config")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

POINTS = pdconfig.grid_points(CFG)
RESULTS = "results"
CONFIG_FILE = workflow.configfiles[0] if workflow.configfiles else "config/config.yaml"


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


def get_snapshots(wildcards):
    return [
        f"{RESULTS}/{wildcards.experiment}/{wildcards.point}/profile/{k}/snapshot.json"
        for k in range(1, CFG["profile"]["snapshots"] + 1)
    ]


def point_dir(wildcards):
    return f"{RESULTS}/{wildcards.experiment}/{wildcards.point}"

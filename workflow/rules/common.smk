# Helpers shared by every stage: the validated config, the grid, and paths.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pdbench import config as pdconfig
from pdbench import runstate
from pdbench.allocation import adopt_from_environment
from pdbench.errors import ConfigError, PdbenchError
from pdbench.estimate import estimate as estimate_grid
from pdbench.estimate import summary_line
from pdbench.grid import EXPERIMENT_PATTERN, POINT_PATTERN
from pdbench.layout import ResultsPaths
from pdbench.preflight import fingerprint as preflight_fingerprint
from pdbench.report import CODE_FILES
from pdbench.sweep import apply_sweep, describe, plan_sweep, stale_paths

try:
    # Each file as pdbench reads it (Snakemake's loader keeps a repeated key silently),
    # then the merged config.
    for _path in workflow.configfiles:
        pdconfig.check_file(_path)
    CFG = pdconfig.validate(config, source="config")
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

POINTS = pdconfig.grid_points(CFG)
# Every path under results/ comes from pdbench.layout; PT and EXP are its templates
# for a point and an experiment, with the rules' wildcards as names.
RES = ResultsPaths(Path("results"))
RESULTS = str(RES.root)
PT = RES.point("{experiment}", "{point}")
EXP = RES.experiment("{experiment}")
# The validated, merged config (config/config.yaml plus any --configfile/--config) is
# what every pdbench command of this run reads; one stable path, written by onstart
# (a real run only, once Snakemake holds its lock), rewritten when changed.
CONFIG_FILE = str(RES.config)
# Snakemake started inside `salloc`: adopt that allocation. Read now, before the Slurm
# executor plugin removes SLURM_* from the environment.
try:
    ADOPT_JOB_ID = adopt_from_environment()
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

# The report's code and template: inputs of the report rules (a change reruns them only).
REPORT_CODE = [str(p) for p in CODE_FILES]

KEEP_SERVERS_OPTION = "--keep-servers" if CFG["site"]["keep_servers_on_failure"] else ""


def hide_from_dag(paths):
    """Snakemake sees ``paths`` as absent while it builds the DAG; nothing on disk
    changes. Returns what undoes it (onstart calls it once the DAG is built, before any
    job, so Snakemake sees the files as they are when it checks outputs). Snakemake is
    pinned (9.27.1): a file's existence, size and symlink check are the IOFile methods
    patched here."""
    hidden = {os.path.normpath(p) for p in paths}
    if not hidden:
        return lambda: None
    import snakemake.io as smk_io

    iofile = smk_io._IOFile
    exists_local, size_local = iofile.exists_local, iofile.size_local
    check_broken_symlink = iofile.check_broken_symlink

    def is_hidden(f):
        return os.path.normpath(f.file) in hidden

    async def exists(self):
        return False if is_hidden(self) else await exists_local(self)

    async def size(self):
        if is_hidden(self):
            raise smk_io.FileOrDirectoryNotFoundError(Path(self.file))
        return await size_local(self)

    async def check_symlink(self):
        if not is_hidden(self):
            await check_broken_symlink(self)

    iofile.exists_local, iofile.size_local = exists, size
    iofile.check_broken_symlink = check_symlink

    def undo():
        iofile.exists_local, iofile.size_local = exists_local, size_local
        iofile.check_broken_symlink = check_broken_symlink

    return undo


# Parse time only reads, whatever the mode (-n, --lint, --summary, --report, --unlock,
# or a run that Snakemake's lock will refuse): the liveness sweep is planned here
# (squeue, pids, marker files). A stale marker (its allocation or server step is gone)
# is hidden from the DAG, which then sees exactly what a real run will see: the stage
# that makes it runs again where something still needs it. The plan is carried out by
# onstart (a real run, once Snakemake holds its lock, before any job): steps of stale
# markers that still run stop, an unfinished measurement of gone servers is set aside
# under attempts/, the stale markers are removed. Markers of live things are kept, so a
# restarted Snakemake reuses the running servers. Only the main Snakemake plans: jobs
# submitted to Slurm parse this file too, on a node where the srun clients that keep the
# servers' steps alive are not visible.
SWEEP_PLAN = (
    plan_sweep(RESULTS) if workflow.is_main_process else {"points": [], "pending": []}
)
SHOW_STALE_MARKERS = hide_from_dag(stale_paths(SWEEP_PLAN))
for _point in SWEEP_PLAN["points"]:
    # A torn-down point's markers are its record: nothing to say unless a stage needs
    # them again (then the DAG shows that stage).
    for _marker in [] if _point["record"] else _point["stale"]:
        print(
            f"pdbench: stale marker {_marker}: what it describes is gone; its stage"
            " runs again where something needs it",
            file=sys.stderr,
        )
    if _point["set_aside"]:
        print(
            f"pdbench: the servers of {_point['point_dir']} are gone before its"
            " measurement finished: its fill, profile, bench and logs go to attempts/"
            " and the measurement starts again on new servers",
            file=sys.stderr,
        )

# What the grid will cost (pdbench.estimate: per point and shared servers, from earlier
# runs' stage times where the tree has them): one line in the log of every run, the dry
# run's included, before any job. A bad earlier manifest does not stop the run.
if workflow.is_main_process:
    try:
        print(f"pdbench: {summary_line(estimate_grid(CFG, RESULTS))}", file=sys.stderr)
    except PdbenchError as exc:
        print(f"pdbench: no estimate: {exc}", file=sys.stderr)


RUN = {"owner": False}


def prepare_run():
    """onstart (a real run, lock held, before any job): take the tree's run lock (one
    live run per results tree), write the resolved config, clear the failure a previous run
    recorded (pdbench.runstate), carry out the sweep."""
    SHOW_STALE_MARKERS()  # the DAG is built; from here on files are what they are
    try:
        runstate.acquire(RESULTS)
    except runstate.RunLocked as exc:
        raise WorkflowError(str(exc)) from None
    RUN["owner"] = True
    stop_stages_on_sigterm()
    pdconfig.write_resolved(CFG, CONFIG_FILE)
    runstate.start_run(
        RESULTS, keep_going=getattr(workflow.execution_settings, "keep_going", False)
    )
    for line in describe(apply_sweep(SWEEP_PLAN)):
        print(line, file=sys.stderr)


wildcard_constraints:
    experiment=EXPERIMENT_PATTERN,
    point=POINT_PATTERN,
    group=r"[1-3]",
    snapshot=r"[1-9]\d*",


def get_point(wildcards):
    return pdconfig.find_point(CFG, wildcards.experiment, wildcards.point)


def point_paths(wildcards):
    return RES.point(wildcards.experiment, wildcards.point)


def get_final_output():
    experiments = pdconfig.experiments(CFG)
    pages = [str(RES.experiment(exp).report) for exp in experiments]
    return pages + ([str(RES.report)] if len(experiments) > 1 else [])


def get_experiment_points(wildcards):
    """The points of the wildcards' experiment (every point for the grid page)."""
    experiment = getattr(wildcards, "experiment", None)
    return [p for p in POINTS if experiment is None or p.experiment == experiment]


def get_experiment_csvs(wildcards):
    return [str(RES.experiment(exp).throughput) for exp in pdconfig.experiments(CFG)]


def get_point_measurements(wildcards):
    return [
        str(RES.point(p.experiment, p.name).measurement)
        for p in get_experiment_points(wildcards)
    ]


def get_point_manifests(wildcards):
    return [
        str(RES.point(p.experiment, p.name).manifest)
        for p in get_experiment_points(wildcards)
    ]


def get_point_csvs(wildcards):
    return [
        str(RES.point(p.experiment, p.name).throughput)
        for p in get_experiment_points(wildcards)
    ]


def get_prefill_ready(wildcards):
    """The router waits for every prefill group started in the allocation: on shared
    servers (site.share_servers) also those it leaves idle for the next points."""
    point = get_point(wildcards)
    paths = point_paths(wildcards)
    return [
        str(paths.ready(f"prefill-{g}"))
        for g in range(1, point.started_prefill_groups + 1)
    ]


def get_previous_snapshot(wildcards):
    """Snapshots run one after the other: snapshot k waits for k-1."""
    k = int(wildcards.snapshot)
    if k == 1:
        return []
    return str(point_paths(wildcards).snapshot(k - 1))


def get_allocation_predecessor(wildcards):
    """With site.reuse_allocation, a point waits for the previous point of its size; on
    shared servers, for the previous point of its group (its teardown drains them)."""
    previous, _ = pdconfig.allocation_neighbours(CFG, get_point(wildcards))
    if previous is None:
        return []
    return str(RES.point(previous.experiment, previous.name).teardown)


def get_results_root(wildcards, output):
    """The results root above an experiment's output (two levels up)."""
    return str(Path(output[0]).parents[1])


def get_preflight_fingerprint(wildcards):
    return preflight_fingerprint(CFG, wildcards.experiment)


def get_adopt_option(wildcards):
    return f"--adopt {ADOPT_JOB_ID}" if ADOPT_JOB_ID else ""


def get_recorder(wildcards):
    """The point whose run records static EPLB's distribution for the experiment."""
    recorder = pdconfig.expert_recorder(CFG, int(wildcards.experiment[2:]))
    if recorder is None:
        raise WorkflowError(
            f"{RES.experiment(wildcards.experiment).expert_distribution}: no point of "
            f"{wildcards.experiment} records the expert distribution (the grid has no "
            "static point, or eplb.static.init_expert_location gives the file)"
        )
    return recorder


def get_recorder_dir(wildcards):
    recorder = get_recorder(wildcards)
    return str(RES.point(recorder.experiment, recorder.name).root)


def get_recording_inputs(wildcards):
    """The dump waits for the recording point at full batch, its recording started."""
    recorder = get_recorder(wildcards)
    paths = RES.point(recorder.experiment, recorder.name)
    return {
        "started": str(paths.expert_record_started),
        "released": str(paths.released),
        "decode": ancient(str(paths.ready("decode"))),
    }


def get_recording_start(wildcards):
    """The recording point's fill waits until its decode records."""
    if not get_point(wildcards).records_experts:
        return []
    return str(point_paths(wildcards).expert_record_started)


def get_recording_dump(wildcards):
    """The recording point's teardown waits for the dump (its decode must be live)."""
    if not get_point(wildcards).records_experts:
        return []
    return str(RES.experiment(wildcards.experiment).expert_distribution)


def get_recorded_distribution(wildcards):
    """The experiment's report compares EPLB modes on the recorded distribution."""
    if pdconfig.expert_recorder(CFG, int(wildcards.experiment[2:])) is None:
        return []
    return str(RES.experiment(wildcards.experiment).expert_distribution)


def get_expert_location(wildcards):
    """A static point's decode starts from the recorded dump (a supplied file is no
    workflow output: the config names it)."""
    point = get_point(wildcards)
    if point.eplb != "static" or CFG["eplb"]["static"]["init_expert_location"]:
        return []
    return str(RES.experiment(wildcards.experiment).expert_distribution)


def get_prefill_expert_location(wildcards):
    """With eplb.static.prefill, a static point's prefill starts from it too."""
    return get_expert_location(wildcards) if CFG["eplb"]["static"]["prefill"] else []


def get_snapshots(wildcards):
    paths = point_paths(wildcards)
    return [str(paths.snapshot(k)) for k in range(1, CFG["profile"]["snapshots"] + 1)]


def point_dir(wildcards):
    return str(point_paths(wildcards).root)


def stop_stages_on_sigterm():
    """SIGTERM (a batch system's or a user's kill) makes Snakemake stop scheduling and
    wait for the running jobs; a fill or a readiness wait may take many minutes. Marking
    the run as stopped makes every waiting stage end within seconds, so onerror then
    stops the servers and the tree is left as a rerun resumes it."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        runstate.mark_failed(RESULTS, "Snakemake received SIGTERM", stop_all=True)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def end_run(failed):
    """onerror / onsuccess: a failed run stops what this tree records (only if this run
    owns the tree: a run refused by the lock must not stop the live one's servers), then
    gives the lock back."""
    if not RUN["owner"]:
        return
    if failed:
        shell(
            f"pdbench stop-all --results {RESULTS} --reason error {KEEP_SERVERS_OPTION} >&2"
        )
    runstate.release(RESULTS)

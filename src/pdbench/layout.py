"""The results layout: the one place that names files and directories under ``results/``.

Everything else gets its paths from here: the stages, the teardown and the liveness
sweep, and the workflow's rules (``workflow/rules/common.smk`` builds its path templates
from these classes with ``{experiment}`` / ``{point}`` wildcards as names). The README's
table of a point's files is checked against :data:`POINT_FILES` by a test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError

# What the README's results table lists for a point, by the name it shows.
POINT_FILES = {
    "allocation.json": "the Slurm allocation (job id, node list, node addresses)",
    "node_list_env.sh": "the node and port plan, source-able (runbook variable names)",
    "plan.json": "the node and port plan as JSON",
    "ready/": "live servers: URLs, Slurm step ids, pids (one marker per server)",
    "bench/client.json": "the benchmark client, started with the servers, held until the fill",
    "fill/": "the fill under /slow_down (filled.json, curve.csv) and its release (released.json)",
    "profile/{k}/": "torch-profiler traces of snapshot k and their snapshot.json",
    "bench/bench.jsonl": "the benchmark client's validated result",
    "throughput.csv": "one row per snapshot (invalid ones with their reason)",
    "measurement.json": "per snapshot: per-rank batches, step periods; the fill curve",
    "manifest.json": "provenance: config, plan, commands, versions, times, GPU-hours, hashes",
    "server_info/": "what each running server reported about itself (/server_info)",
    "teardown.json": "what the teardown stopped or kept",
    "logs/": "every server node's log, the client's, each stage's",
    "commands/": "the exact launcher scripts and srun lines that ran",
    "attempts/{time}-job{id}/": "a measurement whose servers died before it finished, set aside",
}

# A point's directories that hold one measurement; an unfinished one is set aside whole.
MEASUREMENT_DIRS = ("fill", "profile", "bench", "expert_distribution")


def node_log_name(role: str, rank: int) -> str:
    """One server node's log (the runbook's ``launch_server_{role}_node_rank_{N}.log``,
    for servers whose role is ``launch_server_<name>``)."""
    return f"{role}_node_rank_{rank}.log"


def node_versions_name(role: str, rank: int) -> str:
    """What the Python of one server node reported about its packages, next to its log."""
    return f"{role}_node_rank_{rank}.versions.json"


@dataclass(frozen=True)
class PointPaths:
    """``results/{experiment}/{point}/`` and everything in it."""

    root: Path

    @classmethod
    def of(cls, results: str | os.PathLike, experiment: str, point: str) -> PointPaths:
        return cls(Path(results) / experiment / point)

    @property
    def experiment(self) -> str:
        return self.root.parent.name

    @property
    def point(self) -> str:
        return self.root.name

    @property
    def results(self) -> ResultsPaths:
        return ResultsPaths(self.root.parent.parent)

    # -- allocation and node plan

    @property
    def allocation(self) -> Path:
        return self.root / "allocation.json"

    @property
    def pending_allocation(self) -> Path:
        """A holder job submitted and not yet running (removed once allocation.json is
        written or the holder is cancelled), so a teardown can find it while it queues."""
        return self.root / "allocation.pending.json"

    @property
    def env_sh(self) -> Path:
        return self.root / "node_list_env.sh"

    @property
    def plan(self) -> Path:
        return self.root / "plan.json"

    # -- servers and client

    def ready(self, server: str) -> Path:
        return self.root / "ready" / f"{server}.json"

    def ready_markers(self) -> list[Path]:
        return sorted((self.root / "ready").glob("*.json"))

    @property
    def commands(self) -> Path:
        return self.root / "commands"

    def launcher_script(self, step: str) -> Path:
        return self.commands / f"{step}.sh"

    def srun_script(self, step: str) -> Path:
        return self.commands / f"{step}.srun.sh"

    def launched_steps(self) -> list[str]:
        """The steps whose launcher scripts were written (servers, router, client)."""
        return sorted(p.name[: -len(".srun.sh")] for p in self.commands.glob("*.srun.sh"))

    @property
    def client(self) -> Path:
        return self.root / "bench" / "client.json"

    @property
    def client_output(self) -> Path:
        return self.root / "bench" / "client-output.jsonl"

    # -- logs

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def stage_log(self, name: str) -> Path:
        """The log of one stage's command (``logs/<name>.log``)."""
        return self.logs / f"{name}.log"

    def srun_log(self, step: str) -> Path:
        return self.logs / f"{step}.srun.log"

    def holder_log(self) -> str:
        """The holder job's Slurm output (``%j``: its job id)."""
        return str(self.logs / "allocation-%j.out")

    @staticmethod
    def server_log_role(server: str) -> str:
        """Log name stem of a server's nodes, as the runbook's launch scripts named them."""
        return f"launch_server_{server}"

    def node_log(self, role: str, rank: int) -> Path:
        return self.logs / node_log_name(role, rank)

    def server_logs(self, server: str) -> list[Path]:
        stem = self.server_log_role(server)
        return sorted(
            self.logs.glob(node_log_name(stem, "*")),
            key=lambda p: int(p.stem.rsplit("_", 1)[1]),
        )

    def node_versions(self, role: str, rank: int = 0) -> Path:
        return self.logs / node_versions_name(role, rank)

    def server_info(self, server: str) -> Path:
        """What the running server reported about itself (``/server_info``)."""
        return self.root / "server_info" / f"{server}.json"

    def server_infos(self) -> list[Path]:
        return sorted((self.root / "server_info").glob("*.json"))

    def any_server_logs(self) -> bool:
        return any(self.logs.glob(node_log_name(self.server_log_role("*"), "*")))

    # -- measurement

    @property
    def filled(self) -> Path:
        return self.root / "fill" / "filled.json"

    @property
    def released(self) -> Path:
        return self.root / "fill" / "released.json"

    @property
    def fill_curve(self) -> Path:
        return self.root / "fill" / "curve.csv"

    def snapshot(self, k: int | str) -> Path:
        return self.root / "profile" / str(k) / "snapshot.json"

    def snapshot_traces(self, k: int | str) -> Path:
        return self.root / "profile" / str(k) / "traces"

    @property
    def bench(self) -> Path:
        return self.root / "bench" / "bench.jsonl"

    @property
    def throughput(self) -> Path:
        return self.root / "throughput.csv"

    @property
    def measurement(self) -> Path:
        """Per snapshot, what the throughput came from (per-rank batches, step periods,
        the validity verdict) and the fill curve: what the report plots."""
        return self.root / "measurement.json"

    @property
    def teardown(self) -> Path:
        return self.root / "teardown.json"

    @property
    def manifest(self) -> Path:
        """The point's provenance (pdbench.provenance)."""
        return self.root / "manifest.json"

    @property
    def profiler_dir(self) -> Path:
        """The servers' SGLANG_TORCH_PROFILER_DIR (each /start_profile names its own)."""
        return self.root / "profile"

    @property
    def expert_distribution_dir(self) -> Path:
        """The servers' SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR."""
        return self.root / "expert_distribution"

    @property
    def expert_record_started(self) -> Path:
        """The recording pass's /start_expert_distribution_record was answered."""
        return self.expert_distribution_dir / "started.json"

    @property
    def attempts(self) -> Path:
        return self.root / "attempts"

    def finished(self) -> bool:
        """The measurement of this point is complete (its result or teardown exists)."""
        return self.bench.exists() or self.teardown.exists()

    def set_aside(self, job_id, names: tuple[str, ...] = (*MEASUREMENT_DIRS, "logs"),
                  why: str = "") -> dict:
        """Move ``names`` of the point to ``attempts/<time>[-job<id>][-<why>]/`` (kept,
        never deleted): a measurement that must start again."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = "-".join([stamp, *([f"job{job_id}"] if job_id else []), *([why] if why else [])])
        self.attempts.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            # Twice in one second (or by two hosts): the next free name, never a merge.
            dest = self.attempts / (base if n == 1 else f"{base}-{n}")
            try:
                dest.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise InputError(f"{self.attempts}: no free name for {base}")
        moved = []
        for name in names:
            if (self.root / name).exists():
                (self.root / name).replace(dest / name)
                moved.append(name)
        return {"from": str(self.root), "to": str(dest), "moved": moved}


@dataclass(frozen=True)
class ExperimentPaths:
    """``results/{experiment}/``: the experiment's CSV and report."""

    root: Path

    @property
    def throughput(self) -> Path:
        return self.root / "throughput.csv"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def figures(self) -> Path:
        """The report's plots as SVG files (for the Snakemake report bundle)."""
        return self.root / "figures"

    @property
    def preflight(self) -> Path:
        """Every preflight check passed for this config (pdbench.preflight)."""
        return self.root / "preflight.json"

    @property
    def preflight_dir(self) -> Path:
        """The last preflight's probe, its spec, tokens, log and full result."""
        return self.root / "preflight"

    @property
    def preflight_job(self) -> Path:
        """The preflight's one-node job while it exists: named like a point's pending
        holder, so ``ResultsPaths.pending_allocations`` (stop-all, the sweep) finds it."""
        return self.preflight_dir / "allocation.pending.json"

    def stage_log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @property
    def eplb_dir(self) -> Path:
        """Static EPLB's recorded expert distribution and what recorded it."""
        return self.root / "eplb"

    @property
    def expert_distribution(self) -> Path:
        """The recording pass's dump (SGLang's ``stat`` dump, a ``torch.save`` file):
        what static points' decode starts from (``--init-expert-location``)."""
        return self.eplb_dir / "expert_distribution.pt"

    @property
    def expert_recording(self) -> Path:
        """Where the dump came from: point, source file, times, sha256."""
        return self.eplb_dir / "recording.json"


@dataclass(frozen=True)
class ResultsPaths:
    """``results/``: the points, the experiments and the run's own state."""

    root: Path

    def point(self, experiment: str, point: str) -> PointPaths:
        return PointPaths.of(self.root, experiment, point)

    def experiment(self, experiment: str) -> ExperimentPaths:
        return ExperimentPaths(self.root / experiment)

    @property
    def report(self) -> Path:
        """The grid-wide page over every experiment of the config."""
        return self.root / "report.html"

    def stage_log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def point_dirs(self) -> list[PointPaths]:
        """Every point that has (had) an allocation."""
        return [PointPaths(p.parent) for p in sorted(self.root.glob("*/*/allocation.json"))]

    def pending_allocations(self) -> list[Path]:
        """Holder jobs submitted and not yet running, and the preflight's job."""
        return sorted(self.root.glob("*/*/allocation.pending.json"))

    @property
    def state(self) -> Path:
        """pdbench's own files of the current run."""
        return self.root / ".pdbench"

    @property
    def config(self) -> Path:
        """The resolved config every stage of a run reads."""
        return self.state / "config.json"

    @property
    def run_lock(self) -> Path:
        """The live run that owns this tree (pdbench.runstate.acquire)."""
        return self.state / "run.lock"

    @property
    def run_failed(self) -> Path:
        return self.state / "run-failed"

    @property
    def keep_going(self) -> Path:
        return self.state / "run-keep-going"


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path) as fh:
            return json.load(fh)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def read_json_if(path: str | os.PathLike, default: Any = None) -> Any:
    """A record a stage may not have written (yet): ``default`` when the file is absent."""
    return read_json(path) if Path(path).is_file() else default


def write_json(path: str | os.PathLike, data: Any, *, compact: bool = False) -> None:
    """Write atomically: a crash never leaves a half-written marker or result. Compact
    for data files (long number series); indented for records people read."""
    text = (json.dumps(data, separators=(",", ":"), default=str) if compact
            else json.dumps(data, indent=2, default=str))
    write_text(path, text + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """The one way a result reaches disk: whole or not at all. The text goes to a
    temporary file whose name no other process on any host shares (results/ is on a
    shared filesystem, where two hosts can have the same pid), is flushed to disk, and
    is renamed over ``path``; a failure leaves ``path`` as it was and no temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-"
                         f"{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping]) -> None:
    """A CSV result, written whole (:func:`write_text`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())

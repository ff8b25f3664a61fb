"""The ``pdbench`` command line: every subcommand prints JSON on stdout (``render`` and
``balance`` print text unless given ``--json``).

Used by the workflow's rules and, standalone, by anyone who ran the runbook by hand and
wants the number from their own logs and traces::

    pdbench parse-log logs/launch_server_decode_node_rank_*.log
    pdbench step-time torch_profiler/1760576844.4826152-TP-0.trace.json.gz
    pdbench throughput --logs logs/launch_server_decode_node_rank_*.log \\
        --traces torch_profiler --decode-gpus 48
    pdbench balance expert_distribution_recorder_1763864000.0.pt --ep 48 --redundant-experts 32

Errors print one line ``pdbench: error: ...`` on stderr (naming the file or key) and exit
with status 2; nothing is printed on stdout then.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, InputError, PdbenchError


def _dump(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def cmd_parse_log(args) -> None:
    from .loglines import field_problems, iter_log

    # Records are collected first so that a bad file later in the list leaves no partial
    # output on stdout.
    records = []
    for path in args.files:
        found = list(iter_log(path))
        if not any(r.get("kind") for r in found):
            # Exit 0 (nothing is wrong with reading it), but never silently.
            print(f"pdbench: {path}: no SGLang log line recognised", file=sys.stderr)
        _warn_field_problems(path, field_problems(found))
        records += found
    if args.kind:
        records = [r for r in records if r["kind"] in args.kind]
    sys.stdout.writelines(json.dumps(r) + "\n" for r in records)


def _warn_field_problems(path, problems: dict[str, dict[str, int]]) -> None:
    """One stderr line per kind of problem: how many records kept which labels apart."""
    for what, why in (("unknown_fields", "labels SGLang does not print (garbled lines?)"),
                      ("invalid_fields", "values that are no count or rate")):
        counts = problems[what]
        if counts:
            top = ", ".join(f"{label!r} x{n}" for label, n in
                            sorted(counts.items(), key=lambda item: -item[1])[:5])
            more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
            print(f"pdbench: {path}: {sum(counts.values())} fields with {why}, kept under "
                  f"{what}: {top}{more}", file=sys.stderr)


def cmd_step_time(args) -> None:
    from .trace import step_time

    _dump(step_time(args.trace))


def cmd_dialects(args) -> None:
    from .dialects import dialect_for_version, dialect_table

    for version in args.versions:
        dialect_for_version(version, key="VERSION")  # one-line error for a bad version
    _dump(dialect_table(args.versions or None))


def cmd_throughput(args) -> None:
    from .measure import measure

    _dump(
        measure(
            args.logs,
            args.traces,
            decode_gpus=args.decode_gpus,
            profile_id=args.profile_id,
            dp_size=args.dp,
            tolerance=args.tolerance,
        )
    )


def cmd_fill_status(args) -> None:
    from .filltrack import fill_status

    _dump(
        fill_status(
            args.logs,
            args.target,
            ranks=args.ranks,
            target_fraction=args.target_fraction,
            plateau_forwards=args.plateau_forwards,
        )
    )


def cmd_balance(args) -> None:
    from .balance import as_text, balance_of_file

    result = balance_of_file(args.dump, ep=args.ep, placement=args.placement,
                             redundant=args.redundant_experts)
    if args.json:
        _dump(result)
    else:
        sys.stdout.write(as_text(result) + "\n")


def cmd_validate_config(args) -> None:
    from . import config

    cfg = config.load(args.config)
    _dump(
        {
            "config": str(args.config),
            "valid": True,
            "points": [p.as_dict() for p in config.grid_points(cfg)],
        }
    )


def cmd_estimate(args) -> None:
    from . import config
    from .estimate import as_text, estimate

    result = estimate(config.load(args.config), args.results)
    if args.json:
        _dump(result)
    else:
        sys.stdout.write(as_text(result) + "\n")


def cmd_plan(args) -> None:
    from . import config, topology
    from .layout import read_json, write_text

    if args.point is None:
        # The grid's plan: what it will cost (pdbench estimate).
        if args.experiment or args.nodelist or args.allocation or args.env_sh \
                or args.json_out or args.address:
            raise InputError("--experiment, --nodelist, --allocation, --address, --env-sh "
                             "and --json-out plan one point: give --point too")
        cmd_estimate(args)
        return
    if not args.experiment or not (args.nodelist or args.allocation):
        raise InputError("--point needs --experiment and one of --nodelist or --allocation")
    cfg = config.load(args.config)
    point = config.find_point(cfg, args.experiment, args.point)
    addresses = dict(a.split("=", 1) for a in args.address) if args.address else None
    if args.allocation:
        try:
            plan = topology.plan_of_allocation(point, read_json(args.allocation), cfg["ports"],
                                               addresses)
        except InputError as exc:
            raise InputError(f"{args.allocation}: {exc}") from None
    else:
        plan = topology.plan(point, topology.expand_nodelist(args.nodelist), cfg["ports"],
                             addresses)
    if args.env_sh:
        write_text(args.env_sh, plan.to_env_sh())
    if args.json_out:
        write_text(args.json_out, plan.to_json())
    _dump(plan.to_dict())


def cmd_render(args) -> None:
    from . import config, topology
    from .render import as_text, render_point

    cfg = config.load(args.config)
    local = cfg["site"]["launcher"] == "local"
    point = config.find_point(cfg, args.experiment, args.point)
    if args.nodelist is None and not local:
        raise ConfigError("pdbench render: --nodelist is required (site.launcher is slurm)")
    nodes = (topology.expand_nodelist(args.nodelist) if args.nodelist else
             [f"local{k}" for k in range(point.allocated_nodes)])
    where = "this host (site.launcher: local)" if local else args.nodelist
    addresses = dict(a.split("=", 1) for a in args.address) if args.address else None
    sections = render_point(cfg, args.experiment, args.point, nodes, results=args.results,
                            job_id=args.job_id, addresses=addresses)
    if args.json:
        _dump(sections)
        return
    sys.stdout.write(as_text(sections, (
        f"pdbench render: {args.experiment}/{args.point} on {where} "
        f"({point.allocated_nodes} nodes"
        + (f"; shared servers: {point.started_prefill_groups} prefill groups started"
           if point.shares_servers else "")
        + f"), SGLang {cfg['sglang']['version']}, container "
        f"{cfg['site']['container']['runtime']}; nothing was started")) + "\n")


def _point(args):
    from .context import PointContext

    return PointContext.load(args.config, args.point_dir)


def cmd_allocate(args) -> None:
    from . import config
    from .allocation import adopt_from_environment, allocate
    from .layout import PointPaths

    cfg = config.load(args.config)
    paths = PointPaths(Path(args.point_dir))
    point = config.find_point(cfg, paths.experiment, paths.point)
    _dump(allocate(cfg, point, paths, adopt_job_id=args.adopt or adopt_from_environment(),
                   queue_timeout_s=args.queue_timeout))


def cmd_preflight(args) -> None:
    from . import config
    from .allocation import adopt_from_environment
    from .preflight import run_preflight

    cfg = config.load(args.config)
    _dump(run_preflight(cfg, args.experiment, args.results,
                        adopt_job_id=args.adopt or adopt_from_environment(),
                        queue_timeout_s=args.queue_timeout))


def cmd_node_list(args) -> None:
    from .nodes import node_list

    _dump(node_list(_point(args)).to_dict())


def cmd_launch(args) -> None:
    from .servers import launch_router, launch_server

    ctx = _point(args)
    if args.server == "router":
        _dump(launch_router(ctx))
    else:
        _dump(launch_server(ctx, args.server))


def cmd_start_client(args) -> None:
    from .client import start_client

    _dump(start_client(_point(args)))


def cmd_fill(args) -> None:
    from .fill import run_fill

    _dump(run_fill(_point(args)))


def cmd_release(args) -> None:
    from .fill import run_release

    _dump(run_release(_point(args)))


def cmd_snapshot(args) -> None:
    from .profile import take_snapshot

    _dump(take_snapshot(_point(args), args.snapshot))


def cmd_expert_record_start(args) -> None:
    from .eplb import start_recording

    _dump(start_recording(_point(args)))


def cmd_expert_dump(args) -> None:
    from .eplb import dump_recording

    _dump(dump_recording(_point(args)))


def cmd_bench_result(args) -> None:
    from .client import collect_bench

    _dump(collect_bench(_point(args)))


def cmd_teardown(args) -> None:
    from .layout import write_json
    from .teardown import teardown_point

    ctx = _point(args)
    result = teardown_point(ctx)
    write_json(ctx.paths.teardown, result)
    _dump(result)


def cmd_point_throughput(args) -> None:
    from .layout import write_json
    from .throughput import gate, point_measurement, write_csv

    ctx = _point(args)
    rows, details = point_measurement(ctx)
    gate(ctx, rows)
    write_json(ctx.paths.measurement, details, compact=True)
    write_csv(ctx.paths.throughput, rows)
    _dump(rows)


def cmd_manifest(args) -> None:
    from .layout import write_json
    from .provenance import build_manifest

    ctx = _point(args)
    manifest = build_manifest(ctx, workdir=Path(args.repository))
    write_json(ctx.paths.manifest, manifest)
    _dump({"manifest": str(ctx.paths.manifest), "gpu_hours": manifest["gpu_hours"]})


def cmd_rerun_config(args) -> None:
    import yaml

    from .layout import write_text
    from .provenance import rerun_config

    cfg = rerun_config(args.manifest)
    text = ("# Reruns exactly the point of " + str(args.manifest) + ":\n"
            "#   snakemake --profile <profile> --configfile <this file>\n"
            + yaml.safe_dump(cfg, sort_keys=False))
    if args.out:
        write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def cmd_merge_csv(args) -> None:
    from .throughput import merge_csvs, write_csv

    rows = merge_csvs(args.csvs)
    write_csv(args.out, rows)
    _dump({"rows": len(rows), "out": args.out})


def cmd_report(args) -> None:
    from .config import load
    from .report import write

    references = load(args.config)["report"]["references"] if args.config else []
    result = write(args.out, args.csv, references=references, config_path=args.config,
                   figures_dir=args.figures)
    _dump(result)


def cmd_stop_all(args) -> None:
    from .teardown import stop_all

    result = stop_all(args.results, reason=args.reason, keep_servers=args.keep_servers)
    if result["kept"]:
        print("pdbench: servers kept running for a rerun (site.keep_servers_on_failure): "
              + ", ".join(result["kept"]) + f"; `pdbench stop-all --results {args.results}` "
              "ends them", file=sys.stderr)
    _dump(result)


def cmd_sweep(args) -> None:
    from .sweep import apply_sweep, describe, plan_sweep

    plan = plan_sweep(args.results)
    result = {**apply_sweep(plan), **({"skipped": plan["skipped"]} if "skipped" in plan
                                      else {})}
    for line in describe(result):
        print(line, file=sys.stderr)
    _dump(result)


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line naming the option (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, *, low: float, low_open: bool = False, high: float | None = None):
    """An argparse type: a finite ``kind`` in the range, or a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or low_open and value == low:
            raise argparse.ArgumentTypeError(
                f"{text} must be {'>' if low_open else '>='} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be <= {high:g}")
        return value
    parse.__name__ = kind.__name__
    return parse


COUNT = _number(int, low=1)
SECONDS = _number(float, low=0, low_open=True)
FRACTION = _number(float, low=0, low_open=True, high=1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pdbench",
        description="Reproduce and measure SGLang PD-disaggregated wide-EP serving on Slurm.",
    )
    parser.add_argument("--version", action="version", version=f"pdbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p = sub.add_parser("parse-log", help="SGLang log lines as JSON, one object per line")
    p.add_argument("files", nargs="+", metavar="FILE", help="server log(s), plain or .gz")
    p.add_argument("--kind", action="append", help="only records of this kind (repeatable)")
    p.set_defaults(func=cmd_parse_log)

    p = sub.add_parser("step-time", help="per-step decode durations of one trace")
    p.add_argument("trace", metavar="TRACE", help="*.trace.json.gz written by SGLang")
    p.set_defaults(func=cmd_step_time)

    p = sub.add_parser("dialects", help="how each SGLang release is spoken to (the table of "
                       "release changes), one row per release")
    p.add_argument("versions", nargs="*", metavar="VERSION",
                   help="releases to show (default: every release that changed something)")
    p.set_defaults(func=cmd_dialects)

    p = sub.add_parser("throughput", help="decode tokens/s per GPU of one profile snapshot")
    p.add_argument("--logs", nargs="+", required=True, metavar="PATH",
                   help="every decode node's log (all DP ranks)")
    p.add_argument("--traces", required=True, metavar="DIR", help="directory of the traces")
    p.add_argument("--profile-id", help="profile id (default: the last one in the logs)")
    p.add_argument("--decode-gpus", type=COUNT, required=True, metavar="N",
                   help="GPUs of the decode server (the denominator)")
    p.add_argument("--dp", type=COUNT, help="decode DP ranks expected (default: decode GPUs)")
    p.add_argument("--tolerance", type=SECONDS, default=0.10,
                   help="flag trace vs log step time beyond this fraction (default 0.10)")
    p.set_defaults(func=cmd_throughput)

    p = sub.add_parser("fill-status", help="is every decode rank's batch full or stuck?")
    p.add_argument("--logs", nargs="+", required=True, metavar="PATH",
                   help="every decode node's log")
    p.add_argument("--target", type=COUNT, required=True, metavar="N",
                   help="target batch per DP rank (max_running_requests / dp)")
    p.add_argument("--ranks", type=COUNT, help="DP ranks expected (default: those seen)")
    p.add_argument("--target-fraction", type=FRACTION, default=1.0,
                   help="reached at ceil(target x fraction) (default 1.0)")
    p.add_argument("--plateau-forwards", type=COUNT, default=10, metavar="K",
                   help="stuck after K decode lines without growth while requests queue")
    p.set_defaults(func=cmd_fill_status)

    p = sub.add_parser(
        "balance", help="expert-load balance of an expert-distribution dump (read-only)",
        description="Per-layer and overall GPU load balance of a SGLang expert-distribution "
        "dump (.pt, any recorder mode) or the emulator's JSON dump: SGLang's balancedness "
        "(mean/max GPU load) and max/mean. Text by default; --json for every number, "
        "per-rank loads included.")
    p.add_argument("dump", metavar="DUMP", help="expert_distribution_recorder_*.pt or .json")
    p.add_argument("--ep", type=COUNT, metavar="N",
                   help="EP size, the GPUs the experts are spread over (default: the dump's)")
    p.add_argument("--redundant-experts", type=_number(int, low=0), metavar="R",
                   help="--ep-num-redundant-experts of the server, for the trivial placement")
    p.add_argument("--placement", metavar="FILE",
                   help="a physical_to_logical_map (JSON or .pt, as --init-expert-location "
                   "takes, or a per_pass dump) to place the counts with")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    p.set_defaults(func=cmd_balance)

    # The stages of one point: each writes its outputs where pdbench.layout puts them
    # under --point-dir (the rules' outputs come from the same layout).
    def point_cmd(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True)
        p.add_argument("--point-dir", required=True, help="results/{experiment}/{point}")
        p.set_defaults(func=func)
        return p

    p = sub.add_parser("preflight", help="check an experiment's launch on one node before "
                       "any allocation; every failing check in one message")
    p.add_argument("--config", required=True)
    p.add_argument("--results", default="results", help="the results directory")
    p.add_argument("--experiment", required=True, help="e.g. ep48")
    p.add_argument("--adopt", type=COUNT, metavar="JOBID", help="probe in this allocation")
    p.add_argument("--queue-timeout", type=SECONDS, default=3600.0, metavar="S")
    p.set_defaults(func=cmd_preflight)

    p = point_cmd("allocate", cmd_allocate, "obtain or adopt the Slurm allocation of a point")
    p.add_argument("--adopt", type=COUNT, metavar="JOBID", help="adopt this running allocation")
    p.add_argument("--queue-timeout", type=SECONDS, default=24 * 3600.0, metavar="S")

    point_cmd("node-list", cmd_node_list, "node_list_env.sh and plan.json of the allocation")
    p = point_cmd("launch", cmd_launch, "start a server or the router and wait until ready")
    p.add_argument("--server", required=True, help="prefill-G, decode or router")
    point_cmd("start-client", cmd_start_client,
              "start the benchmark client, held until the fill lets it go")
    point_cmd("fill", cmd_fill, "slow_down, let the client go, follow the batch until full, "
              "release")
    point_cmd("release", cmd_release, "confirm decode runs again without slow_down")
    p = point_cmd("snapshot", cmd_snapshot, "take torch-profiler snapshot K of decode")
    p.add_argument("--snapshot", type=COUNT, required=True, metavar="K")
    point_cmd("expert-record-start", cmd_expert_record_start,
              "start static EPLB's expert-distribution recording on decode (before the fill)")
    point_cmd("expert-dump", cmd_expert_dump, "after eplb.static.record_s at full batch, dump "
              "the expert distribution to the experiment's eplb/expert_distribution.pt")
    point_cmd("bench-result", cmd_bench_result, "wait for the client and validate its JSONL")
    point_cmd("teardown", cmd_teardown, "stop a point's servers and release its allocation")
    point_cmd("point-throughput", cmd_point_throughput, "throughput.csv of one point")

    p = point_cmd("manifest", cmd_manifest, "a point's manifest (provenance, GPU-hours)")
    p.add_argument("--repository", default=".",
                   help="the workflow's checkout, whose git commit is recorded")
    p = sub.add_parser("rerun-config", help="the config that reruns exactly a manifest's point")
    p.add_argument("manifest", help="a point's manifest (manifest.json in its directory)")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_rerun_config)

    p = sub.add_parser("merge-csv", help="the experiment's throughput.csv from its points'")
    p.add_argument("csvs", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_csv)

    p = sub.add_parser("report", help="a self-contained report.html: one experiment's, or "
                       "the grid's over several experiments")
    p.add_argument("--config", help="the run's config (reference points, tolerance)")
    p.add_argument("--csv", required=True, nargs="+",
                   help="results/{experiment}/throughput.csv (several: the grid page)")
    p.add_argument("--out", required=True)
    p.add_argument("--figures", help="also write the plots as SVG files here")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("stop-all", help="stop every step and holder job a results tree records")
    p.add_argument("--results", default="results")
    p.add_argument("--reason", default="requested")
    p.add_argument("--keep-servers", action="store_true",
                   help="stop only clients and queued holders; keep servers and allocations")
    p.set_defaults(func=cmd_stop_all)

    p = sub.add_parser("sweep", help="remove markers of allocations or servers that are gone")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("validate-config", help="validate a config and list its grid points")
    p.add_argument("config", metavar="CONFIG")
    p.set_defaults(func=cmd_validate_config)

    p = sub.add_parser(
        "render",
        help="every command a point would run on a node list (nothing is started)",
        description="Print the holder sbatch, the node plan, every srun step with its "
        "container options and launcher script, router, client and control calls of one "
        "grid point, for review before a launch. Text by default; --json for the sections.",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--experiment", required=True, help="e.g. ep48")
    p.add_argument("--point", required=True, help="e.g. p2, p2-eplb_static")
    p.add_argument("--nodelist", help="Slurm hostlist, e.g. 'gb-[001-018]' (not with "
                   "site.launcher: local, whose nodes are this host's slots)")
    p.add_argument("--address", action="append", metavar="NODE=ADDR",
                   help="a node's address, if not its name (repeatable)")
    p.add_argument("--job-id", type=COUNT, default=None, help="allocation job id to show")
    p.add_argument("--results", default="results", help="results directory (default results)")
    p.add_argument("--json", action="store_true", help="the sections as JSON")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("estimate", help="wall time and GPU-hours of the grid before any job: "
                       "per point, one allocation per point, shared servers, the bound")
    p.add_argument("--config", required=True)
    p.add_argument("--results", default="results",
                   help="results tree whose earlier runs' stage times are used (default results)")
    p.add_argument("--json", action="store_true", help="the estimate as JSON")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("plan", help="node and port plan of one grid point; without --point, "
                       "the grid's estimate (pdbench estimate)")
    p.add_argument("--config", required=True)
    p.add_argument("--experiment", help="e.g. ep48")
    p.add_argument("--point", help="e.g. p2 (without it: the grid's estimate)")
    p.add_argument("--results", default="results",
                   help="without --point: results tree of earlier runs (default results)")
    p.add_argument("--json", action="store_true", help="without --point: the estimate as JSON")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--nodelist", help="Slurm hostlist, e.g. gb-[001-016]")
    where.add_argument("--allocation", metavar="JSON",
                       help="allocation.json (job_id, nodelist, addresses)")
    p.add_argument("--address", action="append", metavar="NODE=ADDR",
                   help="address of a node (default: its name); repeatable")
    p.add_argument("--env-sh", metavar="PATH", help="also write node_list_env.sh here")
    p.add_argument("--json-out", metavar="PATH", help="also write the plan JSON here")
    p.set_defaults(func=cmd_plan)
    return parser


def _mark_run_failed(args, exc: Exception) -> None:
    """A stage of a run failed: the run's other waiting stages stop (pdbench.runstate)."""
    from .runstate import RunFailed, mark_failed

    if isinstance(exc, RunFailed):
        return
    if getattr(args, "point_dir", None):
        point_dir = Path(args.point_dir)
    else:
        return  # offline commands do not stop a run
    mark_failed(point_dir.parent.parent,
                f"{point_dir.parent.name}/{point_dir.name} {args.command}: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except PdbenchError as exc:
        print(f"pdbench: error: {exc}", file=sys.stderr)
        _mark_run_failed(args, exc)
        return 2
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 0: before any point's allocation, check what would otherwise fail an hour later
on dozens of GPUs, and report every problem at once.

On the submitting host: the secrets named in ``site.secret_env`` are set, and Slurm would
accept each allocation the experiment asks for (``sbatch --test-only``). Then one small
job (one node for ``site.preflight.time_limit``; or a step on the first node of an adopted
allocation) runs ``preflight_probe.py`` with the container's interpreter, inside the
container, as the servers will run: the results directory is shared (a token written
here is read there and one written there is read back here), SGLang is the configured
release, the router and client modules import, SGLang's own argument parser and checks
accept every rendered server command of the experiment, the model directory and its
``config.json`` are what the config says, the node has its GPUs and the named InfiniBand
devices, and the plan's ports are free.

The result is ``results/{experiment}/preflight.json`` (written only when no check
failed); its ``fingerprint`` covers the config sections a launch depends on, and the
workflow reruns the preflight when they change (a rule parameter), without rerunning
points measured before.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from . import commands, localhost, runstate, slurm, topology
from .context import PointContext, now, progress
from .errors import PdbenchError
from .grid import Point, grid_points
from .layout import ExperimentPaths, PointPaths, ResultsPaths, write_json, write_text
from .routers import router_dialect

PROBE = Path(__file__).with_name("data") / "preflight_probe.py"
# Sections of the config a launch depends on; a change to any of them reruns the preflight.
FINGERPRINT_SECTIONS = ("site", "sglang", "model", "server_args", "env", "ports", "router",
                        "workload", "eplb", "grid", "fill")
PROBE_OUTPUT_GRACE_S = 30.0


class PreflightError(PdbenchError):
    """One or more preflight checks failed; the message lists every one with its fix."""


def fingerprint(cfg: Mapping, experiment: str) -> str:
    sections = {k: cfg.get(k) for k in FINGERPRINT_SECTIONS}
    text = json.dumps({"experiment": experiment, **sections}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def experiment_points(cfg: Mapping, experiment: str) -> list[Point]:
    points = [p for p in grid_points(cfg) if p.experiment == experiment]
    if not points:
        raise PdbenchError(f"experiment {experiment!r} is not in the config's grid")
    return points


def _result(check: str, status: str, detail: str, fix: str = "") -> dict:
    return {"check": check, "status": status, "detail": detail, "fix": fix, "where": "submit"}


def check_secrets(cfg: Mapping) -> dict:
    names = cfg["site"]["secret_env"]
    if not names:
        return _result("secrets", "skipped", "site.secret_env is empty")
    missing = commands.missing_secrets(cfg)
    if missing:
        return _result("secrets", "failed",
                       f"site.secret_env names {', '.join(missing)}, unset or empty here",
                       "export them in the shell that starts Snakemake (values are never "
                       "written to files)")
    return _result("secrets", "ok", f"{len(names)} set (values not shown)")


def test_only_argv(cfg: Mapping, point: Point, log_path: str) -> list[str]:
    """The holder ``sbatch`` of ``point`` as ``sbatch --test-only`` (Slurm answers
    whether and when it would start; nothing is submitted)."""
    argv = slurm.holder_sbatch_argv(cfg["site"], point.allocated_nodes,
                                    f"pdbench-{point.experiment}-{point.name}", log_path)
    return [argv[0], "--test-only", *[a for a in argv[1:] if a != "--parsable"]]


def check_allocations(cfg: Mapping, points: list[Point], log_dir: Path,
                      adopted: int | None) -> list[dict]:
    sizes = sorted({p.allocated_nodes for p in points})
    if adopted:
        info = slurm.job_info(adopted)
        nodes = topology.expand_nodelist(info.nodelist) if info.nodelist else []
        # Points larger than the adopted allocation fail at their own allocation stage;
        # here it must hold at least one point.
        ok = info.state in slurm.RUNNING_STATES and len(nodes) >= sizes[0]
        return [_result("allocation", "ok" if ok else "failed",
                        f"adopted allocation {adopted} is {info.state} with {len(nodes)} "
                        f"node(s); the points need {', '.join(map(str, sizes))}",
                        "" if ok else "adopt a running allocation with enough nodes")]
    results = []
    for size in sizes:
        point = next(p for p in points if p.allocated_nodes == size)
        argv = test_only_argv(cfg, point, str((log_dir / "test-only.log").resolve()))
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            text = " ".join((out.stderr + out.stdout).split())
            ok = out.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as exc:
            text, ok = f"sbatch --test-only did not answer: {exc}", False
        results.append(_result(
            f"sbatch_test_only:{size}_nodes", "ok" if ok else "failed",
            f"{size} nodes ({point.name}): {text[:300] or '(no output)'}",
            "" if ok else "fix site.partition/account/qos/time_limit/gpus_per_node/"
            "max_nodes or the grid, so Slurm accepts the request"))
    return results


def _hosts_shared(site: Mapping) -> bool:
    """Do several Slurm nodes share one address (the local rehearsal cluster)? Then the
    plan gives every server its own ports, as the real run would."""
    argv = ["sinfo", "-h", "-N", "-o", "%N|%o"]
    if site.get("partition"):
        argv += ["-p", str(site["partition"])]
    rows = [line.split("|") for line in slurm.run(argv).splitlines() if "|" in line]
    addresses = {node: address for node, address in rows}
    return len(set(addresses.values())) < len(addresses)


def placeholder_plan_context(cfg: Mapping, point: Point, results: Path, node: str,
                             address: str, shared: bool) -> PointContext:
    """The point placed on ``node`` and made-up neighbours: the commands and ports it
    would use (names differ from the real allocation's; flags and ports do not)."""
    nodes = [node] + [f"{node}-planned-{i}" for i in range(1, point.allocated_nodes)]
    addresses = {n: address if shared else n for n in nodes}
    addresses[node] = address
    allocation = {"job_id": "PREFLIGHT", "nodelist": ",".join(nodes), "addresses": addresses,
                  "nodes": nodes}
    return PointContext.for_allocation(dict(cfg), point,
                                       PointPaths.of(results, point.experiment, point.name),
                                       allocation)


def probe_spec(cfg: Mapping, points: list[Point], results: Path, node: str, address: str,
               shared: bool, tokens: Mapping[str, str]) -> tuple[dict, list[dict]]:
    """What the probe checks, and the checks that failed already while rendering."""
    failed, servers, seen, ports = [], [], set(), set()
    for point in points:
        ctx = placeholder_plan_context(cfg, point, results, node, address, shared)
        plan = ctx.plan
        for server in plan.servers:
            try:
                location = commands.static_expert_location(cfg, ResultsPaths(results), point)
                argvs = commands.server_argvs(cfg, point, plan, server.name,
                                              expert_location=location,
                                              dialect=ctx.dialect)
            except PdbenchError as exc:
                failed.append(_result(f"server_args:{point.name}/{server.name}", "failed",
                                      str(exc)))
                continue
            for rank, argv in enumerate(argvs):
                args = argv[3:]  # python -m MODULE ARGS...
                key = json.dumps(args)
                if key not in seen:
                    seen.add(key)
                    servers.append({"name": f"{point.name}/{server.name}/node{rank}",
                                    "args": args})
            ports.update(n.http_port for n in server.nodes)
            ports.update((server.dist_init_port, server.bootstrap_port))
        ports.add(plan.router_port)
        if plan.shared_host:
            ports.add(plan.router_port + 1)
    sglang, model, pre = cfg["sglang"], cfg["model"], cfg["site"]["preflight"]
    router = router_dialect(cfg)
    router_module = sglang["router_module"] or router.module
    spec = {
        **tokens,
        "server_module": sglang["server_module"],
        "sglang_version": sglang["version"],
        "router_module": router_module,
        "router_module_distribution": router.package,
        "router_module_version": router.version,
        "client_module": _client_module(cfg),
        **_client_interpreter(cfg),
        "servers": servers,
        "model_path": str(Path(model["path"]).absolute()),
        "architecture": model.get("architecture"),
        "tokenizer": str(Path(model["tokenizer"]).absolute()) if model.get("tokenizer") else None,
        "gpu_list_command": pre["gpu_list_command"],
        "gpus_per_node": cfg["site"]["gpus_per_node"],
        "ib_devices": ib_devices(cfg),
        "ports": sorted(ports),
        "secret_env": list(cfg["site"]["secret_env"]),
    }
    return spec, failed


def _client_module(cfg: Mapping) -> str:
    from .dialects import client_dialect_for

    dialect = client_dialect_for(cfg)
    if cfg["workload"]["client"] == "bench_serving":
        return dialect.bench_serving_module
    return dialect.bench_one_batch_server_module


def _client_interpreter(cfg: Mapping) -> dict:
    """A client with an interpreter of its own (``workload.python``) is probed with that
    interpreter and ``commands.client_env``, and its SGLang must be the client's release
    (``workload.client_version``, else ``sglang.version``); without one, the client runs
    with ``site.python``, whose SGLang the ``sglang_version`` check covers."""
    from .dialects import client_dialect_for

    if not cfg["workload"]["python"]:
        return {}
    return {"client_python": commands.client_python(cfg),
            "client_env": commands.client_env(cfg),
            "client_module_distribution": "sglang",
            "client_module_version": client_dialect_for(cfg).version}


def ib_devices(cfg: Mapping) -> list[str]:
    """InfiniBand devices the servers are told to use (``disaggregation-ib-device``,
    comma-separated, ``name`` or ``name:port``) and ``site.preflight.ib_devices``."""
    names = list(cfg["site"]["preflight"]["ib_devices"])
    for section in ("common", "prefill", "decode"):
        value = cfg["server_args"][section].get("disaggregation-ib-device")
        if isinstance(value, str):
            names += [part.split(":")[0].strip() for part in value.split(",") if part.strip()]
    return sorted(set(names))


def run_preflight(cfg: dict, experiment: str, results: str | Path, *,
                  adopt_job_id: int | None = None, queue_timeout_s: float = 3600.0) -> dict:
    results = Path(results)
    exp = ExperimentPaths(results / experiment)
    marker = exp.preflight
    work = exp.preflight_dir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    points = experiment_points(cfg, experiment)
    pre = cfg["site"]["preflight"]
    record = {"experiment": experiment, "fingerprint": fingerprint(cfg, experiment),
              "started_at": now("seconds")}
    if not pre["enabled"]:
        record.update(checks=[], skipped="site.preflight.enabled is false")
        write_json(marker, record)
        progress(f"preflight of {experiment} skipped (site.preflight.enabled: false)")
        return record
    adopted = cfg["site"]["allocation_job_id"] or adopt_job_id
    checks = [check_secrets(cfg)]
    if cfg["site"]["launcher"] == localhost.LAUNCHER:
        checks.append(_result("allocation", "skipped", "site.launcher is local: no Slurm "
                              "request to test; the slots' GPUs are checked by the probe"))
        probed, where = _probe_here(cfg, points, results, work)
    else:
        checks += check_allocations(cfg, points, work, adopted)
        probed, where = _probe_on_node(cfg, points, results, work, adopted, queue_timeout_s)
    checks += probed
    record.update(where, checks=checks, finished_at=now("seconds"))
    write_json(work / "result.json", record)
    failed = [c for c in checks if c["status"] == "failed"]
    if failed:
        lines = [f"preflight of {experiment}: {len(failed)} of {len(checks)} checks failed "
                 f"(all results: {work / 'result.json'})"]
        lines += [f"  {c['check']}: {c['detail']}" + (f" -> {c['fix']}" if c["fix"] else "")
                  for c in failed]
        raise PreflightError("\n".join(lines))
    write_json(marker, record)
    skipped = [c["check"] for c in checks if c["status"] == "skipped"]
    progress(f"preflight of {experiment}: {len(checks) - len(skipped)} checks passed"
             + (f", skipped: {', '.join(skipped)}" if skipped else ""))
    return record


def _probe_on_node(cfg: dict, points: list[Point], results: Path, work: Path,
                   adopted: int | None, queue_timeout_s: float) -> tuple[list[dict], dict]:
    """The probe's checks, and where it ran (``job_id``, ``adopted``, ``node``)."""
    site, pre = cfg["site"], cfg["site"]["preflight"]
    submitted = None
    try:
        if adopted:
            info = slurm.job_info(int(adopted))
            job_id = int(adopted)
        else:
            argv = slurm.holder_sbatch_argv({**site, "time_limit": pre["time_limit"]}, 1,
                                            f"pdbench-{points[0].experiment}-preflight",
                                            str((work / "holder.log").resolve()))
            job_id = submitted = slurm.submit_holder(argv)
            # Recorded while it exists: a stop-all (an interrupted run) cancels it, and the
            # wait below then ends.
            write_json(ExperimentPaths(work.parent).preflight_job,
                       {"job_id": job_id, "submitted_at": now("seconds"),
                        "point": f"{points[0].experiment}/preflight"})
            progress(f"preflight: submitted job {job_id} (1 node, {pre['time_limit']})")
            info = slurm.wait_running(job_id, queue_timeout_s, progress,
                                      check_run=lambda: runstate.check(results))
        node = topology.expand_nodelist(info.nodelist)[0]
        address = topology.slurm_node_addresses([node])[node]
        tokens = _shared_filesystem_tokens(work)
        spec, failed = probe_spec(cfg, points, results, node, address, _hosts_shared(site),
                                  tokens)
        where = {"job_id": job_id, "adopted": bool(adopted), "node": node}
        return failed + _run_probe(cfg, job_id, node, work, spec), where
    finally:
        if submitted:
            slurm.cancel(str(submitted))
            ExperimentPaths(work.parent).preflight_job.unlink(missing_ok=True)


def _shared_filesystem_tokens(work: Path) -> dict:
    """A token written here for the probe to read, and one it writes back: the shared
    filesystem check, from both ends."""
    tokens = {"token": secrets.token_hex(16), "return_token": secrets.token_hex(16),
              "token_path": str((work / "token-submit").resolve()),
              "return_token_path": str((work / "token-node").resolve())}
    write_text(tokens["token_path"], tokens["token"] + "\n")
    return tokens


def _probe_here(cfg: dict, points: list[Point], results: Path,
                work: Path) -> tuple[list[dict], dict]:
    """The probe on this host (site.launcher: local), in slot 0's GPUs."""
    record = localhost.allocation_record(cfg["site"], 1)
    node = record["nodes"][0]
    tokens = _shared_filesystem_tokens(work)
    spec, failed = probe_spec(cfg, points, results, node, record["addresses"][node], True,
                              tokens)
    where = {"job_id": record["job_id"], "launcher": localhost.LAUNCHER, "adopted": False,
             "node": node}
    return failed + _run_probe(cfg, record, node, work, spec), where


def _run_probe(cfg: dict, job: int | dict, node: str, work: Path, spec: dict) -> list[dict]:
    """Run the probe on ``node`` of ``job`` (a Slurm job id, or the local launcher's
    allocation record)."""
    pre = cfg["site"]["preflight"]
    probe = work / "preflight_probe.py"
    shutil.copyfile(PROBE, probe)
    spec_path, out_path = work / "spec.json", work / "probe-result.json"
    write_json(spec_path, spec)
    script = work / "preflight.sh"
    python = cfg["site"]["python"]
    write_text(script, commands.node_launcher_script(
        [[python, str(probe.resolve()), str(spec_path.resolve()), str(out_path.resolve())]],
        # Secrets are not required here (the launcher would stop before the probe): the
        # probe reports which of them reach the node, with every other check.
        commands.server_env(cfg, "decode"), role_name="preflight", node_names=[node]))
    name = f"pdbench-{Path(work).parent.name}-preflight"
    log = work / "probe.log"
    if isinstance(job, dict):  # the local launcher: a local step of one task
        runner = work / "preflight.local.sh"
        write_text(runner, localhost.step_script(
            job, [node], commands.local_task_argv(cfg, script.resolve()), name))
        argv = ["bash", str(runner.resolve())]
        progress(f"preflight: probing this host ({node}, GPUs {job['gpus'][node]})")
    else:
        argv = commands.srun_argv(cfg, job_id=job, nodes=[node],
                                  script_path=script.resolve(), step_name=name)
        progress(f"preflight: probing {node} in job {job}")
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=pre["timeout_s"])
        except subprocess.TimeoutExpired:
            if isinstance(job, dict):
                slurm.stop_process_group(proc.pid, grace_s=5.0)
            else:
                for step_id, step_name in slurm.steps(job):
                    if step_name == name:
                        slurm.cancel(step_id)
                slurm.stop_process_group(proc.pid, grace_s=5.0)
            return [_result("probe", "failed", f"the probe on {node} did not finish within "
                            f"site.preflight.timeout_s ({pre['timeout_s']} s); log {log}",
                            "raise site.preflight.timeout_s if the container is slow to "
                            "start")]
        except BaseException:
            slurm.stop_process_group(proc.pid, grace_s=5.0)  # interrupted: leave nothing
            raise
    if rc != 0 or not out_path.exists():
        from .steps import log_tail

        return [_result("probe", "failed",
                        f"the probe step on {node} ended with status {rc} before reporting; "
                        f"{log}:\n{log_tail(log, 6)}",
                        "the container or its interpreter (site.python) did not start: "
                        "check site.container and site.python")]
    checks = json.loads(out_path.read_text())["checks"]
    for c in checks:
        c["where"] = node
    back = Path(spec["return_token_path"])
    seen = back.read_text().strip() if back.exists() else None
    ok = seen == spec["return_token"]
    for c in checks:
        if c["check"] == "shared_filesystem" and c["status"] == "ok" and not ok:
            c.update(status="failed", detail=f"{back}, written on {node}, is not visible "
                     "on the submitting host", fix="put results/ on a shared filesystem")
    return checks

#!/usr/bin/env python3
"""How close the chain comes to its lower bound, from "all servers ready" to "first valid
profile", on the local Slurm cluster with the SGLang emulator.

    .venv/bin/python scripts/bench_rehearsal.py            # the small chain (EP8, 3 nodes)
    .venv/bin/python scripts/bench_rehearsal.py --ep48     # the EP48 rehearsal (3 points)
    .venv/bin/python scripts/bench_rehearsal.py --analyse DIR   # a finished working dir
    .venv/bin/python scripts/bench_rehearsal.py --cost [--server-startup-s 60]

``--cost`` runs the EP48 p1-p3 rehearsal twice with the emulator's start-up set to
``--server-startup-s`` (PDBENCH_EMULATOR_WARMUP_S): one allocation per point, then on
shared servers (site.share_servers), and prints each sweep's GPU-hours (every holder job
from its start to the teardown that released it, x its GPUs) and wall time, the lower
bound (one start-up of the largest allocation + every point's fill and profiles, x its
GPUs) and what ``pdbench estimate`` predicted for sharing from the first sweep's
manifests before the second ran.

It runs ``snakemake ... results/<experiment>/report.html`` in a working directory of its
own (free ports, absolute paths, its own Slurm job names), then for every point reports
the time from the router's ready marker (``ready_at``: every server is up) to snapshot
1's ``done_at`` against the lower bound

    prefill supply   target global batch x input_len / (prefill groups x PREFILL_TOKENS_PER_S)
  + client start   the client's start signal to its first request (measured apart)
  + profiled steps profile.num_steps x decode step time (the emulator's step model)
  + profile.interval_s (counted from the release request)

and prints each component and each measured stage. The client is started with the
servers and held, its imports done, until the fill sends SIGUSR1; what it still does
after the signal (tokenizer, dataset, bench_serving's own 1 s pause) is measured apart:
the run's exact held client command (its ``bench/client.json``) against a stub server
that records when the first ``POST /generate`` arrives. The ratio against the bound
without that term is printed too.
Needs root and a running local cluster (``scripts/local-slurm up``). Numbers, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.server
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = REPO / ".venv" / "bin"
SGLANG_PYTHON = REPO / ".venv-sglang" / "bin" / "python"
TINY_MODEL = REPO / ".cache" / "tiny-model"
CLUSTER_CONF = Path(os.environ.get("PDBENCH_SLURM_DIR", "/var/tmp/pdbench-slurm")) / "etc" / \
    "slurm.conf"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_base() -> int:
    for base in range(31000 - 1002, 18000, -1100):
        if base <= 27300 and base + 1001 >= 26800:  # a second test cluster's daemons
            continue
        # Slots 0-2 (prefill groups) and 9 (decode) of 100 ports: node ranks from the
        # slot's start, dist-init +90, bootstrap +91; the router +1000, its metrics +1001.
        ports = [base + slot * 100 + off for slot in (0, 1, 2, 9) for off in (*range(20), 90, 91)]
        ports += [base + 1000, base + 1001]
        if all(port_free(p) for p in ports):
            return base
    raise SystemExit("no free port base between 18000 and 31000")


def env(hf_online: bool) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    e["PATH"] = f"{VENV_BIN}:{e.get('PATH', '/usr/bin:/bin')}"
    e["PYTHONUNBUFFERED"] = "1"
    if not hf_online:
        e["HF_HUB_OFFLINE"] = "1"  # no network on the cluster: fail the look-ups at once
    if CLUSTER_CONF.exists():
        e["SLURM_CONF"] = str(CLUSTER_CONF)
    return e


def setup(workdir: Path, ep48: bool, exact_target: bool, extra: dict | None = None) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    # The Snakefile's configfile, and what the rehearsal config names relatively.
    for name in ("config", ".cache", ".venv-sglang"):
        (workdir / name).symlink_to(REPO / name)
    base = free_base()
    override = {
        "site": {"python": str(SGLANG_PYTHON)},
        "model": {"path": str(TINY_MODEL), "tokenizer": str(TINY_MODEL)},
        "ports": {"shared_host_base": base},
    }
    first = REPO / "config" / "rehearsal.yaml" if ep48 else \
        REPO / "tests" / "data" / "configs" / "chain-small.yaml"
    if exact_target:
        # The client sends exactly the target batch (max_running_requests) instead of
        # the default twice that: every request is then part of the batch to supply.
        target = yaml.safe_load(first.read_text())["server_args"]["decode"][
            "max-running-requests"]
        override["workload"] = {"num_prompts": int(target)}
    for key, value in (extra or {}).items():
        override[key] = {**override.get(key, {}), **value}
    (workdir / "bench-config.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
    profile = yaml.safe_load((REPO / "profiles" / "rehearsal" / "config.yaml").read_text())
    profile["configfile"] = [str(first), str(workdir / "bench-config.yaml")]
    profile["slurm-jobname-prefix"] = "pdbench-bench"
    (workdir / "profile").mkdir(exist_ok=True)
    (workdir / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    return "ep48" if ep48 else "ep8"


def run_chain(workdir: Path, experiment: str, hf_online: bool) -> float:
    argv = [str(VENV_BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--profile",
            str(workdir / "profile"), f"results/{experiment}/report.html"]
    log(f"running the chain in {workdir}")
    start = time.monotonic()
    with open(workdir / "snakemake.out", "wb") as out:
        rc = subprocess.call(argv, cwd=workdir, env=env(hf_online), stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - start
    if rc != 0:
        sys.stderr.write((workdir / "snakemake.out").read_text()[-5000:])
        raise SystemExit(f"snakemake failed (exit {rc}); see {workdir / 'snakemake.out'}")
    return wall


class _Stub(http.server.BaseHTTPRequestHandler):
    first_generate: float | None = None
    model = "model"

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/v1/models"):
            self._send(json.dumps({"object": "list", "data": [
                {"id": self.model, "object": "model", "root": self.model}]}).encode())
        else:
            self._send(b"{}")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/generate") and _Stub.first_generate is None:
            _Stub.first_generate = time.time()
        self._send(b'data: {"text": "x", "meta_info": {"completion_tokens": 1}}\n\n'
                   b"data: [DONE]\n\n", "text/event-stream")


def client_startup(workdir: Path, point_dir: Path, model: str, hf_online: bool,
                   repeats: int) -> list[tuple[float, float]]:
    """(import time, start signal -> first POST /generate) of the run's held client."""
    sys.path.insert(0, str(REPO / "src"))
    from pdbench.commands import CLIENT_GATE_WAITING, gated_client_argv

    client = json.loads((point_dir / "bench" / "client.json").read_text())
    times = []
    for _ in range(repeats):
        _Stub.first_generate, _Stub.model = None, model
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        argv = list(client["argv"])
        argv[argv.index("--base-url") + 1] = f"http://127.0.0.1:{server.server_address[1]}"
        with tempfile.TemporaryDirectory() as tmp:
            for flag in ("--output-file", "--result-filename"):
                if flag in argv:
                    argv[argv.index(flag) + 1] = str(Path(tmp) / "out.jsonl")
            launched = time.time()
            proc = subprocess.Popen(gated_client_argv(argv), cwd=workdir, env=env(hf_online),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    stdin=subprocess.DEVNULL, text=True)
            for line in proc.stdout:
                if CLIENT_GATE_WAITING in line:
                    break
            imported = time.time() - launched
            go = time.time()
            proc.send_signal(signal.SIGUSR1)
            while _Stub.first_generate is None and proc.poll() is None \
                    and time.time() - go < 300:
                time.sleep(0.01)
            proc.kill()
            proc.communicate()
        server.shutdown()
        if _Stub.first_generate is None:
            raise SystemExit("the client sent no request to the stub within 300 s")
        times.append((imported, _Stub.first_generate - go))
    return times


def analyse(workdir: Path, experiment: str, startup_s: float) -> list[dict]:
    cfg = json.loads((workdir / "results" / ".pdbench" / "config.json").read_text())
    rows = []
    for point_dir in sorted((workdir / "results" / experiment).glob("p*")):
        plan = json.loads((point_dir / "plan.json").read_text()) if (point_dir / "plan.json") \
            .exists() else None
        router = json.loads((point_dir / "ready" / "router.json").read_text())
        filled = json.loads((point_dir / "fill" / "filled.json").read_text())
        released = json.loads((point_dir / "fill" / "released.json").read_text())
        snap = json.loads((point_dir / "profile" / "1" / "snapshot.json").read_text())
        client = json.loads((point_dir / "bench" / "client.json").read_text())
        groups = int(point_dir.name[1])
        envs = {**cfg["env"]["common"], **cfg["env"]["prefill"]}
        rate = float(envs.get("PDBENCH_EMULATOR_PREFILL_TOKENS_PER_S", 100000))
        base = float(envs.get("PDBENCH_EMULATOR_STEP_BASE_MS", 23.2))
        per_req = float(envs.get("PDBENCH_EMULATOR_STEP_PER_REQ_MS", 0.1))
        target = filled["target"] * len(filled["ranks"])
        step_s = (base + per_req * filled["target"]) / 1000
        prof = cfg["profile"]
        # What decode held when the last rank reached its target: running plus queued
        # (KV arrived, waiting for a slot). With more requests than the target, requests
        # land on ranks unevenly and prefill serves them first come, first served, so
        # the target is reached only once these have been supplied.
        delivered = filled["global_running_req"] + sum(
            (r["queue_req"] or 0) for r in filled["ranks"].values())
        supply_per_s = groups * rate / cfg["workload"]["input_len"]
        bound = {
            "prefill supply": target / supply_per_s,
            "client start (signal -> first request)": startup_s,
            "profiled steps": prof["num_steps"] * step_s,
            "profile.interval_s": float(prof["interval_s"]),
        }
        t_ready, t_done = ts(router["ready_at"]), ts(snap["done_at"])
        t_release = ts(filled["release_requested_at"])
        stages = {
            "router ready -> fill starts (scheduling, checks, slow_down)":
                ts(filled["started_at"]) - t_ready,
            "fill starts -> client let go": ts(client["go_at"]) - ts(filled["started_at"]),
            "client let go -> batch full seen in the logs":
                ts(filled["filled_at"]) - ts(client["go_at"]),
            "batch full -> slow_down cleared": t_release - ts(filled["filled_at"]),
            "slow_down cleared -> snapshot 1 requested (interval)":
                ts(snap["requested_at"]) - t_release,
            "snapshot 1 requested -> traces written": t_done - ts(snap["requested_at"]),
        }
        aside = {"slow_down cleared -> decode seen running (release stage)":
                 ts(released["released_at"]) - t_release}
        rows.append({"point": point_dir.name, "prefill_groups": groups, "target": target,
                     "nodes": plan["nodes"] if plan else None, "bound": bound,
                     "stages": stages, "aside": aside, "actual_s": t_done - t_ready,
                     "delivered": delivered,
                     "delivered_supply_s": delivered / supply_per_s,
                     "bound_s": sum(bound.values()), "sleep_s": filled["sleep_s"]})
    return rows


def cost_config(startup_s: float, share: bool) -> dict:
    """The rehearsal with the emulator's start-up (PDBENCH_EMULATOR_WARMUP_S: its "model
    loading" before the warm-up requests) and with or without shared servers."""
    env_common = yaml.safe_load((REPO / "config" / "rehearsal.yaml").read_text())["env"][
        "common"]
    return {"site": {"share_servers": share},
            "env": {"common": {**env_common, "PDBENCH_EMULATOR_WARMUP_S": startup_s}}}


def allocation_cost(workdir: Path, experiment: str) -> dict:
    """GPU-hours as the holder jobs held them: each job from its start (the allocation
    record that is not a reuse) to the teardown that cancelled it, x its GPUs."""
    sys.path.insert(0, str(REPO / "src"))
    from pdbench.estimate import measured_parts

    cfg = json.loads((workdir / "results" / ".pdbench" / "config.json").read_text())
    gpn = cfg["site"]["gpus_per_node"]
    jobs: dict[str, dict] = {}
    parts = {}
    from pdbench.grid import POINT_PATTERN

    for point_dir in sorted((workdir / "results" / experiment).iterdir()):
        # The grid's points only (not preflight/: its one-node job is the same in every
        # sweep, seconds long).
        if not re.fullmatch(POINT_PATTERN, point_dir.name):
            continue
        alloc = json.loads((point_dir / "allocation.json").read_text())
        job = jobs.setdefault(str(alloc["job_id"]), {"gpus": len(alloc["nodes"]) * gpn})
        if not alloc.get("reused_from"):
            job["start"] = ts(alloc["start_time"])
        teardown = json.loads((point_dir / "teardown.json").read_text())
        if teardown.get("cancelled_job") is not None:
            job["end"] = ts(teardown["at"])
        manifest_path = point_dir / "manifest.json"
        parts[point_dir.name] = measured_parts(json.loads(manifest_path.read_text()),
                                               manifest_path)
    hours = sum(j["gpus"] * (j["end"] - j["start"]) / 3600 for j in jobs.values())
    return {"gpu_hours": hours, "jobs": jobs, "parts": parts}


def cost(args) -> int:
    """--cost: the EP48 p1-p3 sweep one allocation per point and on shared servers."""
    sys.path.insert(0, str(REPO / "src"))
    from pdbench import config as pdconfig
    from pdbench.estimate import estimate

    root = (args.workdir or Path(tempfile.mkdtemp(prefix="pdbench-cost-",
                                                  dir="/var/tmp"))).resolve()
    runs = {}
    for mode, share in (("one allocation per point", False), ("shared servers", True)):
        workdir = root / ("shared" if share else "fresh")
        if (workdir / "results" / "ep48" / "report.html").exists():
            wall = None  # this sweep ran to the end before: its records are read again
        elif args.analyse is None:
            setup(workdir, True, False, cost_config(args.server_startup_s, share))
            if share:
                # What the estimate predicts for sharing from the runs one allocation per
                # point measured (their manifests), before the shared sweep runs.
                cfg = pdconfig.validate(_merged_config(workdir))
                runs["predicted"] = estimate(cfg, root / "fresh" / "results")
            wall = run_chain(workdir, "ep48", args.hf_online)
        else:
            wall = None
        runs[mode] = {**allocation_cost(workdir, "ep48"), "wall_s": wall}
    if "predicted" not in runs:
        cfg = pdconfig.validate(_merged_config(root / "shared"))
        runs["predicted"] = estimate(cfg, root / "fresh" / "results")
    per_point, shared = runs["one allocation per point"], runs["shared servers"]
    gpus = max(j["gpus"] for j in shared["jobs"].values())
    parts = shared["parts"]
    startup = parts["p1"]["startup"]
    measuring = sum(p["fill"] + p["profiles"] for p in parts.values())
    bound = gpus * (startup + measuring) / 3600
    print(f"working directory: {root}; emulator start-up {args.server_startup_s:g} s")
    for name, p in per_point["parts"].items():
        print(f"  {name} one allocation per point: start-up {p['startup']:.0f} s, fill "
              f"{p['fill']:.0f} s, profiles {p['profiles']:.0f} s, teardown "
              f"{p['teardown']:.0f} s")
    for mode in ("one allocation per point", "shared servers"):
        run = runs[mode]
        wall = "" if run["wall_s"] is None else f", wall {run['wall_s']:.0f} s"
        print(f"{mode:<26} {run['gpu_hours']:8.3f} GPU-hours ({len(run['jobs'])} "
              f"allocation(s)){wall}")
    print(f"{'lower bound':<26} {bound:8.3f} GPU-hours (one start-up of {gpus} GPUs, "
          f"{startup:.0f} s, + fill and profiles of every point, {measuring:.0f} s)")
    # The client's requests still running after the last snapshot end before any point
    # is done (its result needs them), on fresh and on shared servers alike: the drain
    # of a teardown or reset. The bound leaves it out; this one keeps it.
    drains = sum(p["teardown"] for p in per_point["parts"].values())
    bound_with_drain = gpus * (startup + measuring + drains) / 3600
    print(f"{'bound with the drains':<26} {bound_with_drain:8.3f} GPU-hours (+ each point's "
          f"drain of the client's last requests, {drains:.0f} s in all)")
    saving = 1 - shared["gpu_hours"] / per_point["gpu_hours"]
    ratio = shared["gpu_hours"] / bound
    print(f"shared / bound with the drains {shared['gpu_hours'] / bound_with_drain:.2f}")
    predicted = runs["predicted"]["shared"]["gpu_hours"]
    error = predicted / shared["gpu_hours"] - 1
    print(f"saving {saving:.1%} (goal >= 30%); shared / bound {ratio:.2f} (goal <= 1.15); "
          f"estimate {predicted:.3f} GPU-hours from the per-point runs, {error:+.1%} against "
          "the shared run (goal within 20%)")
    return 0


def _merged_config(workdir: Path) -> dict:
    """config.yaml, the rehearsal overlay and the bench's own, merged as Snakemake does."""
    merged: dict = {}

    def update(target: dict, extra: dict) -> None:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                update(target[key], value)
            else:
                target[key] = value

    for path in (REPO / "config" / "config.yaml", REPO / "config" / "rehearsal.yaml",
                 workdir / "bench-config.yaml"):
        update(merged, yaml.safe_load(path.read_text()) or {})
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ep48", action="store_true", help="the EP48 rehearsal (3 points)")
    parser.add_argument("--workdir", type=Path, help="working directory (default: a new one)")
    parser.add_argument("--analyse", type=Path, metavar="DIR",
                        help="only analyse this finished working directory")
    parser.add_argument("--hf-online", action="store_true",
                        help="leave HF_HUB_OFFLINE unset (the client then retries Hugging Face "
                             "look-ups for a minute when there is no network)")
    parser.add_argument("--startup-repeats", type=int, default=3)
    parser.add_argument("--exact-target", action="store_true",
                        help="the client sends exactly the target batch (workload.num_prompts "
                             "= max_running_requests) instead of the default (where decode "
                             "routes by the random bootstrap room, as the rehearsal's "
                             "0.5.5.post2 does, some rank then stays short and the fill "
                             "ends plateaued)")
    parser.add_argument("--cost", action="store_true",
                        help="GPU-hours and wall time of the EP48 p1-p3 sweep one allocation "
                             "per point and on shared servers, against the lower bound and "
                             "the estimate (with --analyse: of a finished --cost directory)")
    parser.add_argument("--server-startup-s", type=float, default=60.0,
                        help="with --cost: the emulator's start-up per server "
                             "(PDBENCH_EMULATOR_WARMUP_S; default 60 s, longer than a "
                             "point's fill and profiles)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the local Slurm cluster)")
    if args.cost:
        if args.analyse is not None:
            args.workdir = args.analyse
        return cost(args)
    experiment = "ep48" if args.ep48 else "ep8"
    if args.analyse:
        workdir, wall = args.analyse.resolve(), None
    else:
        if subprocess.call([str(REPO / "scripts" / "local-slurm"), "status"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) != 0:
            raise SystemExit("the local Slurm cluster is not up (scripts/local-slurm up)")
        workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="pdbench-bench-",
                                                         dir="/var/tmp"))).resolve()
        experiment = setup(workdir, args.ep48, args.exact_target)
        wall = run_chain(workdir, experiment, args.hf_online)
    cfg = json.loads((workdir / "results" / ".pdbench" / "config.json").read_text())
    first_point = sorted((workdir / "results" / experiment).glob("p*"))[0]
    model = cfg["model"]["served_model_name"] or cfg["model"]["path"]
    log(f"measuring the client start-up ({args.startup_repeats} launches against a stub)")
    startups = client_startup(workdir, first_point, model, args.hf_online, args.startup_repeats)
    startup = statistics.median(t for _, t in startups)
    imports = statistics.median(i for i, _ in startups)

    print(f"working directory: {workdir}")
    if wall is not None:
        print(f"whole chain (snakemake to report.html): {wall:.1f} s")
    print(f"held client against a stub [{'HF online' if args.hf_online else 'HF_HUB_OFFLINE=1'}]"
          f": launch -> armed and imported {', '.join(f'{i:.2f}' for i, _ in startups)} s "
          f"(median {imports:.2f} s, hidden behind the servers' start); start signal -> first "
          f"request {', '.join(f'{t:.2f}' for _, t in startups)} s (median {startup:.2f} s, "
          "in the bound)")
    ratios, delivered_ratios = [], []
    for row in analyse(workdir, experiment, startup):
        print(f"\n{experiment}/{row['point']}: {row['prefill_groups']} prefill group(s), "
              f"target batch {row['target']}, slow_down {row['sleep_s']:g} s per forward")
        print("  lower bound:")
        for name, value in row["bound"].items():
            print(f"    {name:<58} {value:8.2f} s")
        print(f"    {'total':<58} {row['bound_s']:8.2f} s")
        print("  measured, all servers ready -> first valid profile:")
        for name, value in row["stages"].items():
            print(f"    {name:<58} {value:8.2f} s")
        print(f"    {'total':<58} {row['actual_s']:8.2f} s")
        for name, value in row["aside"].items():
            print(f"    (in parallel: {name} {value:.2f} s)")
        ratio = row["actual_s"] / row["bound_s"]
        ratios.append(ratio)
        strict = row["bound_s"] - row["bound"]["client start (signal -> first request)"]
        print(f"  ratio {ratio:.2f} (target <= 1.20){'' if ratio <= 1.2 else '  ABOVE TARGET'}"
              f"; against the bound without the client's own start: "
              f"{row['actual_s'] / strict:.2f}")
        as_delivered = row["bound_s"] - row["bound"]["prefill supply"] + row["delivered_supply_s"]
        delivered_ratios.append(row["actual_s"] / as_delivered)
        print(f"  decode held {row['delivered']} requests (running + queued) when the last "
              f"rank reached its target; supplying those takes {row['delivered_supply_s']:.2f}"
              f" s: bound {as_delivered:.2f} s, ratio {row['actual_s'] / as_delivered:.2f}")
        # slow_down's own granularity: a batch admitted at the start of a forward is
        # logged only after that forward's sleep, and the release takes effect only when
        # the sleep under way ends.
        print(f"  of which slow_down granularity (up to 2 sleeps): {2 * row['sleep_s']:.2f} s")
    print(f"\nworst ratio {max(ratios):.2f}, median {statistics.median(ratios):.2f}; "
          f"against the supply of what decode held: worst {max(delivered_ratios):.2f}, "
          f"median {statistics.median(delivered_ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

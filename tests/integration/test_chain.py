"""The whole chain on the local Slurm cluster, and how it fails and resumes.

Each test runs Snakemake as a subprocess in a working directory of its own (a ``config``
link for the Snakefile's ``configfile:``, a profile made from ``profiles/rehearsal``,
``--snakefile`` pointing at the repository) on a small grid: EP8 decode on 2 nodes, one
1-node prefill group (``tests/data/configs/chain-small.yaml``), the SGLang emulator in
place of the servers and the real router and client from ``.venv-sglang``. Every test
has its own ``ports.shared_host_base`` from a free range and its own Slurm job-name
prefix; it only ever cancels Slurm jobs whose working directory is its own.

They need root and a local cluster that ``scripts/local-slurm status`` reports as up;
otherwise they are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from .helpers import local_slurm_skip_reason, port_free

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "data" / "configs"
VENV_BIN = REPO / ".venv" / "bin"
SGLANG_PYTHON = REPO / ".venv-sglang" / "bin" / "python"
TINY_MODEL = REPO / ".cache" / "tiny-model"
REHEARSAL_PROFILE = REPO / "profiles" / "rehearsal" / "config.yaml"
LOCAL_PROFILE = REPO / "profiles" / "local" / "config.yaml"
CLUSTER_DIR = Path(os.environ.get("PDBENCH_SLURM_DIR", "/var/tmp/pdbench-slurm"))
# Working directories live outside pytest's rotating basetemp (another pytest session
# on the machine may remove old basetemps while a chain still runs). A test's directory
# is removed when it passes, kept when it fails (and always with PDBENCH_KEEP_CHAIN=1).
CHAIN_TMP = Path(os.environ.get("PDBENCH_CHAIN_TMP", "/var/tmp"))
KEEP = os.environ.get("PDBENCH_KEEP_CHAIN") == "1"

EXPERIMENT, POINT = "ep8", "p1"
# chain-small.yaml: the emulator's step model and the decode server's shape.
STEP_BASE_MS, STEP_PER_REQ_MS = 50.0, 0.5
TARGET_PER_RANK, DECODE_RANKS, DECODE_GPUS, SNAPSHOTS = 4, 8, 8, 2
TARGET_GLOBAL = TARGET_PER_RANK * DECODE_RANKS
LAUNCH_RULES = ("allocation", "node_list", "prefill_server", "decode_server", "router")
RUN_TIMEOUT_S = 600
TRUTH_MARK = "emulator ground truth (test double, not a measurement): "
# chain-small.yaml leaves the preflight's probe out (its rule still records that it was
# skipped): the tests of the preflight, and the full chain, turn it on.
PREFLIGHT_ON = {"site": {"preflight": {"enabled": True}}}


# ------------------------------------------------------------------------------ setup


@pytest.fixture(scope="module", autouse=True)
def _cluster_up():
    reason = local_slurm_skip_reason(VENV_BIN / "snakemake", SGLANG_PYTHON, TINY_MODEL / "config.json")
    if reason:
        pytest.skip(reason)


_TAKEN_BASES: set[int] = set()




# Never a block here: the local cluster's daemons (16800), a second test cluster (26800)
# and the rehearsal's default shared_host_base block (31000).
_RESERVED = ((16800, 17300), (26800, 27300), (31000, 32110))


def free_port_base() -> int:
    """A ``ports.shared_host_base`` whose ports are free, below the ephemeral range.

    One point uses base + 0..9 and +90/+91 (prefill), +900..909 and +990/+991 (decode),
    +1000 (router) and +1001 (router metrics).
    """
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(200):
        base = rng.randrange(18000, 31000 - 1002, 10)
        if any(base <= hi and base + 1001 >= lo for lo, hi in _RESERVED):
            continue
        if any(abs(base - taken) <= 1001 for taken in _TAKEN_BASES):
            continue
        ports = [*range(base, base + 10), base + 90, base + 91, *range(base + 900, base + 910),
                 base + 990, base + 991, base + 1000, base + 1001]
        if all(port_free(p) for p in ports):
            _TAKEN_BASES.add(base)
            return base
    raise RuntimeError("no free port base between 18000 and 31000")


def _deep_update(target: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
    return target


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    return pids


def _proc_table() -> list[dict]:
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            raw = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        state = stat[stat.rindex(")") + 2:].split()[0]
        if state == "Z" or not raw:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        procs.append({"pid": int(entry.name), "argv": argv, "cwd": cwd})
    return procs


class Chain:
    """One Snakemake working directory on the local cluster, with its own ports."""

    def __init__(self, workdir: Path, name: str, overlays: list[str],
                 extra: dict | None = None, profile: Path = REHEARSAL_PROFILE) -> None:
        self.dir = workdir.resolve()
        self.name = name
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config").symlink_to(REPO / "config")
        self.base = free_port_base()
        override = {
            "site": {"python": str(SGLANG_PYTHON)},
            "model": {"path": str(TINY_MODEL), "tokenizer": str(TINY_MODEL)},
            "ports": {"shared_host_base": self.base},
        }
        _deep_update(override, extra or {})
        (self.dir / "test-config.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
        settings = yaml.safe_load(profile.read_text())
        settings["configfile"] = [str(CONFIGS / f) for f in overlays] + [
            str(self.dir / "test-config.yaml")]
        if settings.get("executor") == "slurm":
            settings["slurm-jobname-prefix"] = f"pdbt-{name}"
        (self.dir / "profile").mkdir()
        (self.dir / "profile" / "config.yaml").write_text(yaml.safe_dump(settings))
        self.runs = 0
        self.seen_jobs: set[str] = set()
        self.proc: subprocess.Popen | None = None

    # -- paths

    @property
    def results(self) -> Path:
        return self.dir / "results"

    @property
    def point(self) -> Path:
        return self.results / EXPERIMENT / POINT

    def fill_log(self) -> str:
        path = self.point / "logs" / "fill.log"
        return path.read_text() if path.exists() else ""

    # -- running Snakemake

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SLURM_") and k != "PDBENCH_ADOPT_JOB_ID"}
        env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        env["PYTHONUNBUFFERED"] = "1"
        # No network here: the client's Hugging Face look-ups fail at once, not after
        # a minute of retries.
        env["HF_HUB_OFFLINE"] = "1"
        conf = CLUSTER_DIR / "etc" / "slurm.conf"
        if conf.exists():
            env["SLURM_CONF"] = str(conf)
        return env

    def argv(self, *args: str) -> list[str]:
        return [str(VENV_BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                "--profile", str(self.dir / "profile"), *args]

    def start(self, *args: str) -> Path:
        self.runs += 1
        out = self.dir / f"snakemake-{self.runs}.out"
        with open(out, "wb") as fh:
            self.proc = subprocess.Popen(self.argv(*args), cwd=self.dir, env=self.env(),
                                         stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.out = out
        return out

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_snakemake()
            raise AssertionError(f"snakemake still running after {timeout:.0f} s:\n"
                                 + self.out.read_text()[-6000:]) from None
        self.proc = None
        self._note_jobs()
        return rc, self.out.read_text()

    def run(self, *args: str, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str, float]:
        start = time.monotonic()
        self.start(*args)
        rc, text = self.wait(timeout)
        return rc, text, time.monotonic() - start

    def kill_snakemake(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=20)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        self.proc = None

    def wait_for_fill_running(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while "client step" not in self.fill_log():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError("snakemake ended before the fill ran:\n"
                                     + self.out.read_text()[-6000:])
            if time.monotonic() > deadline:
                raise AssertionError(f"the fill did not start within {timeout} s:\n"
                                     + self.out.read_text()[-6000:])
            time.sleep(0.5)
        self._note_jobs()

    # -- what of this test lives

    def _note_jobs(self) -> None:
        alloc = self.point / "allocation.json"
        if alloc.exists():
            self.seen_jobs.add(str(json.loads(alloc.read_text())["job_id"]))
        for out in (self.point / "logs").glob("allocation-*.out"):
            self.seen_jobs.add(out.stem.split("-", 1)[1])

    def slurm_jobs(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T|%Z"], capture_output=True,
                             text=True, timeout=30, env=self.env()).stdout
        jobs = []
        for line in out.splitlines():
            job_id, name, state, workdir = (line.split("|") + ["", "", ""])[:4]
            mine = (job_id in self.seen_jobs or workdir == str(self.dir)
                    or workdir.startswith(f"{self.dir}/") or name.startswith(f"pdbt-{self.name}_"))
            if mine:
                jobs.append(f"{job_id} {name} {state}")
        return jobs

    def submitted_jobs(self) -> list[str]:
        """Every Slurm job accounting knows was submitted from this test's directory."""
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-a", "-S", "now-1days",
                              "-o", "JobID,WorkDir%400"], capture_output=True, text=True,
                             timeout=60, env=self.env()).stdout
        return sorted(job for job, _, workdir in (line.partition("|") for line in
                                                   out.splitlines())
                      if workdir == str(self.dir) or workdir.startswith(f"{self.dir}/"))

    def slurm_steps(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-s", "-o", "%i|%j"], capture_output=True,
                             text=True, timeout=30, env=self.env()).stdout
        steps = []
        for line in out.splitlines():
            step_id, _, name = line.partition("|")
            if step_id.split(".")[0] in self.seen_jobs:
                steps.append(f"{step_id} {name}")
        return steps

    def processes(self) -> list[str]:
        own = _ancestors()
        ports = range(self.base, self.base + 1002)
        found = []
        for proc in _proc_table():
            if proc["pid"] in own:
                continue
            text = " ".join(proc["argv"])
            in_dir = proc["cwd"] == str(self.dir) or proc["cwd"].startswith(f"{self.dir}/")
            server = any(k in text for k in ("pdbench.emulator", "sglang_router", "bench_serving",
                                             "srun"))
            numbers = re.findall(r"(?<!\d)(\d{4,5})(?!\d)", text)
            uses_port = server and any(int(p) in ports for p in numbers)
            if in_dir or str(self.dir) in text or uses_port:
                found.append(f"{proc['pid']} {text[:200]}")
        return found

    def leftovers(self) -> dict:
        self._note_jobs()
        return {"jobs": self.slurm_jobs(), "steps": self.slurm_steps(),
                "processes": self.processes()}

    def wait_clean(self, timeout: float = 30) -> dict:
        """Nothing of this test left; a cancelled job may take a moment to leave squeue."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.leftovers()
            if not any(left.values()) or time.monotonic() > deadline:
                return left
            time.sleep(1)

    def cleanup(self) -> None:
        """After a test, whatever happened: stop what this tree started."""
        self.kill_snakemake()
        if self.results.exists():
            subprocess.run([str(VENV_BIN / "pdbench"), "stop-all", "--results", "results",
                            "--reason", "test cleanup"], cwd=self.dir, env=self.env(),
                           capture_output=True, timeout=300)
        self._note_jobs()
        for job in self.slurm_jobs():
            subprocess.run(["scancel", job.split()[0]], env=self.env(), capture_output=True,
                           timeout=30)
        for proc in self.processes():
            try:
                os.kill(int(proc.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- results

    def rows(self) -> list[dict]:
        with open(self.results / EXPERIMENT / "throughput.csv", newline="") as fh:
            return list(csv.DictReader(fh))

    def ground_truth(self) -> dict[str, dict]:
        """The emulator's ground truth per profile id, from decode node 0's log."""
        truth = {}
        log = self.point / "logs" / "launch_server_decode_node_rank_0.log"
        for line in log.read_text().splitlines():
            if TRUTH_MARK in line:
                record = json.loads(line.split(TRUTH_MARK, 1)[1])
                truth[record["profile_id"]] = record
        return truth


def new_workdir(name: str) -> Path:
    CHAIN_TMP.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"pdbench-chain-{name}-", dir=CHAIN_TMP))


def finish(chains: list[Chain], failed: bool) -> None:
    for chain in chains:
        chain.cleanup()
        _TAKEN_BASES.discard(chain.base)
        if failed or KEEP:
            print(f"kept {chain.dir}")
        else:
            shutil.rmtree(chain.dir.parent if chain.dir.name == "run" else chain.dir,
                          ignore_errors=True)


@pytest.fixture
def make_chain(request):
    chains: list[Chain] = []
    failed_before = request.session.testsfailed

    def make(name: str, overlays=("chain-small.yaml",), extra: dict | None = None,
             profile: Path = REHEARSAL_PROFILE) -> Chain:
        chain = Chain(new_workdir(name) / "run", name, list(overlays), extra, profile)
        chains.append(chain)
        return chain

    yield make
    finish(chains, request.session.testsfailed > failed_before)


def jobs_run(text: str) -> dict[str, int]:
    """Jobs Snakemake ran (or would run), from its 'Job stats' table."""
    if "Job stats:" not in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    counts = {}
    for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M):
        if m[1] == "total":
            break
        counts[m[1]] = int(m[2])
    return counts


def assert_clean(chain: Chain, timeout: float = 30) -> None:
    left = chain.wait_clean(timeout)
    assert not any(left.values()), f"left running after the run: {json.dumps(left, indent=2)}"


def assert_ground_truth(chain: Chain) -> None:
    rows = chain.rows()
    assert len(rows) == SNAPSHOTS, rows
    step_ms = STEP_BASE_MS + STEP_PER_REQ_MS * TARGET_PER_RANK
    tokens = TARGET_GLOBAL / (step_ms / 1000) / DECODE_GPUS
    truth = chain.ground_truth()
    for row in rows:
        assert row["point"] == POINT and int(row["ep"]) == 8, row
        assert int(row["global_batch"]) == int(row["target_global_batch"]) == TARGET_GLOBAL, row
        assert int(row["rank_batch_min"]) == int(row["rank_batch_max"]) == TARGET_PER_RANK, row
        assert int(row["ranks"]) == DECODE_RANKS and int(row["decode_gpus"]) == DECODE_GPUS, row
        assert float(row["step_ms"]) == pytest.approx(step_ms, rel=0.005), row
        assert float(row["tokens_per_s_per_gpu"]) == pytest.approx(tokens, rel=0.005), row
        assert row["fill_ended_by"] == "reached", row
        assert not row["flags"], row
        # The emulator's own record of the profiled steps agrees.
        steps = truth[row["profile_id"]]["steps"]
        assert all(sum(s["batch"]) == TARGET_GLOBAL for s in steps), steps
        model_step = sum(s["forward_ms"] + s["sleep_ms"] for s in steps) / len(steps)
        assert float(row["step_ms"]) == pytest.approx(model_step, rel=0.005)
        assert float(row["tokens_per_s_per_gpu"]) == pytest.approx(
            TARGET_GLOBAL / (model_step / 1000) / DECODE_GPUS, rel=0.005)


def decode_node_pid(chain: Chain, rank: int) -> int:
    """The emulator process of decode node ``rank`` of this test (by its ports)."""
    ports = {str(p) for p in range(chain.base + 900, chain.base + 910)}
    found = [p["pid"] for p in _proc_table()
             if "pdbench.emulator" in p["argv"] and "decode" in p["argv"]
             and "--node-rank" in p["argv"]
             and p["argv"][p["argv"].index("--node-rank") + 1] == str(rank)
             and "--port" in p["argv"] and p["argv"][p["argv"].index("--port") + 1] in ports]
    assert len(found) == 1, f"decode node rank {rank} of port base {chain.base}: {found}"
    return found[0]


def swept(text: str) -> set[str]:
    return {m.split(f"/{POINT}/", 1)[-1] for m in
            re.findall(r"pdbench: stale marker (\S+): what it describes is gone", text)}


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def completed(request):
    """One full small chain, shared by the tests that only read its tree."""
    failed_before = request.session.testsfailed
    chain = Chain(new_workdir("full") / "run", "full", ["chain-small.yaml"], PREFLIGHT_ON)
    try:
        rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
        left = chain.wait_clean()
        yield chain, rc, text, wall, left
    finally:
        finish([chain], request.session.testsfailed > failed_before)


def test_full_chain_matches_ground_truth_and_leaves_nothing(completed):
    chain, rc, text, wall, left = completed
    assert rc == 0, text[-8000:]
    print(f"full chain: {wall:.0f} s")
    assert (chain.results / EXPERIMENT / "report.html").stat().st_size > 0
    assert_ground_truth(chain)
    released = json.loads((chain.point / "fill" / "released.json").read_text())
    assert released["fill_ended_by"] == "reached"
    assert released["global_running_req"] == TARGET_GLOBAL
    teardown = json.loads((chain.point / "teardown.json").read_text())
    alloc = json.loads((chain.point / "allocation.json").read_text())
    assert teardown["cancelled_job"] == alloc["job_id"]
    assert len(teardown["stopped_steps"]) == 4  # prefill-1, decode, router, client
    assert not any(left.values()), f"left running: {json.dumps(left, indent=2)}"
    # Every stage runs where Snakemake runs: the servers, router and client are steps of
    # the point's holder job, and the analysis reads stored files. A job the executor
    # submitted would parse the Snakefile on a node and must not sweep the tree.
    slurm_logs = list((chain.dir / ".snakemake" / "slurm_logs").rglob("*.log"))
    for log in slurm_logs:
        assert "stale marker" not in log.read_text(), log
    preflight = json.loads((chain.results / EXPERIMENT / "preflight.json").read_text())
    assert not preflight["adopted"]
    assert chain.submitted_jobs() == sorted([str(alloc["job_id"]), str(preflight["job_id"])]), \
        "only the preflight's and the holder job are Slurm's"
    assert (chain.point / "allocation.json").exists()


def test_render_shows_exactly_what_ran(completed, monkeypatch):
    """`pdbench render` for the allocation the point had prints the launcher scripts and
    srun lines the stages wrote and ran, byte for byte."""
    from pdbench import config as config_mod
    from pdbench import topology
    from pdbench.render import render_point

    chain = completed[0]
    monkeypatch.chdir(chain.dir)
    cfg = config_mod.load(chain.results / ".pdbench" / "config.json")
    alloc = json.loads((chain.point / "allocation.json").read_text())
    sections = render_point(cfg, EXPERIMENT, POINT, topology.expand_nodelist(alloc["nodelist"]),
                            job_id=alloc["job_id"], addresses=alloc["addresses"])
    by_title = {s["title"]: s["text"] for s in sections}
    compared = 0
    for server in ("prefill-1", "decode", "router", "client"):
        script = next(t for title, t in by_title.items()
                      if title.startswith(f"{server}: launcher script"))
        assert script == (chain.point / "commands" / f"{server}.sh").read_text(), server
        srun = next(t for title, t in by_title.items()
                    if title.startswith(f"{server}: Slurm step"))
        assert (chain.point / "commands" / f"{server}.srun.sh").read_text() == \
            f"#!/usr/bin/env bash\n{srun}\n", server
        compared += 2
    assert compared == 8


def _installed(package: str) -> str:
    """A package's version in the interpreter the servers, router and client ran with."""
    return subprocess.run([str(SGLANG_PYTHON), "-c", "import importlib.metadata as m, sys; "
                           f"print(m.version({package!r}))"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_manifest_records_what_ran_and_its_cost(completed):
    """The point's manifest: versions as the running servers and the launched Pythons
    reported them, the Slurm job and steps, stage times whose GPU-hours agree with Slurm
    accounting, and the sha256 of each raw file."""
    import hashlib

    chain = completed[0]
    manifest = json.loads((chain.point / "manifest.json").read_text())
    cfg = manifest["config"]
    servers = manifest["sglang"]["servers"]
    assert servers["decode"]["version"] == cfg["sglang"]["version"]  # /get_server_info
    assert servers["decode"]["server_args"]["tp_size"] == DECODE_RANKS
    assert servers["client"]["packages"]["packages"]["sglang"] == _installed("sglang")
    assert servers["router"]["packages"]["packages"]["sglang-router"] == \
        _installed("sglang-router")
    alloc = json.loads((chain.point / "allocation.json").read_text())
    assert manifest["slurm"]["job_id"] == alloc["job_id"]
    assert set(manifest["slurm"]["steps"]) == {"prefill-1", "decode", "router", "client"}
    assert manifest["emulated"] is True
    stages = manifest["stages"]
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in stages), stages
    gpus = 3 * 4  # chain-small: 3 nodes of 4 GPUs
    assert all(s["gpus"] == gpus for s in stages)
    hours = manifest["gpu_hours"]
    assert hours["sacct"]["gpus"] == gpus, hours
    # The holder job runs from its start to the teardown's cancel: both figures agree.
    assert hours["from_sacct"] == pytest.approx(hours["from_stage_records"], rel=0.25, abs=2e-3)
    for name, digest in manifest["files_sha256"].items():
        assert hashlib.sha256((chain.point / name).read_bytes()).hexdigest() == digest, name
    assert any(n.endswith(".trace.json.gz") for n in manifest["files_sha256"])


def test_rerun_config_reruns_exactly_that_point(completed, monkeypatch, tmp_path):
    """The config `pdbench rerun-config` writes from the manifest validates to one point
    and, on the allocation the point had, renders byte for byte what ran."""
    from pdbench import config as config_mod
    from pdbench import topology
    from pdbench.render import render_point

    chain = completed[0]
    monkeypatch.chdir(chain.dir)
    out = tmp_path / "rerun.yaml"
    proc = subprocess.run([str(VENV_BIN / "pdbench"), "rerun-config",
                           str(chain.point / "manifest.json"), "--out", str(out)],
                          capture_output=True, text=True, env=chain.env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = config_mod.validate(yaml.safe_load(out.read_text()), source=str(out))
    assert [(p.experiment, p.name) for p in config_mod.grid_points(cfg)] == [
        (EXPERIMENT, POINT)]
    alloc = json.loads((chain.point / "allocation.json").read_text())
    sections = render_point(cfg, EXPERIMENT, POINT, topology.expand_nodelist(alloc["nodelist"]),
                            job_id=alloc["job_id"], addresses=alloc["addresses"])
    commands = json.loads((chain.point / "manifest.json").read_text())["commands"]
    for server in ("prefill-1", "decode", "router", "client"):
        script = next(s["text"] for s in sections
                      if s["title"].startswith(f"{server}: launcher script"))
        assert script == commands[server]["launcher"], server


def test_report_opens_offline_in_a_browser_with_every_plot(completed, tmp_path):
    """Headless Chromium: the page loads nothing but itself, logs no error, draws every
    plot and says it is emulated; a screenshot is left for people to look at."""
    import importlib.util

    from .helpers import skip_or_fail

    if shutil.which("chromium") is None or importlib.util.find_spec("playwright") is None:
        skip_or_fail("the browser test needs Debian's chromium and the playwright package")
    from playwright.sync_api import sync_playwright

    page_path = completed[0].results / EXPERIMENT / "report.html"
    requests, problems = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"),
                                     args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(page_path.as_uri())
            plots = page.locator("svg.plot")
            assert plots.count() == 5
            for i in range(plots.count()):
                box = plots.nth(i).bounding_box()
                assert box and box["width"] > 200 and box["height"] > 100, i
                assert plots.nth(i).locator("path, line, rect, use").count() > 5, i
                assert "emulated" in plots.nth(i).inner_html()
            assert "emulated" in page.title()
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"report screenshot: {shot} ({page_path.stat().st_size} bytes page)")
        finally:
            browser.close()
    assert requests == [page_path.as_uri()], requests
    assert problems == [], problems
    assert shot.stat().st_size > 50_000


def test_report_bundle_archives_pages_tables_manifests_and_plots(completed, make_chain):
    import zipfile

    source = completed[0]
    assert completed[1] == 0, "the full chain failed"
    chain = make_chain("bundle")
    shutil.rmtree(chain.dir)
    shutil.copytree(source.dir, chain.dir, symlinks=True,
                    ignore=shutil.ignore_patterns("snakemake-*.out", "locks", "incomplete"))
    before = tree_state(chain.results)
    bundle = chain.results / EXPERIMENT / "report.zip"
    rc, text, _ = chain.run("--report", str(bundle), f"results/{EXPERIMENT}/report.html")
    assert rc == 0, text[-6000:]
    names = zipfile.ZipFile(bundle).namelist()
    for wanted in ("report.html", "throughput.csv", "manifest.json", "throughput.svg",
                   "fill-curves.svg"):
        assert any(n.endswith("/" + wanted) for n in names), (wanted, names)
    after = tree_state(chain.results)
    after.pop(str(bundle.relative_to(chain.results)))
    for state in (before, after):  # the zip's directory got an entry: its mtime moves
        state.pop(EXPERIMENT)
    assert after == before, "snakemake --report changed the results tree"


# The router generations besides chain-small's default (sglang-router's Rust router, which
# the full chain above runs), by their chain overlay: (overlay, the router's package as its
# launched Python reported it, whether it runs as MiniLB).
ROUTER_CHAINS = [
    pytest.param("chain-smg.yaml", "smg", False, id="smg"),
    pytest.param("chain-minilb.yaml", "sglang-router", True, id="sglang-router-minilb"),
]


def assert_router_and_client(chain: Chain, package: str, mini_lb: bool,
                             client_python: str) -> dict:
    """The point ran the configured router and client: their launcher scripts, the versions
    their interpreters reported, and the manifest's record of them; returns the
    manifest's client entry."""
    router_script = (chain.point / "commands" / "router.sh").read_text()
    assert f"-m {package.replace('-', '_')}.launch_router" in router_script, router_script
    assert ("--mini-lb" in router_script) == mini_lb, router_script
    client_script = (chain.point / "commands" / "client.sh").read_text()
    assert f"exec {client_python} -c " in client_script, client_script
    manifest = json.loads((chain.point / "manifest.json").read_text())
    reported = manifest["sglang"]["servers"]
    assert reported["router"]["packages"]["packages"][package] == _installed(package)
    client_log = (chain.point / "logs" / "bench_client_node_rank_0.log").read_text()
    assert "pdbench-client-gate: released" in client_log, client_log[-3000:]
    return reported["client"]


@pytest.mark.parametrize("overlay, package, mini_lb", ROUTER_CHAINS)
def test_bench_serving_through_each_router_generation(make_chain, overlay, package, mini_lb):
    """bench_serving through every router generation: the ground truth, a clean finish."""
    chain = make_chain(f"serving-{package}{'-minilb' * mini_lb}",
                       overlays=("chain-small.yaml", overlay))
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"bench_serving through {package}{' MiniLB' * mini_lb}: {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert_ground_truth(chain)
    assert_clean(chain)
    client = assert_router_and_client(chain, package, mini_lb, str(SGLANG_PYTHON))
    assert client["packages"]["packages"]["sglang"] == _installed("sglang")
    bench = json.loads((chain.point / "bench" / "bench.jsonl").read_text().splitlines()[-1])
    assert bench["completed"] == bench["total_output_tokens"] // 64 > 0  # chain-small: 64


# The configured release's own bench_one_batch_server (0.5.5.post2, which reads
# /get_server_info) from the interpreter scripts/sglang-release-python wrote; the overlays
# name it relative to the repository, the chain runs elsewhere.
RELEASE_PYTHON = REPO / ".cache" / "sglang-release-python" / "0.5.5.post2" / "bin" / "python"
SHAREGPT = TINY_MODEL / "sharegpt.json"


@pytest.mark.parametrize("router", ["smg", "minilb"])
def test_bench_one_batch_server_of_the_configured_release_through_each_router(make_chain,
                                                                              router):
    """bench_one_batch_server of 0.5.5.post2 through smg and MiniLB: its one list-form
    request fills every decode rank to the target under /slow_down, the fill releases, the
    snapshots measure the ground truth, the client's whole batch completes, and its
    interpreter reported the release it ran; nothing is left."""
    if not RELEASE_PYTHON.exists() or not SHAREGPT.exists():
        pytest.fail(f"{RELEASE_PYTHON} or {SHAREGPT} missing: run scripts/setup")
    chain = make_chain(f"one-batch-{router}",
                       overlays=("chain-small.yaml", f"chain-one-batch-{router}.yaml"),
                       extra={"workload": {"python": str(RELEASE_PYTHON),
                                           "dataset_path": str(SHAREGPT)}})
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"bench_one_batch_server 0.5.5.post2 through {router}: {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert_ground_truth(chain)
    assert_clean(chain)
    package, mini_lb = ("smg", False) if router == "smg" else ("sglang-router", True)
    client = assert_router_and_client(chain, package, mini_lb, str(RELEASE_PYTHON))
    assert client["packages"]["packages"]["sglang"] == "0.5.5.post2"
    bench = json.loads((chain.point / "bench" / "bench.jsonl").read_text().splitlines()[-1])
    # chain-small's default batch: the prompts that fill all 8 ranks to 4 with
    # probability 0.99999 (0.5.5.post2 decode routes by the random bootstrap room).
    released = json.loads((chain.point / "fill" / "released.json").read_text())
    assert released["fill_ended_by"] == "reached"
    assert released["global_running_req"] == TARGET_GLOBAL
    assert bench["batch_size"] >= 2 * TARGET_GLOBAL
    assert (bench["input_len"], bench["output_len"]) == (64, 64)
    row = chain.rows()[0]
    assert int(row["client_completed"]) == bench["batch_size"], row


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``root``: (size, mtime_ns); what a change shows."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1,
                                        p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_eplb_none_static_online_runs_to_the_end(make_chain):
    """The recording pass of p1 feeds p1-eplb_static's decode; online rebalances before its
    snapshots; balancing shortens the emulator's step by its imbalance model."""
    from pdbench.balance import balance, read_dump
    from pdbench.emulator.experts import moe_imbalance

    chain = make_chain("eplb", overlays=("chain-small.yaml", "chain-eplb.yaml"))
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    assert rc == 0, text[-8000:]
    print(f"eplb chain: {wall:.0f} s")
    ran = jobs_run(text)
    assert ran["expert_record_start"] == ran["expert_dump"] == 1, ran
    assert ran["allocation"] == 3, ran
    exp = chain.results / EXPERIMENT
    dump_path = exp / "eplb" / "expert_distribution.pt"
    recording = json.loads((exp / "eplb" / "recording.json").read_text())
    assert recording["point"] == "p1" and recording["file"] == str(dump_path.relative_to(chain.dir))
    dump = read_dump(dump_path)
    assert dump.format == "sglang .pt (stat)" and dump.logical_count.sum() > 0
    assert 0 < balance(dump, ep=8)["balancedness"] < 1
    scripts = "\n".join(p.read_text() for p in (exp / "p1-eplb_static" / "commands").glob("*"))
    assert f"--init-expert-location {dump_path.resolve()}" in scripts
    for point in ("p1", "p1-eplb_online"):
        assert "--init-expert-location" not in "\n".join(
            p.read_text() for p in (exp / point / "commands").glob("*"))
    online_log = exp / "p1-eplb_online" / "logs" / "launch_server_decode_node_rank_0.log"
    assert "[EPLBManager] rebalance end" in online_log.read_text()
    snapshot = json.loads((exp / "p1-eplb_online" / "profile" / "1" / "snapshot.json").read_text())
    assert isinstance(snapshot["eplb_rebalance_overlap"], bool)
    step = STEP_BASE_MS + STEP_PER_REQ_MS * TARGET_PER_RANK
    # Against the trivial placement of the same physical experts: the decode command's
    # --ep-num-redundant-experts (the default config's 32, unless eplb.redundant_experts).
    redundant = int(re.findall(r"--ep-num-redundant-experts (\d+)", scripts)[-1])
    factor = 0.5 + 0.5 * (moe_imbalance(str(TINY_MODEL), DECODE_GPUS, True, redundant)
                          / moe_imbalance(str(TINY_MODEL), DECODE_GPUS, False, redundant))
    assert factor < 0.97
    expected = {"p1": step, "p1-eplb_static": step * factor, "p1-eplb_online": step * factor}
    rows = chain.rows()
    assert {r["point"] for r in rows} == set(expected), rows
    for row in rows:
        assert float(row["step_ms"]) == pytest.approx(expected[row["point"]], rel=0.005), row
    assert_clean(chain)
    page = (exp / "report.html").read_text()
    assert "EPLB: none vs static vs online (ep8)" in page
    assert (exp / "figures" / "expert-load.svg").exists()
    # Done means done: a second dry run neither records nor relaunches anything.
    proc = subprocess.run(chain.argv("-n", f"results/{EXPERIMENT}/report.html"), cwd=chain.dir,
                          env=chain.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not jobs_run(proc.stdout + proc.stderr), proc.stdout[-4000:]


def test_shared_servers_start_once_and_measure_what_fresh_servers_measure(make_chain):
    """site.share_servers: p1 and p2 run in one allocation on servers started once; every
    row equals the emulator's ground truth, and p2 on shared servers equals p2 measured on
    fresh servers."""
    shared = make_chain("share", overlays=("chain-small.yaml", "chain-share.yaml"))
    rc, text, wall = shared.run(f"results/{EXPERIMENT}/report.html")
    assert rc == 0, text[-8000:]
    print(f"shared-servers chain: {wall:.0f} s")
    exp = shared.results / EXPERIMENT
    # one holder job, one decode start, both prefill groups started by p1's run
    allocations = [json.loads((exp / p / "allocation.json").read_text()) for p in ("p1", "p2")]
    assert allocations[0]["job_id"] == allocations[1]["job_id"]
    assert allocations[1]["reused_from"] == f"{EXPERIMENT}/p1"
    assert len(allocations[0]["nodes"]) == 4
    decode_log = (exp / "p1" / "logs" / "launch_server_decode_node_rank_0.log").read_text()
    assert decode_log.count("The server is fired up and ready to roll!") == 1
    assert not list((exp / "p2" / "logs").glob("launch_server_*"))
    assert not [p for p in (exp / "p2" / "commands").glob("*") if "router" not in p.name
                and "client" not in p.name]
    for server in ("decode", "prefill-1", "prefill-2"):
        marker = json.loads((exp / "p2" / "ready" / f"{server}.json").read_text())
        assert marker["shared_from"] == f"{EXPERIMENT}/p1", marker
    # p1's router had group 1 only; p2's both
    routers = {p: json.loads((exp / p / "ready" / "router.json").read_text())
               for p in ("p1", "p2")}
    assert len(routers["p1"]["prefill"]) == 1 and len(routers["p2"]["prefill"]) == 2
    # the reset between the points: decode empty, every cache flushed
    reset = json.loads((exp / "p1" / "teardown.json").read_text())["reset"]
    assert reset["servers"] == ["prefill-1", "prefill-2", "decode"]
    assert reset["decode_log_flushed_records"] >= 1
    assert "Cache flushed successfully!" in decode_log
    manifest = json.loads((exp / "p2" / "manifest.json").read_text())
    assert manifest["shared_servers"]["servers_started_by"] == f"{EXPERIMENT}/p1"
    assert manifest["shared_servers"]["reset_before_fill"]["rounds"] >= 1
    assert json.loads((exp / "p1" / "manifest.json").read_text())["shared_servers"][
        "idle_prefill"] == ["prefill-2"]
    # every row is the emulator's ground truth (the profile ids of both points are in
    # p1's decode log)
    step_ms = STEP_BASE_MS + STEP_PER_REQ_MS * TARGET_PER_RANK
    truth = shared.ground_truth()
    rows = shared.rows()
    assert sorted(r["point"] for r in rows) == ["p1"] * SNAPSHOTS + ["p2"] * SNAPSHOTS
    for row in rows:
        assert int(row["global_batch"]) == TARGET_GLOBAL, row
        assert float(row["step_ms"]) == pytest.approx(step_ms, rel=0.005), row
        steps = truth[row["profile_id"]]["steps"]
        model_step = sum(s["forward_ms"] + s["sleep_ms"] for s in steps) / len(steps)
        assert float(row["step_ms"]) == pytest.approx(model_step, rel=0.005), row
        assert row["fill_ended_by"] == "reached" and not row["flags"], row
    assert_clean(shared)
    # the same point on fresh servers
    fresh = make_chain("fresh", extra={"grid": {"prefill_groups": [2]}})
    rc, text, _ = fresh.run(f"results/{EXPERIMENT}/report.html")
    assert rc == 0, text[-8000:]
    fresh_rows = [r for r in fresh.rows() if r["point"] == "p2"]
    shared_rows = [r for r in rows if r["point"] == "p2"]
    for a, b in zip(shared_rows, fresh_rows, strict=True):
        for key in ("global_batch", "rank_batch_min", "rank_batch_max", "ranks"):
            assert a[key] == b[key], (a, b)
        assert float(a["step_ms"]) == pytest.approx(float(b["step_ms"]), rel=0.005)
        assert float(a["tokens_per_s_per_gpu"]) == pytest.approx(
            float(b["tokens_per_s_per_gpu"]), rel=0.005)
    assert_clean(fresh)


def test_dry_run_and_lint_on_a_live_tree_change_nothing(make_chain):
    """Servers of a point run (the run stopped after the router); one decode node dies.
    `snakemake -n`, `--lint`, `--summary` and `--unlock` then show what would run again,
    and change no file, directory, Slurm step or process."""
    chain = make_chain("dryrun")
    target = f"results/{EXPERIMENT}/report.html"
    # The servers and the router only (the router's marker as the target).
    rc, text, _ = chain.run(f"results/{EXPERIMENT}/{POINT}/ready/router.json")
    assert rc == 0, text[-6000:]
    decode = json.loads((chain.point / "ready" / "decode.json").read_text())
    os.kill(decode_node_pid(chain, 1), signal.SIGKILL)
    deadline = time.monotonic() + 60  # node 0 notices the lost node and the step ends
    while any(s.startswith(f"{decode['step_id']} ") for s in chain.slurm_steps()):
        assert time.monotonic() < deadline, chain.slurm_steps()
        time.sleep(1)
    before = (tree_state(chain.dir / "results"), chain.slurm_steps(), chain.slurm_jobs(),
              sorted(chain.processes()))
    assert before[1], "the other servers' steps should still run"
    outputs = {}
    for mode in (["-n", target], ["--lint"], ["--summary", target], ["--unlock"]):
        proc = subprocess.run(chain.argv(*mode), cwd=chain.dir, env=chain.env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs[mode[0]] = proc.stdout + proc.stderr
        after = (tree_state(chain.dir / "results"), chain.slurm_steps(), chain.slurm_jobs(),
                 sorted(chain.processes()))
        assert after == before, f"snakemake {' '.join(mode)} changed something"
    dry = outputs["-n"]
    assert f"stale marker results/{EXPERIMENT}/{POINT}/ready/decode.json" in dry
    # The DAG sees what a real run will: the servers start again.
    assert "decode_server:" in dry and "router:" in dry, dry[-4000:]


def test_preflight_names_every_problem_before_any_allocation(make_chain):
    """Eight problems at once: one run of the preflight names each, with what to change,
    and no allocation is ever requested. Fixed, it passes; unchanged, it is reused; a
    launch setting changed, only the preflight reruns."""
    held = socket.socket()
    chain = make_chain("preflight", extra={
        "site": {"secret_env": ["PDBENCH_TEST_ABSENT_SECRET"],
                 # Slurm cannot place 3 nodes outside node01-17; the 1-node job can.
                 "sbatch_extra": ["--exclude=node[01-17]"],
                 "preflight": {"enabled": True,
                               "gpu_list_command": ["printf", "GPU 0: emulated\\n"],
                               "ib_devices": ["mlx5_missing"]}},
        "model": {"architecture": "Qwen3MoeForCausalLM"},
        "env": {"common": {"PDBENCH_EMULATOR_SGLANG_VERSION": "0.5.8"}},
    })
    try:
        held.bind(("0.0.0.0", chain.base + 900))  # decode node 0's HTTP port
        held.listen()
        rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    finally:
        held.close()
    assert rc != 0
    log = (chain.results / EXPERIMENT / "logs" / "preflight.log").read_text()
    for check, words in [
        ("secrets", "PDBENCH_TEST_ABSENT_SECRET"),
        ("secrets_on_node", "PDBENCH_TEST_ABSENT_SECRET"),
        ("sbatch_test_only:3_nodes", "3 nodes"),
        ("sglang_version", "SGLang here is 0.5.8, the config says 0.5.5.post2"),
        ("model", "the config says Qwen3MoeForCausalLM"),
        ("gpus", "lists 1 GPU(s)"),
        ("ib_devices", "mlx5_missing"),
        ("ports", str(chain.base + 900)),
    ]:
        line = next((ln for ln in log.splitlines() if ln.strip().startswith(check + ":")), "")
        assert words in line and " -> " in line, f"{check}: {line!r}\n{log}"
    assert "Traceback" not in log
    assert not (chain.results / EXPERIMENT / "preflight.json").exists()
    assert not (chain.point / "allocation.json").exists()
    names = subprocess.run(["sacct", "-n", "-X", "-P", "-a", "-S", "now-1days", "-o",
                            "JobID,JobName%200,WorkDir%400"], capture_output=True, text=True,
                           timeout=60, env=chain.env()).stdout
    mine = [ln.split("|")[1] for ln in names.splitlines() if str(chain.dir) in ln]
    assert mine == [f"pdbench-{EXPERIMENT}-preflight"], mine
    assert_clean(chain)

    (chain.dir / "test-config.yaml").write_text(yaml.safe_dump({
        "site": {"python": str(SGLANG_PYTHON)},
        "model": {"path": str(TINY_MODEL), "tokenizer": str(TINY_MODEL),
                  "architecture": "DeepseekV3ForCausalLM"},
        "ports": {"shared_host_base": chain.base}}))
    target = f"results/{EXPERIMENT}/preflight.json"
    rc, text, _ = chain.run(target)
    assert rc == 0, text[-4000:]
    record = json.loads((chain.results / EXPERIMENT / "preflight.json").read_text())
    assert not [c for c in record["checks"] if c["status"] == "failed"]
    rc, text, _ = chain.run(target)
    assert rc == 0 and "Nothing to be done" in text, text[-3000:]
    more = chain.dir / "more.yaml"
    more.write_text(yaml.safe_dump({"env": {"decode": {"PDBENCH_TEST_KNOB": 1}}}))
    configs = yaml.safe_load((chain.dir / "profile" / "config.yaml").read_text())["configfile"]
    proc = subprocess.run(chain.argv("-n", target, "--configfile", *configs, str(more)),
                          cwd=chain.dir, env=chain.env(), capture_output=True, text=True,
                          timeout=300)
    assert jobs_run(proc.stdout + proc.stderr) == {"preflight": 1}, proc.stdout[-3000:]
    assert "Params have changed" in proc.stdout + proc.stderr


def test_dead_decode_node_fails_fast_then_rerun_completes(make_chain):
    chain = make_chain("deadnode", overlays=("chain-small.yaml", "chain-slow-fill.yaml"))
    chain.start(f"results/{EXPERIMENT}/report.html")
    chain.wait_for_fill_running()
    alloc = json.loads((chain.point / "allocation.json").read_text())
    decode = json.loads((chain.point / "ready" / "decode.json").read_text())
    old_steps = {p.stem: json.loads(p.read_text())["step_id"]
                 for p in (chain.point / "ready").glob("*.json")}
    victim = decode_node_pid(chain, 1)
    time.sleep(2)  # a little into the fill
    assert "fill ended" not in chain.fill_log()
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    rc, text = chain.wait(timeout=60)
    took = time.monotonic() - killed_at
    print(f"dead decode node: snakemake exited {took:.1f} s after the kill")
    assert rc != 0
    assert took < 60
    assert "Error in rule fill" in text
    assert "decode" in chain.fill_log()
    dead_node = decode["nodes"][1]
    assert re.search(rf"decode \(Slurm step {re.escape(decode['step_id'])}.*stopped running",
                     text), text[-6000:]
    assert dead_node in text, f"the failure does not name node {dead_node}"
    assert_clean(chain)
    logs = chain.point / "logs"
    for name in ("fill.log", "launch_server_decode_node_rank_0.log",
                 "launch_server_decode_node_rank_1.log",
                 "launch_server_prefill-1_node_rank_0.log", "router_node_rank_0.log"):
        assert (logs / name).stat().st_size > 0, name
    assert not (chain.point / "fill" / "filled.json").exists()

    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"dead decode node: rerun {wall:.0f} s")
    assert rc == 0, text[-8000:]
    # Every ephemeral artifact of the dead allocation was removed and re-created.
    assert {"allocation.json", "node_list_env.sh", "plan.json", "ready/decode.json",
            "ready/prefill-1.json", "ready/router.json"} <= swept(text), text[:3000]
    ran = jobs_run(text)
    assert all(ran.get(rule) == 1 for rule in LAUNCH_RULES), ran
    new_alloc = json.loads((chain.point / "allocation.json").read_text())
    assert new_alloc["job_id"] != alloc["job_id"]
    plan = json.loads((chain.point / "plan.json").read_text())
    assert plan["nodes"] == new_alloc["nodes"][:3]
    new_steps = {p.stem: json.loads(p.read_text())["step_id"]
                 for p in (chain.point / "ready").glob("*.json")}
    assert all(s.split(".")[0] == str(new_alloc["job_id"]) for s in new_steps.values())
    assert new_steps != old_steps
    assert_ground_truth(chain)
    # The failed attempt's logs were not overwritten by the relaunch: they are kept aside.
    attempts = list((chain.point / "attempts").glob(f"*-job{alloc['job_id']}"))
    assert len(attempts) == 1, attempts
    assert "stopped running" in (attempts[0] / "logs" / "fill.log").read_text()
    assert (attempts[0] / "logs" / "launch_server_decode_node_rank_1.log").stat().st_size > 0
    assert_clean(chain)


def test_dead_decode_between_snapshots_then_rerun_measures_afresh(make_chain):
    chain = make_chain("snapgap", overlays=("chain-small.yaml", "chain-snapshot-gap.yaml"))
    chain.start(f"results/{EXPERIMENT}/report.html")
    deadline = time.monotonic() + 300
    snapshot1 = chain.point / "profile" / "1" / "snapshot.json"
    while not snapshot1.exists():
        assert chain.proc.poll() is None, chain.out.read_text()[-6000:]
        assert time.monotonic() < deadline, "snapshot 1 was not taken within 300 s"
        time.sleep(0.3)
    chain._note_jobs()
    first = json.loads(snapshot1.read_text())["profile_id"]
    os.kill(decode_node_pid(chain, 1), signal.SIGKILL)
    rc, text = chain.wait(timeout=60)
    assert rc != 0
    assert "Error in rule profile_snapshot" in text, text[-6000:]
    assert not (chain.point / "profile" / "2" / "snapshot.json").exists()
    assert_clean(chain)

    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"dead decode between snapshots: rerun {wall:.0f} s")
    assert rc == 0, text[-8000:]
    ran = jobs_run(text)
    # The servers that held the fill are gone: the measurement starts again at the fill,
    # on the new servers, and both snapshots come from them.
    assert {"fill": 1, "release": 1, "profile_snapshot": SNAPSHOTS}.items() <= ran.items(), ran
    assert_ground_truth(chain)
    rows = chain.rows()
    assert first not in {r["profile_id"] for r in rows}
    # The unfinished measurement of the dead servers is kept aside, with their logs.
    kept = list((chain.point / "attempts").glob("*/profile/1/snapshot.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["profile_id"] == first
    attempt = kept[0].parents[2]
    assert (attempt / "fill" / "released.json").exists()
    assert (attempt / "logs" / "launch_server_decode_node_rank_0.log").exists()
    assert_clean(chain)


def test_sigint_stops_everything_then_rerun_completes(make_chain):
    chain = make_chain("sigint", overlays=("chain-small.yaml", "chain-slow-fill.yaml"))
    chain.start(f"results/{EXPERIMENT}/report.html")
    chain.wait_for_fill_running()
    time.sleep(2)
    assert "fill ended" not in chain.fill_log()
    sent_at = time.monotonic()
    chain.proc.send_signal(signal.SIGINT)
    rc, text = chain.wait(timeout=90)
    took = time.monotonic() - sent_at
    print(f"SIGINT: snakemake exited {took:.1f} s after the signal")
    assert rc != 0
    assert took < 60, text[-6000:]
    assert_clean(chain)
    assert (chain.point / "logs" / "fill.log").exists()

    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"SIGINT: rerun {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert "allocation.json" in swept(text)
    assert_ground_truth(chain)
    assert_clean(chain)


def test_sigterm_stops_a_long_fill_within_seconds_then_rerun_completes(make_chain):
    """SIGTERM (what a batch system or `kill` sends) makes Snakemake wait for its running
    jobs; the run is marked stopped, so the fill ends at its next check instead of
    running to its end, onerror stops everything, and the rerun measures afresh."""
    chain = make_chain("sigterm", overlays=("chain-small.yaml", "chain-slow-fill.yaml"))
    chain.start(f"results/{EXPERIMENT}/report.html")
    chain.wait_for_fill_running()
    time.sleep(2)
    assert "fill ended" not in chain.fill_log()
    sent_at = time.monotonic()
    chain.proc.send_signal(signal.SIGTERM)
    rc, text = chain.wait(timeout=120)
    took = time.monotonic() - sent_at
    print(f"SIGTERM: snakemake exited {took:.1f} s after the signal")
    assert rc != 0
    assert took < 30, text[-6000:]
    assert "SIGTERM" in chain.fill_log(), chain.fill_log()[-2000:]
    assert_clean(chain)
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"SIGTERM: rerun {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert_ground_truth(chain)
    assert_clean(chain)


def kill_snakemake_during_the_fill(chain: Chain) -> None:
    """Start the chain, SIGKILL the Snakemake process alone while it fills (its jobs are
    orphaned, no onerror runs), and wait until the orphaned fill has noticed and stopped."""
    chain.start(f"results/{EXPERIMENT}/report.html")
    chain.wait_for_fill_running()
    time.sleep(2)
    sent_at = time.monotonic()
    chain.proc.kill()
    chain.proc.wait(timeout=30)
    chain.proc = None
    deadline = time.monotonic() + 60
    while "is gone" not in chain.fill_log():
        assert time.monotonic() < deadline, chain.fill_log()[-2000:]
        time.sleep(1)
    print(f"SIGKILL: the orphaned fill stopped {time.monotonic() - sent_at:.1f} s after")


def test_sigkill_during_the_fill_then_unlock_and_rerun(make_chain):
    """Snakemake killed with SIGKILL runs no onerror: its fill notices within seconds that
    the run is gone and stops; after `--unlock` and `pdbench stop-all` (the README's
    advice) the rerun measures the ground truth and leaves nothing behind."""
    chain = make_chain("sigkill", overlays=("chain-small.yaml", "chain-slow-fill.yaml"))
    kill_snakemake_during_the_fill(chain)
    rc, text, _ = chain.run("--unlock")
    assert rc == 0, text[-3000:]
    subprocess.run([str(VENV_BIN / "pdbench"), "stop-all", "--results", "results"],
                   cwd=chain.dir, env=chain.env(), check=True, capture_output=True,
                   timeout=300)
    assert_clean(chain, timeout=60)
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"SIGKILL: rerun {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert_ground_truth(chain)
    assert_clean(chain)


def test_sigkill_then_unlock_and_rerun_on_the_live_servers(make_chain):
    """The issue's sequence without a stop-all: SIGKILL during the fill, `--unlock`, rerun.
    The rerun reuses the live servers, starts a new client (the old one was let go), and
    measures the ground truth; nothing is left."""
    chain = make_chain("sigkill-reuse", overlays=("chain-small.yaml", "chain-slow-fill.yaml"))
    kill_snakemake_during_the_fill(chain)
    decode_step = json.loads((chain.point / "ready" / "decode.json").read_text())["step_id"]
    rc, text, _ = chain.run("--unlock")
    assert rc == 0, text[-3000:]
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"SIGKILL, unlock, rerun on live servers: {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert "bench/client.json" in swept(text)
    assert json.loads((chain.point / "ready" / "decode.json").read_text())["step_id"] == \
        decode_step  # the same decode server
    assert_ground_truth(chain)
    assert_clean(chain)


def test_a_second_run_on_a_live_tree_is_refused_and_the_first_is_unharmed(make_chain):
    """Two runs on one tree: while the first fills, a second with another config is
    refused before any job, by Snakemake's lock or, with --nolock, by the tree's run
    lock; it stops nothing and rewrites nothing; the first measures the ground truth."""
    chain = make_chain("two-runs", overlays=("chain-small.yaml", "chain-slow-fill.yaml"))
    chain.start(f"results/{EXPERIMENT}/report.html")
    chain.wait_for_fill_running()
    resolved = (chain.results / ".pdbench" / "config.json").read_text()
    other = chain.dir / "other.yaml"
    other.write_text(yaml.safe_dump({"profile": {"snapshots": 5}}))
    configs = yaml.safe_load((chain.dir / "profile" / "config.yaml").read_text())["configfile"]
    for extra in ([], ["--nolock"]):
        start = time.monotonic()
        proc = subprocess.run(
            chain.argv(f"results/{EXPERIMENT}/report.html", "--configfile", *configs,
                       str(other), *extra),
            cwd=chain.dir, env=chain.env(), capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        print(f"second run {' '.join(extra) or '(plain)'}: refused in "
              f"{time.monotonic() - start:.1f} s")
        assert proc.returncode != 0, out[-3000:]
        assert ("in use by another Snakemake run" in out if extra
                else "cannot be locked" in out.lower() or "in use by" in out), out[-3000:]
        assert "stop-all" not in out
        assert (chain.results / ".pdbench" / "config.json").read_text() == resolved
    rc, text = chain.wait()
    assert rc == 0, text[-8000:]
    assert_ground_truth(chain)
    assert_clean(chain)


@pytest.mark.parametrize("queued", ["allocation", "preflight"])
def test_sigint_while_a_job_queues(make_chain, queued):
    # The job may not start for ten minutes (--begin), so its stage waits: the preflight's
    # one-node job, or (preflight off) the point's holder.
    site = {"sbatch_extra": ["--begin=now+600"],
            "preflight": {"enabled": queued == "preflight"}}
    chain = make_chain(f"queued-{queued}", extra={"site": site})
    chain.start(f"results/{EXPERIMENT}/report.html")
    deadline = time.monotonic() + 120
    while not any("PENDING" in job for job in chain.slurm_jobs()):
        assert chain.proc.poll() is None, chain.out.read_text()[-6000:]
        assert time.monotonic() < deadline, "no pending holder job within 120 s"
        time.sleep(0.5)
    time.sleep(2)
    sent_at = time.monotonic()
    chain.proc.send_signal(signal.SIGINT)
    rc, text = chain.wait(timeout=90)
    took = time.monotonic() - sent_at
    print(f"SIGINT while queued: snakemake exited {took:.1f} s after the signal")
    assert rc != 0
    assert took < 30, text[-6000:]
    assert_clean(chain)
    assert not (chain.point / "allocation.json").exists()
    assert (chain.results / EXPERIMENT / "preflight.json").exists() == (queued == "allocation")
    assert not list(chain.results.glob("*/*/allocation.pending.json"))


def test_restart_reuses_live_servers(make_chain):
    chain = make_chain("restart")
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html", "--until", "router")
    print(f"restart: --until router {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert set(jobs_run(text)) == {"preflight", *LAUNCH_RULES}, jobs_run(text)
    markers = {p.name: (p.read_text(), p.stat().st_mtime_ns)
               for p in (chain.point / "ready").glob("*.json")}
    assert set(markers) == {"prefill-1.json", "decode.json", "router.json"}
    steps = {json.loads(m[0])["step_id"] for m in markers.values()}
    assert steps <= {s.split()[0] for s in chain.slurm_steps()}, "the servers are not running"

    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"restart: to the report {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert not swept(text), text[:3000]
    ran = jobs_run(text)
    assert not set(LAUNCH_RULES) & set(ran), ran
    assert {"fill", "release", "profile_snapshot", "teardown", "report"} <= set(ran), ran
    after = {p.name: (p.read_text(), p.stat().st_mtime_ns)
             for p in (chain.point / "ready").glob("*.json")}
    assert after == markers
    teardown = json.loads((chain.point / "teardown.json").read_text())
    assert steps <= set(teardown["stopped_steps"])
    assert_ground_truth(chain)
    assert_clean(chain)


def test_a_failed_point_stops_a_point_queued_behind_it(make_chain):
    # Two points restricted to the same four nodes: whichever holder starts first (p1
    # needs 3 nodes, p2 4), the other queues until the first gives its nodes back, which
    # it does only when the run's onerror stops it.
    chain = make_chain("queuedbehind", overlays=("chain-small.yaml", "chain-slow-fill.yaml"),
                       extra={"grid": {"prefill_groups": [1, 2]},
                              "site": {"sbatch_extra": ["--exclude=node[05-18]"]}})
    chain.start(f"results/{EXPERIMENT}/report.html")
    points = {name: chain.results / EXPERIMENT / name for name in ("p1", "p2")}

    def fill_log(name: str) -> str:
        path = points[name] / "logs" / "fill.log"
        return path.read_text() if path.exists() else ""

    deadline = time.monotonic() + 240
    while not (filling := [n for n in points if "client step" in fill_log(n)]):
        assert chain.proc.poll() is None, chain.out.read_text()[-6000:]
        assert time.monotonic() < deadline, "no fill started within 240 s"
        time.sleep(0.5)
    (running,) = filling
    (queued,) = set(points) - {running}
    assert (points[queued] / "allocation.pending.json").exists()
    assert any("PENDING" in job for job in chain.slurm_jobs()), chain.slurm_jobs()
    killed_at = time.monotonic()
    os.kill(decode_node_pid(chain, 1), signal.SIGKILL)
    rc, text = chain.wait(timeout=90)
    took = time.monotonic() - killed_at
    print(f"failed point ({running}) with another ({queued}) queued behind it: snakemake "
          f"exited {took:.1f} s after the kill")
    assert rc != 0
    assert took < 60, text[-6000:]
    assert "Error in rule fill" in text
    allocation_log = (points[queued] / "logs" / "allocation.log").read_text()
    assert "another stage of this run failed" in allocation_log, allocation_log
    assert f"{EXPERIMENT}/{running} fill" in allocation_log
    assert "cancelled holder job" in allocation_log
    assert not (points[queued] / "allocation.json").exists()
    assert_clean(chain)


def client_pid(chain: Chain) -> int:
    """The benchmark client process of this test (by its output file)."""
    output = str((chain.point / "bench" / "client-output.jsonl").resolve())
    found = [p["pid"] for p in _proc_table() if output in p["argv"] and "-c" in p["argv"]]
    assert len(found) == 1, f"client of {output}: {found}"
    return found[0]


def test_failed_benchmark_reruns_on_live_servers(make_chain):
    chain = make_chain("benchfail", overlays=("chain-small.yaml", "chain-slow-fill.yaml"),
                       extra={"site": {"keep_servers_on_failure": True}})
    chain.start(f"results/{EXPERIMENT}/report.html")
    chain.wait_for_fill_running()
    time.sleep(2)
    assert "fill ended" not in chain.fill_log()
    servers = {p.stem: json.loads(p.read_text())["step_id"]
               for p in (chain.point / "ready").glob("*.json")}
    client = json.loads((chain.point / "bench" / "client.json").read_text())
    os.kill(client_pid(chain), signal.SIGKILL)
    rc, text = chain.wait(timeout=60)
    assert rc != 0
    assert "Error in rule fill" in text
    assert f"the benchmark client (Slurm step {client['step_id']}) ended" in chain.fill_log()
    assert "servers kept running for a rerun" in text, text[-4000:]
    # The client's step is gone; the servers' steps still run.
    running = {s.split()[0] for s in chain.slurm_steps()}
    assert client["step_id"] not in running
    assert set(servers.values()) <= running, (servers, running)

    rc, text, wall = chain.run(f"results/{EXPERIMENT}/report.html")
    print(f"failed benchmark: rerun on live servers {wall:.0f} s")
    assert rc == 0, text[-8000:]
    assert swept(text) == {"bench/client.json"}, text[:3000]
    ran = jobs_run(text)
    assert not set(LAUNCH_RULES) & set(ran), ran
    assert {"bench_client": 1, "fill": 1, "release": 1}.items() <= ran.items(), ran
    teardown = json.loads((chain.point / "teardown.json").read_text())
    assert set(servers.values()) <= set(teardown["stopped_steps"])
    assert_ground_truth(chain)
    assert_clean(chain)


def test_forcerun_until_omit_from_per_stage(completed, make_chain):
    source, rc, _, _, _ = completed
    assert rc == 0, "the full chain failed"
    # A copy of the completed tree (its Snakemake metadata included), so the shared one
    # stays as it was.
    chain = make_chain("controls")
    shutil.rmtree(chain.dir)
    shutil.copytree(source.dir, chain.dir, symlinks=True,
                    ignore=shutil.ignore_patterns("snakemake-*.out", "locks", "incomplete"))
    target = f"results/{EXPERIMENT}/report.html"

    def dry(*args: str) -> dict[str, int]:
        rc, text, _ = chain.run("-n", target, *args)
        assert rc == 0, text[-6000:]
        return jobs_run(text)

    # Completed tree: nothing to do, although the allocation and markers are gone.
    assert dry() == {}
    # Analysis reruns offline: only the throughput table and what follows it.
    assert dry("--forcerun", "point_throughput") == {
        "point_throughput": 1, "experiment_throughput": 1, "point_manifest": 1, "report": 1}
    assert dry("--forcerun", "report") == {"report": 1}
    # A stage that needs live servers brings back the ephemeral chain it stands on.
    upto_fill = {"allocation": 1, "node_list": 1, "prefill_server": 1, "decode_server": 1,
                 "router": 1, "bench_client": 1, "fill": 1}
    assert dry("--forcerun", "fill", "--until", "fill") == upto_fill
    assert dry("--forcerun", "fill", "--omit-from", "release") == upto_fill
    forced = dry("--forcerun", "fill")
    assert forced == {**upto_fill, "release": 1, "profile_snapshot": SNAPSHOTS,
                      "bench_result": 1, "teardown": 1, "point_throughput": 1,
                      "experiment_throughput": 1, "point_manifest": 1, "report": 1}

    # One more snapshot than the tree holds: the point's servers are gone, so it is
    # measured again (servers, client, fill, release, every snapshot), never profiled cold.
    more = chain.dir / "more-snapshots.yaml"
    more.write_text(yaml.safe_dump({"profile": {"snapshots": SNAPSHOTS + 1}}))
    configs = yaml.safe_load((chain.dir / "profile" / "config.yaml").read_text())["configfile"]
    assert dry("--configfile", *configs, str(more)) == {
        **forced, "profile_snapshot": SNAPSHOTS + 1}

    # A fresh tree: --until and --omit-from stop where they say (the preflight first).
    fresh = make_chain("fresh")
    rc, text, _ = fresh.run("-n", target, "--until", "fill")
    assert rc == 0 and jobs_run(text) == {"preflight": 1, **upto_fill}, text[-4000:]
    rc, text, _ = fresh.run("-n", target, "--omit-from", "profile_snapshot")
    assert rc == 0 and jobs_run(text) == {"preflight": 1, **upto_fill, "release": 1}, \
        text[-4000:]
    rc, text, _ = fresh.run("-n", target, "--until", "router")
    assert rc == 0 and jobs_run(text) == {"preflight": 1, **{r: 1 for r in LAUNCH_RULES}}, \
        text[-4000:]

    # And the offline rerun really runs: every analysis output deleted, no Slurm job, no
    # server, the same numbers; the torn-down point's records stay as they were.
    before = chain.rows()
    records = {n: (chain.point / n).read_text() for n in ("allocation.json", "plan.json")}
    analysis = [chain.point / "throughput.csv", chain.point / "measurement.json",
                chain.point / "manifest.json", chain.results / EXPERIMENT / "throughput.csv",
                chain.results / EXPERIMENT / "report.html"]
    for path in analysis:
        path.unlink()
    jobs_before = chain.submitted_jobs()
    rc, text, wall = chain.run(target)
    print(f"controls: offline rerun of the analysis {wall:.0f} s")
    assert rc == 0, text[-6000:]
    assert set(jobs_run(text)) == {"point_throughput", "experiment_throughput",
                                   "point_manifest", "report"}
    assert chain.submitted_jobs() == jobs_before, "the offline rerun submitted a Slurm job"
    assert all(p.exists() for p in analysis)
    assert {n: (chain.point / n).read_text() for n in records} == records
    assert chain.rows() == before
    assert_clean(chain)
    # Changing only the report's code reruns only the report.
    from pdbench.report import CODE_FILES

    # Snakemake compares the checksums of inputs that are not outputs, so the content
    # changes (a template comment: the page renders the same) and is put back after.
    template = next(p for p in CODE_FILES if p.suffix == ".j2")
    text, stamp = template.read_text(), template.stat()
    try:
        template.write_text(text + "{# changed by test_forcerun_until_omit_from_per_stage #}\n")
        assert dry() == {"report": 1}
    finally:
        template.write_text(text)
        os.utime(template, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


# ------------------------------------------------------------------ the local launcher


def test_local_launcher_runs_the_chain_without_slurm(make_chain):
    """site.launcher local: the same stages on this host's processes, no Slurm job at all;
    the measurement equals the emulator's ground truth and nothing is left running."""
    chain = make_chain("local", overlays=("chain-small.yaml", "chain-local.yaml"),
                       extra=PREFLIGHT_ON, profile=LOCAL_PROFILE)
    rc, text, wall = chain.run(f"results/{EXPERIMENT}/throughput.csv",
                               f"results/{EXPERIMENT}/{POINT}/manifest.json")
    assert rc == 0, text[-8000:]
    print(f"local chain: {wall:.0f} s")
    assert_ground_truth(chain)
    alloc = json.loads((chain.point / "allocation.json").read_text())
    assert alloc["launcher"] == "local" and alloc["nodelist"] == "local[0-2]"
    # Three slots of 4 GPUs on a host of 4 (share_gpus): each slot gets all four.
    assert set(alloc["gpus"].values()) == {"0,1,2,3"}
    teardown = json.loads((chain.point / "teardown.json").read_text())
    assert teardown["cancelled_job"] is None
    assert len(teardown["stopped_steps"]) == 4
    assert all(step.startswith("local.") for step in teardown["stopped_steps"])
    manifest = json.loads((chain.point / "manifest.json").read_text())
    assert manifest["slurm"]["launcher"] == "local"
    preflight = json.loads((chain.results / EXPERIMENT / "preflight.json").read_text())
    assert preflight["launcher"] == "local"
    assert chain.submitted_jobs() == [], "the local launcher submits nothing to Slurm"
    # Each decode node's task got its rank and the slot's GPUs.
    runner = (chain.point / "commands" / "decode.srun.sh").read_text()
    assert "PDBENCH_NODE_RANK=1 CUDA_VISIBLE_DEVICES=0,1,2,3 bash" in runner
    assert_clean(chain)


def test_local_launcher_interrupted_stops_every_process(make_chain):
    """Snakemake stopped in the middle of the fill: onerror's stop-all ends every local
    step (each runs in a session of its own, so only pdbench can stop it)."""
    chain = make_chain("local-stop", overlays=("chain-small.yaml", "chain-local.yaml"),
                       profile=LOCAL_PROFILE)
    chain.start(f"results/{EXPERIMENT}/throughput.csv")
    chain.wait_for_fill_running()
    assert chain.processes(), "the servers run during the fill"
    chain.proc.send_signal(signal.SIGINT)
    rc, text = chain.wait(timeout=120)
    assert rc != 0
    assert_clean(chain, timeout=60)

"""Integration tests of scripts/local-slurm against the running local cluster.

They need root and a cluster that `scripts/local-slurm status` reports as up
(`scripts/local-slurm up` starts one); otherwise they are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-slurm"
CLUSTER_DIR = Path(os.environ.get("PDBENCH_SLURM_DIR", "/var/tmp/pdbench-slurm"))
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED"}


def local_slurm(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not SCRIPT.exists():
        return f"{SCRIPT} missing"
    try:
        st = local_slurm("status", "--dir", str(CLUSTER_DIR), timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"local-slurm status failed: {e}"
    if st.returncode != 0:
        return f"local Slurm cluster not up (run scripts/local-slurm up): {st.stdout.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def _cluster_up():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)


def cluster_state(directory: Path = CLUSTER_DIR) -> dict:
    return json.loads((directory / "cluster.json").read_text())


def slurm_env(directory: Path = CLUSTER_DIR) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(directory / "etc" / "slurm.conf")
    return env


def sl(*argv: str, timeout: float = 30, check: bool = True, directory: Path = CLUSTER_DIR) -> str:
    cp = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=slurm_env(directory),
        stdin=subprocess.DEVNULL,
    )
    if check and cp.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
    return cp.stdout


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def job_state(job: str, directory: Path = CLUSTER_DIR) -> str:
    return sl("squeue", "-h", "-j", job, "-o", "%T", check=False, directory=directory).strip()


def up_args(cfg: dict, etc_link: bool) -> list[str]:
    """`up` arguments that reproduce a recorded configuration."""
    args = [
        "up",
        "--dir",
        cfg["dir"],
        "--nodes",
        str(cfg["nodes"]),
        "--gpus-per-node",
        str(cfg["gpus_per_node"]),
        "--cpus-per-node",
        str(cfg["cpus_per_node"]),
        "--mem-mb-per-node",
        str(cfg["mem_mb_per_node"]),
        "--partition",
        cfg["partition"],
        "--cluster-name",
        cfg["cluster_name"],
        "--port-base",
        str(cfg["port_base"]),
        "--no-apt",
    ]
    if not cfg["accounting"]:
        args.append("--no-accounting")
    if not etc_link:
        args.append("--no-etc-link")
    return args


def proc_matches(d: dict) -> bool:
    """True if the recorded daemon d is still running (not a zombie, same command line)."""
    try:
        stat = Path(f"/proc/{d['pid']}/stat").read_text()
        raw = Path(f"/proc/{d['pid']}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat[stat.rindex(")") + 2 :].split()[0]
    cmdline = [a.decode() for a in raw.split(b"\0") if a]
    return state != "Z" and cmdline in (d["cmdline"], d["argv"])


def free_port_base() -> int:
    """A port base whose ports (base+6 .. base+210) are all free."""
    for base in range(26800, 60000, 1000):
        ok = True
        for port in [base + 6, base + 17, base + 19, *range(base + 201, base + 211)]:
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.skip("no free port range for a second cluster")


# --------------------------------------------------------------------------


def test_status_reports_up():
    cp = local_slurm("status")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert cp.stdout.startswith("local-slurm: up,")
    assert "nodes:" in cp.stdout


def test_status_of_missing_cluster_is_down(tmp_path):
    cp = local_slurm("status", "--dir", str(tmp_path / "none"))
    assert cp.returncode == 3
    assert "down" in cp.stdout


def test_etc_link_resolves_to_cluster_conf():
    st = cluster_state()
    if not st.get("etc_link"):
        pytest.skip("cluster started with --no-etc-link")
    assert os.path.realpath("/etc/slurm/slurm.conf") == str(CLUSTER_DIR / "etc" / "slurm.conf")


def test_sinfo_shows_nodes_with_four_gpus():
    cfg = cluster_state()["config"]
    assert cfg["nodes"] >= 18
    rows = [line.split() for line in sl("sinfo", "-h", "-N", "-o", "%N %T %G %P").splitlines()]
    assert len(rows) >= 18
    for name, state, gres, part in rows:
        assert gres.startswith("gpu:4"), (name, gres)
        assert part.rstrip("*") == cfg["partition"]
        assert state in ("idle", "mixed", "allocated"), (name, state)
    busy = [line for line in sl("squeue", "-h", "-o", "%T").split() if line in ACTIVE]
    if not busy:
        assert sum(1 for r in rows if r[1] == "idle") >= 18


@pytest.fixture
def holder_job():
    """A 3-node job holding 4 GPUs per node; cancelled at the end in any case."""
    marker = f"{4000 + os.getpid() % 1000}.{int(time.time()) % 1000}"
    job = sl(
        "sbatch",
        "--parsable",
        "-J",
        "pdbench-test-holder",
        "-N",
        "3",
        "--gpus-per-node=4",
        "-o",
        "/dev/null",
        "--wrap",
        f"sleep {marker}",
    ).strip()
    job = job.split(";")[0]
    try:
        wait_for(lambda: job_state(job) == "RUNNING", 60, f"job {job} to run")
        yield job, marker
    finally:
        sl("scancel", job, check=False)


def test_holder_job_with_overlapping_step_from_outside(holder_job):
    job, marker = holder_job
    nodelist = sl("squeue", "-h", "-j", job, "-o", "%N").strip()
    nodes = sl("scontrol", "show", "hostnames", nodelist).split()
    assert len(nodes) == 3
    pair = nodes[1:3]
    out = sl(
        "srun",
        "--jobid",
        job,
        "--overlap",
        "-N",
        "2",
        "--ntasks-per-node=1",
        "-w",
        ",".join(pair),
        "bash",
        "-c",
        "echo $SLURMD_NODENAME $SLURM_NODEID $CUDA_VISIBLE_DEVICES",
        timeout=60,
    )
    rows = sorted(line.split() for line in out.strip().splitlines())
    assert rows == [[pair[0], "0", "0,1,2,3"], [pair[1], "1", "0,1,2,3"]], out

    def accounted():
        lines = sl("sacct", "-j", job, "-n", "-P", "-o", "JobID,State", check=False).split()
        ids = {line.split("|")[0] for line in lines}
        return ids if {job, f"{job}.0"} <= ids else None

    ids = wait_for(accounted, 30, f"sacct to list job {job} and step {job}.0")
    assert f"{job}.batch" in ids

    sl("scancel", job)
    wait_for(lambda: job_state(job) not in ACTIVE, 30, f"job {job} to end")

    def clean():
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
            if args[-2:] == ["sleep", marker] or (
                args and args[0].startswith(f"slurmstepd: [{job}.")
            ):
                return False
        return True

    wait_for(clean, 30, f"processes of job {job} to end")
    wait_for(
        lambda: all(
            state in ("idle", "mixed", "allocated")
            for state in sl("sinfo", "-h", "-N", "-n", ",".join(nodes), "-o", "%T").split()
        ),
        30,
        "the job's nodes to be free",
    )
    states = sl("sacct", "-j", job, "-X", "-n", "-P", "-o", "State").split()
    assert states and states[0].startswith("CANCELLED"), states


def test_up_again_is_a_fast_noop():
    st = cluster_state()
    before = [(d["pid"], d["starttime"]) for d in st["daemons"]]
    t0 = time.monotonic()
    cp = local_slurm(*up_args(st["config"], bool(st.get("etc_link"))))
    elapsed = time.monotonic() - t0
    assert cp.returncode == 0, cp.stderr
    assert "already up" in cp.stdout
    assert len(cp.stdout.strip().splitlines()) == 1
    assert elapsed < 5, elapsed
    assert [(d["pid"], d["starttime"]) for d in cluster_state()["daemons"]] == before


def test_up_restarts_only_a_dead_daemon():
    st = cluster_state()
    idle = sl("sinfo", "-h", "-N", "-t", "idle", "-o", "%N").split()
    if not idle:
        pytest.skip("no idle node")
    victim = next(d for d in st["daemons"] if d["key"] == f"slurmd {idle[-1]}")
    others = {(d["pid"], d["starttime"]) for d in st["daemons"] if d is not victim}
    # drained first, so that no job lands on it while its slurmd is away; `up` resumes it
    sl("scontrol", "update", f"nodename={idle[-1]}", "state=drain", "reason=local-slurm-test")
    os.kill(victim["pid"], signal.SIGTERM)
    wait_for(lambda: not proc_matches(victim), 15, f"{victim['key']} to stop")
    cp = local_slurm("status")
    assert cp.returncode == 1 and "partial" in cp.stdout, cp.stdout
    assert f"{victim['key']} (pid {victim['pid']}) is not running" in cp.stdout
    cp = local_slurm(*up_args(st["config"], bool(st.get("etc_link"))))
    assert cp.returncode == 0, cp.stderr
    assert "restarted 1 daemon(s)" in cp.stdout
    now = cluster_state()["daemons"]
    assert others <= {(d["pid"], d["starttime"]) for d in now}
    assert len(now) == len(st["daemons"])
    assert local_slurm("status").returncode == 0


def test_up_with_other_config_refuses():
    st = cluster_state()
    args = up_args(st["config"], bool(st.get("etc_link")))
    args[args.index("--nodes") + 1] = str(st["config"]["nodes"] + 1)
    cp = local_slurm(*args)
    assert cp.returncode == 1
    assert "different configuration" in cp.stderr
    assert local_slurm("status").returncode == 0


def test_busy_port_fails_clearly():
    base = cluster_state()["config"]["port_base"]
    directory = Path(tempfile.mkdtemp(prefix="pdbench-slurm-busy-", dir="/var/tmp"))
    shutil.rmtree(directory)
    try:
        cp = local_slurm(
            "up",
            "--dir",
            str(directory),
            "--port-base",
            str(base),
            "--no-etc-link",
            "--no-apt",
            "--nodes",
            "2",
        )
        assert cp.returncode == 1
        ports = "|".join(str(base + k) for k in (6, 17, 19))
        assert re.search(
            rf"port ({ports}) \(for \w+\) already in use by pid \d+ \(/usr/sbin/", cp.stderr
        ), cp.stderr
        assert not directory.exists()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_second_cluster_down_and_up_leaves_nothing_behind():
    """Full lifecycle on a small private cluster, so the shared one keeps running."""
    base = free_port_base()
    directory = Path(tempfile.mkdtemp(prefix="pdbench-slurm-life-", dir="/var/tmp"))
    os.chmod(directory, 0o755)
    common = ["--dir", str(directory)]
    args = ["up", *common, "--nodes", "3", "--port-base", str(base), "--no-etc-link", "--no-apt"]
    t0 = time.monotonic()
    try:
        cp = local_slurm(*args)
        assert cp.returncode == 0, cp.stderr
        assert cp.stdout.startswith("local-slurm: up 3 nodes (node[01-03]) x 4 gpu")
        assert local_slurm("status", *common).returncode == 0
        out = sl("srun", "-N", "3", "bash", "-c", "echo $SLURMD_NODENAME", directory=directory)
        assert sorted(out.split()) == ["node01", "node02", "node03"]
        first_job = int(
            sl("sbatch", "--parsable", "-N", "1", "--wrap", "sleep 600", directory=directory)
            .strip()
            .split(";")[0]
        )

        daemons = cluster_state(directory)["daemons"]
        assert {d["kind"] for d in daemons} == {
            "munged",
            "mariadbd",
            "slurmdbd",
            "slurmctld",
            "slurmd",
        }
        cp = local_slurm("down", *common)
        assert cp.returncode == 0, cp.stderr
        assert "cancelled 1 job(s)" in cp.stdout
        assert [d["key"] for d in daemons if proc_matches(d)] == []
        assert local_slurm("status", *common).returncode == 3

        cp = local_slurm(*args)  # restart on kept state
        assert cp.returncode == 0, cp.stderr
        job = int(
            sl("sbatch", "--parsable", "--wrap", "true", directory=directory).strip().split(";")[0]
        )
        assert job > first_job  # slurmctld recovered its saved state
        wait_for(
            lambda: sl(
                "sacct",
                "-n",
                "-X",
                "-j",
                str(first_job),
                "-o",
                "State",
                check=False,
                directory=directory,
            ).strip(),
            30,
            "sacct to remember the job from before the restart",
        )
        daemons = cluster_state(directory)["daemons"]
        cp = local_slurm("down", *common, "--purge")
        assert cp.returncode == 0, cp.stderr
        assert [d["key"] for d in daemons if proc_matches(d)] == []
        assert not directory.exists()
    finally:
        if directory.exists():
            local_slurm("down", *common, "--purge")
            shutil.rmtree(directory, ignore_errors=True)
    assert time.monotonic() - t0 < 60

"""The emulated decode server placed by pdbench's own stages on the local Slurm cluster.

``pdbench.allocation.allocate`` submits a 3-node holder for a small point (EP8 decode on
2 nodes, one 1-node prefill group), then ``pdbench.servers.launch_server(ctx, "decode")``
starts the 2-node emulated decode server as one ``srun --jobid --overlap`` step, and
``stop_step`` + ``scancel`` take everything down again. Every node is 127.0.0.1, so the
plan gives each node its own port from a free ``ports.shared_host_base``.

Needs root and a cluster that ``scripts/local-slurm status`` reports as up (otherwise
skipped), plus .venv-sglang and the tiny model (the step runs ``site.python``).
"""

from __future__ import annotations

import os
import time

import pytest
import requests

from pdbench import commands, config, slurm
from pdbench.allocation import allocate
from pdbench.context import PointContext
from pdbench.layout import PointPaths, node_log_name, read_json
from pdbench.loglines import iter_log
from pdbench.servers import launch_server
from pdbench.steps import stop_step

from .helpers import (
    local_slurm_skip_reason,
    REPO,
    SGLANG_PYTHON,
    TINY_MODEL,
    free_shared_host_base,
    http_status,
    processes_matching,
    rehearsal_config,
    skip_or_fail,
    small_point_overrides,
    tail,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

QUEUE_TIMEOUT_S = 45  # the holder waits this long for 3 free nodes, else the test skips
READY_TIMEOUT_S = 60
GONE_TIMEOUT_S = 30
FAKE_BOOTSTRAP_HOST = "2.2.2.2"


@pytest.fixture(scope="module", autouse=True)
def _cluster_up():
    reason = local_slurm_skip_reason()
    if reason:
        pytest.skip(reason)
    if not SGLANG_PYTHON.exists() or not (TINY_MODEL / "tokenizer.json").exists():
        skip_or_fail(f"needs {SGLANG_PYTHON} and {TINY_MODEL} (scripts/setup)")


@pytest.fixture
def slurm_env(monkeypatch):
    """The rendered commands are relative to the repository (site.python, model.path), as
    in a rehearsal started from it; srun and its steps inherit this directory. No
    SLURM_* variables of an enclosing job leak into sbatch or srun."""
    monkeypatch.chdir(REPO)
    for name in list(os.environ):
        if name.startswith("SLURM_") and name != "SLURM_CONF":
            monkeypatch.delenv(name)


@pytest.fixture
def cleanup():
    """Whatever the test started is cancelled and stopped, also when it fails."""
    state: dict = {"job_id": None, "steps": [], "needles": []}
    yield state
    for step in state["steps"]:
        try:
            stop_step(step)
        except Exception:  # noqa: BLE001 - cleanup goes on
            pass
    if state["job_id"] is not None:
        slurm.cancel(str(state["job_id"]))
    if state["needles"]:
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while processes_matching(state["needles"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid, _ in processes_matching(state["needles"]):  # ours: unique port block
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_decode_server_as_srun_step_in_a_holder_allocation(tmp_path, slurm_env, cleanup):
    base, (prometheus,) = free_shared_host_base([1], 2, extra=1)
    cfg = rehearsal_config(
        small_point_overrides(base, prometheus), {"site": {"time_limit": "00:10:00"}}
    )
    (point,) = config.grid_points(cfg)
    assert (point.experiment, point.name, point.total_nodes) == ("ep8", "p1", 3)
    paths = PointPaths.of(tmp_path / "results", point.experiment, point.name)

    # Stage 1: the holder allocation and allocation.json.
    started = time.monotonic()
    try:
        record = allocate(cfg, point, paths, queue_timeout_s=QUEUE_TIMEOUT_S)
    except slurm.SlurmError as exc:
        if "still PENDING" in str(exc):  # allocate cancelled its holder already
            pytest.skip(f"the local cluster has no 3 free nodes now (another run?): {exc}")
        raise
    job_id = cleanup["job_id"] = record["job_id"]
    assert read_json(paths.allocation)["job_id"] == job_id
    assert len(record["nodes"]) == 3 and not record["adopted"]
    assert set(record["addresses"].values()) == {"127.0.0.1"}
    allocated_s = time.monotonic() - started

    ctx = PointContext(cfg, point, paths)
    decode = ctx.plan.decode
    assert ctx.plan.shared_host and decode.node_names == record["nodes"][1:]
    cleanup["needles"] = ["pdbench.emulator", f"--dist-init-addr {decode.dist_init_addr}"]

    # Stage 3: the 2-node decode server as one srun step.
    marker = launch_server(ctx, "decode", timeout_s=READY_TIMEOUT_S)
    cleanup["steps"].append(marker)
    ready_s = time.monotonic() - started - allocated_s
    assert read_json(paths.ready("decode"))["step_id"] == marker["step_id"]
    assert marker["url"] == decode.url == f"http://127.0.0.1:{base + 900}"
    logs = [paths.logs / node_log_name("launch_server_decode", r) for r in (0, 1)]
    assert [str(p) for p in logs] == marker["logs"]

    # Node 0 serves the API; node 1 its dummy health on its own port.
    assert http_status(f"{decode.url}/health") == 200
    wait_for(
        lambda: http_status(f"{decode.nodes[1].url}/health") == 200,
        10,
        f"node 1's dummy /health at {decode.nodes[1].url}",
        detail=lambda: tail(logs[1]),
    )
    info_request = commands.control_request("server_info", decode.url, dialect=ctx.dialect)
    info = requests.get(info_request.url, timeout=10)
    assert info.status_code == 200, f"{info_request.url}: {info.status_code}"
    info = info.json()
    assert info["emulator"] is True
    assert (info["tp_size"], info["dp_size"], info["nnodes"]) == (8, 8, 2)
    assert info["disaggregation_mode"] == "decode"

    # Slurm lists the step inside the holder.
    assert (marker["step_id"], marker["step_name"]) in slurm.steps(job_id)
    assert marker["step_id"].startswith(f"{job_id}.")

    # A few decode requests with the fake bootstrap host (no prefill server): one per DP
    # rank (round robin), so every rank logs Decode batch lines on its own node.
    reply = requests.post(
        f"{decode.url}/generate",
        json={
            "input_ids": [[1, 2, 3, 4]] * 8,
            "sampling_params": {"max_new_tokens": 4, "temperature": 0},
            "bootstrap_host": FAKE_BOOTSTRAP_HOST,
            "bootstrap_room": 0,
        },
        timeout=30,
    )
    assert reply.status_code == 200, reply.text[:300]
    assert [r["meta_info"]["completion_tokens"] for r in reply.json()] == [4] * 8

    def ranks(log):
        return {r["dp"] for r in iter_log(log) if r["kind"] == "decode"}

    for log, own in zip(logs, ({0, 1, 2, 3}, {4, 5, 6, 7})):
        assert log.exists(), f"no log {log}"
        wait_for(
            lambda: ranks(log) == own,
            10,
            f"Decode batch lines of DP {sorted(own)} in {log}",
            detail=lambda: f"ranks seen: {sorted(ranks(log))}\n{tail(log)}",
        )
    running = processes_matching(cleanup["needles"])
    assert len(running) == 2, running  # one emulator process per node

    # Teardown: the step, then the holder; nothing of ours is left behind.
    stop_step(marker)
    cleanup["steps"].clear()
    slurm.cancel(str(job_id))
    wait_for(
        lambda: not slurm.steps(job_id),
        GONE_TIMEOUT_S,
        f"no step in job {job_id}",
        interval=0.5,
        detail=lambda: str(slurm.steps(job_id)),
    )
    wait_for(
        lambda: slurm.job_info(job_id).state not in slurm.RUNNING_STATES | slurm.PENDING_STATES,
        GONE_TIMEOUT_S,
        f"job {job_id} to end",
        interval=0.5,
        detail=lambda: str(slurm.job_info(job_id)),
    )
    wait_for(
        lambda: not processes_matching(cleanup["needles"]),
        GONE_TIMEOUT_S,
        "the emulator processes to exit",
        interval=0.5,
        detail=lambda: str(processes_matching(cleanup["needles"])),
    )
    assert not slurm.pid_alive(marker["srun_pid"])
    # Nor a launcher script or srun client of this point (their argv names its directory).
    assert not processes_matching([str(paths.root.resolve())])
    print(
        f"allocation {allocated_s:.1f} s, decode ready {ready_s:.1f} s, "
        f"total {time.monotonic() - started:.1f} s"
    )

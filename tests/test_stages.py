"""Stage logic without a cluster: log following, the benchmark gate, the liveness sweep
and stop-all (Slurm queries replaced by a fake cluster state)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pdbench import config, profile, runstate, slurm, sweep, teardown
from pdbench import steps as step_side
from pdbench.context import PointContext
from pdbench.client import collect_bench
from pdbench.errors import StageError
from pdbench.loglines import LogFollower
from pdbench.layout import PointPaths, write_json

REPO = Path(__file__).resolve().parents[1]
DECODE_LINE = ("[2025-10-15 18:07:24 DP{dp} TP{dp} EP{dp}] Decode batch. #running-req: {n}, "
               "#token: 100, token usage: 0.01, cuda graph: True, gen throughput (token/s): "
               "10.00, #queue-req: 0, \n")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_log_follower_resumes_from_recorded_offsets(tmp_path):
    log = tmp_path / "decode.log"
    log.write_text(DECODE_LINE.format(dp=0, n=5))
    first = LogFollower([log])
    assert [r["running_req"] for r in first.read()] == [5]
    offsets = first.positions()
    with open(log, "a") as fh:
        fh.write(DECODE_LINE.format(dp=0, n=7))
        fh.write(DECODE_LINE.format(dp=0, n=8)[:40])  # a line still being written
    resumed = LogFollower([log], offsets=offsets)
    assert [r["running_req"] for r in resumed.read()] == [7]
    with open(log, "a") as fh:
        fh.write(DECODE_LINE.format(dp=0, n=8)[40:])
    assert [r["running_req"] for r in resumed.read()] == [8]
    # A file the offsets do not name is read from its start.
    other = tmp_path / "other.log"
    other.write_text(DECODE_LINE.format(dp=1, n=2))
    assert [r["running_req"] for r in LogFollower([other], offsets=offsets).read()] == [2]


@pytest.fixture
def ctx(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = config.validate(raw)
    paths = PointPaths(tmp_path / "results" / "ep48" / "p1")
    return PointContext(cfg, config.find_point(cfg, "ep48", "p1"), paths)


def finished_client(ctx, result: dict | None) -> None:
    output = ctx.paths.client_output
    output.parent.mkdir(parents=True, exist_ok=True)
    if result is not None:
        output.write_text(json.dumps(result) + "\n")
    log = ctx.paths.logs / "bench_client_node_rank_0.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Traceback: the client failed\n")
    write_json(ctx.paths.client, {"job_id": 7, "step_id": "7.4", "srun_pid": dead_pid(),
                                  "output": str(output), "log": str(log), "go_at": "x"})
    write_json(ctx.paths.filled, {"ended_by": "reached"})
    write_json(ctx.paths.snapshot(1), {"profile_id": "1"})


# A real bench_serving result line (tests/integration/test_router_client.py wrote it).
BENCH_SERVING_LINE = json.loads(
    (Path(__file__).parent / "data" / "client-results" / "bench_serving-0.5.23-smg.jsonl")
    .read_text())


def test_valid_benchmark_result_becomes_bench_jsonl(ctx):
    finished_client(ctx, {**BENCH_SERVING_LINE, "completed": 768, "total_output_tokens": 98304})
    summary = collect_bench(ctx)
    assert (summary["completed"], summary["total_output_tokens"]) == (768, 98304)
    assert json.loads(ctx.paths.bench.read_text())["completed"] == 768


@pytest.mark.parametrize("result, message", [
    ({**BENCH_SERVING_LINE, "completed": 0, "total_output_tokens": 0}, "completed 0 requests"),
    ({"completed": 5}, "not a bench_serving result: no total_output_tokens"),
    (None, "wrote no result"),
])
def test_invalid_benchmark_sets_the_measurement_aside(ctx, result, message):
    finished_client(ctx, result)
    with pytest.raises(StageError, match=message) as info:
        collect_bench(ctx)
    assert "a rerun measures again" in str(info.value)
    attempts = list((ctx.paths.root / "attempts").glob("*-job7-invalid-benchmark"))
    assert len(attempts) == 1
    assert (attempts[0] / "fill" / "filled.json").exists()
    assert (attempts[0] / "profile" / "1" / "snapshot.json").exists()
    assert (attempts[0] / "bench" / "client.json").exists()
    # The servers may still run and write their logs: those stay where they are.
    assert (ctx.paths.logs / "bench_client_node_rank_0.log").exists()
    assert not ctx.paths.filled.exists() and not ctx.paths.bench.exists()


class FakeCluster:
    """Which jobs and steps run; what was stopped or cancelled."""

    def __init__(self, monkeypatch, jobs: set[int], steps: set[str]) -> None:
        self.jobs, self.steps = jobs, steps
        self.stopped: list[str] = []
        self.cancelled: list[str] = []
        monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
        monkeypatch.setattr(slurm, "job_info", lambda job_id: slurm.JobInfo(
            job_id, "RUNNING" if job_id in self.jobs else "GONE", "", ""))
        monkeypatch.setattr(slurm, "cancel", self.cancelled.append)
        monkeypatch.setattr(sweep, "listed_steps", lambda job_id: set(self.steps))
        monkeypatch.setattr(step_side, "server_alive",
                            lambda m, listed=None: m["step_id"] in self.steps)
        for module in (sweep, teardown):
            monkeypatch.setattr(module, "stop_step",
                                lambda m: self.stopped.append(m["step_id"]))


def point_with_servers(root: Path, *, client_go: bool = False, filled: bool = False) -> Path:
    point = root / "ep48" / "p1"
    write_json(point / "allocation.json", {"job_id": 7})
    (point / "plan.json").write_text("{}")
    for i, server in enumerate(("prefill-1", "decode", "router")):
        write_json(point / "ready" / f"{server}.json",
                   {"job_id": 7, "step_id": f"7.{i}", "srun_pid": 1})
    write_json(point / "bench" / "client.json",
               {"job_id": 7, "step_id": "7.3", "srun_pid": 1, "go_at": "t" if client_go else None})
    (point / "logs").mkdir()
    (point / "logs" / "launch_server_decode_node_rank_0.log").write_text("log\n")
    if filled:
        write_json(point / "fill" / "filled.json", {"ended_by": "reached"})
    return point


@pytest.mark.parametrize("client_go, client_steps", [(False, set()), (True, {"7.3"})])
def test_sweep_restarts_only_a_failed_client_on_live_servers(tmp_path, monkeypatch,
                                                             client_go, client_steps):
    point = point_with_servers(tmp_path, client_go=client_go)
    cluster = FakeCluster(monkeypatch, {7}, {"7.0", "7.1", "7.2", *client_steps})
    swept = sweep.apply_sweep(sweep.plan_sweep(tmp_path))
    assert swept["removed"] == [str(point / "bench" / "client.json")]
    assert swept["set_aside"] == []
    assert cluster.stopped == sorted(client_steps)  # a client still running is stopped
    assert (point / "ready" / "decode.json").exists()
    assert (point / "logs" / "launch_server_decode_node_rank_0.log").exists()


def test_sweep_keeps_a_held_client_and_live_servers(tmp_path, monkeypatch):
    point_with_servers(tmp_path)
    cluster = FakeCluster(monkeypatch, {7}, {"7.0", "7.1", "7.2", "7.3"})
    assert sweep.apply_sweep(sweep.plan_sweep(tmp_path)) == {"removed": [], "set_aside": []}
    assert cluster.stopped == []


def test_sweep_restarts_everything_when_a_server_died_mid_measurement(tmp_path, monkeypatch):
    point = point_with_servers(tmp_path, client_go=True)
    cluster = FakeCluster(monkeypatch, {7}, {"7.0", "7.2", "7.3"})  # decode (7.1) is gone
    swept = sweep.apply_sweep(sweep.plan_sweep(tmp_path))
    assert {Path(p).name for p in swept["removed"]} == {
        "prefill-1.json", "decode.json", "router.json", "client.json"}
    assert sorted(cluster.stopped) == ["7.0", "7.2", "7.3"]  # the gone step is not touched
    (aside,) = swept["set_aside"]
    assert set(aside["moved"]) == {"bench", "logs"}
    assert (Path(aside["to"]) / "logs" / "launch_server_decode_node_rank_0.log").exists()
    assert (point / "allocation.json").exists()


def test_sweep_of_a_gone_allocation_removes_its_plan_and_markers(tmp_path, monkeypatch):
    point = point_with_servers(tmp_path, filled=True)
    write_json(point / "bench" / "bench.jsonl", {"completed": 1})  # a finished measurement
    FakeCluster(monkeypatch, set(), set())
    swept = sweep.apply_sweep(sweep.plan_sweep(tmp_path))
    assert {Path(p).name for p in swept["removed"]} == {
        "allocation.json", "plan.json", "prefill-1.json", "decode.json", "router.json"}
    assert swept["set_aside"] == []
    # After the fill the client marker only says where the client's output is.
    assert (point / "bench" / "client.json").exists()


@pytest.mark.parametrize("keep", [False, True])
def test_stop_all_keeps_servers_when_asked(tmp_path, monkeypatch, keep):
    point_with_servers(tmp_path, client_go=True)
    cluster = FakeCluster(monkeypatch, {7}, {"7.0", "7.1", "7.2", "7.3"})
    result = teardown.stop_all(tmp_path, keep_servers=keep)
    if keep:
        assert cluster.stopped == ["7.3"] and cluster.cancelled == []
        assert result["kept"] == [f"{tmp_path / 'ep48' / 'p1'} (job 7)"]
    else:
        assert sorted(cluster.stopped) == ["7.0", "7.1", "7.2", "7.3"]
        assert cluster.cancelled == ["7"] and result["kept"] == []


def test_first_snapshot_interval_counts_from_the_release_request(ctx):
    write_json(ctx.paths.filled, {"release_requested_at": "2026-01-01T00:00:00.000+00:00"})
    assert profile.interval_start(ctx, 1) == 1767225600.0
    write_json(ctx.paths.snapshot(1), {})
    assert profile.interval_start(ctx, 2) == ctx.paths.snapshot(1).stat().st_mtime


def test_a_failed_stage_stops_the_other_waits_of_its_run(tmp_path):
    results = tmp_path / "results"
    runstate.start_run(results)
    runstate.check(results)  # nothing failed yet
    runstate.mark_failed(results, "ep48/p1 fill: decode stopped running")
    runstate.mark_failed(results, "ep48/p2 launch: a later failure")
    with pytest.raises(runstate.RunFailed, match="ep48/p1 fill: decode stopped running"):
        runstate.check(results)
    # The next run starts clean; with --keep-going a failure stops only its own point.
    runstate.start_run(results, keep_going=True)
    runstate.check(results)
    runstate.mark_failed(results, "ep48/p1 fill: again")
    runstate.check(results)


def test_cli_stage_errors_mark_the_run_failed_offline_ones_do_not(tmp_path):
    from pdbench.cli import main

    results = tmp_path / "results"
    runstate.start_run(results)
    missing = str(tmp_path / "missing.json")
    assert main(["merge-csv", missing, "--out", str(results / "ep48" / "t.csv")]) == 2
    runstate.check(results)
    point = results / "ep48" / "p2"
    assert main(["fill", "--config", missing, "--point-dir", str(point)]) == 2
    with pytest.raises(runstate.RunFailed, match="ep48/p2 fill: .*missing.json"):
        runstate.check(results)


def test_a_queued_holder_stops_waiting_when_the_run_failed(monkeypatch):
    monkeypatch.setattr(slurm, "job_info",
                        lambda job_id: slurm.JobInfo(job_id, "PENDING", "", "Resources"))
    calls = []

    def check_run():
        calls.append(1)
        if len(calls) == 3:
            raise runstate.RunFailed("stopped: another stage of this run failed")

    with pytest.raises(runstate.RunFailed):
        slurm.wait_running(5, 60, lambda msg: None, poll_s=0.01, check_run=check_run)
    assert len(calls) == 3


def test_sweep_after_the_fill_restarts_the_client_with_the_measurement(tmp_path, monkeypatch):
    """Decode died between snapshots: the measurement (bench/ included) is set aside, so
    the client's marker is stale too and the DAG starts the client again."""
    point = point_with_servers(tmp_path, client_go=True, filled=True)
    cluster = FakeCluster(monkeypatch, {7}, {"7.0", "7.2"})  # decode and the client ended
    plan = sweep.plan_sweep(tmp_path)
    assert str(point / "bench" / "client.json") in sweep.stale_paths(plan)
    swept = sweep.apply_sweep(plan)
    assert {Path(p).name for p in swept["removed"]} == {
        "prefill-1.json", "decode.json", "router.json", "client.json"}
    assert sorted(cluster.stopped) == ["7.0", "7.2"]  # the ended client is not touched
    (aside,) = swept["set_aside"]
    assert set(aside["moved"]) == {"fill", "bench", "logs"}
    assert not (point / "bench").exists()


@pytest.mark.parametrize("kinds, open_", [
    ([], False),
    (["eplb_rebalance_start"], True),
    (["eplb_rebalance_start", "eplb_rebalance_end"], False),
    (["eplb_rebalance_start", "eplb_rebalance_end", "decode", "eplb_rebalance_start"], True),
])
def test_a_snapshot_of_online_eplb_waits_for_an_open_rebalance(kinds, open_):
    assert profile.rebalancing([{"kind": k} for k in kinds]) is open_

"""Servers shared across prefill-group counts (site.share_servers): which points share,
the allocation and node layout of the largest point, taking servers over, the drain and
reset between points, and what the manifest says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from pdbench import config, servers, teardown, topology
from pdbench.context import PointContext
from pdbench.errors import StageError
from pdbench.http import HTTPCallError
from pdbench.layout import PointPaths, write_json
from pdbench.provenance import shared_servers

REPO = Path(__file__).resolve().parents[1]


def make_cfg(share: bool = True, **grid) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["site"]["share_servers"] = share
    raw.setdefault("grid", {}).update(grid)
    return config.validate(raw)


def names(points) -> list:
    return [None if p is None else f"{p.experiment}/{p.name}" for p in points]


@pytest.mark.parametrize("grid, expect", [
    # point: (started prefill groups, allocated nodes, previous, next on its servers)
    ({}, {"p1": (3, 18, None, "ep48/p2"), "p2": (3, 18, "ep48/p1", "ep48/p3"),
          "p3": (3, 18, "ep48/p2", None)}),
    ({"prefill_groups": [1, 2]}, {"p1": (2, 16, None, "ep48/p2"),
                                  "p2": (2, 16, "ep48/p1", None)}),
    # the recorder keeps its own 14 nodes; the static and online groups share within
    ({"eplb": ["none", "static", "online"]},
     {"p1": (1, 14, None, None), "p2": (3, 18, None, "ep48/p3"),
      "p3": (3, 18, "ep48/p2", None),
      "p1-eplb_static": (3, 18, None, "ep48/p2-eplb_static"),
      "p3-eplb_static": (3, 18, "ep48/p2-eplb_static", None),
      "p2-eplb_online": (3, 18, "ep48/p1-eplb_online", "ep48/p3-eplb_online")}),
    ({"prefill_groups": [2]}, {"p2": (2, 16, None, None)}),
])
def test_points_that_differ_only_in_prefill_groups_run_in_the_largest_allocation(grid, expect):
    cfg = make_cfg(**grid)
    for name, (started, nodes, previous, following) in expect.items():
        point = config.find_point(cfg, "ep48", name)
        assert (point.started_prefill_groups, point.allocated_nodes) == (started, nodes), name
        assert names(config.allocation_neighbours(cfg, point)) == [previous, following], name
        assert names(config.server_neighbours(cfg, point)) == [previous, following], name


def test_without_sharing_every_point_keeps_its_own_allocation_and_neighbours():
    for share, reuse in ((False, False), (False, True)):
        raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
        raw["site"].update(share_servers=share, reuse_allocation=reuse)
        cfg = config.validate(raw)
        for point in config.grid_points(cfg):
            assert point.allocated_nodes == point.total_nodes
            assert not point.shares_servers
            assert config.server_neighbours(cfg, point) == (None, None)
            assert config.servers_home(cfg, point) == point


def test_sharing_and_reuse_together_keep_unshared_points_apart():
    """The recorder (14 nodes, alone) and the shared points (18) never pass an allocation
    to each other; the shared points chain among themselves."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["site"].update(share_servers=True, reuse_allocation=True)
    raw["grid"] = {"eplb": ["none", "static"]}
    cfg = config.validate(raw)
    recorder = config.find_point(cfg, "ep48", "p1")
    assert config.allocation_neighbours(cfg, recorder) == (None, None)
    p3 = config.find_point(cfg, "ep48", "p3")
    assert names(config.allocation_neighbours(cfg, p3)) == ["ep48/p2", None]
    assert names([config.servers_home(cfg, p3)]) == ["ep48/p2"]


@pytest.mark.parametrize("name, prefill, idle", [
    ("p1", ["prefill-1"], ["prefill-2", "prefill-3"]),
    ("p2", ["prefill-1", "prefill-2"], ["prefill-3"]),
    ("p3", ["prefill-1", "prefill-2", "prefill-3"], []),
])
def test_every_point_of_a_group_places_the_servers_where_the_largest_does(name, prefill, idle):
    cfg = make_cfg()
    nodes = [f"gb-{i:03d}" for i in range(1, 19)]
    plan = topology.plan(config.find_point(cfg, "ep48", name), nodes, cfg["ports"])
    assert [s.name for s in plan.prefill] == prefill
    assert [s.name for s in plan.idle_prefill] == idle
    assert plan.decode.node_names == nodes[6:]
    assert [s.node_names for s in plan.started_servers[:3]] == [nodes[0:2], nodes[2:4],
                                                               nodes[4:6]]
    assert plan.router_node == nodes[0] and plan.unused_nodes == ()
    assert plan.server("prefill-3").node_names == nodes[4:6]  # launched or taken over
    assert [s["name"] for s in plan.to_dict()["idle_prefill"]] == idle


def shared_ctx(tmp_path: Path, name: str, cfg: dict | None = None) -> PointContext:
    cfg = cfg or make_cfg()
    point = config.find_point(cfg, "ep48", name)
    paths = PointPaths(tmp_path / "results" / "ep48" / name)
    nodes = [f"gb-{i:03d}" for i in range(1, 19)]
    write_json(paths.allocation, {"job_id": 77, "adopted": False, "nodelist": "gb-[001-018]",
                                  "nodes": nodes, "addresses": {n: n for n in nodes},
                                  "start_time": "2026-12-05T07:00:00+00:00"})
    return PointContext(cfg, point, paths)


def ready_marker(ctx: PointContext, server: str, step: int) -> dict:
    marker = {"server": server, "role": server.split("-")[0], "url": f"http://{server}:1",
              "job_id": 77, "step_id": f"77.{step}", "srun_pid": 4000 + step,
              "started_at": "2026-12-05T07:00:01+00:00",
              "ready_at": "2026-12-05T07:10:00+00:00"}
    write_json(ctx.paths.ready(server), marker)
    return marker


class Launched(Exception):
    """start_step was called: the server is being started, not taken over."""


def test_the_next_point_takes_the_running_servers_over(tmp_path, monkeypatch):
    p1, p2 = shared_ctx(tmp_path, "p1"), shared_ctx(tmp_path, "p2")
    original = {**ready_marker(p1, "decode", 5), "servers_started_by": "ep48/p1"}
    write_json(p1.paths.ready("decode"), original)
    alive = {"77.5"}
    monkeypatch.setattr(servers, "server_alive", lambda m: m["step_id"] in alive)
    monkeypatch.setattr(servers, "probe", lambda url: 200)
    monkeypatch.setattr(servers, "record_server_info", lambda *a: None)

    def start_step(ctx, launch):
        raise Launched(launch)

    monkeypatch.setattr(servers, "start_step", start_step)
    marker = servers.launch_server(p2, "decode")
    assert marker["step_id"] == "77.5" and marker["shared_from"] == "ep48/p1"
    assert marker["servers_started_by"] == "ep48/p1"
    assert marker["first_ready_at"] == original["ready_at"] and marker["startup_s"] == 0
    assert marker["ready_at"] > original["ready_at"]
    # its logs and launch commands are the first point's: what the fill, profiles,
    # throughput and manifest read
    assert p2.servers_started_by == "ep48/p1" and p2.servers_paths.root == p1.paths.root
    # one that runs but does not answer is an error naming it
    monkeypatch.setattr(servers, "probe", lambda url: None)
    with pytest.raises(servers.ServerError, match=r"77\.5\) runs but does not answer"):
        servers.launch_server(p2, "decode")
    # a shared server that is gone (a rerun after a failure) starts again here
    alive.clear()
    with pytest.raises(Launched):
        servers.launch_server(p2, "decode")
    with pytest.raises(Launched):
        servers.launch_server(p2, "prefill-2")  # p1 has no marker of it


def test_a_point_that_started_the_servers_again_is_where_its_group_continues(tmp_path):
    p2, p3 = shared_ctx(tmp_path, "p2"), shared_ctx(tmp_path, "p3")
    assert p2.servers_started_by == "ep48/p1"  # before any server: the group's first
    write_json(p2.paths.ready("decode"), {"servers_started_by": "ep48/p2"})
    write_json(p3.paths.ready("decode"), {"servers_started_by": "ep48/p2",
                                          "shared_from": "ep48/p2"})
    assert p2.servers_started_by == p3.servers_started_by == "ep48/p2"
    assert p3.decode_logs() == p2.paths.server_logs("decode")
    record = shared_servers(p2, {"decode": {}})
    assert record["started_here"] and record["reset_before_fill"] is None
    assert shared_servers(p3, {})["servers_started_by"] == "ep48/p2"


DECODE_LOG = "launch_server_decode_node_rank_{}.log"


class FakeServers:
    """/flush_cache of every started server; decode's answer and its log lines follow
    ``decode_pending``: one (queue, running) per round, then empty."""

    def __init__(self, ctx: PointContext, decode_pending: list[tuple[int, int]],
                 log_says_flushed: bool = True):
        self.ctx, self.pending = ctx, list(decode_pending)
        self.log_says_flushed = log_says_flushed
        self.calls: list[str] = []
        self.log = ctx.paths.logs / DECODE_LOG.format(0)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("[2026-12-05 07:00:00 DP0 TP0 EP0] Cache flushed successfully!\n")

    def __call__(self, method, url, body=None, timeout_s=30.0, retry=True):
        self.calls.append(url)
        if url != f"{self.ctx.plan.decode.url}/flush_cache":
            return None
        with self.log.open("a") as fh:
            if self.pending:
                queue, running = self.pending.pop(0)
                fh.write("[2026-12-05 07:30:00] Cache not flushed because there are pending "
                         f"requests. #queue-req: {queue}, #running-req: {running}\n")
                raise HTTPCallError(f"POST {url} answered 400: Cache not flushed")
            if self.log_says_flushed:
                fh.write("[2026-12-05 07:30:01 DP0 TP0 EP0] Cache flushed successfully!\n")
        return None


@pytest.mark.parametrize("pending, rounds", [([], 1), ([(0, 3)], 2), ([(2, 0), (0, 1)], 3)])
def test_the_reset_flushes_every_server_once_decode_is_empty(tmp_path, monkeypatch, pending,
                                                             rounds):
    ctx = shared_ctx(tmp_path, "p1")
    fake = FakeServers(ctx, pending)
    monkeypatch.setattr(teardown, "call", fake)
    monkeypatch.setattr(teardown.time, "monotonic", iter(range(0, 10_000, 3)).__next__)
    result = teardown.reset_shared_servers(ctx)
    assert result["rounds"] == rounds
    assert result["servers"] == ["prefill-1", "prefill-2", "prefill-3", "decode"]
    # the flush line logged before the first request is not taken as its answer
    assert result["decode_log_flushed_records"] == 1
    assert len(fake.calls) == 4 * rounds


@pytest.mark.parametrize("pending, says, message", [
    ([(0, 4)] * 10_000, True, r"decode's log: \{'queue_req': 0, 'running_req': 4\}"),
    ([], False, "decode's log shows no flush"),
])
def test_a_decode_that_does_not_empty_stops_the_teardown_naming_what_is_left(
        tmp_path, monkeypatch, pending, says, message):
    ctx = shared_ctx(tmp_path, "p1")
    ctx.cfg["timeouts"]["drain_s"] = 1
    monkeypatch.setattr(teardown, "call", FakeServers(ctx, pending, log_says_flushed=says))
    with pytest.raises(StageError, match=rf"timeouts\.drain_s.*{message}"):
        teardown.reset_shared_servers(ctx)


@pytest.fixture
def stopped(monkeypatch):
    record = {"steps": [], "cancelled": []}
    monkeypatch.setattr(teardown, "stop_step", lambda m: record["steps"].append(m["step_id"]))
    monkeypatch.setattr(teardown.slurm, "cancel", lambda job: record["cancelled"].append(job))
    return record


@pytest.mark.parametrize("keep_allocation", [False, True])
def test_a_points_teardown_keeps_the_shared_servers_for_the_next_and_the_last_stops_them(
        tmp_path, monkeypatch, stopped, keep_allocation):
    cfg = make_cfg()
    cfg["site"]["keep_allocation"] = keep_allocation
    p1, p3 = shared_ctx(tmp_path, "p1", cfg), shared_ctx(tmp_path, "p3", cfg)
    for ctx in (p1, p3):
        for i, server in enumerate(["prefill-1", "prefill-2", "prefill-3", "decode",
                                    "router"]):
            ready_marker(ctx, server, i + 1 if ctx is p1 or server != "router" else 9)
        write_json(ctx.paths.client, {"job_id": 77, "step_id": "77.8", "srun_pid": 1})
    monkeypatch.setattr(teardown, "reset_shared_servers", lambda ctx: {"rounds": 1})
    result = teardown.teardown_point(p1)
    assert sorted(stopped["steps"]) == ["77.5", "77.8"]  # its router and client only
    assert stopped["cancelled"] == [] and result["cancelled_job"] is None
    assert result["servers_passed_to"] == "ep48/p2" and result["reset"] == {"rounds": 1}
    stopped["steps"].clear()
    result = teardown.teardown_point(p3)
    if keep_allocation:  # the last point keeps everything for more snapshots
        assert stopped == {"steps": [], "cancelled": []} and result["kept"]
        return
    assert sorted(stopped["steps"]) == ["77.1", "77.2", "77.3", "77.4", "77.8", "77.9"]
    assert stopped["cancelled"] == ["77"] and "servers_passed_to" not in result


def test_the_manifest_says_the_point_ran_on_shared_servers(tmp_path):
    p1, p2 = shared_ctx(tmp_path, "p1"), shared_ctx(tmp_path, "p2")
    write_json(p1.paths.teardown, {"reset": {"rounds": 2, "flushed_at": "t"}})
    ready = {"decode": {"shared_from": "ep48/p1"}, "router": {}}
    record = shared_servers(p2, ready)
    assert record == {
        "group": ["ep48/p1", "ep48/p2", "ep48/p3"],
        "servers_started_by": "ep48/p1",
        "started_here": False,
        "taken_over_from": {"decode": "ep48/p1"},
        "idle_prefill": ["prefill-3"],
        "idle_prefill_gpus": 8,
        "reset_before_fill": {"rounds": 2, "flushed_at": "t"},
        "passed_to": "ep48/p3",
    }
    assert shared_servers(p1, {})["started_here"] is True
    alone = shared_ctx(tmp_path / "own", "p1", make_cfg(share=False))
    assert shared_servers(alone, {}) is None


def test_the_reset_waits_for_an_emulated_decode_to_empty(tmp_path):
    """Against the SGLang emulator: /flush_cache is refused (400, and decode logs "Cache
    not flushed … #running-req: N") while requests run, and the reset ends once they are
    done and the flush is logged."""
    from types import SimpleNamespace

    from test_emulator import Server, decode_args, fire

    ctx = shared_ctx(tmp_path, "p1")
    decode = Server(ctx.paths.logs, "launch_server_decode", decode_args(4))
    ctx.paths.logs.mkdir(parents=True, exist_ok=True)
    decode.start().wait_ready()
    try:
        spec = SimpleNamespace(name="decode", url=decode.url)
        ctx.__dict__["plan"] = SimpleNamespace(decode=spec, started_servers=(spec,))
        # decode-only requests (a fake prefill): 40 tokens each at about 20 ms a step
        fire(decode.url, [{"input_ids": [1] * 16, "sampling_params": {"max_new_tokens": 40},
                           "bootstrap_host": "2.2.2.2", "bootstrap_room": 0}] * 8)
        deadline = time.monotonic() + 20
        while "#running-req: " not in decode.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = teardown.reset_shared_servers(ctx)
        assert result["rounds"] >= 2, result  # refused while the requests ran
        assert result["decode_log_flushed_records"] >= 1
        text = decode.text()
        assert "Cache not flushed because there are pending requests." in text
        # the flush that ended it came after the last refusal
        assert "Cache flushed successfully!" in text.rsplit("Cache not flushed", 1)[1]
    finally:
        decode.stop()

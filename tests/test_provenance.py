"""The point manifest: the stage timeline and its GPU-hours, Slurm accounting, file hashes,
versions, and the config that reruns exactly the point."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from pdbench import config, provenance
from pdbench.cli import main
from pdbench.context import PointContext
from pdbench.errors import InputError
from pdbench.layout import PointPaths, write_json, write_text

REPO = Path(__file__).resolve().parents[1]
T0 = "2026-12-05T07:00:00+00:00"


def at(seconds: float) -> str:
    """T0 + seconds, as stages record times."""
    import datetime as dt

    return (dt.datetime.fromisoformat(T0) + dt.timedelta(seconds=seconds)).isoformat(
        timespec="milliseconds")


@pytest.fixture
def ctx(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = config.validate(raw)
    point = config.find_point(cfg, "ep48", "p1")
    paths = PointPaths(tmp_path / "results" / "ep48" / "p1")
    nodes = [f"gb-{i:03d}" for i in range(1, point.total_nodes + 1)]
    write_json(paths.allocation, {"job_id": 4242, "adopted": False, "nodelist": f"gb-[001-{point.total_nodes:03d}]",
                                  "nodes": nodes, "addresses": {n: n for n in nodes},
                                  "start_time": T0})
    c = PointContext(cfg, point, paths)
    for name, start, ready in (("prefill-1", 1, 600), ("decode", 0, 900)):
        write_json(paths.ready(name), {"server": name, "role": name.split("-")[0],
                                       "step_id": f"4242.{start + 1}", "started_at": at(start),
                                       "ready_at": at(ready)})
        write_json(paths.server_info(name), {"url": "u", "at": at(ready), "info": {
            "version": "0.5.5.post2", "tp_size": 8, "internal_states": [{"x": 1}] * 3}})
    write_json(paths.ready("router"), {"server": "router", "step_id": "4242.3",
                                       "started_at": at(900), "ready_at": at(930)})
    write_json(paths.client, {"step_id": "4242.0", "started_at": at(0)})
    paths.node_versions("bench_client").parent.mkdir(parents=True, exist_ok=True)
    paths.node_versions("bench_client").write_text(json.dumps(
        {"python": "3.12.3", "packages": {"sglang": "0.5.5.post2"}}))
    write_json(paths.filled, {"started_at": at(960), "filled_at": at(1260),
                              "release_requested_at": at(1260)})
    write_json(paths.released, {"released_at": at(1262)})
    for k, done in ((1, 1300), (2, 1340)):
        write_json(paths.snapshot(k), {"requested_at": at(done - 20), "done_at": at(done)})
        paths.snapshot_traces(k).mkdir(parents=True)
        (paths.snapshot_traces(k) / f"{k}-TP-0.trace.json.gz").write_bytes(b"trace %d" % k)
    write_json(paths.teardown, {"at": at(1400)})
    log = paths.node_log(paths.server_log_role("decode"), 0)
    log.write_text("[2026-12-05 07:00:10 DP0 TP0 EP0] Decode batch. #running-req: 1\n")
    paths.bench.write_text('{"completed": 4}\n')
    return c


GPUS = 14 * 4  # p1 of the default config: 2 prefill + 12 decode nodes of 4 GPUs
SACCT_OK = {"job_id": "4242", "elapsed_s": 1400, "gpus": GPUS, "gpu_hours": 1400 * GPUS / 3600}


def test_stages_tile_the_point_and_their_gpu_hours_add_up(ctx):
    manifest = provenance.build_manifest(ctx, workdir=REPO, sacct=SACCT_OK)
    stages = manifest["stages"]
    assert [s["stage"] for s in stages] == ["servers start-up", "router and client", "fill",
                                             "release", "profiles", "drain and teardown"]
    assert [s["seconds"] for s in stages] == [900, 60, 300, 2, 78, 60]
    assert all(s["gpus"] == GPUS for s in stages)
    assert manifest["gpu_hours"]["from_stage_records"] == pytest.approx(GPUS * 1400 / 3600)
    assert manifest["gpu_hours"]["differ"] is False


def test_a_sacct_figure_far_from_the_stage_records_is_flagged(ctx):
    manifest = provenance.build_manifest(
        ctx, workdir=REPO, sacct={**SACCT_OK, "gpu_hours": 2 * SACCT_OK["gpu_hours"]})
    assert manifest["gpu_hours"]["differ"] is True
    assert manifest["gpu_hours"]["from_sacct"] == pytest.approx(2 * 1400 * GPUS / 3600)


def test_manifest_records_versions_steps_commands_and_hashes(ctx):
    write_text(ctx.paths.launcher_script("decode"), "#!/bin/sh\nexec sglang\n")
    write_text(ctx.paths.srun_script("decode"), "#!/bin/sh\nsrun x\n")
    manifest = provenance.build_manifest(ctx, workdir=REPO, sacct=SACCT_OK)
    decode = manifest["sglang"]["servers"]["decode"]
    assert decode["version"] == "0.5.5.post2"
    assert decode["server_args"] == {"tp_size": 8}
    assert manifest["sglang"]["servers"]["client"]["packages"]["python"] == "3.12.3"
    assert manifest["slurm"]["steps"] == {"decode": "4242.1", "prefill-1": "4242.2",
                                          "router": "4242.3", "client": "4242.0"}
    assert manifest["commands"]["decode"] == {"launcher": "#!/bin/sh\nexec sglang\n",
                                              "srun": "#!/bin/sh\nsrun x\n"}
    hashes = manifest["files_sha256"]
    trace = "profile/2/traces/2-TP-0.trace.json.gz"
    assert hashes[trace] == hashlib.sha256(b"trace 2").hexdigest()
    assert "bench/bench.jsonl" in hashes and "logs/launch_server_decode_node_rank_0.log" in hashes
    assert manifest["repository"]["commit"] and len(manifest["repository"]["commit"]) == 40
    assert manifest["orchestrator"]["packages"]["snakemake"] == "9.27.1"
    assert manifest["emulated"] is False


@pytest.mark.parametrize("text, expect", [
    ("4242|1400|billing=64,cpu=64,gres/gpu=64,node=16|COMPLETED|s|e\n",
     {"elapsed_s": 1400, "gpus": 64, "gpu_hours": pytest.approx(1400 * 64 / 3600)}),
    ("4242|1400|cpu=64,node=16|COMPLETED|s|e\n",
     {"unavailable": "accounting lists no gres/gpu for job 4242"}),
    ("4243|1400|gres/gpu=64|COMPLETED|s|e\n", {"unavailable": "sacct has no record of job 4242"}),
    ("", {"unavailable": "sacct has no record of job 4242"}),
    ("4242|abc|gres/gpu=64|RUNNING|s|e\n", {"unavailable": pytest.approx}),
    ("4242|-5|gres/gpu=64|RUNNING|s|e\n",
     {"unavailable": "sacct gave a negative elapsed time for job 4242"}),
])
def test_sacct_records(text, expect):
    got = provenance.parse_sacct(text, 4242)
    for key, value in expect.items():
        if value is pytest.approx:
            assert "unreadable" in got[key]
        else:
            assert got[key] == value


def test_rerun_config_round_trips_to_exactly_the_point(ctx, tmp_path, capsys):
    manifest = provenance.build_manifest(ctx, workdir=REPO, sacct=SACCT_OK)
    write_json(ctx.paths.manifest, manifest)
    out = tmp_path / "rerun.yaml"
    assert main(["rerun-config", str(ctx.paths.manifest), "--out", str(out)]) == 0
    rerun = config.validate(yaml.safe_load(out.read_text()), source=str(out))
    assert [(p.experiment, p.name) for p in config.grid_points(rerun)] == [("ep48", "p1")]
    # Everything but the grid is the run's resolved config, unchanged.
    assert {k: v for k, v in rerun.items() if k != "grid"} == {
        k: v for k, v in ctx.cfg.items() if k != "grid"}
    # A manifest built from the rerun config records the same config again.
    again = PointContext(rerun, config.find_point(rerun, "ep48", "p1"), ctx.paths)
    assert provenance.build_manifest(again, workdir=REPO, sacct=SACCT_OK)["config"] == rerun


@pytest.mark.parametrize("content, message", [
    ("not json", "is not valid JSON"),
    ("[1, 2]", "not a pdbench manifest"),
    ('{"schema": 1}', "not a pdbench manifest"),
    ('{"schema": 99, "config": {}}', "manifest schema 99"),
])
def test_rerun_config_refuses_what_is_not_a_manifest(tmp_path, content, message):
    path = tmp_path / "manifest.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        provenance.rerun_config(path)


def test_rerun_config_refuses_a_manifest_whose_grid_has_other_points(ctx, tmp_path):
    manifest = provenance.build_manifest(ctx, workdir=REPO, sacct=SACCT_OK)
    manifest["config"]["grid"]["prefill_groups"] = [1, 2]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="not exactly point ep48/p1"):
        provenance.rerun_config(path)


def test_a_static_point_reruns_from_the_recorded_file(tmp_path):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["grid"]["eplb"] = ["none", "static"]
    cfg = config.validate(raw)
    static = config.find_point(cfg, "ep48", "p1-eplb_static")
    dump = tmp_path / "results" / "ep48" / "eplb" / "expert_distribution.pt"
    dump.parent.mkdir(parents=True)
    dump.write_bytes(b"recorded")
    narrowed = provenance.point_config(cfg, static, dump)
    rerun = config.validate(narrowed, workdir=tmp_path)
    (point,) = config.grid_points(rerun)
    assert point.name == "p1-eplb_static" and not point.records_experts
    assert rerun["eplb"]["static"]["init_expert_location"] == str(dump)
    assert provenance.expert_distribution(dump)["sha256"] == hashlib.sha256(
        b"recorded").hexdigest()
    assert provenance.expert_distribution(None) is None

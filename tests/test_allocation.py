"""Allocation: holder sbatch flags, and reuse of one allocation by points of the same size."""

import json
from pathlib import Path

import yaml

from pdbench import allocation, config, slurm
from pdbench.layout import PointPaths

REPO = Path(__file__).resolve().parents[1]


def cfg_with(**site):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["grid"]["eplb"] = ["none", "online"]
    raw["site"].update(site)
    return config.validate(raw)


def test_holder_sbatch_flags():
    cfg = cfg_with(account="acct", segment=14, sbatch_extra=["--mem=0"])
    argv = slurm.holder_sbatch_argv(cfg["site"], 14, "pdbench-ep48-p1", "/r/alloc-%j.out")
    assert argv[:2] == ["sbatch", "--parsable"]
    for flag in (
        ["--nodes", "14"],
        ["--partition", "batch"],
        ["--account", "acct"],
        ["--time", "04:00:00"],
        ["--job-name", "pdbench-ep48-p1"],
    ):
        i = argv.index(flag[0])
        assert argv[i : i + 2] == flag
    assert "--gpus-per-node=4" in argv and "--exclusive" in argv and "--segment=14" in argv
    assert "--mem=0" in argv
    assert argv[-2:] == ["--wrap", "exec sleep infinity"]


def test_neighbours_only_with_reuse():
    cfg = cfg_with()
    p1 = config.find_point(cfg, "ep48", "p1")
    assert config.allocation_neighbours(cfg, p1) == (None, None)
    cfg = cfg_with(reuse_allocation=True)
    p1 = config.find_point(cfg, "ep48", "p1")
    online = config.find_point(cfg, "ep48", "p1-eplb_online")
    assert config.allocation_neighbours(cfg, p1) == (None, online)
    assert config.allocation_neighbours(cfg, online) == (p1, None)


def test_next_point_adopts_the_live_holder(tmp_path, monkeypatch):
    cfg = cfg_with(reuse_allocation=True)
    first = PointPaths.of(tmp_path, "ep48", "p1")
    first.allocation.parent.mkdir(parents=True)
    record = {
        "job_id": 77,
        "adopted": False,
        "nodelist": "gb-[001-014]",
        "point": "ep48/p1",
        "nodes": [],
        "addresses": {},
    }
    first.allocation.write_text(json.dumps(record))
    monkeypatch.setattr(
        slurm, "job_info", lambda j: slurm.JobInfo(j, "RUNNING", "gb-[001-014]", "")
    )
    submitted = []
    monkeypatch.setattr(slurm, "submit_holder", lambda *a: submitted.append(a) or 99)
    second = PointPaths.of(tmp_path, "ep48", "p1-eplb_online")
    result = allocation.allocate(cfg, config.find_point(cfg, "ep48", "p1-eplb_online"), second)
    assert result["job_id"] == 77 and result["reused_from"] == "ep48/p1"
    assert json.loads(second.allocation.read_text())["job_id"] == 77
    assert submitted == []
    # A holder that has ended is not reused.
    monkeypatch.setattr(slurm, "job_info", lambda j: slurm.JobInfo(j, "GONE", "", ""))
    assert (
        allocation._reusable(cfg, config.find_point(cfg, "ep48", "p1-eplb_online"), second) is None
    )

"""The local launcher (site.launcher: local): slots and their GPUs, the local step script
run for real, signals to a step's tasks, and the checks that refuse what cannot run."""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pdbench import commands, config, localhost
from pdbench.errors import ConfigError
from pdbench.slurm import pid_alive, stop_process_group

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def site(gpus, per_node, share=False):
    return {"gpus_per_node": per_node,
            "local": {"gpus": gpus, "share_gpus": share, "address": "127.0.0.1"}}


@pytest.mark.parametrize("gpus, per_node, slots, share, expected", [
    ([0], 1, 1, False, [[0]]),
    ([0], 1, 2, True, [[0], [0]]),                       # one H200, prefill + decode
    ([0, 1, 2, 3], 1, 2, False, [[0], [1]]),
    ([0, 1, 2, 3, 4, 5, 6, 7], 4, 2, False, [[0, 1, 2, 3], [4, 5, 6, 7]]),
    ([4, 5, 6, 7], 2, 2, False, [[4, 5], [6, 7]]),       # GPUs as the host numbers them
    ([0, 1, 2], 2, 3, True, [[0, 1], [0, 1], [0, 1]]),   # a spare GPU is never half a slot
])
def test_slots_take_gpus_in_order(gpus, per_node, slots, share, expected):
    assert localhost.slot_gpus(site(gpus, per_node, share), slots) == expected


@pytest.mark.parametrize("gpus, per_node, slots, named", [
    ([0, 1, 2], 4, 1, "hold no slot"),
    ([0, 1], 1, 3, "site.local.share_gpus"),
    ([0, 1, 2, 3], 2, 3, "needs 3 slot(s)"),
])
def test_too_few_gpus_is_refused_naming_the_key(gpus, per_node, slots, named):
    with pytest.raises(ConfigError, match="site.local.gpus") as err:
        localhost.slot_gpus(site(gpus, per_node), slots)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_allocation_record_places_every_slot_on_the_local_address():
    record = localhost.allocation_record(site([0, 1], 1), 2)
    assert record["nodelist"] == "local[0-1]" and record["nodes"] == ["local0", "local1"]
    assert record["addresses"] == {"local0": "127.0.0.1", "local1": "127.0.0.1"}
    assert record["gpus"] == {"local0": "0", "local1": "1"}
    assert localhost.is_local(record) and record["job_id"] == localhost.JOB_ID


def _run_step(tmp_path: Path, nodes: list[str], task: str, timeout: float = 30):
    record = localhost.allocation_record(site(list(range(len(nodes))), 1), len(nodes))
    task_script = tmp_path / "task.sh"
    task_script.write_text(task)
    runner = tmp_path / "step.sh"
    runner.write_text(localhost.step_script(record, record["nodes"], ["bash", str(task_script)],
                                            "t"))
    start = time.monotonic()
    out = subprocess.run(["bash", str(runner)], capture_output=True, text=True,
                         timeout=timeout, cwd=tmp_path)
    return out, time.monotonic() - start


def test_every_task_gets_its_rank_and_gpus(tmp_path):
    out, _ = _run_step(tmp_path, ["a", "b", "c"],
                       'echo "$PDBENCH_NODE_RANK:$CUDA_VISIBLE_DEVICES" >> ranks\n')
    assert out.returncode == 0
    assert sorted((tmp_path / "ranks").read_text().split()) == ["0:0", "1:1", "2:2"]


def test_the_first_task_to_end_ends_the_step_with_its_status(tmp_path):
    # Rank 1 fails at once; rank 0 would run a minute: the step ends with rank 1's status
    # and stops rank 0 (srun --kill-on-bad-exit).
    out, seconds = _run_step(tmp_path, ["a", "b"], 'if [ "$PDBENCH_NODE_RANK" = 1 ]; then '
                             'exit 7; fi\nexec sleep 60\n')
    assert out.returncode == 7 and seconds < 10
    assert subprocess.run(["pgrep", "-f", "exec sleep 60"], capture_output=True).returncode


def test_node_launcher_script_picks_the_command_by_local_rank(tmp_path):
    script = commands.node_launcher_script([["echo", "zero"], ["echo", "one"]], {},
                                           role_name="decode")
    (tmp_path / "launch.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    for rank, word in ((0, "zero"), (1, "one")):
        out = subprocess.run(["bash", str(tmp_path / "launch.sh")], capture_output=True,
                             text=True, env={**env, "PDBENCH_NODE_RANK": str(rank)})
        assert out.stdout.strip() == word


def test_signal_reaches_the_tasks_and_not_the_step(tmp_path):
    """The client's start signal (USR1) goes to the step's tasks; the step's own bash
    would die of it."""
    record = localhost.allocation_record(site([0], 1), 1)
    task = tmp_path / "task.sh"
    task.write_text("trap 'echo got > got; exit 0' USR1\necho armed > armed\n"
                    "while true; do sleep 0.1; done\n")
    runner = tmp_path / "step.sh"
    runner.write_text(localhost.step_script(record, ["local0"], ["bash", str(task)], "t"))
    proc = subprocess.Popen(["bash", str(runner)], cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "armed").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert localhost.task_pids(proc.pid), "the step has a task"
        assert localhost.signal_tasks(proc.pid, "USR1") == ""
        assert proc.wait(timeout=10) == 0, "the task ended by its trap, the step with it"
        assert (tmp_path / "got").read_text().strip() == "got"
        assert "no running task" in localhost.signal_tasks(proc.pid, "USR1")
    finally:
        stop_process_group(proc.pid, grace_s=2)
    assert not pid_alive(proc.pid)


def _deep_update(target: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _local_cfg(**site_keys) -> dict:
    """The small chain's config (EP8: 2 decode nodes and 1 prefill node of 4 GPUs) on the
    local launcher without a container."""
    cfg = copy.deepcopy(BASE)
    for overlay in ("chain-small.yaml", "chain-local.yaml"):
        _deep_update(cfg, yaml.safe_load((REPO / "tests" / "data" / "configs" / overlay)
                                         .read_text()))
    return _deep_update(cfg, {"site": site_keys})


@pytest.mark.parametrize("site_keys, named", [
    ({"container": {"runtime": "pyxis", "image": "x.sqsh"}}, "site.container.runtime"),
    ({"allocation_job_id": 123}, "site.allocation_job_id"),
    ({"local": {"gpus": [0, 1, 2, 3], "share_gpus": False}}, "site.local.gpus"),
    ({"local": {"gpus": [0, 1]}}, "site.local.gpus"),  # no slot of 4 GPUs
])
def test_what_the_local_launcher_cannot_run_is_refused(site_keys, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as err:
        config.validate(_local_cfg(**site_keys))
    assert "\n" not in str(err.value)


def test_a_host_with_the_gpus_of_every_slot_needs_no_sharing():
    cfg = config.validate(_local_cfg(local={"gpus": list(range(12)), "share_gpus": False}))
    assert cfg["site"]["launcher"] == "local"


@pytest.mark.parametrize("runtime, image, expected", [
    ("none", None, ["bash", "/w/s.sh"]),
    ("apptainer", "img.sif", ["apptainer", "exec", "--nv", "--bind", "/w:/w", "--pwd", "/w",
                              "img.sif", "bash", "/w/s.sh"]),
])
def test_local_task_runs_the_script_in_the_configured_container(runtime, image, expected,
                                                                monkeypatch):
    monkeypatch.chdir("/")
    monkeypatch.setattr(os, "getcwd", lambda: "/w")
    cfg = {"site": {"container": {"runtime": runtime, "image": image, "mounts": [],
                                  "workdir": None, "mount_workdir": True, "extra_args": []}}}
    assert commands.local_task_argv(cfg, "/w/s.sh") == expected


def _merged(*names: str) -> dict:
    cfg = copy.deepcopy(BASE)
    for name in names:
        _deep_update(cfg, yaml.safe_load((REPO / "config" / name).read_text()))
    return config.validate(cfg)


@pytest.mark.parametrize("names, experiment, points, slots", [
    (("single-gpu-pd.yaml",), "ep1", ["p1"], {"local0": "0", "local1": "0"}),
    (("single-gpu-pd.yaml", "single-gpu-pd-eplb.yaml"), "ep1", ["p1", "p1-eplb_static"],
     {"local0": "0", "local1": "0"}),
    (("single-gpu-pd.yaml", "multi-gpu-ep.yaml"), "ep4",
     ["p1", "p1-eplb_static", "p1-eplb_online"], {"local0": "0,1,2,3", "local1": "4,5,6,7"}),
])
def test_the_shipped_one_host_configs_plan_their_gpus(names, experiment, points, slots):
    """The configs for one host validate on top of config/config.yaml (its GB200 settings
    removed) and place prefill and decode on the GPUs their comments say."""
    from pdbench.grid import grid_points

    cfg = _merged(*names)
    grid = grid_points(cfg)
    assert [p.name for p in grid] == points and {p.experiment for p in grid} == {experiment}
    record = localhost.allocation_record(cfg["site"], grid[0].allocated_nodes)
    assert record["gpus"] == slots
    assert cfg["env"]["common"].get("MC_FORCE_MNNVL") is None  # removed by null


@pytest.mark.parametrize("launcher, gpus, per_node, share, nodes, held", [
    ("slurm", [0], 4, False, 14, 56),            # Slurm: GPUs per node, whatever site.local says
    ("local", [0], 1, True, 2, 1),               # prefill and decode share one GPU
    ("local", [0, 1, 2, 3], 1, True, 6, 4),      # six slots wrap around four GPUs
    ("local", list(range(8)), 4, False, 2, 8),
])
def test_gpu_hours_count_the_gpus_a_point_holds(launcher, gpus, per_node, share, nodes, held):
    """The estimate and the manifest charge GPUs held: slots that share a GPU count it once."""
    site_ = {**site(gpus, per_node, share), "launcher": launcher}
    assert localhost.gpus_held(site_, nodes) == held

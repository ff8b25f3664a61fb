"""`pdbench render`: every command of a point for a node list, nothing started or written."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pdbench import config as config_mod
from pdbench.render import as_text, render_point

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pdbench.cli"]


@pytest.fixture
def cfg():
    return config_mod.load(REPO / "config/config.yaml")


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def test_render_shows_the_whole_launch_and_writes_nothing(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sections = render_point(cfg, "ep48", "p2", [f"gb-{i:03d}" for i in range(1, 19)])
    assert _tree(tmp_path) == []  # no results/, no commands/, no logs/
    titles = [s["title"] for s in sections]
    assert titles[0].startswith("allocation: holder job for 16 nodes")
    steps = [s for s in sections if "Slurm step" in s["title"]]
    assert [s["title"].split(":")[0] for s in steps] == [
        "prefill-1", "prefill-2", "decode", "router", "client"]
    sbatch = shlex.split(sections[0]["text"])
    assert {"--exclusive", "--mem=0", "--segment=16", "--gpus-per-node=4"} <= set(sbatch)
    decode_srun = shlex.split(next(s["text"] for s in steps if s["title"].startswith("decode")))
    assert decode_srun[decode_srun.index("--container-image") + 1] == \
        "lmsysorg/sglang:v0.5.5.post2-cu129-arm64"
    assert decode_srun[decode_srun.index("--container-mounts") + 1] == f"{tmp_path}:{tmp_path}"
    assert decode_srun[decode_srun.index("--container-workdir") + 1] == str(tmp_path)
    assert "--no-container-mount-home" in decode_srun
    script = next(s["text"] for s in sections if s["title"].startswith("decode: launcher"))
    assert script.count("--prefill-round-robin-balance") == 12  # every node rank
    assert f"export SGL_DG_CACHE_DIR={tmp_path}/.cache/sglang/decode/deep_gemm" in script
    calls = [s["text"] for s in sections if s["kind"] == "http"]
    assert '"forward_sleep_time": null' in calls[1]
    snapshots = [c for c in calls if "/start_profile" in c]
    assert len(snapshots) == cfg["profile"]["snapshots"]
    # v0.5.5.post2: profile_by_stage would crash its PD decode, so the capture starts at
    # the next forward (start_step) and num_steps is exact; traces are never merged.
    for call in snapshots:
        assert '"start_step": 1' in call and f'"num_steps": {cfg["profile"]["num_steps"]}' in call
        assert "profile_by_stage" not in call and "merge_profiles" not in call


def test_render_shows_the_client_interpreter_and_environment(cfg, tmp_path, monkeypatch):
    """A client with an interpreter of its own: its launcher script exports workload.env,
    probes that interpreter's package versions and runs the client with it; the servers
    keep site.python and do not get workload.env."""
    monkeypatch.chdir(tmp_path)
    raw = dict(cfg)
    raw["workload"] = {**cfg["workload"], "python": "/opt/client/bin/python",
                       "env": {"CLIENT_ONLY": "1"}}
    cfg = config_mod.validate(raw)
    sections = render_point(cfg, "ep48", "p1", [f"gb-{i:03d}" for i in range(1, 15)])
    client = next(s["text"] for s in sections if s["title"].startswith("client: launcher"))
    assert "export CLIENT_ONLY=1" in client
    assert "/opt/client/bin/python -c 'import importlib.metadata" in client  # versions
    assert "exec /opt/client/bin/python -c 'import runpy" in client  # the gated client
    command = next(s["text"] for s in sections if s["title"].startswith("client: the bench"))
    assert shlex.split(command)[:3] == ["/opt/client/bin/python", "-m", "sglang.bench_serving"]
    decode = next(s["text"] for s in sections if s["title"].startswith("decode: launcher"))
    assert "CLIENT_ONLY" not in decode and "/opt/client" not in decode
    assert "exec python3 -m sglang.launch_server" in decode


def test_render_cli_text_and_json(tmp_path):
    args = ["render", "--config", str(REPO / "config/config.yaml"), "--experiment", "ep48",
            "--point", "p1", "--nodelist", "gb-[001-014]", "--job-id", "4242"]
    text = subprocess.run(CLI + args, capture_output=True, text=True, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("# pdbench render: ep48/p1 on gb-[001-014] (14 nodes)")
    assert "srun --jobid 4242 --overlap --nodes 12" in text.stdout
    as_json = subprocess.run(CLI + args + ["--json"], capture_output=True, text=True,
                             cwd=tmp_path)
    sections = json.loads(as_json.stdout)
    assert {s["kind"] for s in sections} == {"shell", "file", "http"}
    assert _tree(tmp_path) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--point", "p3", "--nodelist", "gb-[001-014]"], "ep48/p3 needs 18 nodes; the node list has 14"),
    (["--point", "p9", "--nodelist", "gb-[001-018]"], "ep48/p9 is not a point of the configured grid"),
    (["--point", "p1", "--nodelist", "gb-[001-"], "gb-[001-"),
])
def test_render_errors_are_one_line(tmp_path, args, message):
    proc = subprocess.run(CLI + ["render", "--config", str(REPO / "config/config.yaml"),
                                 "--experiment", "ep48", *args],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_render_shows_the_recording_pass_and_the_relaunch_from_its_dump(tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = json.loads(json.dumps(config_mod.load(REPO / "config" / "config.yaml")))
    raw["grid"]["eplb"] = ["none", "static"]
    cfg = config_mod.validate(raw)
    nodes = [f"gb-{i:03d}" for i in range(1, 19)]

    def text(point):
        return "\n".join(s["text"] for s in render_point(cfg, "ep48", point, nodes))

    recording, static, other = text("p1"), text("p1-eplb_static"), text("p2")
    assert "/start_expert_distribution_record" in recording
    assert "/dump_expert_distribution_record" in recording
    assert "--expert-distribution-recorder-mode stat" in recording
    dump = tmp_path / "results" / "ep48" / "eplb" / "expert_distribution.pt"
    assert f"--init-expert-location {dump}" in static
    assert "expert_distribution_record" not in static + other
    assert "--expert-distribution-recorder-mode" not in static + other
    assert not (tmp_path / "results").exists()


def shared_cfg(**grid):
    raw = json.loads(json.dumps(config_mod.load(REPO / "config" / "config.yaml")))
    raw["site"]["share_servers"] = True
    raw["grid"].update(grid)
    return config_mod.validate(raw)


EIGHTEEN = [f"gb-{i:03d}" for i in range(1, 19)]
STARTED = ["prefill-1", "prefill-2", "prefill-3", "decode"]
URLS = {"prefill-1": "http://gb-001:30000", "prefill-2": "http://gb-003:30000",
        "prefill-3": "http://gb-005:30000", "decode": "http://gb-007:30000"}


@pytest.mark.parametrize("point, steps, router_prefill, servers_note, reset_before, passes_to", [
    # the group's first point starts every server of the largest point; p2 and p3's
    # prefill groups stay idle until their routers use them
    ("p1", [*STARTED, "router", "client"], ["prefill-1"],
     "servers: this point starts the shared servers", None, "ep48/p2"),
    # later points launch only their router, with their own prefill groups, and client
    ("p2", ["router", "client"], ["prefill-1", "prefill-2"],
     "servers: ep48/p1's, taken over while they run", "ep48/p1", "ep48/p3"),
    ("p3", ["router", "client"], ["prefill-1", "prefill-2", "prefill-3"],
     "servers: started by ep48/p1, passed on by ep48/p2, taken over", "ep48/p2", None),
])
def test_render_on_shared_servers_shows_what_each_point_really_runs(
        tmp_path, monkeypatch, point, steps, router_prefill, servers_note, reset_before,
        passes_to):
    monkeypatch.chdir(tmp_path)
    sections = render_point(shared_cfg(), "ep48", point, EIGHTEEN)
    titles = [s["title"] for s in sections]
    assert [t.split(":")[0] for t in titles if "Slurm step" in t] == steps
    holder = [s for s in sections if s["title"].startswith("allocation")]
    if reset_before is None:
        assert holder[0]["kind"] == "shell" and "--nodes 18 " in holder[0]["text"]
    else:
        assert holder[0]["kind"] == "note" and "sbatch" not in holder[0]["text"]
        assert holder[0]["title"].startswith(f"allocation: {reset_before}'s, taken over")
    assert any(t.startswith(servers_note) for t in titles), titles
    router = next(s["text"] for s in sections if s["title"].startswith("router: launcher"))
    assert [u for u in URLS.values() if f"--prefill {u} " in router] == [
        URLS[g] for g in router_prefill]
    assert f"--decode {URLS['decode']}" in router
    flushes = [i for i, s in enumerate(sections) if "/flush_cache" in s["text"]]
    router_at = titles.index(next(t for t in titles if t.startswith("router: Slurm step")))
    before = [sections[i]["text"] for i in flushes if i < router_at]
    after = [sections[i]["text"] for i in flushes if i > router_at]
    # every server the group started is drained and flushed between two points, the idle
    # prefill groups too: once before a later point's router, once after a point that
    # passes the servers on
    expect = [f"-X POST {URLS[s]}/flush_cache" for s in STARTED]
    assert [t.split("--max-time 60 ")[1] for t in before] == (expect if reset_before else [])
    assert [t.split("--max-time 60 ")[1] for t in after] == (expect if passes_to else [])
    if reset_before:
        assert any(t.startswith(f"drain and reset before ep48/{point} ({reset_before}'s "
                                "teardown") for t in titles)
    teardown = next(t for t in titles if t.startswith("teardown:"))
    assert (f"the servers go on to {passes_to}" in teardown if passes_to
            else "stops every server" in teardown)
    # notes are comments of the reviewable document, their title and their text
    lines = as_text(sections, "header").splitlines()
    assert all(line.startswith("# --- ") for line in lines if "servers:" in line)
    assert all(line.startswith("# ") for line in lines if "timeouts.drain_s" in line)
    assert sum("timeouts.drain_s" in line for line in lines) == bool(reset_before) + bool(
        passes_to)
    assert _tree(tmp_path) == []


def test_render_of_a_point_after_a_restart_names_who_started_its_servers(tmp_path,
                                                                        monkeypatch):
    """p2 found p1's servers gone and started them again: p3 runs on p2's, as its decode
    marker and the manifest say (PointContext.servers_started_by)."""
    from pdbench.layout import PointPaths, write_json

    monkeypatch.chdir(tmp_path)
    write_json(PointPaths.of("results", "ep48", "p3").ready("decode"),
               {"servers_started_by": "ep48/p2", "shared_from": "ep48/p2"})
    titles = [s["title"] for s in render_point(shared_cfg(), "ep48", "p3", EIGHTEEN)]
    assert "servers: ep48/p2's, taken over while they run (" + ", ".join(STARTED) + \
        "); none is launched here" in titles


def test_render_without_shared_servers_has_no_reset_and_no_note(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for point in ("p1", "p2", "p3"):
        sections = render_point(cfg, "ep48", point, EIGHTEEN)
        assert {s["kind"] for s in sections} == {"shell", "file", "http"}
        assert not any("/flush_cache" in s["text"] for s in sections)

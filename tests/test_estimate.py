"""The grid's cost before any job (pdbench.estimate): per point from site.estimate or
from earlier runs' manifests, one allocation per point against shared servers and the
bound, and the CLI that prints it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_provenance import ctx  # noqa: F401 - the fixture: a point's stage records

from pdbench import config, estimate, provenance
from pdbench.errors import ConfigError, InputError
from pdbench.layout import ResultsPaths, write_json

REPO = Path(__file__).resolve().parents[1]
GUESSES = {"startup_s": 1000, "fill_s": 400, "profiles_s": 100, "teardown_s": 50, "reset_s": 20}


def make_cfg(**grid) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw.setdefault("site", {})["estimate"] = dict(GUESSES)
    raw.setdefault("grid", {}).update(grid)
    return config.validate(raw)


def stages(**seconds) -> list[dict]:
    """A manifest's stages with the given seconds per stage name (None: not measured)."""
    names = {"startup": provenance.STAGE_STARTUP, "router": provenance.STAGE_ROUTER_CLIENT,
             "fill": provenance.STAGE_FILL, "release": provenance.STAGE_RELEASE,
             "profiles": provenance.STAGE_PROFILES, "teardown": provenance.STAGE_TEARDOWN}
    return [{"stage": names[k], "seconds": v} for k, v in seconds.items()]


def write_manifest(results: Path, experiment: str, point: str, manifest: dict) -> None:
    write_json(ResultsPaths(results).point(experiment, point).manifest, manifest)


def row(result: dict, point: str) -> dict:
    return next(r for r in result["points"] if r["point"] == point)


def test_without_earlier_runs_every_point_costs_its_gpus_times_the_configured_parts(tmp_path):
    result = estimate.estimate(make_cfg(), tmp_path)
    wall = sum(GUESSES[k] for k in ("startup_s", "fill_s", "profiles_s", "teardown_s"))
    for name, nodes in (("p1", 14), ("p2", 16), ("p3", 18)):
        r = row(result, name)
        assert (r["nodes"], r["gpus"], r["wall_s"]) == (nodes, nodes * 4, wall)
        assert r["gpu_hours"] == pytest.approx(nodes * 4 * wall / 3600)
        # the reset after p1 and p2 on shared servers is the group's, not the point's
        resets = ("reset",) if name != "p3" else ()
        assert {k: p["source"] for k, p in r["parts"].items()} == {
            k: f"site.estimate.{k}_s" for k in ("startup", "fill", "profiles", "teardown",
                                               *resets)}
    assert result["per_point"]["gpu_hours"] == pytest.approx((56 + 64 + 72) * wall / 3600)
    assert result["per_point"]["wall_s"] == 3 * wall


def test_servers_shared_across_prefill_groups_start_once_in_the_largest_allocation(tmp_path):
    result = estimate.estimate(make_cfg(), tmp_path)
    (group,) = result["shared"]["groups"]
    assert group["points"] == ["ep48/p1", "ep48/p2", "ep48/p3"]
    assert (group["nodes"], group["gpus"]) == (18, 72)
    # one start-up, three fills and profiles, two resets, one teardown
    wall = 1000 + 3 * (400 + 100) + 2 * 20 + 50
    assert group["wall_s"] == wall
    assert group["gpu_hours"] == pytest.approx(72 * wall / 3600)
    assert group["bound_gpu_hours"] == pytest.approx(72 * (1000 + 3 * 500) / 3600)
    # p1 leaves two prefill groups (16 GPUs) idle, p2 one (8 GPUs), each for its 500 s
    assert group["idle_prefill_gpu_hours"] == pytest.approx((16 + 8) * 500 / 3600)
    assert result["shared"]["not_shared"] == []
    assert result["bound_gpu_hours"] == pytest.approx(group["bound_gpu_hours"])
    assert result["shared"]["gpu_hours"] < result["per_point"]["gpu_hours"]


@pytest.mark.parametrize("grid, groups, alone", [
    # EPLB modes need other decode flags: one group per mode; the recorder starts its
    # decode with the recorder on, so it runs alone
    ({"eplb": ["none", "static", "online"]},
     [["ep48/p2", "ep48/p3"], ["ep48/p1-eplb_static", "ep48/p2-eplb_static",
                               "ep48/p3-eplb_static"],
      ["ep48/p1-eplb_online", "ep48/p2-eplb_online", "ep48/p3-eplb_online"]],
     {"ep48/p1": "records static EPLB"}),
    # another EP size is another decode server
    ({"ep_sizes": [48, 96], "prefill_groups": [1, 2]},
     [["ep48/p1", "ep48/p2"], ["ep96/p1", "ep96/p2"]], {}),
    # nothing to share with
    ({"prefill_groups": [2]}, [], {"ep48/p2": "no other point of EP 48 with EPLB none"}),
    ({"eplb": ["online"], "prefill_groups": [1, 3]},
     [["ep48/p1-eplb_online", "ep48/p3-eplb_online"]], {}),
])
def test_only_points_that_differ_in_prefill_groups_share(tmp_path, grid, groups, alone):
    result = estimate.estimate(make_cfg(**grid), tmp_path)
    assert [g["points"] for g in result["shared"]["groups"]] == groups
    reasons = {a["point"]: a["reason"] for a in result["shared"]["not_shared"]}
    assert set(reasons) == set(alone)
    for point, reason in alone.items():
        assert reasons[point].startswith(reason)
    # a point alone costs what it costs on its own
    alone_hours = sum(row(result, p.split("/")[1])["gpu_hours"] for p in alone
                      if p.startswith("ep48/"))
    group_hours = sum(g["gpu_hours"] for g in result["shared"]["groups"])
    assert result["shared"]["gpu_hours"] == pytest.approx(group_hours + alone_hours)


def test_earlier_runs_replace_the_guesses_own_point_first_then_the_experiments_median(
        tmp_path):
    results = tmp_path / "results"
    write_manifest(results, "ep48", "p1", {"stages": stages(
        startup=600, router=30, fill=200, release=2, profiles=60, teardown=None)})
    write_manifest(results, "ep48", "p2", {"stages": stages(
        startup=800, router=30, fill=100, release=2, profiles=40, teardown=30)})
    result = estimate.estimate(make_cfg(), results)
    p1, p2, p3 = (row(result, p)["parts"] for p in ("p1", "p2", "p3"))
    assert p1["startup"] == {"seconds": 600, "source": "measured ep48/p1"}
    assert p1["fill"]["seconds"] == 232 and p1["profiles"]["seconds"] == 60
    # p1's teardown was not measured: p2's is the only one of the experiment
    assert p1["teardown"] == {"seconds": 30, "source": "median of measured ep48/p2"}
    assert p2["startup"]["seconds"] == 800 and p2["fill"]["seconds"] == 132
    assert p3["startup"] == {"seconds": 700, "source": "median of measured ep48/p1,p2"}
    assert p3["fill"]["seconds"] == (232 + 132) / 2
    assert result["measured_points"] == ["ep48/p1", "ep48/p2"]
    # another experiment's runs say nothing about this one
    ep96 = [r for r in estimate.estimate(make_cfg(ep_sizes=[48, 96]), results)["points"]
            if r["experiment"] == "ep96"]
    assert {r["parts"]["startup"]["source"] for r in ep96} == {"site.estimate.startup_s"}


@pytest.mark.parametrize("shared, known", [
    (None, {"startup", "fill", "profiles", "teardown"}),
    # the group's first point started the servers, then drained and reset them for the
    # next: its teardown stage is that reset
    ({"started_here": True, "passed_to": "ep48/p2"}, {"startup", "fill", "profiles", "reset"}),
    # a middle point took them over and passed them on
    ({"started_here": False, "passed_to": "ep48/p3"}, {"fill", "profiles", "reset"}),
    # the last point took them over and stopped them
    ({"started_here": False, "passed_to": None}, {"fill", "profiles", "teardown"}),
    # a later point that found them gone started them again, and passed them on
    ({"started_here": True, "passed_to": "ep48/p3"}, {"startup", "fill", "profiles", "reset"}),
])
def test_a_run_on_shared_servers_says_nothing_of_the_start_up_or_teardown_it_skipped(
        shared, known):
    manifest = {"stages": stages(startup=5, router=1, fill=2, release=0, profiles=3,
                                 teardown=4), "shared_servers": shared}
    parts = estimate.measured_parts(manifest, Path("m.json"))
    assert set(parts) == known
    assert parts.get("reset", 4) == parts.get("teardown", 4) == 4


def shared_run(startup=None, teardown=None, *, started_here=False, passed_to=None,
               router=4.5, fill=9.0, release=0.4, profiles=4.4) -> dict:
    """A manifest of a point on shared servers: ``teardown`` is the stage after its
    profiles (the reset where it passed the servers on)."""
    return {"stages": stages(startup=startup, router=router, fill=fill, release=release,
                             profiles=profiles, teardown=teardown),
            "shared_servers": {"started_here": started_here, "passed_to": passed_to}}


def own_run(startup, teardown) -> dict:
    return {"stages": stages(startup=startup, router=4.5, fill=9.0, release=0.4,
                             profiles=4.4, teardown=teardown), "shared_servers": None}


@pytest.mark.parametrize("runs, expect", [
    # no earlier run: the guess after every point but the group's last
    ({}, {"p1": (20, "site.estimate.reset_s"), "p2": (20, "site.estimate.reset_s"),
          "p3": None}),
    # runs on servers of their own measured teardowns, never a reset: a reset waits for
    # what a teardown waits for (the client's last requests), so the teardown stands in
    ({"p1": own_run(600, 30), "p2": own_run(600, 30), "p3": own_run(600, 30)},
     {"p1": (30, "teardown, measured ep48/p1"), "p2": (30, "teardown, measured ep48/p2"),
      "p3": None}),
    # p1 passed the servers on after a 2 s reset: its own, and the experiment's for p2
    ({"p1": shared_run(600, 2, started_here=True, passed_to="ep48/p2")},
     {"p1": (2, "measured ep48/p1"), "p2": (2, "median of measured ep48/p1"), "p3": None}),
    # each measured its own; the last point's teardown stopped the servers: no reset
    ({"p1": shared_run(600, 2, started_here=True, passed_to="ep48/p2"),
      "p2": shared_run(0.1, 6, passed_to="ep48/p3"), "p3": shared_run(0.1, 40)},
     {"p1": (2, "measured ep48/p1"), "p2": (6, "measured ep48/p2"), "p3": None}),
    # p2's run has no teardown stage (it stopped before): the experiment's median, p1's
    ({"p1": shared_run(600, 2, started_here=True, passed_to="ep48/p2"),
      "p2": shared_run(0.1, None, passed_to="ep48/p3")},
     {"p1": (2, "measured ep48/p1"), "p2": (2, "median of measured ep48/p1"), "p3": None}),
])
def test_the_reset_between_points_comes_from_earlier_runs_like_every_part(tmp_path, runs,
                                                                          expect):
    results = tmp_path / "results"
    for name, manifest in runs.items():
        write_manifest(results, "ep48", name, manifest)
    result = estimate.estimate(make_cfg(), results)
    for name, reset in expect.items():
        parts = row(result, name)["parts"]
        assert (None if "reset" not in parts else
                (parts["reset"]["seconds"], parts["reset"]["source"])) == reset, name
    (group,) = result["shared"]["groups"]
    resets = sum(r[0] for r in expect.values() if r)
    assert group["resets_s"] == resets
    # the reset is the group's, never a part of a point's own allocation
    for name in expect:
        r = row(result, name)
        assert r["wall_s"] == sum(r["parts"][p]["seconds"]
                                  for p in ("startup", "fill", "profiles", "teardown"))
    teardown = max(row(result, n)["parts"]["teardown"]["seconds"] for n in expect)
    startup = max(row(result, n)["parts"]["startup"]["seconds"] for n in expect)
    measuring = sum(row(result, n)["parts"]["fill"]["seconds"]
                    + row(result, n)["parts"]["profiles"]["seconds"] for n in expect)
    assert group["wall_s"] == pytest.approx(startup + measuring + resets + teardown)
    sources = estimate.as_text(result).split("times from: ")[1].splitlines()[0]
    assert all(r[1] in sources.split("; ") for r in expect.values() if r)


@pytest.mark.parametrize("runs, startups", [
    # every later point took p1's servers over: their start-up on servers of their own is
    # what p1's start-up of the same servers took
    ({"p1": shared_run(600, 2, started_here=True, passed_to="ep48/p2"),
      "p2": shared_run(0.5, 2, passed_to="ep48/p3"), "p3": shared_run(0.5, 40)},
     {"p1": (600, "measured ep48/p1"), "p2": (600, "median of measured ep48/p1"),
      "p3": (600, "median of measured ep48/p1")}),
    # p2 found them gone and started them again: p3 took p2's over
    ({"p1": shared_run(600, None, started_here=True, passed_to="ep48/p2"),
      "p2": shared_run(700, 2, started_here=True, passed_to="ep48/p3"),
      "p3": shared_run(0.5, 40)},
     {"p1": (600, "measured ep48/p1"), "p2": (700, "measured ep48/p2"),
      "p3": (650, "median of measured ep48/p1,p2")}),
])
def test_a_point_that_took_servers_over_is_estimated_with_the_start_up_of_who_started_them(
        tmp_path, runs, startups):
    results = tmp_path / "results"
    for name, manifest in runs.items():
        write_manifest(results, "ep48", name, manifest)
    result = estimate.estimate(make_cfg(), results)
    for name, (seconds, source) in startups.items():
        assert row(result, name)["parts"]["startup"] == {"seconds": seconds,
                                                         "source": source}, name


def test_a_measured_reset_of_seconds_keeps_sharing_below_one_allocation_per_point(tmp_path):
    """The rehearsal's stage times (emulated servers start in seconds, the reset takes 2 s,
    stopping every server about 37 s): with the schema's 60 s reset the shared estimate
    would exceed one allocation per point; measured, it does not."""
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["site"]["estimate"] = {"reset_s": 60}
    cfg = config.validate(raw)
    results = tmp_path / "results"
    runs = {"p1": shared_run(3.7, 2.1, started_here=True, passed_to="ep48/p2"),
            "p2": shared_run(0.2, 1.9, passed_to="ep48/p3"),
            "p3": shared_run(0.2, 37.5)}
    guessed = estimate.estimate(cfg, None)
    assert guessed["points"][0]["parts"]["reset"]["seconds"] == 60
    for name, manifest in runs.items():
        write_manifest(results, "ep48", name, manifest)
    measured = estimate.estimate(cfg, results)
    (group,) = measured["shared"]["groups"]
    assert group["resets_s"] == pytest.approx(4.0)
    assert measured["shared"]["gpu_hours"] < measured["per_point"]["gpu_hours"]
    # what the reset guess alone would have made of the same runs
    with_guess = group["gpu_hours"] + 72 * (2 * 60 - 4.0) / 3600
    assert with_guess > measured["per_point"]["gpu_hours"]


def test_a_real_manifests_stage_times_are_read_back(ctx, tmp_path):  # noqa: F811
    manifest = provenance.build_manifest(ctx, workdir=tmp_path, sacct={})
    write_json(ctx.paths.manifest, manifest)
    result = estimate.estimate(ctx.cfg, ctx.paths.results.root)
    parts = {k: v["seconds"] for k, v in row(result, "p1")["parts"].items() if k != "reset"}
    assert parts == {"startup": 900, "fill": 60 + 300 + 2, "profiles": 78, "teardown": 60}
    # the parts tile the point's allocated time, as its stage records' GPU-hours do
    assert row(result, "p1")["gpu_hours"] == pytest.approx(
        manifest["gpu_hours"]["from_stage_records"])


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"stages": "none"}), "no list of stages"),
])
def test_a_bad_earlier_manifest_is_named(tmp_path, content, message):
    path = ResultsPaths(tmp_path).point("ep48", "p2").manifest
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(InputError, match=message) as info:
        estimate.estimate(make_cfg(), tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("key, value", [("startup_s", -1), ("reset_s", "a minute"),
                                        ("warmup_s", 10)])
def test_bad_estimate_settings_name_the_key(key, value):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["site"]["estimate"] = {key: value}
    with pytest.raises(ConfigError, match=r"site\.estimate"):
        config.validate(raw)


def pdbench(*args):
    return subprocess.run([sys.executable, "-m", "pdbench.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_plan_without_a_point_prints_the_estimate_as_estimate_does(tmp_path):
    cfg_file = tmp_path / "config.yaml"
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["site"]["estimate"] = GUESSES
    cfg_file.write_text(yaml.safe_dump(raw))
    args = ("--config", cfg_file, "--results", tmp_path / "results")
    plan, est = pdbench("plan", *args), pdbench("estimate", *args)
    assert plan.returncode == 0 and est.returncode == 0, plan.stderr + est.stderr
    assert plan.stdout == est.stdout
    assert "ep48/p3" in plan.stdout and "shared servers ep48/p1 ep48/p2 ep48/p3" in plan.stdout
    as_json = json.loads(pdbench("estimate", *args, "--json").stdout)
    assert as_json["per_point"]["gpu_hours"] == pytest.approx((56 + 64 + 72) * 1550 / 3600)


@pytest.mark.parametrize("args, message", [
    (("--point", "p2"), "--point needs --experiment"),
    (("--experiment", "ep48", "--point", "p2"), "--point needs --experiment and one of"),
    (("--nodelist", "gb-[001-016]"), "give --point too"),
])
def test_plan_of_one_point_still_needs_its_nodes(args, message):
    result = pdbench("plan", "--config", REPO / "config" / "config.yaml", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("pdbench: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr

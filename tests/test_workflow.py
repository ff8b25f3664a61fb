"""The Snakemake workflow itself: dry-run DAG, lint, format, config errors before any job."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = [
    "allocation",
    "node_list",
    "prefill_server",
    "decode_server",
    "router",
    "fill",
    "release",
    "profile_snapshot",
    "bench_result",
    "teardown",
    "point_throughput",
    "experiment_throughput",
    "point_manifest",
    "report",
]


@pytest.fixture
def workdir(tmp_path):
    """A fresh work directory with the workflow (no results from other runs)."""
    for name in ("Snakefile", "workflow", "config", "slurm", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


def snakemake(*args, cwd):
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def job_counts(stdout: str) -> dict[str, int]:
    table = stdout.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_dry_run_lists_every_stage_for_every_point(workdir):
    result = snakemake("-n", "results/ep48/report.html", cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert set(STAGES) <= set(counts), counts
    assert counts["allocation"] == counts["fill"] == counts["router"] == 3
    assert counts["prefill_server"] == 1 + 2 + 3
    assert counts["profile_snapshot"] == 3 * 3  # snapshots: 3 in the default config
    for point in ("p1", "p2", "p3"):
        assert f"results/ep48/{point}/fill/released.json" in result.stdout
        assert f"results/ep48/{point}/node_list_env.sh" in result.stdout
    assert "results/ep48/p3/ready/prefill-3.json" in result.stdout
    assert "results/ep48/p2/ready/prefill-3.json" not in result.stdout


def test_dry_run_prints_the_grids_estimate_from_earlier_runs_where_the_tree_has_them(
        workdir):
    def estimate_line():
        result = snakemake("-n", "results/ep48/report.html", cwd=workdir)
        assert result.returncode == 0, result.stderr + result.stdout
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("pdbench: estimate")]
        return line

    # the default site.estimate: 1200 + 900 + 300 + 120 s on 56, 64 and 72 GPUs
    assert ("3 points, one allocation per point 134.4 GPU-hours, 2h06 one after another; "
            "servers shared across prefill-group counts 100.8 GPU-hours; bound 96.0"
            in estimate_line())
    # an earlier run of p1 that started in 600 s: every point's start-up is now 600 s
    manifest = workdir / "results" / "ep48" / "p1" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"stages": [{"stage": "servers start-up", "seconds": 600}]}))
    assert "one allocation per point 102.4 GPU-hours" in estimate_line()
    # a broken one says so and stops nothing
    manifest.write_text("{")
    result = snakemake("-n", "results/ep48/report.html", cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"pdbench: no estimate: {Path('results/ep48/p1/manifest.json')} is not valid JSON" \
        in result.stderr


def test_shared_servers_chain_the_points_of_a_group_through_one_allocation(workdir, tmp_path):
    share = tmp_path / "share.yaml"
    share.write_text(yaml.safe_dump({"site": {"share_servers": True}}))
    result = snakemake("-n", "results/ep48/report.html", "--configfile", str(share),
                       cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    # every point has a marker for each server started (taken over after the first)
    assert counts["prefill_server"] == 3 * 3 and counts["decode_server"] == 3
    assert "this run: shared servers" in result.stderr
    # p1's router waits for the idle groups too; p2 and p3 follow their predecessor's
    # teardown (which drains and resets the servers)
    router_p1 = rule_block(result.stdout, "router", "results/ep48/p1/ready/router.json")
    assert "results/ep48/p1/ready/prefill-3.json" in router_p1
    for point, previous in (("p2", "p1"), ("p3", "p2")):
        block = rule_block(result.stdout, "allocation", f"results/ep48/{point}/allocation.json")
        assert f"results/ep48/{previous}/teardown.json" in block
    # without it, each point has its own allocation and servers
    result = snakemake("-n", "results/ep48/report.html", cwd=workdir)
    block = rule_block(result.stdout, "allocation", "results/ep48/p2/allocation.json")
    assert "teardown.json" not in block
    assert job_counts(result.stdout)["prefill_server"] == 1 + 2 + 3


def test_several_ep_sizes_add_the_grid_page_over_every_experiment(workdir, tmp_path):
    grid = tmp_path / "grid.yaml"
    # One max-running-requests (49152) for both: EP96's ranks hold 512 each, on 24 nodes.
    grid.write_text(yaml.safe_dump({"grid": {"ep_sizes": [48, 96]},
                                    "site": {"max_nodes": 30}}))
    result = snakemake("-n", "--configfile", str(grid), cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["report"] == 2 and counts["grid_report"] == 1, counts
    assert counts["point_manifest"] == 6, counts
    page = result.stdout.split("rule grid_report:", 1)[1].split("\n\n", 1)[0]
    for exp in ("ep48", "ep96"):
        assert f"results/{exp}/throughput.csv" in page
        assert f"results/{exp}/p3/manifest.json" in page
    assert "output: results/report.html" in page


def test_slurm_profile_resolves_from_repo_root(workdir):
    result = snakemake("--profile", "slurm", "-n", "results/ep48/report.html", cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "report" in job_counts(result.stdout)


def test_lint_is_clean(workdir):
    result = snakemake("--lint", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_is_clean():
    exe = shutil.which("snakefmt") or str(Path(sys.executable).parent / "snakefmt")
    result = subprocess.run(
        [exe, "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c["grid"].update(prefill_groups=[1, 4]), "grid.prefill_groups[1]"),
        (lambda c: c["grid"].update(ep_sizes=[46]), "grid.ep_sizes[0]"),
        (lambda c: c.update(typo_key=True), "'typo_key'"),
        (lambda c: c["site"].update(max_nodes=14), "site.max_nodes"),
    ],
)
def test_bad_config_fails_before_any_job(workdir, tmp_path, mutate, key):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    mutate(raw)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = snakemake("-n", "results/ep48/report.html", "--configfile", str(bad), cwd=workdir)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert key in output
    assert "Job stats" not in output


def test_rehearsal_profile_merges_its_config(workdir):
    result = snakemake(
        "--profile", "profiles/rehearsal", "-n", "results/ep48/report.html", cwd=workdir
    )
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["profile_snapshot"] == 3 * 2  # rehearsal.yaml: 2 snapshots per point
    # A dry run writes nothing, not even the resolved config (a real run's onstart does).
    assert not (workdir / "results" / ".pdbench").exists()


def rule_block(stdout: str, rule: str, output: str) -> str:
    """The dry run's block of ``rule`` whose output names ``output``."""
    for block in re.split(r"\n(?=\S)", stdout):  # a job: its unindented line, then details
        if block.startswith(f"rule {rule}:") and output in block:
            return block
    raise AssertionError(f"no {rule} job for {output}")


def test_static_eplb_records_in_the_none_points_run_and_relaunches_from_the_dump(workdir,
                                                                               tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"grid": {"eplb": ["none", "static", "online"]}}))
    result = snakemake("-n", "results/ep48/report.html", "--configfile", str(grid),
                       cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["expert_record_start"] == counts["expert_dump"] == 1, counts
    assert counts["allocation"] == 9, counts  # no allocation for the recording pass
    dump = "results/ep48/eplb/expert_distribution.pt"
    # record: p1's decode records from before its fill ...
    start = rule_block(result.stdout, "expert_record_start", "results/ep48/p1/")
    assert "results/ep48/p1/ready/decode.json" in start
    fill = rule_block(result.stdout, "fill", "output: results/ep48/p1/fill/filled.json")
    assert "results/ep48/p1/expert_distribution/started.json" in fill
    # ... dump: after its release, before its teardown ...
    dumped = rule_block(result.stdout, "expert_dump", dump)
    assert "results/ep48/p1/fill/released.json" in dumped
    teardown = rule_block(result.stdout, "teardown", "output: results/ep48/p1/teardown.json")
    assert dump in teardown
    # ... relaunch: every static point's decode starts from the dump, no other server does.
    for point in ("p1", "p2", "p3"):
        decode = rule_block(result.stdout, "decode_server",
                            f"output: results/ep48/{point}-eplb_static/ready/decode.json")
        assert dump in decode
        for other in (point, f"{point}-eplb_online"):
            block = rule_block(result.stdout, "decode_server",
                               f"output: results/ep48/{other}/ready/decode.json")
            assert dump not in block
    for point in ("p2", "p3"):
        assert f"results/ep48/{point}/expert_distribution/started.json" not in result.stdout
    # prefill keeps the trivial placement unless eplb.static.prefill says otherwise
    assert dump not in rule_block(result.stdout, "prefill_server",
                                  "output: results/ep48/p1-eplb_static/ready/prefill-1.json")
    assert dump in rule_block(result.stdout, "report", "output: results/ep48/report.html")


def test_a_supplied_expert_distribution_skips_the_recording_pass(workdir, tmp_path):
    (workdir / "recorded.pt").write_bytes(b"")
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"grid": {"eplb": ["none", "static"]},
                                    "eplb": {"static": {"init_expert_location": "recorded.pt"}}}))
    result = snakemake("-n", "results/ep48/report.html", "--configfile", str(grid),
                       cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert "expert_dump" not in counts and "expert_record_start" not in counts, counts
    assert "results/ep48/eplb/" not in result.stdout
    assert "expert_distribution/started.json" not in result.stdout


def test_the_eplb_rehearsal_records_once_and_relaunches_three_static_points(workdir):
    result = snakemake(
        "--profile", "profiles/rehearsal", "-n", "results/ep48/report.html",
        "--configfile", "config/rehearsal.yaml", "config/rehearsal-eplb.yaml", cwd=workdir
    )
    assert result.returncode == 0, result.stderr + result.stdout
    counts = job_counts(result.stdout)
    assert counts["allocation"] == 9 and counts["expert_dump"] == 1, counts
    dump = "results/ep48/eplb/expert_distribution.pt"
    for point in ("p1", "p2", "p3"):
        assert dump in rule_block(result.stdout, "decode_server",
                                  f"output: results/ep48/{point}-eplb_static/ready/decode.json")


def test_static_prefill_starts_from_the_dump_when_configured(workdir, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"grid": {"eplb": ["none", "static"], "prefill_groups": [2]},
                                    "eplb": {"static": {"prefill": True}}}))
    result = snakemake("-n", "results/ep48/report.html", "--configfile", str(grid),
                       cwd=workdir)
    assert result.returncode == 0, result.stderr + result.stdout
    dump = "results/ep48/eplb/expert_distribution.pt"
    for group in (1, 2):
        assert dump in rule_block(result.stdout, "prefill_server",
                                  f"output: results/ep48/p2-eplb_static/ready/prefill-{group}")
        assert dump not in rule_block(result.stdout, "prefill_server",
                                      f"output: results/ep48/p2/ready/prefill-{group}")

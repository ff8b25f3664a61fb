"""The report: a median per point over its valid snapshots (never the best one), invalid
snapshots listed with their reason, emulated runs labelled everywhere, one file that
needs nothing from elsewhere, and the grid page over several experiments."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from pdbench import report
from pdbench.layout import ExperimentPaths, PointPaths, ResultsPaths, write_json
from pdbench.throughput import COLUMNS, write_csv

REFERENCES = [{"label": "LMSYS GB200 NVL72 (Part II)", "tokens_per_s_per_gpu": 13386,
               "conditions": "48 decode GPUs, 2,000-token input, September 2025"}]


def row(point: str, k: int, tps, *, ep: int = 48, valid: bool = True, reason: str = "",
        emulated: bool = False, batch: int = 384, step: float = 60.0) -> dict:
    r = {c: "" for c in COLUMNS}
    r.update(point=point, ep=ep, prefill_groups=int(point[1]), eplb="none", snapshot=k,
             profile_id=str(k), global_batch=batch, target_global_batch=384,
             rank_batch_min=batch // 48, rank_batch_max=batch // 48, ranks=48, step_ms=step,
             step_ms_p10=step - 1, step_ms_p90=step + 1, steps_used=5, log_step_ms=step,
             trace_log_ratio=1.0, decode_gpus=48, tokens_per_s_per_gpu=tps,
             client_output_throughput=5000, client_completed=768, fill_ended_by="reached",
             method="step_spans", flags="", valid=valid, invalid_reason=reason,
             emulated=emulated)
    return r


def experiment(root: Path, name: str, rows: list[dict]) -> Path:
    """A results/<name>/ tree as the workflow leaves it: CSVs, measurements, manifests."""
    exp = ResultsPaths(root).experiment(name)
    for point in dict.fromkeys(r["point"] for r in rows):
        paths = PointPaths(exp.root / point)
        snaps = [r for r in rows if r["point"] == point]
        write_csv(paths.throughput, snaps)
        write_json(paths.measurement, {
            "target_per_rank": 8,
            "snapshots": [{"snapshot": r["snapshot"], "valid": r["valid"],
                           "per_rank_batch": {str(i): 8 - (i == 3) for i in range(48)},
                           "step_periods_ms": [60.0, 61.0, 59.5], "log_step_ms": 60.2}
                          for r in snaps],
            "fill_curve": {"ranks": {"0": [[0.0, 0], [2.0, 8]]}, "release_s": 3.0}})
        write_json(paths.manifest, {
            "stages": [{"stage": "servers start-up", "gpu_hours": 0.5},
                       {"stage": "fill", "gpu_hours": 0.1}],
            "gpu_hours": {"from_stage_records": 0.6, "from_sacct": 0.9, "differ": True},
            "sglang": {"configured_version": "0.5.5.post2", "servers": {
                "decode": {"version": "0.5.5.post2"},
                "router": {"packages": {"packages": {"sglang-router": "0.2.1"}}}}},
            "repository": {"commit": "a" * 40, "dirty": False},
            "slurm": {"job_id": 17}, "container": {"image": "img:tag"}})
    write_csv(exp.throughput, rows)
    return exp.throughput


def test_the_headline_is_the_median_of_valid_snapshots_with_spread_and_count():
    rows = [row("p1", 1, 100.0), row("p1", 2, 130.0), row("p1", 3, 900.0),
            row("p1", 4, 5000.0, valid=False, reason="global batch 10 below ..."),
            row("p2", 1, 120.0)]
    p1, p2 = report.point_summary(rows).to_dict("records")
    assert (p1["point"], p1["snapshots"], p1["valid_snapshots"]) == ("p1", 4, 3)
    assert p1["tokens_per_s_per_gpu_median"] == 130.0  # neither the best nor the invalid
    assert (p1["tokens_per_s_per_gpu_min"], p1["tokens_per_s_per_gpu_max"]) == (100.0, 900.0)
    assert (p1["global_batch_median"], p1["step_ms_median"]) == (384.0, 60.0)
    assert p2["snapshots"] == 1 and p2["tokens_per_s_per_gpu_median"] == 120.0


@pytest.mark.parametrize("bad", ["nan", "inf", "-5", "", "abc", "0"])
def test_a_row_without_a_finite_positive_figure_is_never_a_valid_snapshot(bad):
    frame = report.snapshot_frame([row("p1", 1, bad), row("p1", 2, 200.0)])
    assert list(frame["valid"]) == [False, True]
    assert frame["invalid_reason"][0] == "no finite positive tokens/s per GPU"
    summary = report.point_summary(frame).to_dict("records")[0]
    assert summary["tokens_per_s_per_gpu_median"] == 200.0


def test_a_point_without_a_valid_snapshot_has_no_headline(tmp_path):
    rows = [row("p1", 1, 50.0, valid=False, reason="global batch 12 below 0.9 x 384")]
    summary = report.point_summary(rows).to_dict("records")[0]
    assert summary["valid_snapshots"] == 0 and math.isnan(summary["tokens_per_s_per_gpu_median"])
    out = ExperimentPaths(tmp_path / "ep48").report
    report.write(out, [experiment(tmp_path, "ep48", rows)], references=REFERENCES)
    page = out.read_text()
    assert "global batch 12 below 0.9 x 384" in page  # listed with its reason


def test_the_page_is_self_contained_and_labels_emulated_runs_everywhere(tmp_path):
    rows = [row("p1", k, 100.0 + k, emulated=True) for k in (1, 2)] + [
        row("p2", 1, 140.0, emulated=True)]
    out = ExperimentPaths(tmp_path / "ep48").report
    figures = tmp_path / "ep48" / "figures"
    result = report.write(out, [experiment(tmp_path, "ep48", rows)], references=REFERENCES,
                          figures_dir=figures)
    page = out.read_text()
    assert result["bytes"] < 1_000_000
    label = report.EMULATED_LABEL
    assert f"<title>pdbench \u00b7 Decode throughput: ep48 ({label})</title>" in page
    svgs = re.findall(r"<svg[\s\S]*?</svg>", page)
    assert len(svgs) == 5 and all(label in s for s in svgs)
    assert sorted(p.name for p in figures.iterdir()) == [
        "fill-curves.svg", "gpu-hours.svg", "rank-batches.svg", "step-times.svg",
        "throughput.svg"]
    # Nothing comes from elsewhere: no script, no remote style, font or image.
    assert "<script" not in page and "@import" not in page and "url(http" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # The medians, the GPU-hours with sacct's differing figure, the reference, the links.
    assert "LMSYS GB200 NVL72 (Part II)" in page and "13,386" in page
    assert "(sacct 0.90)" in page
    assert 'href="p1/manifest.json"' in page and "aaaaaaaaaaaa" in page
    assert "best" not in page.lower()


def test_a_measured_run_carries_no_emulated_label(tmp_path):
    out = ExperimentPaths(tmp_path / "ep48").report
    report.write(out, [experiment(tmp_path, "ep48", [row("p1", 1, 3000.0)])],
                 references=REFERENCES)
    assert report.EMULATED_LABEL not in out.read_text()


def test_text_from_the_results_is_escaped(tmp_path):
    rows = [row("p1", 1, 100.0, valid=False, reason="<script>alert(1)</script>")]
    rows[0]["flags"] = "<b>x</b>"
    out = ExperimentPaths(tmp_path / "ep48").report
    report.write(out, [experiment(tmp_path, "ep48", rows)], references=[
        {"label": "<i>mine</i>", "tokens_per_s_per_gpu": 10.0, "conditions": "&"}])
    page = out.read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>x</b>" not in page and "<i>mine</i>" not in page


def test_the_grid_page_draws_every_experiment(tmp_path):
    csvs = [experiment(tmp_path, "ep16", [row("p1", 1, 1000.0, ep=16, batch=128)]),
            experiment(tmp_path, "ep48", [row("p1", 1, 2000.0), row("p2", 1, 2100.0)])]
    out = ResultsPaths(tmp_path).report
    report.write(out, csvs, references=REFERENCES)
    page = out.read_text()
    assert "EP16 \u00b7 EPLB none" in page and "EP48 \u00b7 EPLB none" in page
    assert 'href="ep16/p1/manifest.json"' in page and "ep48/p2" in page
    assert len(re.findall(r"<svg[\s>]", page)) == 2  # throughput and GPU-hours


def eplb_row(point: str, k: int, tps: float, step: float, **kw) -> dict:
    r = row(point, k, tps, step=step, **kw)
    r["eplb"] = point.split("-eplb_")[1] if "-eplb_" in point else "none"
    return r


def test_eplb_modes_side_by_side_with_the_recorded_balance(tmp_path):
    from pdbench.emulator.experts import ExpertRecorder

    rows = [eplb_row("p1", 1, 100.0, 60.0), eplb_row("p1-eplb_static", 1, 120.0, 50.0),
            eplb_row("p1-eplb_online", 1, 110.0, 54.5), eplb_row("p2", 1, 130.0, 60.0)]
    csv = experiment(tmp_path, "ep48", rows)
    exp_paths = ExperimentPaths(tmp_path / "ep48")
    recorder = ExpertRecorder("stat", -1, str(tmp_path / "no-model"),
                              out_dir=str(exp_paths.eplb_dir))
    recorder.start()
    recorder.record(384)
    Path(recorder.dump()).rename(exp_paths.expert_distribution)
    exp = report.load_experiment(csv, page_dir=exp_paths.root)
    table = {r["eplb"]: r for r in report.eplb_comparison(exp)}
    assert set(table) == {"none", "static", "online"}  # p2 has one mode: no comparison
    assert table["static"]["vs_none"] == pytest.approx(0.2)
    assert table["online"]["step_ms"] == pytest.approx(54.5)
    # 256 experts do not divide over 48 GPUs: no trivial layout, the estimate has spares
    assert "do not divide" in exp.expert_balance["before"]["error"]
    after = exp.expert_balance["after"]["balancedness"]
    assert table["static"]["balancedness"] == after and 0 < after <= 1
    assert table["none"]["balancedness"] is None

    out = exp_paths.report
    report.write(out, [csv], references=REFERENCES, figures_dir=exp_paths.figures)
    page = out.read_text()
    assert "EPLB: none vs static vs online (ep48)" in page
    assert "+20.0 %" in page and "(estimate)" in page
    assert (exp_paths.figures / "expert-load.svg").exists()


def test_recorded_balance_before_and_after_on_a_dividing_ep(tmp_path):
    from pdbench.emulator.experts import ExpertRecorder

    recorder = ExpertRecorder("stat", -1, str(tmp_path / "no-model"), out_dir=str(tmp_path))
    recorder.start()
    recorder.record(64)
    result = report.recorded_balance(Path(recorder.dump()), 8)
    before, after = result["before"]["balancedness"], result["after"]["balancedness"]
    assert 0 < before < after <= 1  # the balanced placement evens the load
    assert len(result["after"]["gpu_load"]) == 8


@pytest.mark.parametrize("p2_step, p3_step, flagged", [
    (60.0, 60.0, []),
    (60.0, 63.6, ["p3"]),            # +6% > 5%
    (57.5, 61.0, []),                # -4.2%, +1.7%
    (66.0, 54.0, ["p2", "p3"]),
])
def test_a_shared_point_whose_step_time_moved_from_the_fresh_servers_is_flagged(
        tmp_path, p2_step, p3_step, flagged):
    csv = experiment(tmp_path, "ep48", [row("p1", 1, 2000.0, step=60.0),
                                        row("p2", 1, 2000.0, step=p2_step),
                                        row("p2", 2, 2000.0, step=60.0),
                                        row("p3", 1, 2000.0, step=p3_step)])
    exp_paths = ResultsPaths(tmp_path).experiment("ep48")
    for point in ("p1", "p2", "p3"):
        path = PointPaths(exp_paths.root / point).manifest
        manifest = {**report.read_json_if(path, {}),
                    "config": {"report": {"shared_step_tolerance": 0.05},
                               "profile": {"log_step_tolerance": 0.1}},
                    "shared_servers": {"servers_started_by": "ep48/p1",
                                       "started_here": point == "p1"}}
        write_json(path, manifest)
    exp = report.load_experiment(csv, page_dir=exp_paths.root)
    assert report.shared_servers_check(exp, "p1") is None  # its servers were fresh
    checks = {p: report.shared_servers_check(exp, p) for p in ("p2", "p3")}
    assert checks["p3"]["ratio"] == pytest.approx(p3_step / 60.0)
    assert checks["p2"]["step_ms"] == p2_step  # the first snapshot, not the median
    assert [p for p, c in checks.items() if c["differ"]] == flagged
    out = exp_paths.report
    report.write(out, [csv], references=REFERENCES)
    page = out.read_text()
    for point in ("p2", "p3"):
        paragraph = re.search(rf'<p class="sub" id="shared-{point}">(.*?)</p>', page, re.S)[1]
        assert "started by ep48/p1" in paragraph
        assert ("report.shared_step_tolerance" in paragraph) == (point in flagged)
    assert 'id="shared-p1"' not in page

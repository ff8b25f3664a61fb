"""The report's plots: inline-able SVG, emulated runs labelled, bad data skipped, small."""

from __future__ import annotations

import math
import random
import re
import xml.etree.ElementTree as ET

import matplotlib as mpl
import pytest
from matplotlib.figure import Figure

from pdbench import plots
from pdbench.plots import EMULATED_LABEL

SVG_NS = "{http://www.w3.org/2000/svg}"
ID = re.compile(r'\sid="([^"]+)"')
LMSYS = "LMSYS GB200 NVL72, NVFP4 MoE + FP8 attention"
EMULATED_TEXT = f">{EMULATED_LABEL}</text>"  # the visible label, not only the aria-label


def make_inputs(points: int = 3, snaps: int = 3, ranks: int = 48, samples: int = 60) -> dict:
    """Realistic plot inputs: per point, ``snaps`` snapshots over ``ranks`` decode DP ranks."""
    rng = random.Random(0)
    series = [
        {"label": f"EP48 \u00b7 EPLB {eplb}", "points": [
            {"prefill_groups": g, "median": 1500.0 * g + 90 * k, "min": 1420.0 * g + 90 * k,
             "max": 1580.0 * g + 90 * k, "snapshots": snaps}
            for g in range(1, points + 1)]}
        for k, eplb in enumerate(["none", "static"])
    ]
    references = [{"label": LMSYS, "tokens_per_s_per_gpu": 13386.0,
                   "conditions": "48 decode GPUs, 2000-token input, Sep 2025"}]
    labels = [f"p{p} #{s}" for p in range(1, points + 1) for s in range(1, snaps + 1)]
    batches = [
        {"label": lab, "target_per_rank": 256, "per_rank_batch": {
            str(r): 256 - (rng.randint(1, 20) if rng.random() < 0.2 else 0)
            for r in range(ranks)}}
        for lab in labels
    ]
    steps = [{"label": lab, "periods_ms": [65 + rng.gauss(0, 1.5) for _ in range(300)],
              "log_step_ms": 66.0 + rng.random()} for lab in labels]
    curves = []
    for p in range(1, points + 1):
        per_rank = {}
        for r in range(ranks):
            rate = 20 + 10 * rng.random()
            per_rank[str(r)] = [[0.5 * i, min(256, int(rate * 0.5 * i))] for i in range(samples)]
        curves.append({"label": f"p{p}", "ranks": per_rank, "target_per_rank": 256,
                       "release_s": 14.2})
    hours = [{"label": f"p{p}", "stages": {"servers start-up": 0.9 * p, "fill": 0.1,
                                           "profile": 0.05, "drain": 0.2, "teardown": 0.01}}
             for p in range(1, points + 1)]
    return {"series": series, "references": references, "batches": batches, "steps": steps,
            "curves": curves, "hours": hours}


def render_all(inputs: dict, *, emulated: bool) -> dict[str, str]:
    return {
        "throughput": plots.throughput_vs_prefill(
            inputs["series"], inputs["references"], emulated=emulated),
        "rank-batches": plots.rank_batches(inputs["batches"], emulated=emulated),
        "step-times": plots.step_time_distribution(inputs["steps"], emulated=emulated),
        "fill-curves": plots.fill_curves(inputs["curves"], emulated=emulated),
        "gpu-hours": plots.gpu_hours_by_stage(inputs["hours"], emulated=emulated),
    }


EXPECTED_TEXT = {
    "throughput": ["decode tokens/s per GPU", "prefill groups", LMSYS,
                   "48 decode GPUs, 2000-token input, Sep 2025", "EP48 \u00b7 EPLB none"],
    "rank-batches": ["decode DP rank", "batch (#running-req)", "below target", "p3 #3"],
    "step-times": ["decode step (ms)", "log-implied step time", "p2 #1"],
    "fill-curves": ["seconds since fill start", "#running-req per DP rank", "release",
                    "target per rank", "p3 (48 ranks)"],
    "gpu-hours": ["GPU-hours", "servers start-up", "teardown", "GPU-h"],
}


@pytest.fixture(scope="module")
def inputs() -> dict:
    return make_inputs()


@pytest.fixture(scope="module")
def emulated_svgs(inputs) -> dict[str, str]:
    return render_all(inputs, emulated=True)


@pytest.fixture(scope="module")
def measured_svgs(inputs) -> dict[str, str]:
    return render_all(inputs, emulated=False)


def assert_inline_svg(svg: str, name: str) -> ET.Element:
    assert svg.startswith("<svg ")
    assert "<?xml" not in svg and "DOCTYPE" not in svg
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    assert root.get("id") == f"plot-{name}"
    assert root.get("class") == "plot"
    assert root.get("role") == "img"
    assert root.get("aria-label")
    assert "<image" not in svg, "no raster images"
    assert "@font-face" not in svg and "<text" in svg, "text kept as text, no fonts"
    assert not re.search(r"\b(nan|inf)\b", svg, re.I)
    ids = ID.findall(svg)
    assert len(ids) == len(set(ids))
    # every internal reference still resolves after unreferenced ids were dropped
    for ref in re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', svg):
        assert (ref[0] or ref[1]) in ids
    return root


@pytest.mark.parametrize("name", list(EXPECTED_TEXT))
def test_emulated_plot_is_labelled(emulated_svgs, name):
    svg = emulated_svgs[name]
    root = assert_inline_svg(svg, name)
    assert EMULATED_TEXT in svg
    assert EMULATED_LABEL in root.get("aria-label")
    for text in EXPECTED_TEXT[name]:
        assert text in svg, f"{text!r} missing from {name}"


@pytest.mark.parametrize("name", list(EXPECTED_TEXT))
def test_measured_plot_is_not_labelled_emulated(measured_svgs, name):
    svg = measured_svgs[name]
    assert_inline_svg(svg, name)
    assert EMULATED_LABEL not in svg
    for text in EXPECTED_TEXT[name]:
        assert text in svg


def test_ids_never_collide_between_plots(inputs, emulated_svgs):
    again = plots.rank_batches(inputs["batches"], emulated=True, name="rank-batches-2")
    seen: dict[str, str] = {}
    for name, svg in [*emulated_svgs.items(), ("rank-batches-2", again)]:
        for id_ in ID.findall(svg):
            assert id_ not in seen, f"id {id_} of {name} also in {seen.get(id_)}"
            seen[id_] = name
    assert "plot-rank-batches-2" in seen


def test_output_is_deterministic(inputs, emulated_svgs):
    assert render_all(inputs, emulated=True) == emulated_svgs


def test_five_plots_fit_in_an_email(emulated_svgs):
    sizes = {name: len(svg.encode()) for name, svg in emulated_svgs.items()}
    total = sum(sizes.values())
    print(f"SVG sizes (3 points x 3 snapshots x 48 ranks): {sizes}, total {total} bytes")
    assert total < 400_000


def test_long_fill_traces_are_decimated():
    curves = make_inputs(ranks=48, samples=3000)["curves"]
    svg = plots.fill_curves(curves, emulated=False)
    assert_inline_svg(svg, "fill-curves")
    assert len(svg.encode()) < 200_000


@pytest.mark.parametrize("emulated", [False, True])
def test_empty_inputs_say_no_data(emulated):
    empty = {
        "throughput": plots.throughput_vs_prefill([], [], emulated=emulated),
        "rank-batches": plots.rank_batches([], emulated=emulated),
        "step-times": plots.step_time_distribution([], emulated=emulated),
        "fill-curves": plots.fill_curves([], emulated=emulated),
        "gpu-hours": plots.gpu_hours_by_stage([], emulated=emulated),
    }
    for name, svg in empty.items():
        assert_inline_svg(svg, name)
        assert "no data: " in svg
        assert (EMULATED_TEXT in svg) is emulated


BAD = [None, math.nan, math.inf, -math.inf, -5.0, "n/a"]


def test_only_bad_values_say_no_data():
    assert "no data: " in plots.throughput_vs_prefill(
        [{"label": "s", "points": [{"prefill_groups": 1, "median": v} for v in BAD]}],
        [{"label": "ref", "tokens_per_s_per_gpu": math.nan}], emulated=False)
    assert "no data: " in plots.rank_batches(
        [{"label": "a", "per_rank_batch": {str(i): v for i, v in enumerate(BAD)}}],
        emulated=False)
    assert "no data: " in plots.step_time_distribution(
        [{"label": "a", "periods_ms": BAD, "log_step_ms": math.inf}], emulated=False)
    assert "no data: " in plots.fill_curves(
        [{"label": "a", "ranks": {"0": [[v, 1] for v in BAD] + [[1, v] for v in BAD]}}],
        emulated=False)
    assert "no data: " in plots.gpu_hours_by_stage(
        [{"label": "a", "stages": {str(i): v for i, v in enumerate(BAD)}}], emulated=False)


def test_bad_values_among_good_are_skipped():
    nan, inf = math.nan, math.inf
    svgs = {
        "throughput": plots.throughput_vs_prefill(
            [{"label": "s", "points": [
                {"prefill_groups": 1, "median": 1000.0, "min": nan, "max": inf},
                {"prefill_groups": 2, "median": nan, "min": 1.0, "max": 2.0},
                {"prefill_groups": None, "median": 5.0},
                {"prefill_groups": 2.5, "median": 5.0},
                {"prefill_groups": 3, "median": 3000.0, "min": 3100.0, "max": -1.0}]},
             {"label": "empty", "points": []}],
            [{"label": "bad ref", "tokens_per_s_per_gpu": -inf},
             {"label": "good ref", "tokens_per_s_per_gpu": 4000.0, "conditions": None}],
            emulated=False),
        "rank-batches": plots.rank_batches(
            [{"label": "a", "per_rank_batch": {"0": 64, "1": nan, "2": None, "x": 3, "-1": 8,
                                               "10": 60, "3": -4}, "target_per_rank": 64},
             {"label": "b", "per_rank_batch": {"0": inf}, "target_per_rank": 64},
             {"label": "d", "per_rank_batch": {"0": 1}, "target_per_rank": nan},
             {"label": "c", "per_rank_batch": None}],
            emulated=False),
        "step-times": plots.step_time_distribution(
            [{"label": "a", "periods_ms": [65.0, nan, inf, -1.0, None, 66.0], "log_step_ms": nan},
             {"label": "b", "periods_ms": [], "log_step_ms": 70.0},
             {"label": "c", "periods_ms": None, "log_step_ms": None}],
            emulated=False),
        "fill-curves": plots.fill_curves(
            [{"label": "a", "ranks": {"0": [[0, 1], [nan, 2], [1, inf], [2, 5], [3], None],
                                      "1": None, "z": [[0, 1]]},
              "target_per_rank": inf, "release_s": nan},
             {"label": "b", "ranks": {}, "target_per_rank": 8, "release_s": 1.0}],
            emulated=False),
        "gpu-hours": plots.gpu_hours_by_stage(
            [{"label": "a", "stages": {"fill": 0.5, "profile": nan, "drain": -0.1}},
             {"label": "b", "stages": {"servers start-up": inf}},
             {"label": "c", "stages": {"teardown": 0.2}}],
            emulated=False),
    }
    for name, svg in svgs.items():
        assert_inline_svg(svg, name)
    assert "no data: no fill samples" in svgs["fill-curves"]  # the empty panel says so
    assert "good ref" in svgs["throughput"] and "bad ref" not in svgs["throughput"]
    assert "(1 below)" in svgs["rank-batches"]  # rank 10 at 60 against target 64


def test_labels_are_not_mathtext():
    svg = plots.gpu_hours_by_stage(
        [{"label": '$cost$ & <b> id="x" d="1.23456"', "stages": {"fill": 1.0}}],
        emulated=False)
    assert_inline_svg(svg, "gpu-hours")
    assert '$cost$ &amp; &lt;b&gt; id="x" d="1.23456"' in svg  # text content left as is


def test_to_svg_of_a_caller_figure_leaves_rc_alone():
    before = dict(mpl.rcParams)
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [0, 1])
    svg = plots.to_svg(fig, "custom_1", label='a "quoted" label')
    root = assert_inline_svg(svg, "custom_1")
    assert root.get("aria-label") == 'a "quoted" label'
    assert "#plot-custom_1 *{" in svg  # matplotlib's default style rule kept to this SVG
    assert dict(mpl.rcParams) == before
    with pytest.raises(ValueError):
        plots.to_svg(Figure(), "not a valid id")


def svg_texts(svg: str) -> list[str]:
    """The visible text of an SVG, one entry per <text> element."""
    root = assert_inline_svg(svg, re.search(r'id="plot-([^"]+)"', svg).group(1))
    return ["".join(t.itertext()).strip() for t in root.iter(f"{SVG_NS}text")]


def test_constant_step_periods_use_plain_ticks():
    steps = [{"label": f"p{i}", "periods_ms": [60.8] * 200, "log_step_ms": 60.7995}
             for i in range(3)]
    texts = svg_texts(plots.step_time_distribution(steps, emulated=False))
    assert texts
    for text in texts:
        assert not re.search(r"\de[+\u2212-]?\d", text), f"offset/scientific text {text!r}"
        assert not text.startswith(("-", "\u2212", "+")), f"tick label {text!r}"
    # the axis spans about +-5% of 60.8 ms, so whole-millisecond ticks around it
    assert any(re.fullmatch(r"6[01](\.0)?", text) for text in texts), texts


REFERENCES = [{"label": LMSYS, "tokens_per_s_per_gpu": 13386.0,
               "conditions": "48 decode GPUs, 2000-token input, Sep 2025"},
              {"label": "DeepSeek profile", "tokens_per_s_per_gpu": 9087.0},
              {"label": "LMSYS H100", "tokens_per_s_per_gpu": 7583.0}]


def test_throughput_far_below_references_uses_log_axis():
    series = [{"label": "rehearsal", "points": [
        {"prefill_groups": g, "median": 130.0 + g, "min": 125.0, "max": 140.0}
        for g in (1, 2, 3)]}]
    svg = plots.throughput_vs_prefill(series, REFERENCES, emulated=True)
    texts = svg_texts(svg)
    assert "(log scale)" in texts and "decode tokens/s per GPU" in texts
    assert "mathdefault" not in svg and "$10^" not in svg  # plain tick labels, no mathtext
    assert "1,000" in texts and "10,000" in texts
    for ref in REFERENCES:
        assert ref["label"] in svg
    assert "48 decode GPUs, 2000-token input, Sep 2025" in svg


def test_throughput_near_references_keeps_linear_axis():
    series = [{"label": "EP48", "points": [
        {"prefill_groups": g, "median": 3000.0 + 50 * g, "min": 2900.0, "max": 3300.0}
        for g in (1, 2)]}]
    svg = plots.throughput_vs_prefill(series, REFERENCES[2:], emulated=False)
    texts = svg_texts(svg)
    assert "log scale" not in svg
    assert "decode tokens/s per GPU" in texts
    assert "0" in texts  # the linear axis starts at 0

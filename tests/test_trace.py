"""Tests of pdbench.trace: step times from torch-profiler traces."""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

import pytest

from pdbench.errors import InputError
from pdbench.trace import MARKER_KINDS, read_markers, step_time, trace_rank_from_name

DATA = Path(__file__).resolve().parent / "data" / "traces"
CPU_STEPS = DATA / "cpu-steps-TP-0.trace.json.gz"
CPU_RUN_BATCH = DATA / "cpu-run-batch-TP-0.trace.json.gz"
EXPECTED = json.loads((DATA / "expected.json").read_text())

GB200 = "gb200-ep48-fp4-decode"
GB200_TP0 = f"{GB200}/1763864666.7494524-TP-0-DP-0-EP-0.trace.json.gz"
GB200_TP1 = f"{GB200}/1763864666.7494524-TP-1-DP-1-EP-1.trace.json.gz"
FILLED = "h200-sglang-0.5.17-fill-release/filled-to-64/1795935349.1930616-TP-0.trace.json.gz"
STUCK = "h200-sglang-0.5.17-fill-release/stuck-at-63/1795934999.334045-TP-0.trace.json.gz"
TINY = "h200-sglang-0.5.17-tiny-moe/1795934170.6705902-TP-0.trace.json.gz"


def _same(a: dict, b: dict) -> None:
    """Two step_time results agree on everything but the file name and the reader used."""
    strip = lambda r: {k: v for k, v in r.items() if k not in ("file", "layout")}  # noqa: E731
    assert strip(a) == strip(b)


# --------------------------------------------------------------------------------------------
# Writing small traces in Kineto's layout


def _kineto_event(ev: dict) -> str:
    """One event as Kineto writes it: a block of lines between "  {" and "  }"."""
    head = ", ".join(
        f"{json.dumps(k)}: {json.dumps(v)}" for k, v in ev.items() if k not in ("ts", "dur", "args")
    )
    lines = [f"    {head},"]
    times = ", ".join(f'"{k}": {ev[k]:.3f}' for k in ("ts", "dur") if k in ev)
    lines.append(f"    {times}" + ("," if "args" in ev else ""))
    if "args" in ev:
        body = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in ev["args"].items())
        lines += ['    "args": {', f"      {body}", "    }"]
    return "  {\n" + "\n".join(lines) + "\n  }"


def kineto_text(events: list[dict]) -> str:
    header = (
        '\n  {\n    "schemaVersion": 1,\n    "deviceProperties": [\n    {\n'
        '      "id": 0, "name": "NVIDIA H200", "totalGlobalMem": 150109880320\n    }\n    ],\n'
        '      "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 1},\n'
        '  "traceEvents": [\n'
    )
    body = ",\n".join(_kineto_event(e) for e in events)
    footer = (
        ("," if events else "")
        + '\n  {\n    "name": "Record Window End", "ph": "i", "s": "g",'
        + '\n    "pid": "", "tid": "", "ts": 1.000\n  }'
        + '\n  ],\n  "traceName": "/tmp/x.json"\n}'
    )
    return header + body + footer


def write_gz(path: Path, text: str | bytes) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    return path


def span(
    name: str, ts: float, cat: str = "user_annotation", dur: float = 100.0, pid=1, tid=1
) -> dict:
    return {
        "ph": "X",
        "cat": cat,
        "name": name,
        "pid": pid,
        "tid": tid,
        "ts": ts,
        "dur": dur,
        "args": {"External id": 1, "Record function id": 0},
    }


def filler(ts: float, i: int) -> dict:
    return {
        "ph": "X",
        "cat": "cpu_op",
        "name": f"aten::op{i % 7}",
        "pid": 1,
        "tid": 1,
        "ts": ts,
        "dur": 1.5,
        "args": {"External id": i, "Input Dims": [[4, 4], []], "Ev Idx": i},
    }


def steps_trace(names_and_ts: list[tuple[str, float]], cat: str = "user_annotation") -> list[dict]:
    events = []
    for i, (name, ts) in enumerate(names_and_ts):
        events.append(span(name, ts, cat))
        events += [filler(ts + 10 + k, i * 10 + k) for k in range(3)]
    return events



# --------------------------------------------------------------------------------------------
# Every marker family on real traces: a real trace is rewritten so that only the family under
# test is left (e.g. the step spans renamed away, cudaGraphLaunch renamed to hipGraphLaunch),
# and the fallback must find the step time the preferred markers give.

# Renames that hide a family from the reader (the names no longer match any marker).
NO_STEP_SPANS = (b'"name": "step[', b'"name": "hidden-step[')
NO_SCHEDULER_SPANS = (b'"scheduler.run_batch"', b'"scheduler.run_batch_hidden"')
NO_RUN_BATCH_FRAMES = (b'): run_batch"', b'): run_batch_hidden"')
AS_RUN_BATCH_INNER = (b'): run_batch"', b'): _run_batch_inner"')
AS_PP_RUN_BATCH_SPANS = (b'"scheduler.run_batch"', b'"run_batch"')
AS_HIP_GRAPH_LAUNCH = (b'"cudaGraphLaunch"', b'"hipGraphLaunch"')

# (fixture, renames, method, markers); the known step time is the fixture's untouched one:
# 83.1 ms (GB200 v0.5.5.post2 run_batch frames, about 1024 / 12,100 tok/s in its log) and
# 2.76 ms (H200 0.5.17 step spans).
FAMILIES = [
    (GB200_TP0, (), "run_batch_frames", "run_batch frames"),
    (GB200_TP0, (AS_RUN_BATCH_INNER,), "run_batch_frames", "_run_batch_inner frames"),
    (GB200_TP0, (NO_RUN_BATCH_FRAMES,), "cuda_graph_launch", "cudaGraphLaunch"),
    (
        GB200_TP0,
        (NO_RUN_BATCH_FRAMES, AS_HIP_GRAPH_LAUNCH),
        "hip_graph_launch",
        "hipGraphLaunch",
    ),
    (FILLED, (), "step_spans", "step spans"),
    (FILLED, (NO_STEP_SPANS,), "run_batch_frames", "run_batch spans"),
    (FILLED, (NO_STEP_SPANS, AS_PP_RUN_BATCH_SPANS), "run_batch_frames", "run_batch spans"),
    (FILLED, (NO_STEP_SPANS, NO_SCHEDULER_SPANS), "cuda_graph_launch", "cudaGraphLaunch"),
    (
        FILLED,
        (NO_STEP_SPANS, NO_SCHEDULER_SPANS, AS_HIP_GRAPH_LAUNCH),
        "hip_graph_launch",
        "hipGraphLaunch",
    ),
]


def rewritten(src: Path, renames: tuple, dst: Path) -> Path:
    data = gzip.decompress(src.read_bytes())
    for old, new in renames:
        assert old in data, f"{src.name} has no {old!r} to rename"
        data = data.replace(old, new)
    with gzip.open(dst, "wb", compresslevel=1) as f:
        f.write(data)
    return dst


@pytest.mark.parametrize(
    "fixture, renames, method, markers",
    FAMILIES,
    ids=[f"{f.split('-')[0]}-{m.replace(' ', '-')}" for f, _, _, m in FAMILIES],
)
def test_every_marker_family_gives_the_step_time(
    shared_fixtures: Path, tmp_path: Path, fixture: str, renames: tuple, method: str, markers: str
) -> None:
    known = step_time(shared_fixtures / fixture)["median_ms"]
    r = step_time(rewritten(shared_fixtures / fixture, renames, tmp_path / "t.trace.json.gz"))
    assert (r["method"], r["markers"]) == (method, markers)
    assert r["median_ms"] == pytest.approx(known, rel=0.02)
    assert r["steps"] >= 3


def test_hip_graph_launch_same_periods_as_cuda(shared_fixtures: Path, tmp_path: Path) -> None:
    cuda = step_time(rewritten(shared_fixtures / GB200_TP0, (NO_RUN_BATCH_FRAMES,),
                               tmp_path / "cuda.trace.json.gz"))
    hip = step_time(rewritten(shared_fixtures / GB200_TP0,
                              (NO_RUN_BATCH_FRAMES, AS_HIP_GRAPH_LAUNCH),
                              tmp_path / "hip.trace.json.gz"))
    assert hip["step_ms"] == cuda["step_ms"] and len(hip["step_ms"]) == 3


@pytest.mark.parametrize(
    "name, cat, kind",
    [
        ("hipGraphLaunch", "cuda_runtime", "hip_graph_launch"),
        ("hipGraphLaunch", "hip_runtime", "hip_graph_launch"),
        ("hipGraphLaunch", "kernel", None),
        ("hipLaunchKernel", "cuda_runtime", None),
        ("hipModuleLaunchKernel", "cuda_runtime", None),
        ("hipExtModuleLaunchKernel", "cuda_runtime", None),
        ("cudaLaunchKernel", "cuda_runtime", None),
        ("cudaGraphLaunch", "hip_runtime", "cuda_graph_launch"),
        ("/sgl/srt/managers/scheduler.py(2001): _run_batch_inner", "python_function",
         "run_batch_inner_frames"),
        ("/x/tp_worker.py(10): _run_batch_inner", "python_function", None),
        ("run_batch", "user_annotation", "run_batch_spans"),
        ("run_batch", "cpu_op", None),
    ],
)
def test_marker_classes(tmp_path: Path, name: str, cat: str, kind: str | None) -> None:
    events = [span(name, 1000.0 * i, cat) for i in range(3)]
    m = read_markers(write_gz(tmp_path / "t.trace.json.gz", kineto_text(events)))
    assert {k for k, v in m.items() if v} == ({kind} if kind else set())


def test_fallback_order(tmp_path: Path) -> None:
    """Each family is used only when every family before it has fewer than two markers."""
    frame = "/sgl/srt/managers/scheduler.py(1985): "
    families = [
        ("run_batch_frames", "run_batch frames", frame + "run_batch", "python_function", 1.0),
        ("run_batch_frames", "_run_batch_inner frames", frame + "_run_batch_inner",
         "python_function", 2.0),
        ("run_batch_frames", "run_batch spans", "scheduler.run_batch", "user_annotation", 3.0),
        ("cuda_graph_launch", "cudaGraphLaunch", "cudaGraphLaunch", "cuda_runtime", 4.0),
        ("hip_graph_launch", "hipGraphLaunch", "hipGraphLaunch", "cuda_runtime", 5.0),
    ]
    for first in range(len(families)):
        events = []
        for method, markers, name, cat, period_ms in families[first:]:
            events += [span(name, 100_000.0 + 1000.0 * period_ms * i, cat, dur=10.0, tid=i)
                       for i in range(4)]
        r = step_time(write_gz(tmp_path / f"t{first}.trace.json.gz", kineto_text(events)))
        method, markers, _, _, period_ms = families[first]
        assert (r["method"], r["markers"], r["median_ms"]) == (method, markers, period_ms)


# --------------------------------------------------------------------------------------------
# Real SGLang traces


def test_gb200_run_batch_frames(shared_fixtures: Path) -> None:
    r = step_time(shared_fixtures / GB200_TP0)
    assert r["method"] == "run_batch_frames"
    assert r["layout"] == "kineto"
    assert r["steps"] == 4 and len(r["step_ms"]) == 4
    assert r["step_ms"] == pytest.approx([58.6, 82.6, 83.7, 85.5], abs=0.1)
    assert r["first_period_ms"] == pytest.approx(58.6, abs=0.1)
    # The logs around the profile: 1024 requests at about 12,100 tok/s per rank.
    assert r["median_ms"] == pytest.approx(1024 / 12100 * 1000, rel=0.02)
    assert r["batch_sizes"] is None and r["modes"] is None
    assert r["window_ms"] == pytest.approx(sum(r["step_ms"]), abs=1e-3)
    s = r["spread"]
    assert s["min_ms"] == r["step_ms"][0] and s["max_ms"] == max(r["step_ms"])
    assert (
        s["min_ms"]
        <= s["p10_ms"]
        <= s["q1_ms"]
        <= r["median_ms"]
        <= s["q3_ms"]
        <= s["p90_ms"]
        <= s["max_ms"]
    )
    assert 0 < s["cv"] < 0.2


def test_gb200_markers(shared_fixtures: Path) -> None:
    m = read_markers(shared_fixtures / GB200_TP0)
    assert set(m) == set(MARKER_KINDS)
    assert len(m["run_batch_frames"]) == 5
    assert all(e["name"].endswith("scheduler.py(1985): run_batch") for e in m["run_batch_frames"])
    assert len(m["cuda_graph_launch"]) == 4
    assert m["step_spans"] == [] and m["gpu_step_spans"] == []
    ts = [e["ts"] for e in m["run_batch_frames"]]
    assert ts == sorted(ts)
    assert {"name", "cat", "ts", "dur", "pid", "tid"} <= set(m["run_batch_frames"][0])


def test_gb200_rank1_agrees(shared_fixtures: Path) -> None:
    r0 = step_time(shared_fixtures / GB200_TP0)
    r1 = step_time(shared_fixtures / GB200_TP1)
    assert r1["method"] == "run_batch_frames"
    assert r1["median_ms"] == pytest.approx(r0["median_ms"], rel=0.01)


def test_gb200_tiny_chunks(shared_fixtures: Path) -> None:
    path = shared_fixtures / GB200_TP0
    _same(step_time(path, chunk_size=4093), step_time(path))


def test_filled_to_64(shared_fixtures: Path) -> None:
    r = step_time(shared_fixtures / FILLED)
    assert r["method"] == "step_spans"
    assert r["steps"] == 9
    assert r["median_ms"] == pytest.approx(2.758, abs=0.001)
    assert r["batch_sizes"] == [64] * 10
    assert r["modes"] == ["DECODE"] * 10
    assert r["first_period_ms"] == r["step_ms"][0]
    m = read_markers(shared_fixtures / FILLED)
    assert len(m["step_spans"]) == 10
    # Kineto mirrors each CPU span once per GPU stream that ran kernels inside it.
    assert len(m["gpu_step_spans"]) == 20


def test_stuck_at_63(shared_fixtures: Path) -> None:
    r = step_time(shared_fixtures / STUCK)
    assert r["method"] == "step_spans"
    assert r["batch_sizes"] == [63] * 10
    assert r["steps"] == 9


def test_tiny_moe_mixed_modes(shared_fixtures: Path) -> None:
    path = shared_fixtures / TINY
    r = step_time(path)
    assert r["method"] == "step_spans"
    assert r["modes"] == ["DECODE", "EXTEND", "DECODE", "DECODE", "DECODE"]
    assert r["batch_sizes"] == [11, 12, 12, 12]
    # Periods that start at a DECODE step: 0 -> 1, 2 -> 3, 3 -> 4; not the EXTEND's 1 -> 2.
    ts = [e["ts"] for e in read_markers(path)["step_spans"]]
    expected = [(ts[i + 1] - ts[i]) / 1000 for i in (0, 2, 3)]
    assert r["steps"] == 3
    assert r["step_ms"] == pytest.approx(expected, abs=1e-6)
    assert r["window_ms"] == pytest.approx((ts[-1] - ts[0]) / 1000, abs=1e-6)


def test_real_trace_compact_layout_same_result(shared_fixtures: Path, tmp_path: Path) -> None:
    for rel in (FILLED, TINY):
        src = shared_fixtures / rel
        with gzip.open(src, "rb") as f:
            doc = json.load(f)
        compact = write_gz(tmp_path / Path(rel).name, json.dumps(doc))
        r = step_time(compact)
        assert r["layout"] == "generic"
        _same(r, step_time(src))


# --------------------------------------------------------------------------------------------
# Traces written by torch's profiler on the CPU (tests/data/traces/make_cpu_traces.py)


def test_cpu_step_spans() -> None:
    exp = EXPECTED[CPU_STEPS.name]
    r = step_time(CPU_STEPS)
    assert r["method"] == "step_spans" and r["layout"] == "kineto"
    assert r["modes"] == exp["modes"]
    assert r["steps"] == exp["steps"] == 9
    assert r["batch_sizes"] == exp["batch_sizes"] == [8] * 10
    # Each DECODE step sleeps 5 ms; the EXTEND steps' 15 ms periods are not decode steps.
    assert exp["decode_sleep_ms"] <= r["median_ms"] < exp["decode_sleep_ms"] * 1.3
    assert all(p >= exp["decode_sleep_ms"] for p in r["step_ms"])
    assert all(p < exp["extend_sleep_ms"] for p in r["step_ms"])


def test_cpu_run_batch_frames_outermost() -> None:
    exp = EXPECTED[CPU_RUN_BATCH.name]
    m = read_markers(CPU_RUN_BATCH)
    assert len(m["run_batch_frames"]) == exp["run_batch_frames"] == 20  # nested frames match too
    assert m["step_spans"] == []
    r = step_time(CPU_RUN_BATCH)
    assert r["method"] == "run_batch_frames"
    assert r["steps"] == exp["steps"] == 9
    assert r["batch_sizes"] is None
    assert exp["run_batch_sleep_ms"] <= r["median_ms"] < exp["run_batch_sleep_ms"] * 1.3


def test_committed_traces_small() -> None:
    for path in DATA.glob("*.trace.json.gz"):
        assert path.stat().st_size < 300_000, path


# --------------------------------------------------------------------------------------------
# Traces written by torch's profiler on an H200 (tests/data/traces/make_gpu_traces.py): a CUDA
# graph replayed once per step, with and without step spans

GPU_STEPS = DATA / "gpu-graph-steps-TP-0.trace.json.gz"
GPU_NOSPANS = DATA / "gpu-graph-nospans-TP-0.trace.json.gz"
EXPECTED_GPU = json.loads((DATA / "expected-gpu.json").read_text())


def _launch_median(path: Path) -> float:
    ts = [e["ts"] for e in read_markers(path)["cuda_graph_launch"]]
    return statistics.median((b - a) / 1000 for a, b in zip(ts, ts[1:]))


def test_gpu_graph_step_spans() -> None:
    exp = EXPECTED_GPU[GPU_STEPS.name]
    r = step_time(GPU_STEPS)
    assert r["method"] == "step_spans" and r["layout"] == "kineto"
    assert r["steps"] == exp["steps"] == 11
    assert r["batch_sizes"] == exp["batch_sizes"] == [64] * 12
    m = read_markers(GPU_STEPS)
    assert len(m["gpu_step_spans"]) == 12 and len(m["cuda_graph_launch"]) == 12
    # The graph launches inside the spans give the same step time.
    assert r["median_ms"] == pytest.approx(_launch_median(GPU_STEPS), rel=0.01)
    # A step is at least the GPU time of one replay.
    assert r["median_ms"] > EXPECTED_GPU["replay_ms"]


@pytest.mark.parametrize("chunk_size", [7, 4093])
def test_gpu_traces_chunks_and_layouts(chunk_size: int, tmp_path: Path) -> None:
    for path in (GPU_STEPS, GPU_NOSPANS):
        want = step_time(path)
        _same(step_time(path, chunk_size=chunk_size), want)
        with gzip.open(path, "rb") as f:
            compact = write_gz(tmp_path / path.name, json.dumps(json.load(f)))
        _same(step_time(compact, chunk_size=chunk_size), want)


def test_gpu_graph_launch_fallback() -> None:
    exp = EXPECTED_GPU[GPU_NOSPANS.name]
    r = step_time(GPU_NOSPANS)
    assert r["method"] == "cuda_graph_launch"
    assert r["steps"] == exp["steps"] == 11
    assert r["batch_sizes"] is None
    assert EXPECTED_GPU["replay_ms"] < r["median_ms"] < EXPECTED_GPU["replay_ms"] * 2
    # Same loop as the trace with spans, less the spans' own overhead.
    assert r["median_ms"] == pytest.approx(step_time(GPU_STEPS)["median_ms"], rel=0.1)


# --------------------------------------------------------------------------------------------
# Layouts and chunking


@pytest.mark.parametrize("path", [CPU_STEPS, CPU_RUN_BATCH], ids=["steps", "run_batch"])
@pytest.mark.parametrize("indent", [None, 2, 4])
def test_other_layouts_use_ijson_and_agree(path: Path, indent, tmp_path: Path) -> None:
    with gzip.open(path, "rb") as f:
        doc = json.load(f)
    other = write_gz(tmp_path / path.name, json.dumps(doc, indent=indent))
    r = step_time(other)
    assert r["layout"] == "generic"
    _same(r, step_time(path))
    assert read_markers(other) == read_markers(path)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 13, 64, 251, 4096])
def test_tiny_chunks_same_result(chunk_size: int) -> None:
    for path in (CPU_STEPS, CPU_RUN_BATCH):
        r = step_time(path, chunk_size=chunk_size)
        assert r["layout"] == "kineto"
        _same(r, step_time(path))
        assert read_markers(path, chunk_size=chunk_size) == read_markers(path)


@pytest.mark.parametrize("chunk_size", [1, 3, 17, 100])
def test_tiny_chunks_plain_json_and_generic(chunk_size: int, tmp_path: Path) -> None:
    plain = tmp_path / "plain-TP-0.trace.json"
    plain.write_bytes(gzip.decompress(CPU_STEPS.read_bytes()))
    _same(step_time(plain, chunk_size=chunk_size), step_time(CPU_STEPS))
    compact = tmp_path / "compact-TP-0.trace.json"
    compact.write_text(json.dumps(json.loads(plain.read_bytes())))
    r = step_time(compact, chunk_size=chunk_size)
    assert r["layout"] == "generic"
    _same(r, step_time(CPU_STEPS))


def test_every_split_point_of_a_marker(tmp_path: Path) -> None:
    """Cut the stream at every byte of the step-span events: none is lost or counted twice."""
    text = kineto_text(steps_trace([("step[DECODE bs=4]", 1000.0 * (i + 1)) for i in range(3)]))
    path = write_gz(tmp_path / "t.trace.json.gz", text)
    want = step_time(path)
    assert want["steps"] == 2 and want["batch_sizes"] == [4, 4, 4]
    for size in range(1, 400):
        assert read_markers(path, chunk_size=size) == read_markers(path)


def test_forced_layouts(tmp_path: Path) -> None:
    assert step_time(CPU_STEPS, layout="generic")["layout"] == "generic"
    _same(step_time(CPU_STEPS, layout="generic"), step_time(CPU_STEPS, layout="kineto"))
    with gzip.open(CPU_STEPS, "rb") as f:
        compact = write_gz(tmp_path / "c.trace.json.gz", json.dumps(json.load(f)))
    with pytest.raises(InputError, match="c.trace.json.gz"):
        step_time(compact, layout="kineto")
    with pytest.raises(ValueError):
        step_time(CPU_STEPS, layout="csv")


def test_multi_member_gzip(tmp_path: Path) -> None:
    raw = gzip.decompress(CPU_STEPS.read_bytes())
    half = len(raw) // 2
    path = tmp_path / "multi.trace.json.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    _same(step_time(path), step_time(CPU_STEPS))
    _same(step_time(path, chunk_size=5), step_time(CPU_STEPS))


# --------------------------------------------------------------------------------------------
# Method details on small made-up traces


def test_step_span_names_with_aggregates(tmp_path: Path) -> None:
    names = [
        "step[DECODE bs=64 g_sq=1024 g_sqsq=16384 g_sqsk=99 g_sk=7 forward_id=10]",
        "step[DECODE bs=63 g_sq=1 g_sqsq=1 g_sqsk=1 g_sk=1 forward_id=11]",
        "step[MIXED bs=65 c_sq=1 c_sqsq=1 c_sqsk=1 c_sk=1 g_sq=1 g_sqsq=1 g_sqsk=1 g_sk=1 "
        "c=1 g=64 forward_id=12]",
        "step[IDLE bs=0]",
        "step[DECODE bs=62]",
        "step[DECODE bs=62]",
    ]
    ts = [0.0, 2000.0, 4500.0, 9000.0, 9500.0, 11500.0]
    path = write_gz(tmp_path / "t.trace.json.gz", kineto_text(steps_trace(list(zip(names, ts)))))
    r = step_time(path)
    assert r["modes"] == ["DECODE", "DECODE", "MIXED", "IDLE", "DECODE", "DECODE"]
    assert r["batch_sizes"] == [64, 63, 62, 62]
    assert r["step_ms"] == [2.0, 2.5, 2.0]  # MIXED and IDLE periods left out
    assert r["median_ms"] == 2.0
    assert r["window_ms"] == 11.5


def test_gpu_mirrors_ignored(tmp_path: Path) -> None:
    events = steps_trace([("step[DECODE bs=8]", 1000.0 * i) for i in range(1, 5)])
    events += steps_trace(
        [("step[DECODE bs=8]", 1000.0 * i + 333.0) for i in range(1, 4)], cat="gpu_user_annotation"
    )
    path = write_gz(tmp_path / "t.trace.json.gz", kineto_text(events))
    r = step_time(path)
    assert r["step_ms"] == [1.0, 1.0, 1.0]
    assert len(read_markers(path)["gpu_step_spans"]) == 3


def test_only_gpu_mirrors_is_too_few(tmp_path: Path) -> None:
    events = steps_trace(
        [("step[DECODE bs=8]", 1000.0 * i) for i in range(1, 5)], cat="gpu_user_annotation"
    )
    path = write_gz(tmp_path / "gpu-only.trace.json.gz", kineto_text(events))
    with pytest.raises(InputError, match="gpu-only.trace.json.gz.*too few"):
        step_time(path)


def test_nested_run_batch_frames(tmp_path: Path) -> None:
    frame = "/sgl/python/sglang/srt/managers/scheduler.py(1985): run_batch"
    inner = "/sgl/python/sglang/srt/managers/scheduler_pp_mixin.py(40): run_batch"
    events = []
    for i in range(4):
        t = 10_000.0 * i
        events.append(span(frame, t, "python_function", dur=5000.0))
        events.append(span(inner, t + 1.0, "python_function", dur=4000.0))
        events.append(span(frame, t + 2.0, "python_function", dur=3000.0))
    events.append(
        span("/x/tp_worker.py(10): run_batch", 55_000.0, "python_function")
    )  # not the scheduler's
    events.append(span("scheduler.run_batch", 1.0, "cpu_op"))  # wrong category
    path = write_gz(tmp_path / "t.trace.json.gz", kineto_text(events))
    r = step_time(path)
    assert r["method"] == "run_batch_frames"
    assert r["step_ms"] == [10.0, 10.0, 10.0]
    assert len(read_markers(path)["run_batch_frames"]) == 12


def test_scheduler_run_batch_spans_fallback(tmp_path: Path) -> None:
    events = [span("scheduler.run_batch", 3000.0 * i) for i in range(5)]
    events.append(span("cudaGraphLaunch", 50.0, "cuda_runtime"))
    events.append(span("cudaGraphLaunch", 60.0, "cuda_runtime"))
    path = write_gz(tmp_path / "t.trace.json.gz", kineto_text(events))
    r = step_time(path)
    assert r["method"] == "run_batch_frames"
    assert r["step_ms"] == [3.0] * 4


def test_cuda_graph_launch_fallback(tmp_path: Path) -> None:
    events = [
        span("cudaGraphLaunch", 1000.0 + 2500.0 * i, "cuda_runtime", dur=30.0) for i in range(6)
    ]
    events.append(span("cudaGraphLaunch", 99.0, "kernel"))  # wrong category
    events += [filler(7.0 * i, i) for i in range(20)]
    path = write_gz(tmp_path / "t.trace.json.gz", kineto_text(events))
    r = step_time(path)
    assert r["method"] == "cuda_graph_launch"
    assert r["steps"] == 5 and r["median_ms"] == 2.5
    assert r["batch_sizes"] is None and r["modes"] is None


def test_marker_text_in_args_is_not_a_marker(tmp_path: Path) -> None:
    events = steps_trace([("step[DECODE bs=8]", 1000.0 * i) for i in range(1, 4)])
    odd = filler(1500.0, 99)
    odd["args"]["note"] = 'step[DECODE bs=1] and "run_batch" and "cudaGraphLaunch"'
    events.append(odd)
    path = write_gz(tmp_path / "t.trace.json.gz", kineto_text(events))
    m = read_markers(path)
    assert (
        len(m["step_spans"]) == 3 and m["run_batch_frames"] == [] and m["cuda_graph_launch"] == []
    )


def test_spread_single_period(tmp_path: Path) -> None:
    path = write_gz(
        tmp_path / "t.trace.json.gz",
        kineto_text(steps_trace([("step[DECODE bs=2]", 0.0), ("step[DECODE bs=2]", 4000.0)])),
    )
    r = step_time(path)
    assert r["steps"] == 1 and r["step_ms"] == [4.0] and r["first_period_ms"] == 4.0
    assert r["spread"]["cv"] == 0.0 and r["spread"]["iqr_ms"] == 0.0


# --------------------------------------------------------------------------------------------
# Errors: each names the file


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.trace.json.gz.*not found"):
        step_time(tmp_path / "nope.trace.json.gz")


def test_truncated_gzip(tmp_path: Path) -> None:
    data = CPU_STEPS.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 20):
        path = tmp_path / f"cut{cut}.trace.json.gz"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=f"cut{cut}.trace.json.gz.*truncated"):
            step_time(path)
        with pytest.raises(InputError, match="truncated"):
            read_markers(path, chunk_size=7)


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = bytearray(CPU_STEPS.read_bytes())
    data[200:260] = b"\xff" * 60
    path = tmp_path / "bad.trace.json.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="bad.trace.json.gz"):
        step_time(path)


def test_truncated_plain_json(tmp_path: Path) -> None:
    raw = gzip.decompress(CPU_STEPS.read_bytes())
    kineto = tmp_path / "cut.trace.json"
    kineto.write_bytes(raw[: len(raw) - 300])
    with pytest.raises(InputError, match="cut.trace.json.*truncated"):
        step_time(kineto)
    compact = tmp_path / "cutc.trace.json"
    compact.write_text(json.dumps(json.loads(raw))[:-300])
    with pytest.raises(InputError, match="cutc.trace.json"):
        step_time(compact)


@pytest.mark.parametrize("gz", [False, True])
def test_not_json(tmp_path: Path, gz: bool) -> None:
    text = "[2026-11-29 07:15:00] Decode batch, #running-req: 64\n" * 50
    path = tmp_path / ("log.trace.json.gz" if gz else "log.trace.json")
    if gz:
        write_gz(path, text)
    else:
        path.write_text(text)
    with pytest.raises(InputError, match="log.trace.json"):
        step_time(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.trace.json"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty.trace.json"):
        step_time(path)


def test_empty_trace_events(tmp_path: Path) -> None:
    for name, text in (
        ("kineto-empty.trace.json.gz", kineto_text([])),
        ("compact-empty.trace.json.gz", json.dumps({"schemaVersion": 1, "traceEvents": []})),
    ):
        path = write_gz(tmp_path / name, text)
        with pytest.raises(InputError, match=f"{name}.*too few steps"):
            step_time(path)
        assert all(v == [] for v in read_markers(path).values())


def test_no_trace_events_key(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "other.json.gz", json.dumps({"schemaVersion": 1, "events": [1, 2]}))
    with pytest.raises(InputError, match="other.json.gz.*traceEvents"):
        step_time(path)


def test_no_markers(tmp_path: Path) -> None:
    path = write_gz(
        tmp_path / "plain.trace.json.gz", kineto_text([filler(10.0 * i, i) for i in range(50)])
    )
    with pytest.raises(InputError, match="plain.trace.json.gz.*too few steps.*no step markers"):
        step_time(path)


def test_one_step_is_too_few(tmp_path: Path) -> None:
    path = write_gz(
        tmp_path / "one.trace.json.gz", kineto_text(steps_trace([("step[DECODE bs=8]", 5.0)]))
    )
    with pytest.raises(InputError, match="one.trace.json.gz.*too few.*1 step span"):
        step_time(path)


def test_only_extend_steps_is_too_few(tmp_path: Path) -> None:
    text = kineto_text(steps_trace([("step[EXTEND bs=1 toks=100]", 1000.0 * i) for i in range(4)]))
    path = write_gz(tmp_path / "prefill.trace.json.gz", text)
    with pytest.raises(InputError, match="prefill.trace.json.gz.*too few decode steps.*4 EXTEND"):
        step_time(path)


# --------------------------------------------------------------------------------------------
# File names


def _rank(
    prefix=None, pid=None, tp=None, dp=None, pp=None, ep=None, stage=None, merged=False
) -> dict:
    return {
        "prefix": prefix,
        "profile_id": pid,
        "tp": tp,
        "dp": dp,
        "pp": pp,
        "ep": ep,
        "stage": stage,
        "merged": merged,
    }


@pytest.mark.parametrize(
    "name, want",
    [
        (
            "1763864666.7494524-TP-0-DP-0-EP-0.trace.json.gz",
            _rank(pid="1763864666.7494524", tp=0, dp=0, ep=0),
        ),
        (
            "1752998400.123-TP-17-DP-17-EP-17-DECODE.trace.json.gz",
            _rank(pid="1752998400.123", tp=17, dp=17, ep=17, stage="DECODE"),
        ),
        ("1795934170.6705902-TP-0.trace.json.gz", _rank(pid="1795934170.6705902", tp=0)),
        (
            "myrun-1760576844.4826152-TP-3-PP-1.trace.json.gz",
            _rank(prefix="myrun", pid="1760576844.4826152", tp=3, pp=1),
        ),
        (
            "gb200-dec-1760576844.48-TP-5-DP-5-PP-0-EP-5-EXTEND.trace.json.gz",
            _rank(prefix="gb200-dec", pid="1760576844.48", tp=5, dp=5, pp=0, ep=5, stage="EXTEND"),
        ),
        (
            "1752998400.1-TP-2-ForwardMode.DECODE.trace.json.gz",
            _rank(pid="1752998400.1", tp=2, stage="DECODE"),
        ),
        ("1752998400.1-TP-2-decode.trace.json.gz", _rank(pid="1752998400.1", tp=2, stage="decode")),
        ("1752998400.1-TP-2-1.trace.json.gz", _rank(pid="1752998400.1", tp=2, stage="1")),
        ("rpd-1752998400.1-TP-0.trace.json.gz", _rank(prefix="rpd", pid="1752998400.1", tp=0)),
        ("bench_run_A-TP-0-EP-0.trace.json.gz", _rank(pid="bench_run_A", tp=0, ep=0)),
        ("my-own-id-TP-1.trace.json", _rank(pid="my-own-id", tp=1)),
        ("merged-1763864666.7494524.trace.json.gz", _rank(pid="1763864666.7494524", merged=True)),
    ],
)
def test_trace_rank_from_name(name: str, want: dict) -> None:
    assert trace_rank_from_name(name) == want
    assert trace_rank_from_name(Path("/some/dir") / name) == want


@pytest.mark.parametrize(
    "name", ["server.log", "TP-0.trace.json.gz", "1763864666.7-TP-x.trace.json.gz", "x.json.gz"]
)
def test_trace_rank_from_bad_name(name: str) -> None:
    with pytest.raises(InputError, match="not a profiler trace file name"):
        trace_rank_from_name(name)


@pytest.mark.parametrize(
    "names, want",
    [
        # whole-capture files (start_step or immediate), with and without DP/EP parts
        (["7.5-TP-0.trace.json.gz", "7.5-TP-1.trace.json.gz"], {0: "7.5-TP-0", 1: "7.5-TP-1"}),
        # by stage on PD decode: the -DECODE file of each rank
        (["7.5-TP-0-DP-0-EP-0-DECODE.trace.json.gz", "7.5-TP-1-DP-1-EP-1-DECODE.trace.json.gz"],
         {0: "7.5-TP-0-DP-0-EP-0-DECODE", 1: "7.5-TP-1-DP-1-EP-1-DECODE"}),
        # a prefill-stage capture, the merged file and another profile are not rank traces
        (["merged-7.5.trace.json.gz", "7.5-TP-0-DP-0-EXTEND.trace.json.gz",
          "8.5-TP-0-DP-0.trace.json.gz", "7.5-TP-1-DP-1.trace.json.gz"],
         {1: "7.5-TP-1-DP-1"}),
        # with a profile_prefix
        (["snap-7.5-TP-3-DP-3-EP-3-DECODE.trace.json.gz"], {3: "snap-7.5-TP-3-DP-3-EP-3-DECODE"}),
    ],
)
def test_traces_for(tmp_path: Path, names: list[str], want: dict) -> None:
    from pdbench.trace import traces_for

    for name in names:
        (tmp_path / name).write_bytes(b"")
    got = traces_for(tmp_path, "7.5")
    assert {r: p.name.removesuffix(".trace.json.gz") for r, p in got.items()} == want


def test_merged_trace_of_several_ranks_is_refused(tmp_path: Path) -> None:
    """merge_profiles' file: every rank's events in one compact-JSON list, pids relabelled."""
    events = []
    for rank, offset in ((0, 0.0), (1, 400.0)):
        label = f"[TP{rank:02d}-DP{rank:02d}-EP{rank:02d}] 1234"
        events += [dict(span("step[DECODE bs=8]", offset + 1000.0 * i), pid=label)
                   for i in range(4)]
    path = tmp_path / "merged-7.5.trace.json.gz"
    write_gz(path, json.dumps({"traceEvents": events}))
    with pytest.raises(InputError, match=r"merged-7\.5.*2 processes.*several ranks"):
        step_time(path)
    one_rank = [e for e in events if e["pid"].startswith("[TP00")]
    write_gz(path, json.dumps({"traceEvents": one_rank}))
    assert step_time(path)["step_ms"] == [1.0, 1.0, 1.0]

"""The throughput computation: the runbook's example, synthetic runs, and real output."""

import gzip
import json
import subprocess
import sys

import pytest

from pdbench.errors import InputError
from pdbench.measure import measure, tokens_per_s_per_gpu

RUNBOOK_RANKS = [285, 256, 254, 265, 271, 227, 221, 269]
PROFILE_ID = "1760576844.4826152"


def test_runbook_formula():
    assert sum(RUNBOOK_RANKS) == 2048
    assert tokens_per_s_per_gpu(2048, 65.0, 8) == pytest.approx(3938.46, abs=0.01)
    assert round(tokens_per_s_per_gpu(2048, 65.0, 8)) == 3938
    assert tokens_per_s_per_gpu(2048, 65.0, 8, accept_len=2.0) == pytest.approx(
        2 * 3938.46, abs=0.02
    )
    with pytest.raises(ValueError):
        tokens_per_s_per_gpu(2048, 0, 8)


def decode_line(t, dp, running, gen, dialect="0.5.3"):
    prefix = f"[2025-10-15 18:07:{t:02d} DP{dp} TP{dp} EP{dp}]"
    body = (
        f"#running-req: {running}, #token: 328960, token usage: 0.51, pre-allocated usage: 0.00, "
        f"#retracted-req: 0, cuda graph: True, gen throughput (token/s): {gen:.2f}, #queue-req: 0, "
    )
    sep = "." if dialect == "0.5.3" else ","
    return f"{prefix} Decode batch{sep} {body}"


def write_runbook_logs(tmp_path, step_ms=65.0, ranks=RUNBOOK_RANKS, sleep_in_window=False):
    """Eight DP ranks over two decode node logs, in the runbook's v0.5.3 dialect."""
    paths = []
    for node in range(2):
        lines = ["[2025-10-15 18:00:00] The server is fired up and ready to roll!"]
        node_ranks = range(node * 4, node * 4 + 4)
        for t in range(10, 24):  # steady decode before the profile
            for dp in node_ranks:
                lines.append(decode_line(t, dp, ranks[dp], ranks[dp] / (step_ms / 1000)))
        for dp in node_ranks:
            lines.append(
                f"[2025-10-15 18:07:24 DP{dp} TP{dp} EP{dp}] Profiling starts. Traces will be "
                f"saved to: /lustre/x/../torch_profiler (with profile id: {PROFILE_ID})"
            )
        for dp in node_ranks:  # inside the window: slower steps, must not count
            lines.append(decode_line(25, dp, ranks[dp], ranks[dp] / (step_ms * 1.4 / 1000)))
            if sleep_in_window:
                lines.append(
                    f"[2025-10-15 18:07:25 DP{dp} TP{dp} EP{dp}] Scheduler.run_batch sleep 1.0s"
                )
        for dp in node_ranks:
            lines.append(f"[2025-10-15 18:07:26 DP{dp} TP{dp} EP{dp}] Stop profiling...")
            lines.append(
                f"[2025-10-15 18:07:29 DP{dp} TP{dp} EP{dp}] Profiling done. Traces are saved to: "
                "/lustre/x/../torch_profiler"
            )
        for t in range(30, 40):
            for dp in node_ranks:
                lines.append(decode_line(t, dp, ranks[dp], ranks[dp] / (step_ms / 1000)))
        path = tmp_path / f"launch_server_decode_node_rank_{node}.log"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def write_kineto_trace(path, starts_ms, with_step_spans=None):
    """A small trace in Kineto's layout: run_batch frames (old SGLang) or step spans."""
    events = []
    for i, start in enumerate(starts_ms):
        if with_step_spans is None:
            name, cat = (
                "/sgl-workspace/sglang/python/sglang/srt/managers/scheduler.py(1985): run_batch",
                "python_function",
            )
        else:
            name, cat = f"step[DECODE bs={with_step_spans[i]}]", "user_annotation"
        events.append(
            "  {\n"
            f'    "ph": "X", "cat": "{cat}", "name": "{name}", "pid": 7, "tid": 7,\n'
            f'    "ts": {1e6 + start * 1000:.3f}, "dur": 1500.000,\n'
            '    "args": {\n      "External id": 1\n    }\n  }'
        )
    text = (
        '{\n  "schemaVersion": 1,\n  "deviceProperties": [\n  ],\n'
        '  "distributedInfo": {"backend": "nccl", "rank": 0, "world_size": 8},\n'
        '  "traceEvents": [\n' + ",\n".join(events) + '\n  ],\n  "traceName": "x"\n}\n'
    )
    with gzip.open(path, "wt") as fh:
        fh.write(text)


def write_traces(tmp_path, step_ms=65.0, ranks=(0, 1), step_spans=None):
    trace_dir = tmp_path / "torch_profiler"
    trace_dir.mkdir(exist_ok=True)
    for rank in ranks:
        starts = [i * step_ms for i in range(6)]
        write_kineto_trace(
            trace_dir / f"{PROFILE_ID}-TP-{rank}.trace.json.gz", starts, with_step_spans=step_spans
        )
    return trace_dir


def test_runbook_example_end_to_end(tmp_path):
    logs = write_runbook_logs(tmp_path)
    traces = write_traces(tmp_path)
    result = measure(logs, traces, decode_gpus=8)
    assert result["profile_id"] == PROFILE_ID
    assert result["per_rank_batch"] == {str(i): b for i, b in enumerate(RUNBOOK_RANKS)}
    assert result["global_batch"] == 2048
    assert (result["rank_batch_min"], result["rank_batch_max"]) == (221, 285)
    assert result["step_ms"] == pytest.approx(65.0)
    assert round(result["tokens_per_s_per_gpu"]) == 3938
    assert result["method"] == "run_batch_frames"
    assert result["batch_source"] == ["log_before_profile_start"]
    # The logs imply the same 65 ms around the window; the slower in-window lines are excluded.
    assert result["log_step_ms"] == pytest.approx(65.0, rel=1e-3)
    assert result["flags"] == []


def test_disagreement_and_missing_ranks_are_flagged(tmp_path):
    logs = write_runbook_logs(tmp_path, step_ms=50.0)
    traces = write_traces(tmp_path, step_ms=65.0)
    result = measure(logs[:1], traces, decode_gpus=8, tolerance=0.10)
    assert result["global_batch"] == sum(RUNBOOK_RANKS[:4])
    assert "ranks_found_4_of_8" in result["flags"]
    assert "trace_vs_log_step_time" in result["flags"]
    assert result["trace_log_ratio"] == pytest.approx(1.3, rel=1e-3)


def test_sleep_in_window_is_flagged(tmp_path):
    logs = write_runbook_logs(tmp_path, sleep_in_window=True)
    result = measure(logs, write_traces(tmp_path), decode_gpus=8)
    assert any(f.startswith("slow_down_in_window") for f in result["flags"])


def test_step_span_batches_win_over_logs(tmp_path):
    logs = write_runbook_logs(tmp_path)
    traces = write_traces(tmp_path, ranks=(0,), step_spans=[300] * 6)
    result = measure(logs, traces, decode_gpus=8)
    assert result["per_rank_batch"]["0"] == 300
    assert result["global_batch"] == 2048 - 285 + 300
    assert set(result["batch_source"]) == {"trace_step_spans", "log_before_profile_start"}


def test_errors_name_the_input(tmp_path):
    logs = write_runbook_logs(tmp_path)
    traces = write_traces(tmp_path)
    with pytest.raises(InputError, match="profile id 42 does not appear"):
        measure(logs, traces, decode_gpus=8, profile_id="42")
    no_traces = tmp_path / "no-traces"
    no_traces.mkdir()
    with pytest.raises(InputError, match="no trace files of profile"):
        measure(logs, no_traces, decode_gpus=8)
    with pytest.raises(InputError, match="missing-dir"):
        measure(logs, tmp_path / "missing-dir", decode_gpus=8)
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(InputError, match="empty.log"):
        measure([empty], traces, decode_gpus=8)


def test_cli_throughput_json_and_errors(tmp_path):
    logs = write_runbook_logs(tmp_path)
    traces = write_traces(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "pdbench.cli",
        "throughput",
        "--logs",
        *map(str, logs),
        "--traces",
        str(traces),
        "--decode-gpus",
        "8",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert result["global_batch"] == 2048 and round(result["tokens_per_s_per_gpu"]) == 3938
    bad = subprocess.run(cmd + ["--profile-id", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "pdbench: error:" in bad.stderr and "nope" in bad.stderr


def test_gb200_fixture(shared_fixtures):
    """Node 0 of the GB200 EP48 run: 4 of 48 ranks, 1024 each, ~84 ms steps."""
    folder = shared_fixtures / "gb200-ep48-fp4-decode"
    result = measure([folder / "launch_server_decode_node_rank_0.log"], folder, decode_gpus=48)
    assert result["profile_id"] == "1763864666.7494524"
    assert result["per_rank_batch"] == {"0": 1024, "1": 1024, "2": 1024, "3": 1024}
    assert "ranks_found_4_of_48" in result["flags"]
    assert result["method"] == "run_batch_frames"
    # Trace and log step times agree within about 2% on GB200.
    assert result["log_step_ms"] == pytest.approx(84.6, rel=0.02)
    assert result["step_ms"] == pytest.approx(result["log_step_ms"], rel=0.03)
    assert "trace_vs_log_step_time" not in result["flags"]
    assert set(result["rank_step_ms"]) == {"0", "1"}


def test_h200_fill_release_fixture_shows_profiler_overhead(shared_fixtures):
    folder = shared_fixtures / "h200-sglang-0.5.17-fill-release" / "filled-to-64"
    result = measure([folder / "server.log.gz"], folder, decode_gpus=1, tolerance=0.10)
    assert result["per_rank_batch"] == {"0": 64}
    assert result["batch_source"] == ["trace_step_spans"]
    assert result["step_ms"] == pytest.approx(2.758, abs=0.002)
    assert result["log_step_ms"] == pytest.approx(2.05, rel=0.03)
    # The profiler slowed each traced step by about a third: flagged, both reported.
    assert result["trace_log_ratio"] == pytest.approx(1.35, abs=0.08)
    assert "trace_vs_log_step_time" in result["flags"]
    assert round(result["tokens_per_s_per_gpu"]) == round(64 / (result["step_ms"] / 1000))

"""The pdbench command line: JSON on stdout, one clear line on stderr and status 2 on error."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "tests" / "data" / "traces"

RUNBOOK_LINES = """\
[2025-10-16 18:59:59 DP0 TP0 EP0] Scheduler.run_batch sleep 180.0s
[2025-10-16 19:02:59 DP0 TP0 EP0] Decode batch. #running-req: 68, #token: 1201280, token usage: 0.69, pre-allocated usage: 0.63, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 0.38, #queue-req: 0,
[2025-10-15 18:07:24 DP0 TP0 EP0] Profiling starts. Traces will be saved to: /lustre/x/../torch_profiler (with profile id: 1760576844.4826152)
/usr/lib/python3/warnings.py:1: UserWarning: not a log line
"""


def pdbench(*args):
    return subprocess.run(
        [sys.executable, "-m", "pdbench.cli", *map(str, args)], capture_output=True, text=True
    )


def test_parse_log_runbook_lines(tmp_path):
    log = tmp_path / "decode.log"
    log.write_text(RUNBOOK_LINES)
    result = pdbench("parse-log", log)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in records] == ["slow_down", "decode", "profile_start"]
    sleep, decode, start = records
    assert sleep["sleep_s"] == 180.0 and sleep["dp"] == 0
    assert decode["running_req"] == 68 and decode["token_usage"] == 0.69
    assert decode["pre_allocated_usage"] == 0.63 and decode["cuda_graph"] is True
    assert decode["gen_throughput"] == 0.38 and decode["queue_req"] == 0
    assert (decode["dp"], decode["tp"], decode["ep"], decode["pp"]) == (0, 0, 0, None)
    assert start["profile_id"] == "1760576844.4826152"
    assert start["output_dir"] == "/lustre/x/../torch_profiler"
    only = pdbench("parse-log", "--kind", "decode", log)
    assert [json.loads(x)["kind"] for x in only.stdout.splitlines()] == ["decode"]


def test_step_time_on_a_real_torch_trace():
    expected = json.loads((TRACES / "expected.json").read_text())["cpu-steps-TP-0.trace.json.gz"]
    result = pdbench("step-time", TRACES / "cpu-steps-TP-0.trace.json.gz")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) >= {"steps", "step_ms", "median_ms", "batch_sizes", "method"}
    assert data["method"] == expected["method"] == "step_spans"
    assert data["steps"] == expected["steps"] == len(data["step_ms"])
    assert data["batch_sizes"] == expected["batch_sizes"]


def test_dialects_table():
    result = pdbench("dialects", "0.4.9", "0.5.5.post2", "0.5.14")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["version"], r["decode_snapshot"], r["profile_by_stage_on_pd_decode"])
            for r in rows] == [("0.4.9", "immediate", False), ("0.5.5.post2", "start_step", False),
                               ("0.5.14", "by_stage", True)]
    every = json.loads(pdbench("dialects").stdout)
    assert every[0]["version"] == "0.4.6.post3" and len(every) > 10
    bad = pdbench("dialects", "0.4")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("pdbench: error: ") and len(bad.stderr.splitlines()) == 1


def test_errors_are_one_line_and_leave_stdout_empty(tmp_path):
    good = tmp_path / "good.log"
    good.write_text(RUNBOOK_LINES)
    for args in (
        ("parse-log", good, tmp_path / "missing.log"),
        ("step-time", tmp_path / "missing.trace.json.gz"),
        ("validate-config", tmp_path / "missing.yaml"),
    ):
        result = pdbench(*args)
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert result.stderr.startswith("pdbench: error: ") and "missing" in result.stderr
        assert "Traceback" not in result.stderr


def test_validate_config_and_plan(tmp_path):
    result = pdbench("validate-config", REPO / "config" / "config.yaml")
    assert result.returncode == 0, result.stderr
    assert [p["point"] for p in json.loads(result.stdout)["points"]] == ["p1", "p2", "p3"]
    env_sh = tmp_path / "node_list_env.sh"
    result = pdbench(
        "plan",
        "--config",
        REPO / "config" / "config.yaml",
        "--experiment",
        "ep48",
        "--point",
        "p1",
        "--nodelist",
        "gb-[001-014]",
        "--env-sh",
        env_sh,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["decode"]["url"] == "http://gb-003:30000"
    assert "export DECODE_HEAD_NODE=gb-003" in env_sh.read_text()


def test_parse_log_reports_garbled_and_insane_fields(tmp_path):
    log = tmp_path / "decode.log"
    log.write_text(
        "[2026-05-28 02:59:59 TP0] Decode batch, #running-req: 45, #token: 44672, "
        "token usaccept rate: 0.32, npu graph: False, gen throughput (token/s): 863.65, "
        "#queue-req\n"
        "[2026-05-28 03:00:00 TP0] Decode batch, #running-req: nan, #token: 44672, "
        "token usage: 0.10, npu graph: True, gen throughput (token/s): 863.65, #queue-req: 0\n"
    )
    result = pdbench("parse-log", log)
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["unknown_fields"] == {"token usaccept rate": "0.32", "#queue-req": ""}
    assert "token_usage" not in first and second["invalid_fields"] == {"running_req": "nan"}
    lines = result.stderr.splitlines()
    assert lines == [
        f"pdbench: {log}: 2 fields with labels SGLang does not print (garbled lines?), kept "
        "under unknown_fields: 'token usaccept rate' x1, '#queue-req' x1",
        f"pdbench: {log}: 1 fields with values that are no count or rate, kept under "
        "invalid_fields: 'running_req' x1",
    ]

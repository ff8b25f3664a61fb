"""A corpus of bad measurement inputs (traces, logs, command-line values), by class: each
gives a one-line error naming the file or option, or a named flag; never a traceback and
never a number computed from insane input."""

from __future__ import annotations

import gzip
import math

import pytest

from pdbench.cli import main
from pdbench.errors import InputError
from pdbench.measure import measure
from pdbench.trace import step_time

from test_trace import kineto_text, steps_trace, write_gz

DECODE = ("[2026-12-05 07:00:{s:02d} DP{dp} TP{dp} EP{dp}] Decode batch. #running-req: {n}, "
          "#token: 100, token usage: 0.01, cuda graph: True, gen throughput (token/s): "
          "{g}, #queue-req: 0, \n")
PROFILE = ("[2026-12-05 07:00:{s:02d} DP{dp} TP{dp} EP{dp}] Profiling starts. Traces will be "
           "saved to: /t (with profile id: 7)\n")
DONE = "[2026-12-05 07:00:{s:02d} DP{dp} TP{dp} EP{dp}] Profiling done. Traces are saved to: /t\n"


def good_steps(n: int = 6, start: float = 1_000_000.0, period_us: float = 50_000.0):
    return [("step[DECODE bs=4]", start + i * period_us) for i in range(n)]


def trace_with(tmp_path, events, name="7-TP-0-DP-0-EP-0.trace.json.gz"):
    return write_gz(tmp_path / name, kineto_text(events))


def raw_trace(tmp_path, text, name="7-TP-0-DP-0-EP-0.trace.json.gz"):
    return write_gz(tmp_path / name, text)


def _replace_ts(text: str, old: float, new: str) -> str:
    return text.replace(f'"ts": {old:.3f}', f'"ts": {new}', 1)


def _trace_cases():
    base = steps_trace(good_steps())
    text = kineto_text(base)
    first = good_steps()[2][1]
    return [
        ("NaN timestamp", _replace_ts(text, first, "NaN")),
        ("Infinity timestamp", _replace_ts(text, first, "Infinity")),
        ("-Infinity timestamp", _replace_ts(text, first, "-Infinity")),
        ("negative timestamp", _replace_ts(text, first, "-5000000000000.000")),
        ("string timestamp", _replace_ts(text, first, '"later"')),
        ("NaN duration", text.replace('"dur": 100.000', '"dur": NaN', 1)),
        ("negative duration", text.replace('"dur": 100.000', '"dur": -100.000', 1)),
        ("truncated", text[: len(text) // 2]),
        ("empty", ""),
        ("not JSON", "this is not a trace"),
        ("JSON but no events", '{"traceEvents": []}'),
        ("one step only", kineto_text(steps_trace(good_steps(1)))),
        ("a list, not a trace", "[1, 2, 3]"),
    ]


TRACE_CASES = _trace_cases()


@pytest.mark.parametrize("case, text", TRACE_CASES, ids=[c[0] for c in TRACE_CASES])
def test_bad_trace_is_a_one_line_error(case, text, tmp_path, capsys):
    path = raw_trace(tmp_path, text)
    with pytest.raises(InputError) as err:
        step_time(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert main(["step-time", str(path)]) != 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and out.out == "", out
    assert len(out.err.strip().splitlines()) == 1, out.err


def test_gzip_garbage_trace_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "7-TP-0.trace.json.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    assert main(["step-time", str(path)]) != 0
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1, err


def write_logs(tmp_path, lines_by_rank):
    paths = []
    for rank, lines in lines_by_rank.items():
        path = tmp_path / f"decode_{rank}.log"
        path.write_text("".join(lines))
        paths.append(path)
    return paths


def rank_lines(dp: int, n: int, g: str = "80.00"):
    lines = [DECODE.format(s=s, dp=dp, n=n, g=g) for s in range(1, 6)]
    lines.append(PROFILE.format(s=6, dp=dp))
    lines.append(DONE.format(s=7, dp=dp))
    lines += [DECODE.format(s=s, dp=dp, n=n, g=g) for s in range(8, 12)]
    return lines


def test_every_running_req_zero_is_an_error_not_a_division(tmp_path):
    logs = write_logs(tmp_path, {0: rank_lines(0, 0, "0.00")})
    traces = tmp_path / "traces"
    traces.mkdir()
    trace_with(traces, steps_trace([(n.replace("bs=4", "bs=0"), t) for n, t in good_steps()]))
    with pytest.raises(InputError, match="batch of 0"):
        measure(logs, traces, decode_gpus=1, profile_id="7")


def test_logs_disagreeing_with_the_trace_batch_are_flagged(tmp_path):
    logs = write_logs(tmp_path, {0: rank_lines(0, 16)})
    traces = tmp_path / "traces"
    traces.mkdir()
    trace_with(traces, steps_trace(good_steps()))  # bs=4 in the trace, 16 in the logs
    m = measure(logs, traces, decode_gpus=1, profile_id="7")
    assert "log_batch_differs_from_trace:dp0" in m["flags"], m["flags"]
    assert math.isfinite(m["tokens_per_s_per_gpu"])


CLI_CASES = [
    ("throughput", ["--decode-gpus", "0"], "--decode-gpus"),
    ("throughput", ["--decode-gpus", "-8"], "--decode-gpus"),
    ("throughput", ["--decode-gpus", "8.5"], "--decode-gpus"),
    ("throughput", ["--decode-gpus", "nan"], "--decode-gpus"),
    ("throughput", ["--decode-gpus", "8", "--dp", "0"], "--dp"),
    ("throughput", ["--decode-gpus", "8", "--tolerance", "nan"], "--tolerance"),
    ("throughput", ["--decode-gpus", "8", "--tolerance", "inf"], "--tolerance"),
    ("throughput", ["--decode-gpus", "8", "--tolerance", "-0.1"], "--tolerance"),
    ("throughput", ["--decode-gpus", "8", "--tolerance", "0"], "--tolerance"),
    ("fill-status", ["--target", "0"], "--target"),
    ("fill-status", ["--target", "-1"], "--target"),
    ("fill-status", ["--target", "x"], "--target"),
    ("fill-status", ["--target", "8", "--target-fraction", "0"], "--target-fraction"),
    ("fill-status", ["--target", "8", "--target-fraction", "nan"], "--target-fraction"),
    ("fill-status", ["--target", "8", "--target-fraction", "inf"], "--target-fraction"),
    ("fill-status", ["--target", "8", "--target-fraction", "1.5"], "--target-fraction"),
    ("fill-status", ["--target", "8", "--ranks", "0"], "--ranks"),
    ("fill-status", ["--target", "8", "--ranks", "-3"], "--ranks"),
    ("fill-status", ["--target", "8", "--plateau-forwards", "0"], "--plateau-forwards"),
]


@pytest.mark.parametrize("command, args, option", CLI_CASES,
                         ids=[f"{c[0]} {' '.join(c[1])}" for c in CLI_CASES])
def test_bad_option_is_refused_by_the_parser_in_one_line(command, args, option, tmp_path,
                                                         capsys):
    log = tmp_path / "d.log"
    log.write_text("".join(rank_lines(0, 4)))
    extra = ["--traces", str(tmp_path)] if command == "throughput" else []
    with pytest.raises(SystemExit) as exit_:
        main([command, "--logs", str(log), *extra, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert option in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("content", [b"", b"garbage that is no SGLang log\n",
                                     gzip.compress(b"nothing here\n"), b"\x1f\x8b\x08garbage"])
def test_parse_log_says_when_nothing_was_recognised(content, tmp_path, capsys):
    path = tmp_path / ("x.log.gz" if content[:2] == b"\x1f\x8b" else "x.log")
    path.write_bytes(content)
    main(["parse-log", str(path)])
    err = capsys.readouterr().err
    assert str(path) in err and ("no SGLang log line" in err or "gzip" in err), err
    assert "Traceback" not in err


def test_the_corpus_has_over_eighty_cases():
    # with the corpus of tests/test_loglines.py and tests/test_trace.py's bad inputs
    total = len(TRACE_CASES) + len(CLI_CASES) + len(VALUE_CASES) + len(FILE_CASES) + 4 + 4
    assert total >= 80, total


from pdbench.loglines import parse_line  # noqa: E402

LINE = ("[2026-12-05 07:00:01 DP0 TP0 EP0] Decode batch. #running-req: 12, #token: 100, "
        "token usage: 0.01, cuda graph: True, gen throughput (token/s): 80.00, "
        "#queue-req: 3, ")
FIELDS = {"running_req": "#running-req: 12", "token": "#token: 100",
          "token_usage": "token usage: 0.01", "gen_throughput": "gen throughput (token/s): 80.00",
          "queue_req": "#queue-req: 3"}
VALUE_CASES = [(key, bad) for key in FIELDS
               for bad in ("nan", "NaN", "inf", "Infinity", "-5", "1e309", "abc", "-0.5")]


@pytest.mark.parametrize("key, bad", VALUE_CASES, ids=[f"{k}={v}" for k, v in VALUE_CASES])
def test_an_insane_log_value_is_kept_apart_never_used(key, bad):
    label = FIELDS[key].split(": ")[0]
    record = parse_line(LINE.replace(FIELDS[key], f"{label}: {bad}"))
    assert record["kind"] == "decode" and key not in record, record
    assert record["invalid_fields"] == {key: bad}
    assert all(not isinstance(v, float) or math.isfinite(v) for v in record.values())


def test_a_garbled_batch_line_before_the_profile_is_flagged(tmp_path):
    lines = rank_lines(0, 4)
    lines[4] = lines[4].replace("#running-req: 4", "#running-req: nan")  # just before it
    logs = write_logs(tmp_path, {0: lines})
    traces = tmp_path / "traces"
    traces.mkdir()
    trace_with(traces, steps_trace([("scheduler.run_batch", t) for _, t in good_steps()]))
    m = measure(logs, traces, decode_gpus=1, profile_id="7")
    assert "garbled_batch_line_before_profile:dp0" in m["flags"], m["flags"]
    assert m["global_batch"] == 4  # the line before it


FILE_CASES = [
    ("utf-16", "\ufeff[2026-12-05 07:00:01 DP0] Decode batch.".encode("utf-16")),
    ("binary junk", bytes(range(256)) * 4),
    ("crlf endings", LINE.replace(", ", ", ").encode() + b"\r\n"),
    ("truncated line", LINE[:40].encode()),
    ("NUL bytes", b"\x00" * 100),
    ("very long line", b"x" * 2_000_000 + b"\n"),
]


@pytest.mark.parametrize("case, content", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_a_strange_log_file_is_read_or_refused_in_one_line(case, content, tmp_path, capsys):
    path = tmp_path / "x.log"
    path.write_bytes(content)
    code = main(["parse-log", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    if code != 0:
        assert str(path) in out.err and len(out.err.strip().splitlines()) == 1, out.err
    else:
        assert out.out or f"{path}: no SGLang log line recognised" in out.err

"""Real SGLang output of the chain on a GPU machine, read by the workflow's own stages.

`tests/data/real-runs/h100-sglang-0.5.17-pd-local/` is the results tree of
`scripts/device-chain config/single-gpu-pd.yaml` on one NVIDIA H100 (SGLang 0.5.17, prefill
and decode in PD mode sharing the GPU, Mooncake over TCP, sglang-router 0.3.2's MiniLB,
bench_serving; site.launcher local): the servers' and client's logs (gzip), both
snapshots' traces, the fill and release records, the manifest. Its README says what ran.
`…-with-stack/` keeps what the first run (profiler with Python stacks, prompts sent as
text) measured, and an excerpt of its decode log.
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest

from pdbench.context import PointContext
from pdbench.loglines import iter_log
from pdbench.measure import measure
from pdbench.throughput import point_measurement

RUNS = Path(__file__).resolve().parent / "data" / "real-runs"
RUN = RUNS / "h100-sglang-0.5.17-pd-local"
WITH_STACK = RUNS / "h100-sglang-0.5.17-pd-local-with-stack"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The run's results tree with its logs unpacked, where the stages expect them."""
    root = tmp_path_factory.mktemp("real-run")
    shutil.copytree(RUN / "results", root / "results")
    for packed in (root / "results").rglob("*.log.gz"):
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    return root / "results"


def recorded_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_throughput_from_the_real_run_equals_what_the_device_computed(tree):
    ctx = PointContext.load(tree / ".pdbench" / "config.json", tree / "ep1" / "p1")
    rows, details = point_measurement(ctx)
    recorded = recorded_rows(RUN / "results" / "ep1" / "p1" / "throughput.csv")
    assert len(rows) == len(recorded) == 2
    for row, then in zip(rows, recorded):
        assert row["profile_id"] == then["profile_id"]
        assert row["global_batch"] == int(then["global_batch"]) == 64  # the full batch
        assert row["ranks"] == 1 and row["decode_gpus"] == 1
        assert row["step_ms"] == pytest.approx(float(then["step_ms"]), abs=1e-4)
        assert row["tokens_per_s_per_gpu"] == pytest.approx(
            float(then["tokens_per_s_per_gpu"]), abs=0.01)
        # tokens/s/GPU = global batch / step time / decode GPUs, from the real trace
        assert row["tokens_per_s_per_gpu"] == pytest.approx(64 / (row["step_ms"] / 1000),
                                                            rel=1e-4)
        assert row["method"] == "step_spans" and row["fill_ended_by"] == "reached"
        assert row["emulated"] is False and row["valid"] is True
    assert [r["tokens_per_s_per_gpu"] for r in rows] == [14313.78, 22779.68]
    # Prompts went out as token ids: no request was refused.
    assert details["requests_refused"]["count"] == 0


def test_the_real_trace_is_read_as_step_spans_of_one_rank(tree):
    snap = json.loads((tree / "ep1" / "p1" / "profile" / "2" / "snapshot.json").read_text())
    assert snap["files"] == [f"{snap['profile_id']}-TP-0-DECODE.trace.json.gz"]
    logs = sorted((tree / "ep1" / "p1" / "logs").glob("launch_server_decode_node_rank_*.log"))
    m = measure(logs, tree / "ep1" / "p1" / "profile" / "2" / "traces", decode_gpus=1,
                profile_id=snap["profile_id"], dp_size=1)
    assert m["method"] == "step_spans" and m["steps_used"] == 4
    assert m["step_periods_ms"] == pytest.approx([2.956326, 2.850188, 2.760294, 2.768853])
    assert m["per_rank_batch"] == {"0": 64}


def test_the_real_logs_hold_every_line_the_stages_read(tree):
    """The fill, release and snapshots of 0.5.17 as the grammar reads them."""
    decode = tree / "ep1" / "p1" / "logs" / "launch_server_decode_node_rank_0.log"
    kinds: dict[str, int] = {}
    for rec in iter_log(decode):
        kinds[rec["kind"]] = kinds.get(rec["kind"], 0) + 1
    assert kinds["profile_start"] == kinds["profile_stop"] == kinds["profile_done"] == 2
    assert kinds["slow_down"] > 0 and kinds["decode"] > 1000
    assert "request_refused" not in kinds


def test_the_first_run_shows_refused_prompts_and_profiler_cost():
    """Run 1 sent the random prompts as text and profiled with Python stacks: 10 of 128
    prompts tokenized past the context and were refused inside a 200 (bench_serving
    still counted 128 successes), and the profiled step was 4.5 times the logged one."""
    refused = [rec for rec in iter_log(WITH_STACK / "decode-excerpt.log")
               if rec["kind"] == "request_refused"]
    assert len(refused) == 10
    assert all(r["message"].startswith("Requested token count exceeds the model's maximum "
                                       "context length of 2048 tokens.") for r in refused)
    rows = recorded_rows(WITH_STACK / "throughput.csv")
    assert [r["client_completed"] for r in rows] == ["128", "128"]
    assert all("trace_vs_log_step_time" in r["flags"] for r in rows)
    assert float(rows[0]["trace_log_ratio"]) == pytest.approx(4.51, abs=0.01)
    snapshot = json.loads((WITH_STACK / "snapshot-1.json").read_text())
    assert snapshot["request"]["body"]["with_stack"] is True


EPLB = RUNS / "h200-sglang-0.5.17-pd-local-eplb"


def test_the_real_expert_dump_reads_as_what_was_recorded():
    """SGLang 0.5.17's stat recorder on one H200 (config/single-gpu-pd-eplb.yaml): 985
    forward passes at the full batch of 64, 8 experts per token, the first layer dense."""
    from pdbench.balance import load_pt, read_dump

    doc, reader = load_pt(EPLB / "expert_distribution.pt")
    assert reader == "built-in" and set(doc) == {"rank", "logical_count",
                                                 "average_utilization_rate_over_window"}
    counts = doc["logical_count"]
    assert counts.shape == (985, 4, 32) and str(counts.dtype) == "int32"
    assert counts[:, 0].sum() == 0                      # first_k_dense_replace: 1
    assert set(counts[:, 1:].sum(axis=2).ravel()) == {64 * 8}
    dump = read_dump(EPLB / "expert_distribution.pt")
    assert dump is not None
    recording = json.loads((EPLB / "recording.json").read_text())
    assert recording["point"] == "p1" and recording["record_s"] == 3
    # The static point's decode started from it.
    assert "--init-expert-location" in (EPLB / "static-decode.sh").read_text()


def test_the_emulators_dump_has_the_real_dumps_format(tmp_path):
    """The emulator's recorder, on the same model and passes of the same batch, writes a
    dump of the real one's keys, dtype, shape and per-pass sums."""
    from pdbench.balance import load_pt
    from pdbench.emulator.experts import ExpertRecorder

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "num_hidden_layers": 4, "first_k_dense_replace": 1, "n_routed_experts": 32,
        "num_experts_per_tok": 8}))
    recorder = ExpertRecorder("stat", -1, str(model), out_dir=str(tmp_path))
    recorder.start()
    for _ in range(5):
        recorder.record(64)
    emulated, _ = load_pt(recorder.dump())
    real, _ = load_pt(EPLB / "expert_distribution.pt")
    assert set(emulated) == set(real)
    assert emulated["rank"] == real["rank"] == 0
    assert emulated["average_utilization_rate_over_window"] is None
    counts = emulated["logical_count"]
    assert counts.dtype == real["logical_count"].dtype
    assert counts.shape[1:] == real["logical_count"].shape[1:] and counts.shape[0] == 5
    assert counts[:, 0].sum() == 0
    assert set(counts[:, 1:].sum(axis=2).ravel()) == {64 * 8}


def test_static_eplb_on_one_gpu_measures_what_none_measures():
    """EP 1 cannot move an expert: both points measure the full batch; the trace's steps
    agree within the run's spread (2.9 and 2.8 ms at the second snapshot)."""
    rows = recorded_rows(EPLB / "throughput.csv")
    assert [(r["point"], r["snapshot"]) for r in rows] == [
        ("p1", "1"), ("p1", "2"), ("p1-eplb_static", "1"), ("p1-eplb_static", "2")]
    assert all(r["global_batch"] == "64" and r["valid"] == "True" for r in rows)
    second = {r["point"]: float(r["step_ms"]) for r in rows if r["snapshot"] == "2"}
    assert second["p1-eplb_static"] == pytest.approx(second["p1"], rel=0.1)

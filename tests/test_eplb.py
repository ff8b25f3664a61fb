"""Static EPLB's recording pass (pdbench.eplb): start before the fill, dump after
eplb.static.record_s at full batch, the dump copied to the experiment's eplb/ directory."""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pdbench import config, eplb
from pdbench.balance import read_dump
from pdbench.context import PointContext
from pdbench.emulator.experts import ExpertRecorder
from pdbench.errors import StageError
from pdbench.layout import ExperimentPaths, PointPaths, write_json

REPO = Path(__file__).resolve().parents[1]


def context(tmp_path, name: str, record_s: float = 0.01) -> PointContext:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["grid"].update(eplb=["none", "static"], prefill_groups=[1, 2])
    raw["eplb"] = {"static": {"record_s": record_s}}
    cfg = config.validate(raw)
    ctx = PointContext(cfg, config.find_point(cfg, "ep48", name),
                       PointPaths(tmp_path / "results" / "ep48" / name))
    ctx.__dict__["plan"] = SimpleNamespace(decode=SimpleNamespace(url="http://decode:30000"))
    return ctx


@pytest.fixture
def decode(monkeypatch, tmp_path):
    """Decode node 0 as the emulator's recorder behind the control calls."""
    calls = []
    recorder = ExpertRecorder("stat", -1, str(tmp_path / "no-model"),
                              out_dir=str(tmp_path / "results" / "ep48" / "p1"
                                          / "expert_distribution"))

    def call(method, url, body=None, timeout_s=30.0, retry=True):
        calls.append((method, url, body, retry))
        if url.endswith("/start_expert_distribution_record"):
            recorder.start()
            for tokens in (48, 96, 96):
                recorder.record(tokens)
        elif url.endswith("/dump_expert_distribution_record"):
            recorder.dump()

    monkeypatch.setattr(eplb, "call", call)
    monkeypatch.setattr(eplb, "check_servers", lambda ctx, servers: None)
    return calls


def test_recording_pass_starts_dumps_and_copies_the_dump(tmp_path, decode):
    ctx = context(tmp_path, "p1")
    assert ctx.point.records_experts
    eplb.start_recording(ctx)
    assert json.loads(ctx.paths.expert_record_started.read_text())["request"]["url"] == (
        "http://decode:30000/start_expert_distribution_record")
    write_json(ctx.paths.filled, {"release_requested_at": "2026-01-01T00:00:00.000+00:00"})
    recording = eplb.dump_recording(ctx, timeout_s=10)
    experiment = ExperimentPaths(tmp_path / "results" / "ep48")
    assert recording["file"] == str(experiment.expert_distribution)
    assert json.loads(experiment.expert_recording.read_text())["sha256"] == recording["sha256"]
    assert recording["source"].startswith(str(ctx.paths.expert_distribution_dir))
    # the dump call is not retried: a second dump would find the recorder reset
    assert [(m, u.rsplit("/", 1)[1], r) for m, u, _b, r in decode] == [
        ("POST", "start_expert_distribution_record", True),
        ("POST", "dump_expert_distribution_record", False)]
    dump = read_dump(experiment.expert_distribution)
    assert dump.logical_count.shape == (3, 61, 256)


def test_dump_waits_for_record_s_at_full_batch(tmp_path, decode):
    ctx = context(tmp_path, "p1", record_s=0.5)
    eplb.start_recording(ctx)
    write_json(ctx.paths.filled, {})
    ctx.paths.released.write_text("{}")  # full batch from now on (no release request time)
    start = time.monotonic()
    eplb.dump_recording(ctx, timeout_s=10)
    assert time.monotonic() - start >= 0.45


@pytest.mark.parametrize("name", ["p1-eplb_static", "p2"])
def test_only_the_recording_point_records(tmp_path, decode, name):
    with pytest.raises(StageError, match="does not record the expert distribution"):
        eplb.start_recording(context(tmp_path, name))
    assert decode == []


def test_dump_without_a_started_recording_is_refused(tmp_path, decode):
    ctx = context(tmp_path, "p1")
    with pytest.raises(StageError, match="never started"):
        eplb.dump_recording(ctx)
    assert decode == []

"""Config validation: defaults, unknown keys, semantic checks, grid points."""

import copy
import json
from pathlib import Path

import pytest
import yaml

from pdbench import config
from pdbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "config.yaml"


@pytest.fixture
def raw():
    return yaml.safe_load(DEFAULT.read_text())


def test_default_config_points():
    cfg = config.load(DEFAULT)
    points = config.grid_points(cfg)
    assert [(p.experiment, p.name) for p in points] == [
        ("ep48", "p1"),
        ("ep48", "p2"),
        ("ep48", "p3"),
    ]
    p3 = points[2]
    assert (p3.decode_nodes, p3.total_nodes, p3.decode_dp) == (12, 18, 48)
    # The runbook's GB200 FP4 launch: 49152 / 48 = 1024 requests per decode rank.
    assert p3.target_batch_per_rank == 1024
    assert p3.target_global_batch == 49152
    assert p3.prefill_gpus_per_group == 8


def test_defaults_are_filled_from_schema():
    # SGLang 0.5.5.post2 (the default release) needs prefill-round-robin-balance on decode.
    cfg = config.validate({"server_args": {"decode": {"max-running-requests": 64,
                                                      "prefill-round-robin-balance": True}}})
    assert cfg["site"]["gpus_per_node"] == 4
    assert cfg["grid"]["prefill_groups"] == [1, 2, 3]
    assert cfg["ports"]["http"] == 30000
    assert cfg["profile"]["num_steps"] == 5
    assert cfg["site"]["container"]["mounts"] == []
    assert cfg["workload"]["extra_args"] == []


def test_validate_does_not_modify_input(raw):
    before = copy.deepcopy(raw)
    config.validate(raw)
    assert raw == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(bogus=1), r"config key \(top level\): unknown key\(s\) 'bogus'"),
        (lambda c: c["site"].update(partiton="x"), r"config key site: unknown key\(s\) 'partiton'"),
        (
            lambda c: c["site"].update(gpus_per_node="4"),
            r"site\.gpus_per_node: '4' is not of type 'integer'",
        ),
        (
            lambda c: c["grid"].update(prefill_groups=[1, 4]),
            r"grid\.prefill_groups\[1\]: 4 is greater than the maximum of 3",
        ),
        (
            lambda c: c["grid"].update(prefill_groups=[0]),
            r"grid\.prefill_groups\[0\]: 0 is less than the minimum of 1",
        ),
        (
            lambda c: c["grid"].update(ep_sizes=[48, 50]),
            r"grid\.ep_sizes\[1\]: EP 50 is not a multiple of site\.gpus_per_node \(4\)",
        ),
        (lambda c: c["grid"].update(eplb=["sometimes"]), r"grid\.eplb\[0\]"),
        (
            lambda c: c["site"].update(max_nodes=16),
            r"site\.max_nodes: point ep48/p3 needs 18 nodes",
        ),
        (
            lambda c: c["server_args"]["decode"].update({"tp-size": 48}),
            r"server_args\.decode\.tp-size: set by the workflow",
        ),
        (
            lambda c: c["server_args"]["decode"].pop("max-running-requests"),
            r"server_args\.decode\.max-running-requests: a positive integer is required",
        ),
        (lambda c: c["site"]["container"].update(image=None), r"site\.container\.image: required"),
        (lambda c: c["fill"].update(sleep_s="soon"), r"fill\.sleep_s"),
        (lambda c: c["sglang"].update(version="latest"), r"sglang\.version"),
        (lambda c: c["site"].update(time_limit="4 hours"), r"site\.time_limit"),
        (lambda c: c["site"].update(secret_env=["HF TOKEN"]), r"site\.secret_env\[0\]"),
        (
            lambda c: c["server_args"]["decode"].update({"--cuda-graph-bs": 8}),
            r"server_args\.decode",
        ),
    ],
)
def test_bad_config_names_the_key(raw, mutate, message):
    mutate(raw)
    with pytest.raises(ConfigError, match=message):
        config.validate(raw)


def test_load_reports_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ConfigError, match=str(bad)):
        config.load(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load(tmp_path / "missing.yaml")
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        config.load(bad)


def test_grid_point_names_and_lookup(raw):
    raw["grid"].update(ep_sizes=[32, 16], prefill_groups=[2, 1], eplb=["online", "none", "static"])
    raw["server_args"]["decode"]["max-running-requests"] = 16384  # 1024 per rank at EP16
    raw["site"]["container"]["mounts"] = ["/shared"]
    raw["eplb"] = {"static": {"init_expert_location": "/shared/eplb.pt"}}
    cfg = config.validate(raw)
    names = [(p.experiment, p.name) for p in config.grid_points(cfg)]
    assert names[:3] == [("ep16", "p1"), ("ep16", "p1-eplb_static"), ("ep16", "p1-eplb_online")]
    assert len(names) == 2 * 2 * 3
    assert config.experiments(cfg) == ["ep16", "ep32"]
    point = config.find_point(cfg, "ep32", "p2-eplb_online")
    assert (point.ep, point.prefill_groups, point.eplb, point.decode_nodes) == (32, 2, "online", 8)
    with pytest.raises(ConfigError, match="ep48/p1 is not a point of the configured grid"):
        config.find_point(cfg, "ep48", "p1")


@pytest.mark.parametrize("eplb, supplied, recorders", [
    # static without a file: each EP size's first none point (fewest groups) records
    (["none", "static", "online"], None, {("ep16", "p1"), ("ep32", "p1")}),
    (["static", "none"], None, {("ep16", "p1"), ("ep32", "p1")}),
    # a supplied file: no recording pass
    (["none", "static"], "/shared/eplb.pt", set()),
    # no static point: nothing to record for
    (["none", "online"], None, set()),
])
def test_the_recording_pass_is_each_ep_sizes_first_none_point(raw, eplb, supplied, recorders):
    raw["grid"].update(ep_sizes=[32, 16], prefill_groups=[2, 1], eplb=eplb)
    raw["server_args"]["decode"]["max-running-requests"] = 16384
    raw["site"]["container"]["mounts"] = ["/shared"]
    raw["eplb"] = {"static": {"init_expert_location": supplied}}
    cfg = config.validate(raw)
    got = {(p.experiment, p.name) for p in config.grid_points(cfg) if p.records_experts}
    assert got == recorders
    for ep in (16, 32):
        recorder = config.expert_recorder(cfg, ep)
        assert (recorder is None) == (not recorders)
        if recorder is not None:
            assert (recorder.eplb, recorder.prefill_groups) == ("none", 1)
            assert config.find_point(cfg, recorder.experiment, recorder.name) == recorder


def test_resolved_config_is_trusted_only_while_its_stamp_matches(tmp_path, monkeypatch):
    cfg = config.validate(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))
    path = Path(config.write_resolved(cfg, tmp_path / "config.json"))
    calls = []
    real = config.validate
    monkeypatch.setattr(config, "validate", lambda raw, **kw: calls.append(1) or real(raw, **kw))
    assert config.load(path) == cfg and calls == []
    # A hand edit: validated again, and a bad key is named.
    edited = json.loads(path.read_text())
    edited["grid"]["ep_sizes"] = [50]
    path.write_text(json.dumps(edited))
    with pytest.raises(ConfigError, match=r"grid.ep_sizes\[0\]"):
        config.load(path)
    assert calls == [1]


def test_point_names_match_the_workflow_patterns(raw):
    import re

    from pdbench.grid import EXPERIMENT_PATTERN, POINT_PATTERN

    raw["grid"].update(ep_sizes=[16, 48], prefill_groups=[1, 2, 3], eplb=["none", "static",
                                                                          "online"])
    raw["server_args"]["decode"]["max-running-requests"] = 16384
    raw["site"]["container"]["mounts"] = ["/shared"]
    raw["eplb"] = {"static": {"init_expert_location": "/shared/eplb.pt"}}
    cfg = config.validate(raw)
    for point in config.grid_points(cfg):
        assert re.fullmatch(EXPERIMENT_PATTERN, point.experiment)
        assert re.fullmatch(POINT_PATTERN, point.name)
    assert config.experiments(cfg) == ["ep16", "ep48"]

"""The version -> dialect table (pdbench.dialects)."""

from __future__ import annotations

import pytest

from pdbench.dialects import (
    CHANGES,
    LEGACY_OPTION_NAMES,
    check_config,
    dialect_for,
    dialect_for_version,
    dialect_table,
)
from pdbench.errors import ConfigError
from packaging.version import Version

# version: (deepep spelling, cuda-graph decode flag, --cuda-graph-bs still parses,
#           DP attention, num_steps captures N-1, server-info path, bench_serving module,
#           trace names with DP/EP, decode head, trailing comma)
# fmt: off
TABLE = {
    "0.4.6.post3": ("--enable-deepep-moe", "cuda-graph-bs", True, "enable-dp-attention",
                    True, "/get_server_info", "sglang.bench_serving", False,
                    "Decode batch.", False),
    "v0.4.9": ("--enable-deepep-moe", "cuda-graph-bs", True, "enable-dp-attention",
               True, "/get_server_info", "sglang.bench_serving", False,
               "Decode batch.", False),
    "0.4.10": ("--enable-deepep-moe", "cuda-graph-bs", True, "enable-dp-attention",
               True, "/get_server_info", "sglang.bench_serving", False,
               "Decode batch.", True),
    "0.5.0rc0": ("--moe-a2a-backend", "cuda-graph-bs", True, "enable-dp-attention",
                 True, "/get_server_info", "sglang.bench_serving", False,
                 "Decode batch.", True),
    "0.5.3": ("--moe-a2a-backend", "cuda-graph-bs", True, "enable-dp-attention",
              True, "/get_server_info", "sglang.bench_serving", False,
              "Decode batch.", True),
    "0.5.4": ("--moe-a2a-backend", "cuda-graph-bs", True, "enable-dp-attention",
              True, "/get_server_info", "sglang.bench_serving", True,
              "Decode batch [{iter}],", True),
    "0.5.5.post2": ("--moe-a2a-backend", "cuda-graph-bs", True, "enable-dp-attention",
                    True, "/get_server_info", "sglang.bench_serving", True,
                    "Decode batch,", True),
    "0.5.14": ("--moe-a2a-backend", "cuda-graph-bs-decode", True, "enable-dp-attention",
               True, "/server_info", "sglang.bench_serving", True,
               "Decode batch,", False),
    "0.5.15": ("--moe-a2a-backend", "cuda-graph-bs-decode", True, "enable-dp-attention",
               True, "/server_info", "sglang.benchmark.serving", True,
               "Decode batch,", False),
    "0.5.17": ("--moe-a2a-backend", "cuda-graph-bs-decode", True, "enable-dp-attention",
               False, "/server_info", "sglang.benchmark.serving", True,
               "Decode batch,", False),
    "0.5.20": ("--moe-a2a-backend", "cuda-graph-bs-decode", False, "enable-dp-attention",
               False, "/server_info", "sglang.benchmark.serving", True,
               "Decode batch,", False),
    "0.5.23": ("--moe-a2a-backend", "cuda-graph-bs-decode", False, "attn-dp-size",
               False, "/server_info", "sglang.benchmark.serving", True,
               "Decode batch,", False),
}
# fmt: on


@pytest.mark.parametrize("version", sorted(TABLE))
def test_table(version):
    (deepep, cg_flag, legacy_cg, dp_attn, one_less, info, bench, suffixes, head, trailing) = TABLE[
        version
    ]
    d = dialect_for_version(version)
    key = "server_args.common.moe-a2a-backend"
    assert d.option_args("moe-a2a-backend", "deepep", key=key)[0] == deepep
    assert d.option_args("cuda-graph-bs-decode", [768], key="k") == [f"--{cg_flag}", "768"]
    assert d.option_args("cuda-graph-max-bs-decode", 256, key="k") == [
        "--" + cg_flag.replace("-bs", "-max-bs", 1),
        "256",
    ]
    assert d.legacy_cuda_graph_bs_accepted is legacy_cg
    assert d.dp_attention == dp_attn
    assert d.profile_captures_one_less is one_less
    assert d.server_info_path == info
    assert d.bench_serving_module == bench
    assert d.bench_one_batch_server_module == bench.replace(
        "bench_serving", "bench_one_batch_server"
    ).replace("benchmark.serving", "benchmark.one_batch_server")
    assert d.trace_name_rank_suffixes is suffixes
    assert d.decode_batch_head == head
    assert d.decode_line_trailing_comma is trailing
    assert not d.beyond_known


def test_dp_attention_spellings():
    assert dialect_for_version("0.5.5.post2").dp_attention_args(48) == [
        "--dp-size",
        "48",
        "--enable-dp-attention",
    ]
    assert dialect_for_version("0.5.23").dp_attention_args(48) == ["--attn-dp-size", "48"]
    assert dialect_for_version("0.5.23").dp_attention_args(1) == []


def test_start_profile_keys_by_release():
    assert dialect_for_version("0.4.6.post3").start_profile_keys == {
        "output_dir",
        "num_steps",
        "activities",
    }
    assert "with_stack" in dialect_for_version("0.4.9").start_profile_keys
    assert "start_step" not in dialect_for_version("0.4.9").start_profile_keys
    assert "start_step" in dialect_for_version("0.4.10").start_profile_keys
    assert "merge_profiles" in dialect_for_version("0.5.5.post2").start_profile_keys
    assert "profile_prefix" not in dialect_for_version("0.5.5.post2").start_profile_keys
    assert "profile_prefix" in dialect_for_version("0.5.6").start_profile_keys
    assert "profile_id" not in dialect_for_version("0.5.14").start_profile_keys
    assert "profile_id" in dialect_for_version("0.5.15").start_profile_keys
    assert "detailed_annotations" not in dialect_for_version("0.5.17").start_profile_keys
    assert "detailed_annotations" in dialect_for_version("0.5.23").start_profile_keys


def test_num_steps_compensation():
    assert dialect_for_version("0.5.15").start_profile_num_steps(5) == 6
    assert dialect_for_version("0.5.16").start_profile_num_steps(5) == 5


def test_value_rendering():
    d = dialect_for_version("0.5.23")
    assert d.option_args("trust-remote-code", True, key="k") == ["--trust-remote-code"]
    assert d.option_args("trust-remote-code", False, key="k") == []
    assert d.option_args("context-length", None, key="k") == []
    assert d.option_args("mem-fraction-static", 0.82, key="k") == ["--mem-fraction-static", "0.82"]
    assert d.option_args("cuda-graph-bs-decode", [1, 2, 768], key="k") == [
        "--cuda-graph-bs-decode",
        "1",
        "2",
        "768",
    ]
    # Options this table does not know pass through unchanged.
    assert d.option_args("disable-cuda-graph", True, key="k") == ["--disable-cuda-graph"]
    with pytest.raises(ConfigError, match="server_args.decode.cuda-graph-bs-decode"):
        d.option_args("cuda-graph-bs-decode", [], key="server_args.decode.cuda-graph-bs-decode")


def test_moe_backend_before_moe_a2a_backend():
    d = dialect_for_version("0.4.9")
    assert d.option_args("moe-a2a-backend", "none", key="k") == []
    with pytest.raises(ConfigError, match="server_args.common.moe-a2a-backend.*0.5.0rc0"):
        d.option_args("moe-a2a-backend", "mooncake", key="server_args.common.moe-a2a-backend")


def test_per_phase_cuda_graph_options_need_0_5_14():
    with pytest.raises(ConfigError, match=r"server_args.prefill.cuda-graph-bs-prefill.*0\.5\.14"):
        dialect_for_version("0.5.5.post2").option_args(
            "cuda-graph-bs-prefill", [8], key="server_args.prefill.cuda-graph-bs-prefill"
        )
    assert dialect_for_version("0.5.14").option_args("cuda-graph-bs-prefill", [8], key="k") == [
        "--cuda-graph-bs-prefill",
        "8",
    ]


@pytest.mark.parametrize("legacy", sorted(LEGACY_OPTION_NAMES))
def test_legacy_spellings_are_config_errors(legacy):
    with pytest.raises(ConfigError, match=f"server_args.decode.{legacy}.*old spelling"):
        dialect_for_version("0.5.5.post2").option_args(
            legacy, True, key=f"server_args.decode.{legacy}"
        )


@pytest.mark.parametrize("version", ["0.4.6.post2", "0.4.5", "0.3.6"])
def test_too_old(version):
    with pytest.raises(ConfigError, match=r"sglang\.version.*0\.4\.6\.post3.*slow_down"):
        dialect_for_version(version)


def test_not_a_version():
    with pytest.raises(ConfigError, match="sglang.version"):
        dialect_for({"sglang": {"version": "latest"}})


def test_newer_than_known_uses_newest_row():
    d = dialect_for_version("0.6.1")
    assert d.beyond_known
    assert d.dp_attention == "attn-dp-size"


def test_dialect_for_config():
    assert dialect_for({"sglang": {"version": "0.5.5.post2"}}).release == Version("0.5.5.post2")


def test_table_is_ordered_and_cited():
    versions = [Version(c.since) for c in CHANGES]
    assert versions == sorted(versions)
    assert all(c.source for c in CHANGES)
    rows = dialect_table()
    assert [r["version"] for r in rows] == [c.since for c in CHANGES]


def test_removed_attention_backend_is_config_error():
    key = "server_args.common.attention-backend"
    assert dialect_for_version("0.5.19").option_args(
        "attention-backend", "cutlass_mla", key=key
    ) == [
        "--attention-backend",
        "cutlass_mla",
    ]
    for version in ("0.5.20", "0.5.23"):
        with pytest.raises(ConfigError, match=r"server_args\.common\.attention-backend.*0\.5\.20"):
            dialect_for_version(version).option_args("attention-backend", "cutlass_mla", key=key)
    assert dialect_for_version("0.5.23").option_args(
        "attention-backend", "trtllm_mla", key=key
    ) == [
        "--attention-backend",
        "trtllm_mla",
    ]


def test_check_config_names_the_key():
    def cfg(version, **common):
        return {
            "sglang": {"version": version},
            "server_args": {
                "common": common,
                "prefill": {},
                "decode": {"cuda-graph-bs-decode": [768],
                           "prefill-round-robin-balance": version == "0.5.5.post2"},
            },
        }

    assert (
        check_config(cfg("0.5.5.post2", **{"attention-backend": "cutlass_mla"})).version
        == "0.5.5.post2"
    )
    with pytest.raises(ConfigError, match=r"server_args\.common\.attention-backend"):
        check_config(cfg("0.5.23", **{"attention-backend": "cutlass_mla"}))
    with pytest.raises(ConfigError, match=r"server_args\.common\.cuda-graph-bs\b"):
        check_config(cfg("0.5.23", **{"cuda-graph-bs": [8]}))


# Each boundary of the checked releases (.cache/sglang-releases: io_struct.py ProfileReqInput /
# ProfileReq, the profiler's by-stage check, disaggregation/decode.py) and the releases
# around it: (how a decode snapshot asks, its extra /start_profile keys, num_steps sent for 4).
SNAPSHOTS = {
    "0.4.6.post3": ("immediate", {}, 5),
    "0.4.9": ("immediate", {}, 5),
    "0.4.10": ("start_step", {"start_step": 1}, 4),
    "0.5.5.post2": ("start_step", {"start_step": 1}, 4),
    "0.5.9": ("start_step", {"start_step": 1}, 4),
    "0.5.13": ("start_step", {"start_step": 1}, 4),
    "0.5.14": ("by_stage", {"profile_by_stage": True}, 4),
    "0.5.15": ("by_stage", {"profile_by_stage": True}, 4),
    "0.5.23": ("by_stage", {"profile_by_stage": True}, 4),
}


@pytest.mark.parametrize("version", sorted(SNAPSHOTS, key=Version))
def test_decode_snapshot_per_release(version):
    from pdbench.commands import control_request

    mode, options, sent = SNAPSHOTS[version]
    d = dialect_for_version(version)
    assert (d.decode_snapshot, d.decode_snapshot_options()) == (mode, options)
    assert d.profile_by_stage_on_pd_decode is (mode == "by_stage")
    assert dialect_table([version])[0]["decode_snapshot"] == mode
    body = control_request("start_profile", "http://d:1", dialect=d, output_dir="/o",
                           num_steps=4, **options).body
    assert body == {"output_dir": "/o", **options, "num_steps": sent}


def test_by_stage_row_cites_the_release_code():
    row = next(c for c in CHANGES if "profile_by_stage_on_pd_decode" in c.fields
               and c.fields["profile_by_stage_on_pd_decode"])
    assert row.since == "0.5.14" and "0.5.9" in row.source and "0.5.14" in row.source

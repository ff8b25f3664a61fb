"""Cross-field launch checks (pdbench.launch_checks) and release-required options
(pdbench.dialects), through ``config.validate`` on mutations of the default config.

Every table row is (id, edits, expected): ``edits`` mutate a deep copy of
config/config.yaml, ``expected`` is None (validation passes: the check does not fire,
usually exactly at its boundary) or a regex the ConfigError must match. A regex may be
a function of the working directory. The default config targets 1024 requests per
decode rank (max-running-requests 49152 / EP 48) of 1000 + 1000 tokens each.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from pdbench import config
from pdbench.commands import CLIENT_MAX_CONNECTIONS, container_mounts
from pdbench.dialects import dialect_for_version
from pdbench.errors import ConfigError
from pdbench.launch_checks import DEEPEP_DISPATCH_ENV

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RAW = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
DISPATCH = DEEPEP_DISPATCH_ENV
HUB_ID = "nvidia/DeepSeek-R1-0528-FP4"


# -- edits ----------------------------------------------------------------------------


def put(path: str, value):
    """Set the dotted ``path`` (a callable ``value`` gets the working directory)."""

    def edit(raw: dict, workdir: Path) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value(workdir) if callable(value) else value

    return edit


def drop(path: str):
    def edit(raw: dict, workdir: Path) -> None:
        *parents, last = path.split(".")
        node = raw
        for part in parents:
            node = node[part]
        del node[last]

    return edit


def mkdir(relative: str):
    def edit(raw: dict, workdir: Path) -> None:
        (workdir / relative).mkdir(parents=True)

    return edit


def replace(minimal: dict):
    """Start from ``minimal`` instead of the default config."""

    def edit(raw: dict, workdir: Path) -> None:
        raw.clear()
        raw.update(copy.deepcopy(minimal))

    return edit


def decode_target(mrr: int, per_rank: int) -> list:
    """Decode max-running-requests ``mrr`` with the CUDA graph, DeepEP dispatch buffer and
    KV pool raised to fit ``per_rank`` requests per rank at full length."""
    return [
        put("server_args.decode.max-running-requests", mrr),
        put("server_args.decode.cuda-graph-bs-decode", [per_rank]),
        put(f"env.decode.{DISPATCH}", per_rank),
        put("server_args.decode.max-total-tokens", per_rank * 2000),
    ]


def row(id_: str, edits: list, expected, *marks):
    return pytest.param(edits, expected, id=id_, marks=marks)


def bug(reason: str):
    return pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)


def run(edits: list, expected, workdir: Path) -> None:
    raw = copy.deepcopy(DEFAULT_RAW)
    for edit in edits:
        edit(raw, workdir)
    if expected is None:
        config.validate(raw, workdir=workdir)
        return
    pattern = expected(workdir) if callable(expected) else expected
    try:
        config.validate(raw, workdir=workdir)
    except ConfigError as exc:
        message = str(exc)
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
        assert "\n" not in message, message
    else:
        raise AssertionError(f"no ConfigError; expected {pattern!r}")


def test_default_config_passes(tmp_path):
    run([], None, tmp_path)


# -- request length vs context-length -------------------------------------------------

CONTEXT = [
    row("common-exact", [put("server_args.common.context-length", 2001)], None),
    row(
        "common-one-short",
        [put("server_args.common.context-length", 2000)],
        r"config key server_args\.common\.context-length: 2000 is not longer than a request "
        r"of the workload \(workload\.input_len 1000 \+ workload\.output_len 1000 = 2000\).*"
        r"at least 2001",
    ),
    row(
        "input-one-over",
        [put("server_args.common.context-length", 2000), put("workload.input_len", 1001)],
        r"config key server_args\.common\.context-length: 2000 .*= 2001\)",
    ),
    row(
        "output-one-over",
        [put("server_args.common.context-length", 2000), put("workload.output_len", 1001)],
        r"config key server_args\.common\.context-length: 2000 .*= 2001\)",
    ),
    row(
        "prefill-override-short",
        [put("server_args.prefill.context-length", 1999)],
        r"config key server_args\.prefill\.context-length: 1999 is not longer",
    ),
    row(
        "decode-override-short",
        [put("server_args.decode.context-length", 1999)],
        r"config key server_args\.decode\.context-length: 1999 is not longer",
    ),
    row(
        "overrides-exact-over-short-common",
        [
            put("server_args.common.context-length", 1999),
            put("server_args.prefill.context-length", 2001),
            put("server_args.decode.context-length", 2001),
        ],
        None,
    ),
    row(
        "decode-override-exact-prefill-inherits-short-common",
        [
            put("server_args.common.context-length", 1999),
            put("server_args.decode.context-length", 2000),
        ],
        r"config key server_args\.common\.context-length: 1999",
    ),
    row("unset-is-not-checked", [drop("server_args.common.context-length")], None),
]


@pytest.mark.parametrize(("edits", "expected"), CONTEXT)
def test_request_length(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


# -- decode capacity: KV pool, CUDA graphs --------------------------------------------

CAPACITY = [
    row("kv-pool-exact", [put("server_args.decode.max-total-tokens", 1024 * 2000)], None),
    row(
        "kv-pool-one-short",
        [put("server_args.decode.max-total-tokens", 1024 * 2000 - 1)],
        r"config key server_args\.decode\.max-total-tokens: a decode rank's KV pool of "
        r"2047999 tokens cannot hold point ep48/p1 \(target 1024 requests per decode rank\) "
        r"at full length \(1024 x 2000 = 2048000 tokens\)",
    ),
    row(
        "kv-pool-in-common",
        [
            drop("server_args.decode.max-total-tokens"),
            put("server_args.common.max-total-tokens", 1024 * 2000 - 1),
        ],
        r"config key server_args\.common\.max-total-tokens: a decode rank's KV pool",
    ),
    row(
        "kv-pool-longer-requests",
        [put("server_args.decode.max-total-tokens", 1024 * 2000), put("workload.output_len", 1001)],
        r"server_args\.decode\.max-total-tokens: .*1024 x 2001 = 2049024 tokens",
    ),
    row(
        "kv-pool-smaller-ep-point",
        [put("grid.ep_sizes", [24, 48])],
        r"server_args\.decode\.max-total-tokens: .*point ep24/p1 \(target 2048 requests",
    ),
    row(
        "graphs-exact",
        [put("server_args.decode.cuda-graph-bs-decode", [1, 8, 1024])],
        None,
    ),
    row(
        "graphs-largest-not-last",
        [put("server_args.decode.cuda-graph-bs-decode", [2048, 8])],
        None,
    ),
    row(
        "graphs-one-short",
        [put("server_args.decode.cuda-graph-bs-decode", [8, 1023])],
        r"config key server_args\.decode\.cuda-graph-bs-decode: the largest decode CUDA "
        r"graph \(1023\) is smaller than the batch of point ep48/p1 .*Include 1024",
    ),
    row(
        "graphs-in-common",
        [
            drop("server_args.decode.cuda-graph-bs-decode"),
            put("server_args.common.cuda-graph-bs-decode", [512]),
        ],
        r"config key server_args\.common\.cuda-graph-bs-decode: the largest decode CUDA "
        r"graph \(512\)",
    ),
    row(
        "graphs-short-but-decode-disables-cuda-graph",
        [
            put("server_args.decode.cuda-graph-bs-decode", [1023]),
            put("server_args.decode.disable-cuda-graph", True),
        ],
        None,
    ),
    row(
        "graphs-scalar-one-short",
        [put("server_args.decode.cuda-graph-bs-decode", 1023)],
        r"config key server_args\.decode\.cuda-graph-bs-decode: the largest decode CUDA "
        r"graph \(1023\)",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), CAPACITY)
def test_decode_capacity(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


# -- DeepEP low-latency dispatch buffer -----------------------------------------------

DISPATCH_SHORT = (
    r"config key env\.{}\.SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK: "
    r"1023 tokens per rank is less than the batch of point ep48/p1 .*at least 1024"
)

DEEPEP = [
    row("decode-exact", [put(f"env.decode.{DISPATCH}", 1024)], None),
    row("decode-one-short", [put(f"env.decode.{DISPATCH}", 1023)], DISPATCH_SHORT.format("decode")),
    row(
        "decode-one-short-as-string",
        [put(f"env.decode.{DISPATCH}", "1023")],
        DISPATCH_SHORT.format("decode"),
    ),
    row(
        "common-one-short",
        [drop(f"env.decode.{DISPATCH}"), put(f"env.common.{DISPATCH}", 1023)],
        DISPATCH_SHORT.format("common"),
    ),
    row(
        "common-exact",
        [drop(f"env.decode.{DISPATCH}"), put(f"env.common.{DISPATCH}", 1024)],
        None,
    ),
    row(
        "decode-exact-overrides-short-common",
        [put(f"env.common.{DISPATCH}", 1023)],
        None,
    ),
    row(
        "mode-auto",
        [put("server_args.decode.deepep-mode", "auto"), put(f"env.decode.{DISPATCH}", 1023)],
        DISPATCH_SHORT.format("decode"),
    ),
    row(
        "mode-unset-is-auto",
        [drop("server_args.decode.deepep-mode"), put(f"env.decode.{DISPATCH}", 1023)],
        DISPATCH_SHORT.format("decode"),
    ),
    row(
        "mode-normal-not-checked",
        [put("server_args.decode.deepep-mode", "normal"), put(f"env.decode.{DISPATCH}", 1)],
        None,
    ),
    row(
        "backend-not-deepep-not-checked",
        [put("server_args.decode.moe-a2a-backend", "none"), put(f"env.decode.{DISPATCH}", 1)],
        None,
    ),
    row(
        "backend-unset-not-checked",
        [drop("server_args.decode.moe-a2a-backend"), put(f"env.decode.{DISPATCH}", 1)],
        None,
    ),
    row(
        "prefill-env-not-checked",
        [drop(f"env.decode.{DISPATCH}"), put(f"env.prefill.{DISPATCH}", 1)],
        None,
    ),
    row(
        "site-env-one-short",
        [drop(f"env.decode.{DISPATCH}"), put(f"site.env.{DISPATCH}", 1023)],
        r"config key site\.env\.SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK: 1023",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), DEEPEP)
def test_deepep_dispatch(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


# -- benchmark client -----------------------------------------------------------------

# bench_one_batch_server of the default release (0.5.5.post2) reads /get_server_info
# through the router (smg answers with a worker's) and takes --dataset-name random.
ONE_BATCH = [put("workload.client", "bench_one_batch_server"), put("workload.dataset", "random"),
             put("router.implementation", "smg")]

CLIENT = [
    row("num-prompts-exact", [put("workload.num_prompts", 49152)], None),
    row(
        "num-prompts-one-short",
        [put("workload.num_prompts", 49151)],
        r"config key workload\.num_prompts: 49151 requests cannot fill the decode batch of "
        r"ep48/p1 \(49152 requests\); send at least 49152",
    ),
    row(
        "max-concurrency-at-limit", [put("workload.max_concurrency", CLIENT_MAX_CONNECTIONS)], None
    ),
    row(
        "max-concurrency-over-limit",
        [put("workload.max_concurrency", CLIENT_MAX_CONNECTIONS + 1)],
        r"config key workload\.max_concurrency: 60001 connections at once exceed .*"
        r"use at most 60000",
    ),
    row("max-concurrency-exact", [put("workload.max_concurrency", 49152)], None),
    row(
        "max-concurrency-one-short",
        [put("workload.max_concurrency", 49151)],
        r"config key workload\.max_concurrency: 49151 requests in flight cannot fill the "
        r"decode batch of ep48/p1 \(49152 requests\)$",
    ),
    row("batch-size-exact", [*ONE_BATCH, put("workload.batch_size", 49152)], None),
    row(
        "batch-size-one-short",
        [*ONE_BATCH, put("workload.batch_size", 49151)],
        r"config key workload\.batch_size: 49151 requests cannot fill the decode batch of "
        r"ep48/p1 \(49152 requests\)",
    ),
    row(
        "one-batch-ignores-num-prompts-and-concurrency",
        [*ONE_BATCH, put("workload.num_prompts", 1), put("workload.max_concurrency", 1)],
        None,
    ),
    row("default-prompts-target-at-limit", decode_target(60000, 1250), None),
    row(
        "default-prompts-target-over-limit",
        decode_target(98304, 2048),
        r"config key workload\.num_prompts: 60000 requests in flight cannot fill the decode "
        r"batch of ep48/p1 \(98304 requests\); one bench_serving client keeps at most 60000 "
        r"open .*lower server_args\.decode\.max-running-requests for this EP size",
    ),
    row(
        "default-prompts-target-one-rank-over-limit",
        decode_target(60048, 1251),
        r"config key workload\.num_prompts: 60000 requests in flight cannot fill the decode "
        r"batch of ep48/p1 \(60048 requests\)",
    ),
    row("one-batch-target-over-limit", [*ONE_BATCH, *decode_target(98304, 2048)], None),
    row("one-batch-through-minilb", [*ONE_BATCH, put("router.implementation", "sglang-router"),
                                     put("router.mini_lb", True)], None),
    row(
        "one-batch-through-sglang-router",
        [*ONE_BATCH, put("router.implementation", "sglang-router")],
        r"config key workload\.client: bench_one_batch_server of SGLang 0\.5\.5\.post2 reads "
        r"GET /get_server_info through the router, and router sglang-router 0\.3\.2 answers "
        r"it with a summary of itself .*set router\.implementation: smg",
    ),
    row(
        "one-batch-0.5.23-through-smg",
        [*ONE_BATCH, put("sglang.version", "0.5.23"), put("workload.dataset", "random-ids"),
         put("server_args.decode.prefill-round-robin-balance", None)],
        r"config key workload\.client: bench_one_batch_server of SGLang 0\.5\.23 reads GET "
        r"/server_info through the router, and router smg 1\.13\.0 does not serve it \(404\); "
        r"no router generation pdbench knows serves /server_info",
    ),
    # The client's release decides, not the servers': 0.5.23 servers with a 0.5.5.post2
    # client (its own interpreter) work through smg; the other way round they do not.
    row(
        "one-batch-client-0.5.5.post2-with-0.5.23-servers",
        [*ONE_BATCH, put("sglang.version", "0.5.23"),
         put("server_args.decode.prefill-round-robin-balance", None),
         put("workload.client_version", "0.5.5.post2"),
         put("workload.python", "/opt/sglang-0.5.5.post2/bin/python")],
        None,
    ),
    row(
        "one-batch-client-0.5.23-with-0.5.5.post2-servers",
        [*ONE_BATCH, put("workload.client_version", "0.5.23"),
         put("workload.dataset", "random-ids")],
        r"config key workload\.client: bench_one_batch_server of SGLang 0\.5\.23 reads GET "
        r"/server_info through the router, and router smg 1\.13\.0 does not serve it \(404\); "
        r".*a client of a release before 0\.5\.14 \(workload\.client_version",
    ),
    row(
        "one-batch-client-dataset-of-its-release",
        [*ONE_BATCH, put("sglang.version", "0.5.23"),
         put("server_args.decode.prefill-round-robin-balance", None),
         put("workload.client_version", "0.5.5.post2"), put("workload.dataset", "random-ids")],
        r"config key workload\.dataset: bench_one_batch_server of SGLang 0\.5\.5\.post2 has no "
        r"dataset 'random-ids'",
    ),
    row(
        "client-version-before-the-oldest",
        [put("workload.client_version", "0.4.0")],
        r"config key workload\.client_version: SGLang 0\.4\.0 is older than",
    ),
    row(
        "client-version-not-a-version",
        [put("workload.client_version", "latest")],
        r"config key workload\.client_version: ",
    ),
    row(
        "one-batch-dataset-the-release-lacks",
        [*ONE_BATCH, put("workload.dataset", "random-ids")],
        r"config key workload\.dataset: bench_one_batch_server of SGLang 0\.5\.5\.post2 has no "
        r"dataset 'random-ids' \(it knows mmmu, random\)",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), CLIENT)
def test_client(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


# -- environment the workflow sets ----------------------------------------------------

WORKFLOW_ENV = [
    row(
        f"{section}-{name}",
        [put(f"{section}.{name}", "/somewhere")],
        rf"config key {re.escape(section)}\.{name}: set by the workflow; "
        + (
            r"set site\.kernel_cache_dir instead"
            if name in ("SGL_DG_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE")
            else r"the workflow points it into the point's results directory"
        ),
    )
    for section in ("site.env", "env.common", "env.prefill", "env.decode")
    for name in (
        "SGL_DG_CACHE_DIR",
        "FLASHINFER_WORKSPACE_BASE",
        "SGLANG_TORCH_PROFILER_DIR",
        "SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR",
    )
] + [
    row(
        "other-names-pass",
        [
            put("env.decode.SGLANG_TORCH_PROFILER_DIRECTORY", "/x"),
            put("site.env.SGL_DG_CACHE", "/x"),
        ],
        None,
    ),
]


@pytest.mark.parametrize(("edits", "expected"), WORKFLOW_ENV)
def test_workflow_env(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


# -- container paths ------------------------------------------------------------------

PATH_KEYS = (
    ("model.path", "/lustre/models/R1"),
    ("model.tokenizer", "/lustre/models/R1-tokenizer"),
    ("workload.dataset_path", "/lustre/data/prompts.json"),
    ("eplb.static.init_expert_location", "/lustre/eplb/r1.json"),
    ("site.kernel_cache_dir", "/lustre/cache/sglang"),
)


def _outside(key: str, path: str) -> str:
    return rf"config key {re.escape(key)}: {re.escape(path)} is not inside any container mount"


CONTAINER = [
    *(
        row(f"{key}-absolute-unmounted", [put(key, path)], _outside(key, path))
        for key, path in PATH_KEYS
    ),
    *(
        row(f"{key}-under-mount", [put(key, path), put("site.container.mounts", ["/lustre"])], None)
        for key, path in PATH_KEYS
    ),
    *(
        row(
            f"{key}-under-same-path-mount",
            [put(key, path), put("site.container.mounts", ["/lustre:/lustre:ro"])],
            None,
        )
        for key, path in PATH_KEYS
    ),
    *(row(f"{key}-relative", [put(key, "sub/dir/file")], None) for key, _ in PATH_KEYS),
    row(
        "mount-root-itself",
        [put("model.path", "/lustre"), put("site.container.mounts", ["/lustre"])],
        None,
    ),
    row(
        "mount-prefix-is-not-a-parent",
        [put("model.path", "/lustre2/models/R1"), put("site.container.mounts", ["/lustre"])],
        _outside("model.path", "/lustre2/models/R1"),
    ),
    row(
        "mounted-elsewhere-host-path-fails",
        [put("model.path", "/lustre/models/R1"), put("site.container.mounts", ["/lustre:/mnt"])],
        _outside("model.path", "/lustre/models/R1"),
    ),
    row(
        "mounted-elsewhere-container-path-passes",
        [put("model.path", "/mnt/models/R1"), put("site.container.mounts", ["/lustre:/mnt"])],
        None,
    ),
    row(
        "relative-escaping-workdir",
        [put("model.path", "../elsewhere/R1")],
        lambda wd: _outside("model.path", str(wd.parent / "elsewhere" / "R1")),
    ),
    row(
        "no-workdir-mount",
        [put("site.container.mount_workdir", False)],
        lambda wd: rf"config key site\.container\.mounts: {re.escape(str(wd / 'results'))} "
        r"is not mounted at its own path in the container.*mount_workdir: true",
    ),
    row(
        "no-workdir-mount-results-elsewhere",
        [
            put("site.container.mount_workdir", False),
            put("site.container.mounts", lambda wd: [f"{wd}:/work"]),
        ],
        r"config key site\.container\.mounts: .*/results is not mounted at its own path",
    ),
    row(
        "no-workdir-mount-other-source-at-workdir",
        [
            put("site.container.mount_workdir", False),
            put("site.container.mounts", lambda wd: [f"/scratch/other:{wd}"]),
        ],
        r"config key site\.container\.mounts: .*/results is not mounted at its own path",
    ),
    row(
        "no-workdir-mount-parent-mounted",
        [
            put("site.container.mount_workdir", False),
            put("site.container.mounts", lambda wd: [str(wd.parent)]),
        ],
        None,
    ),
    row(
        "no-workdir-mount-only-results-mounted",
        [
            put("site.container.mount_workdir", False),
            put("site.container.mounts", lambda wd: [f"{wd}/results:{wd}/results"]),
        ],
        lambda wd: _outside("model.path", str(wd / "models/nvidia/DeepSeek-R1-0528-FP4")),
    ),
]


@pytest.mark.parametrize("runtime", ["pyxis", "apptainer"])
@pytest.mark.parametrize(("edits", "expected"), CONTAINER)
def test_container_paths(edits, expected, runtime, tmp_path):
    run([put("site.container.runtime", runtime), *edits], expected, tmp_path)


def test_workdir_defaults_to_current_directory(tmp_path, monkeypatch):
    raw = copy.deepcopy(DEFAULT_RAW)
    raw["site"]["container"]["mount_workdir"] = False
    monkeypatch.chdir(tmp_path)
    results = re.escape(str(tmp_path / "results"))
    with pytest.raises(ConfigError, match=rf"site\.container\.mounts: {results} is not mounted"):
        config.validate(raw)
    raw["site"]["container"]["mounts"] = [str(tmp_path)]
    config.validate(raw)


NO_CONTAINER = [
    *(row(f"{key}-absolute", [put(key, path)], None) for key, path in PATH_KEYS),
    row("relative-escaping-workdir", [put("model.path", "../elsewhere/R1")], None),
    row("no-workdir-mount", [put("site.container.mount_workdir", False)], None),
]


@pytest.mark.parametrize(("edits", "expected"), NO_CONTAINER)
def test_runtime_none_checks_no_paths(edits, expected, tmp_path):
    run([put("site.container.runtime", "none"), *edits], expected, tmp_path)


# -- Hugging Face Hub ids -------------------------------------------------------------

HUB = [
    row(
        "model-path-pyxis",
        [put("model.path", HUB_ID)],
        r"config key model\.path: 'nvidia/DeepSeek-R1-0528-FP4' is a Hugging Face Hub id: "
        r"every node would download .*\(hf download nvidia/DeepSeek-R1-0528-FP4 --local-dir "
        r"models/nvidia/DeepSeek-R1-0528-FP4\) and set model\.path to that directory",
    ),
    row(
        "model-path-apptainer",
        [put("site.container.runtime", "apptainer"), put("model.path", HUB_ID)],
        r"config key model\.path: 'nvidia/DeepSeek-R1-0528-FP4' is a Hugging Face Hub id",
    ),
    row(
        "tokenizer",
        [put("model.tokenizer", "deepseek-ai/DeepSeek-R1")],
        r"config key model\.tokenizer: 'deepseek-ai/DeepSeek-R1' is a Hugging Face Hub id.*"
        r"hf download deepseek-ai/DeepSeek-R1 ",
    ),
    row("directory-of-that-name", [put("model.path", HUB_ID), mkdir(HUB_ID)], None),
    row(
        "hf-home-in-env-common", [put("model.path", HUB_ID), put("env.common.HF_HOME", "/hf")], None
    ),
    row(
        "hf-hub-cache-in-site-env",
        [put("model.path", HUB_ID), put("site.env.HF_HUB_CACHE", "/hf/hub")],
        None,
    ),
    row("runtime-none", [put("model.path", HUB_ID), put("site.container.runtime", "none")], None),
    row("nested-relative-path-is-not-an-id", [put("model.path", "models/" + HUB_ID)], None),
]


@pytest.mark.parametrize(("edits", "expected"), HUB)
def test_hub_ids(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


# -- options a release requires or lacks ----------------------------------------------

RR = "server_args.decode.prefill-round-robin-balance"
SBO = "server_args.common.enable-single-batch-overlap"
LBM = "server_args.prefill.load-balance-method"


def minimal(version: str, **decode) -> dict:
    return {
        "sglang": {"version": version},
        "server_args": {"decode": {"max-running-requests": 64, **decode}},
    }


def version(v: str):
    return put("sglang.version", v)


NEEDS_RR = (
    r"config key server_args\.decode\.prefill-round-robin-balance: SGLang {} needs "
    r"prefill-round-robin-balance: true here \(its ServerArgs asserts it .*\); set it, "
    r"together with server_args\.prefill\.load-balance-method: round_robin"
)
# 0.5.8-0.5.19 parse it as deprecated and ignore it; 0.5.20 removed it.
NO_RR = (
    r"config key server_args\.decode\.prefill-round-robin-balance: SGLang {} "
    r"(ignores --prefill-round-robin-balance: deprecated in 0\.5\.8 \(parsed with a "
    r"warning, no effect; removed in 0\.5\.20\)|has no --prefill-round-robin-balance: "
    r"removed in 0\.5\.20)"
)
NO_RR_BY_VERSION = {
    "0.5.8": r"ignores --prefill-round-robin-balance: deprecated in 0\.5\.8",
    "0.5.19": r"ignores --prefill-round-robin-balance: deprecated in 0\.5\.8",
    "0.5.20": r"has no --prefill-round-robin-balance: removed in 0\.5\.20",
    "0.5.23": r"has no --prefill-round-robin-balance: removed in 0\.5\.20",
}

RELEASE = [
    row("0.5.5.post2-default", [], None),
    row("0.5.5.post2-without-rr", [drop(RR)], NEEDS_RR.format(r"0\.5\.5\.post2")),
    row("0.5.5.post2-rr-false", [put(RR, False)], NEEDS_RR.format(r"0\.5\.5\.post2")),
    row(
        "0.5.5.post2-rr-in-common",
        [drop(RR), put("server_args.common.prefill-round-robin-balance", True)],
        None,
    ),
    row(
        "0.5.5.post2-minimal", [replace(minimal("0.5.5.post2"))], NEEDS_RR.format(r"0\.5\.5\.post2")
    ),
    row(
        "0.5.5.post2-minimal-with-rr",
        [replace(minimal("0.5.5.post2", **{"prefill-round-robin-balance": True}))],
        None,
    ),
    row(
        "0.5.5.post2-lbm-shortest-queue",
        [put(LBM, "shortest_queue")],
        r"config key server_args\.prefill\.load-balance-method: SGLang 0\.5\.5\.post2 needs "
        r"load-balance-method: round_robin here \(decode started with "
        r"--prefill-round-robin-balance .*\); set it$",
    ),
    row(
        "0.5.5.post2-lbm-in-common",
        [drop(LBM), put("server_args.common.load-balance-method", "follow_bootstrap_room")],
        r"config key server_args\.common\.load-balance-method: SGLang 0\.5\.5\.post2 needs "
        r"load-balance-method: round_robin",
    ),
    row("0.5.5.post2-lbm-unset", [drop(LBM)], None),
    # 0.5.2's parser has no --enable-single-batch-overlap (its option table says so).
    row("0.5.2-default", [version("0.5.2"), drop(SBO)], None),
    row("0.5.2-without-rr", [version("0.5.2"), drop(SBO), drop(RR)], NEEDS_RR.format(r"0\.5\.2")),
    row("0.5.2-with-sbo", [version("0.5.2")],
        r"server_args\.common\.enable-single-batch-overlap: SGLang 0\.5\.2 has no "),
    row("0.5.7-without-rr", [version("0.5.7"), drop(RR)], NEEDS_RR.format(r"0\.5\.7")),
    row("0.5.1.post3-without-rr", [version("0.5.1.post3"), drop(RR)], None),
    # shortest_queue raises at the first request up to 0.5.2 (the DP controller dies).
    *(
        row(
            f"{v}-lbm-shortest-queue",
            [version(v), drop(RR), put(LBM, "shortest_queue")],
            r"config key server_args\.prefill\.load-balance-method: SGLang "
            rf"{re.escape(v)} accepts load-balance-method 'shortest_queue' but its DP "
            r"controller raises at the first request",
        )
        for v in ("0.4.9", "0.5.1.post3")
    ),
    row(
        "0.5.5.post2-decode-lbm-shortest-queue",
        [put("server_args.decode.load-balance-method", "shortest_queue")],
        None,
    ),
    row(
        "0.5.2-decode-lbm-shortest-queue",
        [version("0.5.2"), drop(SBO), put("server_args.decode.load-balance-method",
                                           "shortest_queue")],
        r"config key server_args\.decode\.load-balance-method: SGLang 0\.5\.2 accepts "
        r"load-balance-method 'shortest_queue' but its DP controller raises",
    ),
    # Each release's parser has its own choices.
    row(
        "0.5.5.post2-decode-lbm-auto",
        [put("server_args.decode.load-balance-method", "auto")],
        r"config key server_args\.decode\.load-balance-method: SGLang 0\.5\.5\.post2 does "
        r"not accept load-balance-method 'auto' \(its parser's choices: round_robin, "
        r"shortest_queue, minimum_tokens\)$",
    ),
    row(
        "0.5.5.post2-decode-lbm-decode-round-robin",
        [put("server_args.decode.load-balance-method", "decode_round_robin")],
        r"SGLang 0\.5\.5\.post2 does not accept load-balance-method 'decode_round_robin'",
    ),
    row(
        "0.5.7-decode-lbm-decode-round-robin",
        [version("0.5.7"), put("server_args.decode.load-balance-method", "decode_round_robin")],
        None,
    ),
    row(
        "0.5.8-decode-lbm-decode-round-robin",
        [version("0.5.8"), drop(RR),
         put("server_args.decode.load-balance-method", "decode_round_robin")],
        r"SGLang 0\.5\.8 does not accept load-balance-method 'decode_round_robin' \(its "
        r"parser's choices: auto, round_robin, follow_bootstrap_room, total_requests, "
        r"total_tokens\)",
    ),
    row(
        "0.5.23-lbm-shortest-queue",
        [version("0.5.23"), drop(RR), put(LBM, "shortest_queue")],
        r"config key server_args\.prefill\.load-balance-method: SGLang 0\.5\.23 does not "
        r"accept load-balance-method 'shortest_queue'",
    ),
    row("0.4.9-minimal", [replace(minimal("0.4.9"))], None),
    row(
        "0.5.1.post3-rr-true",
        [version("0.5.1.post3")],
        r"config key server_args\.decode\.prefill-round-robin-balance: SGLang 0\.5\.1\.post3 "
        r"has no --prefill-round-robin-balance",
    ),
    *(row(f"{v}-rr-true", [version(v)], NO_RR.format(re.escape(v))) for v in ("0.5.8", "0.5.23")),
    *(
        row(
            f"{v}-rr-true-in-common",
            [version(v), drop(RR), put("server_args.common.prefill-round-robin-balance", True)],
            r"config key server_args\.common\.prefill-round-robin-balance: SGLang "
            rf"{re.escape(v)} {NO_RR_BY_VERSION[v]}",
        )
        for v in ("0.5.8", "0.5.23")
    ),
    *(row(f"{v}-rr-false", [version(v), put(RR, False)], None) for v in ("0.5.8", "0.5.23")),
    *(row(f"{v}-without-rr", [version(v), drop(RR)], None) for v in ("0.5.8", "0.5.23")),
    *(
        row(
            f"{v}-lbm-follow-bootstrap-room",
            [version(v), drop(RR), put(LBM, "follow_bootstrap_room")],
            None,
        )
        for v in ("0.5.8", "0.5.23")
    ),
    row("0.5.8-minimal", [replace(minimal("0.5.8"))], None),
]


@pytest.mark.parametrize(("edits", "expected"), RELEASE)
def test_release_required_options(edits, expected, tmp_path):
    run(edits, expected, tmp_path)


@pytest.mark.parametrize(
    ("v", "decode_requires", "prefill_requires", "removed"),
    [
        ("0.4.9", {}, {}, ["prefill-round-robin-balance"]),  # not yet
        ("0.5.1.post3", {}, {}, ["prefill-round-robin-balance"]),
        (
            "0.5.2",
            {"prefill-round-robin-balance": True},
            {"load-balance-method": "round_robin"},
            [],
        ),
        (
            "0.5.5.post2",
            {"prefill-round-robin-balance": True},
            {"load-balance-method": "round_robin"},
            [],
        ),
        (
            "0.5.7",
            {"prefill-round-robin-balance": True},
            {"load-balance-method": "round_robin"},
            [],
        ),
        ("0.5.8", {}, {}, []),  # parsed as deprecated, without effect
        ("0.5.19", {}, {}, []),
        ("0.5.20", {}, {}, ["prefill-round-robin-balance"]),
        ("0.5.23", {}, {}, ["prefill-round-robin-balance"]),
    ],
)
def test_required_and_removed_options_by_release(v, decode_requires, prefill_requires, removed):
    d = dialect_for_version(v)
    assert {k: value for k, (value, _) in d.decode_requires.items()} == decode_requires
    assert {k: value for k, (value, _) in d.prefill_requires.items()} == prefill_requires
    assert sorted(d.removed_options) == removed
    deprecated = ["prefill-round-robin-balance"] if v in ("0.5.8", "0.5.19") else []
    assert sorted(d.deprecated_options) == deprecated


@pytest.mark.parametrize("v", ["0.5.8", "0.5.19", "0.5.20", "0.5.23"])
def test_removed_round_robin_balance_false_renders_nothing(v):
    d = dialect_for_version(v)
    assert d.option_args("prefill-round-robin-balance", False, key=RR) == []
    assert d.option_args("prefill-round-robin-balance", None, key=RR) == []
    with pytest.raises(ConfigError, match=NO_RR.format(re.escape(v)) + ".*; remove it$"):
        d.option_args("prefill-round-robin-balance", True, key=RR)


# -- container_mounts -----------------------------------------------------------------


def _cfg(runtime: str, mounts: list, mount_workdir: bool = True) -> dict:
    return {
        "site": {
            "container": {"runtime": runtime, "mounts": mounts, "mount_workdir": mount_workdir}
        }
    }


@pytest.mark.parametrize(
    ("runtime", "mounts", "mount_workdir", "expected"),
    [
        ("pyxis", [], True, ["{wd}:{wd}"]),
        ("pyxis", ["/lustre:/lustre"], True, ["{wd}:{wd}", "/lustre:/lustre"]),
        ("apptainer", ["/lustre"], True, ["{wd}:{wd}", "/lustre"]),
        ("pyxis", ["/lustre", "{wd}:{wd}"], True, ["/lustre", "{wd}:{wd}"]),
        ("pyxis", ["{wd}"], True, ["{wd}"]),
        ("pyxis", ["{wd}:/work"], True, ["{wd}:/work"]),
        ("pyxis", ["/lustre"], False, ["/lustre"]),
        ("none", [], True, []),
        ("none", ["/lustre"], True, ["/lustre"]),
    ],
)
def test_container_mounts(runtime, mounts, mount_workdir, expected, tmp_path, monkeypatch):
    wd = str(tmp_path)
    cfg = _cfg(runtime, [m.format(wd=wd) for m in mounts], mount_workdir)
    want = [m.format(wd=wd) for m in expected]
    assert container_mounts(cfg, tmp_path) == want
    assert container_mounts(cfg, wd) == want
    monkeypatch.chdir(tmp_path)
    assert container_mounts(cfg) == want  # default: the current directory

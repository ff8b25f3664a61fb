"""Cross-field checks: settings that are each valid alone but together cannot launch,
or would launch and measure something other than what the config says.

Each check names the config key to change and what to set. They run when the config is
validated, before any job, so a mistake costs seconds instead of an allocation of
dozens of GPUs. What they encode (docs/launch-checks.md has the list with sources):

- every request fits the servers' ``context-length`` (SGLang rejects a request whose
  input + max_new_tokens reaches it, while
  the router's small readiness request passes, so the run would sit in the fill);
- the decode KV pool (``max-total-tokens``, per DP rank) holds the target batch at full
  length, the largest decode CUDA graph covers the per-rank batch, and DeepEP's
  low-latency dispatch buffer (``SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK``) holds
  one token of every request of a rank;
- the benchmark client can keep the target batch in flight within its open-file limit;
- inside a container, every path a server or the client reads or writes is mounted;
- the model is not a Hugging Face Hub id that every node would download at each launch;
- the config does not set environment the workflow sets itself;
- the benchmark client can work through the configured router: bench_one_batch_server
  reads a server-info path that the router must answer with a worker's information
  (``pdbench.routers``), and its dataset must be one its release knows;
- the local launcher (``site.launcher: local``) has a slot of GPUs for every planned
  node, and no Slurm-only setting (pyxis, an allocation to adopt).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from . import localhost
from .commands import one_batch_server_dataset_args
from .dialects import client_dialect_for
from .errors import ConfigError
from .grid import Point, decode_server_args
from .routers import AGGREGATE_INFO, WORKER_INFO, router_dialect

DEEPEP_DISPATCH_ENV = "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check(cfg: Mapping, points: Sequence[Point], workdir: str | os.PathLike | None) -> None:
    """Raise ConfigError for the first cross-field problem (``workdir``: where the
    workflow runs; None = the current directory)."""
    workdir = Path(workdir or os.getcwd()).absolute()
    _request_lengths(cfg)
    _client_through_router(cfg)
    for point in points:
        _decode_capacity(cfg, point)
        _client_concurrency(cfg, point)
    _workflow_env(cfg)
    if cfg["site"]["launcher"] == localhost.LAUNCHER:
        _local_launcher(cfg, points)
    if cfg["site"]["container"]["runtime"] != "none":
        _model_source(cfg, workdir)
        _container_paths(cfg, workdir)


def _local_launcher(cfg: Mapping, points: Sequence[Point]) -> None:
    site = cfg["site"]
    if site["container"]["runtime"] == "pyxis":
        raise ConfigError("config key site.container.runtime: pyxis starts containers "
                          "through srun; site.launcher: local takes apptainer or none")
    if site["allocation_job_id"] is not None:
        raise ConfigError("config key site.allocation_job_id: adopts a Slurm allocation; "
                          "site.launcher: local has none (unset one of them)")
    for size in sorted({p.allocated_nodes for p in points}):
        localhost.slot_gpus(site, size)


def _client_through_router(cfg: Mapping) -> None:
    """The client's calls through the router are ones it serves: /generate (both clients),
    /flush_cache and the release's server-info path (bench_one_batch_server, which takes
    its tokenizer and the servers' ``internal_states`` from there: a 404 or a router's
    summary of itself ends it before its batch)."""
    client = cfg["workload"]["client"]
    dialect = client_dialect_for(cfg)
    gen = router_dialect(cfg)
    mini_lb = bool(cfg["router"]["mini_lb"])
    router = f"{gen.implementation} {gen.version}" + (" (MiniLB)" if mini_lb else "")
    path = dialect.one_batch_server_info_path if client == "bench_one_batch_server" else None
    # Both clients send /generate; bench_one_batch_server flushes the cache first
    # wherever it reads server info (0.4.7 on).
    for needed in ["/generate", *(["/flush_cache"] if path else [])]:
        if not gen.serves_path(needed, mini_lb=mini_lb):
            raise ConfigError(f"config key workload.client: {client} of SGLang "
                              f"{dialect.version} calls {needed} through the router, and "
                              f"router {router} does not serve it")
    if client != "bench_one_batch_server":
        return
    one_batch_server_dataset_args(cfg["workload"], dialect)
    if path is None:
        return
    answer = gen.server_info_kind(path, mini_lb=mini_lb)
    if answer in (WORKER_INFO, AGGREGATE_INFO):
        return
    what = "does not serve it (404)" if answer is None else \
        "answers it with a summary of itself (no tokenizer, no internal_states)"
    hint = ("no router generation pdbench knows serves /server_info: use workload.client: "
            "bench_serving, or a client of a release before 0.5.14 (workload.client_version, "
            "run by workload.python) with router.implementation: smg"
            if path == "/server_info" else
            "set router.implementation: smg, or router.mini_lb: true with sglang-router, or "
            "workload.client: bench_serving")
    raise ConfigError(
        f"config key workload.client: bench_one_batch_server of SGLang {dialect.version} "
        f"reads GET {path} through the router, and router {router} {what}; {hint}")


def _role_value(cfg: Mapping, role: str, name: str) -> tuple[object, str]:
    """``server_args`` value of ``name`` for ``role`` and the key it comes from."""
    section = role if name in cfg["server_args"][role] else "common"
    return cfg["server_args"][section].get(name), f"server_args.{section}.{name}"


def _request_lengths(cfg: Mapping) -> None:
    w = cfg["workload"]
    longest = w["input_len"] + w["output_len"]
    for role in ("prefill", "decode"):
        limit, key = _role_value(cfg, role, "context-length")
        # SGLang refuses a request whose input + max_new_tokens reaches the context length.
        if isinstance(limit, int) and not isinstance(limit, bool) and longest >= limit:
            raise ConfigError(
                f"config key {key}: {limit} is not longer than a request of the workload "
                f"(workload.input_len {w['input_len']} + workload.output_len "
                f"{w['output_len']} = {longest}); SGLang would reject every request. Raise "
                f"it to at least {longest + 1} or shorten the workload"
            )


def _decode_capacity(cfg: Mapping, point: Point) -> None:
    args = decode_server_args(cfg)
    w = cfg["workload"]
    per_rank = point.target_batch_per_rank
    where = f"point {point.experiment}/{point.name} (target {per_rank} requests per decode rank)"
    pool = args.get("max-total-tokens")
    need = per_rank * (w["input_len"] + w["output_len"])
    if isinstance(pool, int) and not isinstance(pool, bool) and pool < need:
        _, key = _role_value(cfg, "decode", "max-total-tokens")
        raise ConfigError(
            f"config key {key}: a decode rank's KV pool of {pool} tokens cannot hold {where} "
            f"at full length ({per_rank} x {w['input_len'] + w['output_len']} = {need} "
            "tokens): the batch would retract or plateau below target. Raise it, or lower "
            "server_args.decode.max-running-requests or the workload lengths"
        )
    graphs = args.get("cuda-graph-bs-decode")
    if isinstance(graphs, (int, float)) and not isinstance(graphs, bool):
        graphs = [graphs]  # one value renders as one batch size
    if isinstance(graphs, list) and graphs and not args.get("disable-cuda-graph"):
        largest = max(int(b) for b in graphs)
        if largest < per_rank:
            _, key = _role_value(cfg, "decode", "cuda-graph-bs-decode")
            raise ConfigError(
                f"config key {key}: the largest decode CUDA graph ({largest}) is smaller than "
                f"the batch of {where}; the measured steps would run without CUDA graphs. "
                f"Include {per_rank}"
            )
    if args.get("moe-a2a-backend") == "deepep" and args.get("deepep-mode") in (
        None, "auto", "low_latency"
    ):
        env = {**cfg["site"]["env"], **cfg["env"]["common"], **cfg["env"]["decode"]}
        value = env.get(DEEPEP_DISPATCH_ENV)
        if value is not None and _as_int(value) is not None and _as_int(value) < per_rank:
            key = next(k for k, values in (("env.decode", cfg["env"]["decode"]),
                                           ("env.common", cfg["env"]["common"]),
                                           ("site.env", cfg["site"]["env"]))
                       if DEEPEP_DISPATCH_ENV in values)
            raise ConfigError(
                f"config key {key}.{DEEPEP_DISPATCH_ENV}: {value} tokens per rank "
                f"is less than the batch of {where}; DeepEP's low-latency dispatch would "
                f"fail at the full batch. Set it to at least {per_rank}"
            )


def _as_int(value) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def _client_concurrency(cfg: Mapping, point: Point) -> None:
    from .commands import CLIENT_MAX_CONNECTIONS, client_concurrency, client_prompts

    w = cfg["workload"]
    target = point.target_global_batch
    where = f"the decode batch of {point.experiment}/{point.name} ({target} requests)"
    prompts = client_prompts(cfg, point)
    prompts_key = "num_prompts" if w["client"] == "bench_serving" else "batch_size"
    if prompts < target:
        raise ConfigError(
            f"config key workload.{prompts_key}: {prompts} requests cannot fill {where}; "
            f"send at least {target} (the default: twice the target, or more where decode "
            "picks DP ranks by the random bootstrap room)"
        )
    if w["client"] != "bench_serving":
        return
    if w["max_concurrency"] and w["max_concurrency"] > CLIENT_MAX_CONNECTIONS:
        raise ConfigError(
            f"config key workload.max_concurrency: {w['max_concurrency']} connections at "
            f"once exceed what one bench_serving client can open (it raises its open-file "
            f"limit to 65535); use at most {CLIENT_MAX_CONNECTIONS}"
        )
    in_flight = client_concurrency(cfg, point)
    if in_flight < target:
        key = "max_concurrency" if w["max_concurrency"] else prompts_key
        raise ConfigError(
            f"config key workload.{key}: {in_flight} requests in flight cannot fill {where}"
            + ("" if w["max_concurrency"] else
               f"; one bench_serving client keeps at most {CLIENT_MAX_CONNECTIONS} open "
               "(its open-file limit is 65535), so lower "
               "server_args.decode.max-running-requests for this EP size")
        )


def _workflow_env(cfg: Mapping) -> None:
    from .commands import WORKFLOW_ENV

    for key, values in (("site.env", cfg["site"]["env"]),
                        *((f"env.{r}", cfg["env"][r]) for r in ("common", "prefill", "decode"))):
        for name in values:
            if name in WORKFLOW_ENV:
                hint = ("set site.kernel_cache_dir instead"
                        if name in ("SGL_DG_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE")
                        else "the workflow points it into the point's results directory")
                raise ConfigError(f"config key {key}.{name}: set by the workflow; {hint}")


def _configured_env(cfg: Mapping) -> dict:
    return {**cfg["site"]["env"], **cfg["env"]["common"], **cfg["env"]["prefill"],
            **cfg["env"]["decode"]}


def is_hub_id(path: str, workdir: Path) -> bool:
    """``org/name`` that is not a directory under ``workdir``: a Hugging Face Hub id."""
    return bool(_HUB_ID.match(path)) and not (workdir / path).exists()


def _model_source(cfg: Mapping, workdir: Path) -> None:
    env = _configured_env(cfg)
    if "HF_HOME" in env or "HF_HUB_CACHE" in env:
        return  # the user chose a (shared) Hub cache on purpose
    for key, path in (("model.path", cfg["model"]["path"]),
                      ("model.tokenizer", cfg["model"].get("tokenizer"))):
        if path and is_hub_id(str(path), workdir):
            raise ConfigError(
                f"config key {key}: {path!r} is a Hugging Face Hub id: every node would "
                "download the model into its container at each launch. Download it once "
                f"to the shared filesystem (hf download {path} --local-dir "
                f"models/{path}) and set {key} to that directory (relative paths are "
                "relative to the working directory)"
            )


def _container_paths(cfg: Mapping, workdir: Path) -> None:
    """Every path a server or the client uses must be mounted into the container."""
    from .commands import container_mounts

    visible: list[PurePosixPath] = []
    same_path: list[PurePosixPath] = []
    for mount in container_mounts(cfg, workdir):
        parts = mount.split(":")
        source = PurePosixPath(parts[0])
        target = PurePosixPath(parts[1]) if len(parts) > 1 else source
        visible.append(target)
        if source == target:
            same_path.append(target)

    def under(path: PurePosixPath, roots: list[PurePosixPath]) -> bool:
        return any(path == root or root in path.parents for root in roots)

    results = PurePosixPath(workdir / "results")
    if not under(results, same_path):
        raise ConfigError(
            f"config key site.container.mounts: {results} is not mounted at its own path "
            "in the container, and servers write their logs, traces and client output "
            "there and run the launcher scripts written there; set "
            "site.container.mount_workdir: true or add a mount covering it"
        )
    static = cfg["eplb"]["static"]["init_expert_location"]
    for key, path in (
        ("model.path", cfg["model"]["path"]),
        ("model.tokenizer", cfg["model"].get("tokenizer")),
        ("workload.dataset_path", cfg["workload"]["dataset_path"]),
        ("eplb.static.init_expert_location", static),
        ("site.kernel_cache_dir", cfg["site"]["kernel_cache_dir"]),
    ):
        if not path or (key.startswith("model.") and is_hub_id(str(path), workdir)):
            continue
        resolved = PurePosixPath(os.path.normpath(workdir / str(path)))
        if not under(resolved, visible):
            raise ConfigError(
                f"config key {key}: {resolved} is not inside any container mount "
                f"({', '.join(container_mounts(cfg, workdir)) or 'none'}); add its "
                "filesystem to site.container.mounts (e.g. "
                f"'/{resolved.parts[1]}:/{resolved.parts[1]}') or move it under the working "
                "directory"
            )


__all__ = ["DEEPEP_DISPATCH_ENV", "check", "is_hub_id"]

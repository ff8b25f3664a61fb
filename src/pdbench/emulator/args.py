"""The emulator's command line (SGLang's own flags) and its knobs (``PDBENCH_EMULATOR_*``).

The command line is the real ``sglang.launch_server`` one. The flags that shape the
emulator's behaviour are parsed with argparse (``parse_known_args``); every other flag is
recorded, not rejected: ``--flag value`` becomes ``flag: value`` (several values a list, a
bare flag ``True``). They show up in ``/server_info`` and in a startup log line. A flag the
emulated SGLang version itself rejects (``Dialect.rejected_flag``) is an error, as it would
be for the real server, unless ``PDBENCH_EMULATOR_STRICT_FLAGS=0``.

Everything the emulator needs that the real command line cannot say comes from the
environment, so the rendered command stays the real one (see ``Knobs``).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .dialect import DEFAULT_VERSION, Dialect, dialect_for

ENV_PREFIX = "PDBENCH_EMULATOR_"


class UsageError(Exception):
    """A command-line or knob error; exit status 2 like argparse."""


class StartupError(Exception):
    """The server cannot start (a bad file, an unsupported combination); exit status 1."""


# --------------------------------------------------------------------------- knobs


def _env_float(env: dict, name: str, default: float, minimum: float | None = None) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None
    if minimum is not None and value < minimum:
        raise UsageError(f"{ENV_PREFIX}{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Knobs:
    """Emulator-only settings, from ``PDBENCH_EMULATOR_*`` (defaults in brackets).

    ``SGLANG_VERSION`` [0.5.23]: log/trace dialect. ``STEP_BASE_MS`` [23.2] and
    ``STEP_PER_REQ_MS`` [0.1]: decode step = base + per_req x (largest per-rank batch), so
    768 per rank gives 100.0 ms. ``PREFILL_TOKENS_PER_S`` [100000]: prefill speed of one
    prefill server (or of a plain server's prefill). ``WARMUP_S`` [1.0]: model-loading time
    before the warm-up requests. ``PLATEAU_ONE_SHORT`` [0]: the 0.5.17 quirk, a rank admits
    at most max_running_requests // dp - 1. ``MOE_SHARE`` [0.5]: the share of the decode step
    that scales with the expert-load imbalance (max/mean per EP rank) relative to the trivial
    placement's. ``PROFILE_OVERHEAD`` [0]: fraction by
    which profiled steps are slower. ``DIST_TIMEOUT_S`` [300]: how long node 0 waits for its
    peers and peers try to reach node 0. ``STRICT_FLAGS`` [1]: reject flags the emulated
    version rejects.
    """

    sglang_version: str = DEFAULT_VERSION
    step_base_ms: float = 23.2
    step_per_req_ms: float = 0.1
    prefill_tokens_per_s: float = 100000.0
    warmup_s: float = 1.0
    plateau_one_short: bool = False
    moe_share: float = 0.5
    profile_overhead: float = 0.0
    dist_timeout_s: float = 300.0
    strict_flags: bool = True

    @classmethod
    def from_env(cls, env: dict | None = None) -> Knobs:
        env = dict(os.environ if env is None else env)
        version = env.get(ENV_PREFIX + "SGLANG_VERSION", "").strip() or DEFAULT_VERSION
        try:
            dialect_for(version)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        flags = {}
        for name in ("PLATEAU_ONE_SHORT", "STRICT_FLAGS"):
            raw = env.get(ENV_PREFIX + name, "").strip().lower()
            if raw in ("", None):
                flags[name] = None
            elif raw in ("1", "true", "yes", "on"):
                flags[name] = True
            elif raw in ("0", "false", "no", "off"):
                flags[name] = False
            else:
                raise UsageError(f"{ENV_PREFIX}{name}={raw!r}: use 1 or 0")
        prefill = _env_float(env, "PREFILL_TOKENS_PER_S", 100000.0, 1e-9)
        return cls(
            sglang_version=version,
            step_base_ms=_env_float(env, "STEP_BASE_MS", 23.2, 0.0),
            step_per_req_ms=_env_float(env, "STEP_PER_REQ_MS", 0.1, 0.0),
            prefill_tokens_per_s=prefill,
            warmup_s=_env_float(env, "WARMUP_S", 1.0, 0.0),
            plateau_one_short=bool(flags["PLATEAU_ONE_SHORT"]),
            moe_share=min(_env_float(env, "MOE_SHARE", 0.5, 0.0), 1.0),
            profile_overhead=_env_float(env, "PROFILE_OVERHEAD", 0.0, 0.0),
            dist_timeout_s=_env_float(env, "DIST_TIMEOUT_S", 300.0, 0.1),
            strict_flags=flags["STRICT_FLAGS"] is not False,
        )

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------------- flags

# Defaults of SGLang server args the emulator reports in /server_info besides those it
# parses (a subset of the ~465 keys of a real 0.5.17 /server_info).
REPORTED_DEFAULTS: dict[str, Any] = {
    "tokenizer_mode": "auto",
    "skip_tokenizer_init": False,
    "load_format": "auto",
    "trust_remote_code": False,
    "dtype": "auto",
    "quantization": None,
    "kv_cache_dtype": "auto",
    "mem_fraction_static": None,
    "max_queued_requests": None,
    "max_prefill_tokens": 16384,
    "schedule_policy": "fcfs",
    "schedule_conservativeness": 1.0,
    "page_size": 1,
    "disable_radix_cache": False,
    "disable_overlap_schedule": False,
    "pp_size": 1,
    "enable_dp_lm_head": False,
    "moe_dense_tp_size": None,
    "moe_a2a_backend": "none",
    "deepep_mode": "auto",
    "ep_dispatch_algorithm": None,
    "eplb_algorithm": "auto",
    "disaggregation_transfer_backend": "mooncake",
    "disaggregation_ib_device": None,
    "attention_backend": None,
    "watchdog_timeout": 300,
    "random_seed": None,
    "log_level": "info",
    "enable_two_batch_overlap": False,
    "disable_cuda_graph": False,
    "cuda_graph_max_bs": None,
    "cuda_graph_bs": None,
    "enable_metrics": False,
    "device": "cuda",
    "base_gpu_id": 0,
}


def _bool_flag(parser: argparse.ArgumentParser, *names: str, dest: str) -> None:
    parser.add_argument(*names, dest=dest, action="store_true", default=False)


def build_parser(dialect: Dialect | None = None) -> argparse.ArgumentParser:
    """The flags the emulator acts on; ``--load-balance-method`` takes the choices and the
    default of ``dialect``'s release (else the newest)."""
    dialect = dialect or dialect_for(DEFAULT_VERSION)
    p = argparse.ArgumentParser(
        prog="python -m pdbench.emulator",
        description="SGLang server emulator (a test double; see docs/emulator.md). Takes "
        "sglang.launch_server's flags; unknown flags are recorded, not rejected.",
        allow_abbrev=False,
    )
    p.add_argument("--model-path", "--model", dest="model_path", default=None)
    p.add_argument("--tokenizer-path", dest="tokenizer_path", default=None)
    p.add_argument("--served-model-name", dest="served_model_name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--disaggregation-mode", choices=["null", "prefill", "decode"], default="null")
    p.add_argument("--disaggregation-bootstrap-port", type=int, default=8998)
    p.add_argument("--disaggregation-transfer-backend", default="mooncake")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--dist-init-addr", "--nccl-init-addr", dest="dist_init_addr", default=None)
    p.add_argument(
        "--tp-size", "--tp", "--tensor-parallel-size", dest="tp_size", type=int, default=1
    )
    p.add_argument("--dp-size", "--dp", "--data-parallel-size", dest="dp_size", type=int, default=1)
    p.add_argument(
        "--ep-size", "--ep", "--expert-parallel-size", dest="ep_size", type=int, default=1
    )
    p.add_argument("--attn-dp-size", dest="attn_dp_size", type=int, default=None)
    _bool_flag(p, "--enable-dp-attention", dest="enable_dp_attention")
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--decode-log-interval", type=int, default=40)
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--stream-interval", type=int, default=1)
    p.add_argument("--load-balance-method", default=dialect.base.load_balance_default,
                   choices=list(dialect.base.load_balance_methods))
    p.add_argument("--prefill-round-robin-balance", action="store_true")
    _bool_flag(p, "--enable-eplb", dest="enable_eplb")
    p.add_argument("--eplb-rebalance-num-iterations", type=int, default=1000)
    p.add_argument("--ep-num-redundant-experts", type=int, default=0)
    p.add_argument("--init-expert-location", default="trivial")
    p.add_argument(
        "--expert-distribution-recorder-mode",
        choices=["stat", "stat_approx", "per_pass", "per_token"],
        default=None,
    )
    p.add_argument("--expert-distribution-recorder-buffer-size", type=int, default=None)
    p.add_argument("--moe-a2a-backend", default="none")
    _bool_flag(p, "--enable-deepep-moe", dest="enable_deepep_moe")
    p.add_argument(
        "--cuda-graph-max-bs",
        "--cuda-graph-max-bs-decode",
        dest="cuda_graph_max_bs",
        type=int,
        default=None,
    )
    p.add_argument(
        "--cuda-graph-bs",
        "--cuda-graph-bs-decode",
        dest="cuda_graph_bs",
        type=int,
        nargs="+",
        default=None,
    )
    _bool_flag(p, "--disable-cuda-graph", dest="disable_cuda_graph")
    _bool_flag(p, "--skip-server-warmup", dest="skip_server_warmup")
    _bool_flag(p, "--enable-metrics", dest="enable_metrics")
    _bool_flag(p, "--skip-tokenizer-init", dest="skip_tokenizer_init")
    return p


def _coerce(value: str) -> Any:
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    if value in ("True", "true"):
        return True
    if value in ("False", "false"):
        return False
    if value in ("None", "null"):
        return None
    return value


def parse_unknown(tokens: list[str]) -> dict[str, Any]:
    """``--flag value`` / ``--flag=value`` / ``--flag v1 v2`` / bare ``--flag`` -> dict."""
    out: dict[str, Any] = {}
    i = 0
    positional = []
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and len(tok) > 2:
            if "=" in tok:
                name, value = tok[2:].split("=", 1)
                out[name.replace("-", "_")] = _coerce(value)
                i += 1
                continue
            values = []
            j = i + 1
            while j < len(tokens) and not (tokens[j].startswith("--") and len(tokens[j]) > 2):
                values.append(tokens[j])
                j += 1
            key = tok[2:].replace("-", "_")
            if not values:
                out[key] = True
            elif len(values) == 1:
                out[key] = _coerce(values[0])
            else:
                out[key] = [_coerce(v) for v in values]
            i = j
        else:
            positional.append(tok)
            i += 1
    if positional:
        out["_positional"] = positional
    return out


@dataclass
class ServerConfig:
    """The parsed command line, resolved the way SGLang resolves it."""

    argv: list[str]
    ns: argparse.Namespace
    unknown_tokens: list[str]
    unknown: dict[str, Any]
    knobs: Knobs
    dialect: Dialect
    warnings: list[str] = field(default_factory=list)

    # resolved
    mode: str = "plain"  # plain | prefill | decode
    tp: int = 1
    dp: int = 1
    ep: int = 1
    nnodes: int = 1
    node_rank: int = 0
    gpus_per_node: int = 1
    dp_attention: bool = False
    max_running_requests: int = 0
    cap_per_rank: int = 0
    chunked_prefill_size: int = 8192
    chunk_per_rank: int = 8192
    token_capacity: int = 0
    cuda_graph_max_bs: int = 0
    model_path: str = "dummy"
    served_model_name: str = "dummy"
    dp_rule: str = "round_robin"
    """How the DP controller picks a request's DP rank (``pdbench.dialects.ROUTING_RULES``)."""

    @property
    def attn_tp(self) -> int:
        return self.tp // self.dp

    def rank_node(self, tp_rank: int) -> int:
        return tp_rank // self.gpus_per_node

    def dp_of(self, tp_rank: int) -> int:
        return tp_rank // self.attn_tp

    def ep_of(self, tp_rank: int) -> int:
        return tp_rank // (self.tp // self.ep)

    def prefix_of(self, tp_rank: int) -> str:
        return self.dialect.rank_prefix(
            self.dp_of(tp_rank) if self.dp_attention and self.dp > 1 else None,
            tp_rank if self.tp > 1 else None,
            self.ep_of(tp_rank) if self.ep > 1 else None,
        )

    def local_tp_ranks(self, node: int | None = None) -> range:
        node = self.node_rank if node is None else node
        return range(node * self.gpus_per_node, (node + 1) * self.gpus_per_node)

    def dist_addr(self) -> tuple[str, int]:
        addr = self.ns.dist_init_addr
        host, _, port = addr.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        return host, int(port)

    def server_args_dict(self) -> dict[str, Any]:
        """Every server arg as SGLang's /server_info reports it (top-level keys)."""
        d: dict[str, Any] = {"model_path": None, "tokenizer_path": None}
        for key, value in vars(self.ns).items():
            d[key] = value
        for key, value in REPORTED_DEFAULTS.items():
            d.setdefault(key, value)
        d["disaggregation_mode"] = None if self.mode == "plain" else self.mode
        d["model_path"] = self.model_path
        d["tokenizer_path"] = self.ns.tokenizer_path or self.model_path
        d["served_model_name"] = self.served_model_name
        d["tp_size"], d["dp_size"], d["ep_size"] = self.tp, self.dp, self.ep
        d["enable_dp_attention"] = self.dp_attention
        d["max_running_requests"] = self.max_running_requests
        d["chunked_prefill_size"] = self.chunked_prefill_size
        d["max_total_tokens"] = self.ns.max_total_tokens
        if self.ns.enable_deepep_moe or self.ns.moe_a2a_backend == "deepep":
            d["moe_a2a_backend"] = "deepep"
        d.pop("enable_deepep_moe", None)
        d["disaggregation_bootstrap_port"] = self.ns.disaggregation_bootstrap_port
        for key, value in self.unknown.items():
            d.setdefault(key, value)
        return d


def parse_args(argv: list[str], env: dict | None = None) -> ServerConfig:
    """Parse and resolve; raises UsageError (exit 2) for what the real server rejects too."""
    knobs = Knobs.from_env(env)
    dialect = dialect_for(knobs.sglang_version)
    if knobs.strict_flags:
        for i, tok in enumerate(argv):
            if not tok.startswith("--"):
                continue
            flag, eq, value = tok.partition("=")
            if not eq:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                value = nxt if nxt is not None and not nxt.startswith("--") else None
            msg = dialect.rejected_flag(flag, value)
            if msg:
                raise UsageError(
                    f"{msg} (SGLang {knobs.sglang_version} rejects it; "
                    "PDBENCH_EMULATOR_STRICT_FLAGS=0 records it instead)"
                )
    parser = build_parser(dialect)

    def error(message: str) -> None:
        raise UsageError(message)

    parser.error = error  # type: ignore[method-assign]
    ns, unknown_tokens = parser.parse_known_args(argv)
    unknown = parse_unknown(unknown_tokens)
    cfg = ServerConfig(
        argv=list(argv),
        ns=ns,
        unknown_tokens=unknown_tokens,
        unknown=unknown,
        knobs=knobs,
        dialect=dialect,
    )
    _resolve(cfg)
    return cfg


def _resolve(cfg: ServerConfig) -> None:
    ns = cfg.ns
    cfg.mode = {"null": "plain"}.get(ns.disaggregation_mode, ns.disaggregation_mode)
    cfg.nnodes, cfg.node_rank = ns.nnodes, ns.node_rank
    if cfg.nnodes < 1:
        raise UsageError(f"--nnodes must be at least 1, got {cfg.nnodes}")
    if not 0 <= cfg.node_rank < cfg.nnodes:
        raise UsageError(f"--node-rank {cfg.node_rank} is not in [0, --nnodes {cfg.nnodes})")
    if cfg.nnodes > 1:
        if not ns.dist_init_addr:
            raise UsageError("--dist-init-addr is required when --nnodes > 1")
        try:
            cfg.dist_addr()
        except ValueError:
            raise UsageError(f"--dist-init-addr {ns.dist_init_addr!r} is not HOST:PORT") from None
    cfg.tp = ns.tp_size
    if ns.attn_dp_size is not None:
        cfg.dp, cfg.dp_attention = ns.attn_dp_size, ns.attn_dp_size > 1
    else:
        cfg.dp, cfg.dp_attention = ns.dp_size, ns.enable_dp_attention or ns.dp_size > 1
        if ns.enable_dp_attention and cfg.dialect.deprecates_dp_attention_flag:
            cfg.warnings.append(
                "'--enable-dp-attention' is deprecated and will be removed in a future "
                "release. Use '--attn-dp-size <dp-size>' instead."
            )
    if cfg.tp < 1 or cfg.dp < 1:
        raise UsageError(f"--tp-size {cfg.tp} and --dp-size {cfg.dp} must be at least 1")
    if cfg.tp % cfg.dp:
        raise UsageError(f"--tp-size {cfg.tp} is not a multiple of --dp-size {cfg.dp}")
    if cfg.tp % cfg.nnodes:
        raise UsageError(f"--tp-size {cfg.tp} is not a multiple of --nnodes {cfg.nnodes}")
    cfg.gpus_per_node = cfg.tp // cfg.nnodes
    cfg.ep = ns.ep_size
    if ns.enable_deepep_moe or ns.moe_a2a_backend == "deepep":
        if cfg.ep != cfg.tp:
            cfg.warnings.append(
                "DeepEP MoE is enabled. The expert parallel size is adjusted to be the same as "
                f"the tensor parallel size[{cfg.tp}]."
            )
        cfg.ep = cfg.tp
    if cfg.ep < 1 or cfg.tp % cfg.ep:
        raise UsageError(f"--ep-size {cfg.ep} does not divide --tp-size {cfg.tp}")
    cfg.max_running_requests = ns.max_running_requests or 1024 * cfg.dp
    if cfg.max_running_requests < 1:
        raise UsageError("--max-running-requests must be at least 1")
    cfg.cap_per_rank = max(cfg.max_running_requests // cfg.dp, 1)
    chunk = ns.chunked_prefill_size if ns.chunked_prefill_size is not None else 8192
    cfg.chunked_prefill_size = chunk
    if chunk <= 0:
        cfg.chunk_per_rank = 1 << 40
    else:
        cfg.chunk_per_rank = max(chunk // cfg.dp, 1) if cfg.dp_attention else chunk
        if cfg.dp_attention and cfg.dp > 1:
            cfg.warnings.append(
                "DP attention is enabled. The chunked prefill size is adjusted to "
                f"{cfg.chunk_per_rank} to avoid MoE kernel issues. "
            )
    cfg.token_capacity = ns.max_total_tokens or 3_000_000
    if ns.cuda_graph_max_bs:
        cfg.cuda_graph_max_bs = ns.cuda_graph_max_bs
    elif ns.cuda_graph_bs:
        cfg.cuda_graph_max_bs = max(ns.cuda_graph_bs)
    else:
        cfg.cuda_graph_max_bs = max(cfg.cap_per_rank, 1)
    if ns.disable_cuda_graph:
        cfg.cuda_graph_max_bs = 0
    cfg.model_path = ns.model_path or "dummy"
    cfg.served_model_name = ns.served_model_name or cfg.model_path
    if ns.decode_log_interval < 1:
        raise UsageError("--decode-log-interval must be at least 1")
    for name in cfg.dialect.base.deprecated_options:
        if getattr(ns, name.replace("-", "_"), False):
            # DeprecatedAction of the release's parser (wheels 0.5.8-0.5.19).
            cfg.warnings.append(
                f"The command line argument '--{name}' is deprecated and will be removed in "
                "future versions."
            )
    cfg.dp_rule = cfg.dialect.base.dp_rank_rule(cfg.mode, ns.load_balance_method)
    required = cfg.dialect.base.decode_requires.get("prefill-round-robin-balance")
    if cfg.mode == "decode" and cfg.dp > 1 and required and not ns.prefill_round_robin_balance:
        # ServerArgs._handle_disaggregation of 0.5.2-0.5.7, word for word.
        raise StartupError(
            "AssertionError: Prefill round robin balance is required when dp size > 1. "
            "Please make sure that the prefill instance is launched with "
            "`--load-balance-method round_robin` and `--prefill-round-robin-balance` is set "
            "for decode server."
        )
    if cfg.mode == "prefill" and ns.disaggregation_transfer_backend == "fake":
        raise StartupError(
            "AssertionError: Prefill server does not support 'fake' as the transfer backend"
        )


def describe_unknown(cfg: ServerConfig) -> str:
    return json.dumps(cfg.unknown, sort_keys=True, default=str)

"""SGLang flag dialects: how each SGLang release spells what the workflow asks for.

The configuration names server options by their current (0.5.23) spelling, e.g.
``moe-a2a-backend: deepep`` and ``cuda-graph-bs-decode: [768]``. :func:`dialect_for`
maps ``sglang.version`` to a :class:`Dialect` that says how that release spells those
options, DP attention, the ``/start_profile`` body, the server-info endpoint, the
benchmark client modules, trace file names and the decode log line.

Everything version-dependent lives in one table, :data:`CHANGES`: one row per release
that changed something, each row saying what changed and where the fact comes from.
A dialect is the oldest supported release with every row up to the configured version
applied. Sources: SGLang's public history (the PR numbers, commit ids and dates in the
rows below; ``docs/sglang-formats.md`` collects the formats they describe) and the
releases' own code. "wheel" in a row means the fact was read from, or parsed with, that release's
PyPI wheel (``ServerArgs.add_cli_args`` + ``parse_args`` on a CPU host, or its source);
a release between two checked ones is assumed to behave like the older one unless the
row says otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any

from packaging.version import InvalidVersion, Version

from .errors import ConfigError

# /slow_down exists from v0.4.6.post3 (sglang #5572, merged 2025-05-08; absent in .post2);
# the fill procedure needs it, so older releases are not supported.
OLDEST_SUPPORTED = "0.4.6.post3"

# Options whose old spelling the configuration must not use: it names options by their
# current spelling and pdbench translates for older releases. Value: what to write.
LEGACY_OPTION_NAMES = MappingProxyType(
    {
        "cuda-graph-bs": "cuda-graph-bs-decode",
        "cuda-graph-max-bs": "cuda-graph-max-bs-decode",
        "enable-deepep-moe": "moe-a2a-backend: deepep",
    }
)

# Options that exist only in newer releases: before the release that added them a
# rendered command would fail with "unrecognized arguments", so they are config errors.
_PER_PHASE_CUDA_GRAPH = (
    "cuda-graph-bs-prefill",
    "cuda-graph-max-bs-prefill",
    "cuda-graph-backend-decode",
    "cuda-graph-backend-prefill",
)

_ALL_PROFILE_KEYS = frozenset(
    {
        "output_dir",
        "num_steps",
        "activities",
        "profile_by_stage",
        "with_stack",
        "record_shapes",
        "start_step",
        "merge_profiles",
        "profile_prefix",
        "profile_stages",
        "profile_id",
        "detailed_annotations",
    }
)


# How a DP controller picks the DP rank of a request that names none (Dialect.dp_routing).
ROOM = "bootstrap_room"
"""``bootstrap_room % dp``: the router's rooms are random 63-bit numbers, so the per-rank
counts of N requests are multinomial(N, 1/dp each), not balanced."""
ROUND_ROBIN = "round_robin"
"""A counter: request i goes to rank i mod dp."""
FEWEST_REQUESTS = "fewest_requests"
"""The rank with the fewest requests (the schedulers' load reports)."""
FEWEST_TOKENS = "fewest_tokens"
"""The rank with the fewest tokens."""
FAILS = "fails"
"""The method is accepted at start but raises at the first request (NotImplementedError
up to 0.5.1, a NameError in 0.5.2), and the DP controller dies with it."""
ROUTING_RULES = (ROOM, ROUND_ROBIN, FEWEST_REQUESTS, FEWEST_TOKENS, FAILS)

# Rules that give every rank exactly its share of N requests (up to one) in arrival order.
BALANCED_RULES = frozenset({ROUND_ROBIN})


def _routing(plain: str, prefill: str, decode: str) -> Mapping[str, str]:
    return MappingProxyType({"plain": plain, "prefill": prefill, "decode": decode})


# PD servers up to 0.5.7: "round_robin" means the bootstrap room on prefill and decode.
_RR_ROOM = _routing(ROUND_ROBIN, ROOM, ROOM)


@dataclass(frozen=True)
class Dialect:
    """How one SGLang release spells things. Build it with :func:`dialect_for`."""

    version: str
    """``sglang.version`` as configured."""
    release: Version
    """The parsed version."""
    renames: Mapping[str, str | None] = field(default_factory=dict)
    """Canonical option name -> this release's option name, or None if it has none."""
    deepep_moe_flag: bool = False
    """True: ``moe-a2a-backend: deepep`` is spelled ``--enable-deepep-moe`` (no
    ``--moe-a2a-backend`` in this release)."""
    dp_attention: str = "enable-dp-attention"
    """``"enable-dp-attention"`` (``--dp-size N --enable-dp-attention``) or
    ``"attn-dp-size"`` (``--attn-dp-size N``)."""
    legacy_cuda_graph_bs_accepted: bool = True
    """Whether ``--cuda-graph-bs`` / ``--cuda-graph-max-bs`` still parse."""
    profile_captures_one_less: bool = True
    """``/start_profile`` with ``num_steps=N`` and no ``start_step`` captures N-1 batches."""
    start_profile_keys: frozenset[str] = frozenset()
    """Keys of the ``/start_profile`` body this release reads."""
    profile_by_stage_on_pd_decode: bool = False
    """``profile_by_stage`` works on a PD decode server: its PREBUILT batches no longer go
    through ``run_batch``, whose by-stage check refused them (``RuntimeError: unsupported
    profile stage: ForwardMode.PREBUILT``)."""
    server_info_path: str = "/get_server_info"
    request_error_log: str = "[http_server] Error: "
    """How the HTTP server logs a request it refuses (e.g. longer than the context), before
    the message."""
    stream_error_detail: bool = False
    """A streamed request that the server refuses is answered 200 with one event
    ``data: {"error": {...}}`` and ``data: [DONE]``: True: the error has ``type``, ``code``
    and ``retryable`` besides ``message``. (Not streamed: 400.)"""
    bench_serving_tokenize_prompt: bool = False
    """``bench_serving --tokenize-prompt``: the random datasets' prompts go out as token ids,
    so a request has exactly ``--random-input-len`` input tokens (as text, the server
    tokenizes the decoded ids again and gets another count)."""
    bench_serving_module: str = "sglang.bench_serving"
    bench_one_batch_server_module: str = "sglang.bench_one_batch_server"
    one_batch_server_info_path: str | None = None
    """The server-info path ``bench_one_batch_server`` reads with ``--base-url`` (its
    tokenizer and ``internal_states``; a 404 or a body without them ends it), or None when
    it reads none. What a router answers there decides whether the pair can work
    (:func:`pdbench.launch_checks`, ``pdbench.routers``)."""
    one_batch_server_datasets: frozenset[str] | None = None
    """``--dataset-name`` choices of ``bench_one_batch_server``; None: it has no such flag
    (its prompts are its own random ones)."""
    one_batch_server_dataset_path: bool = False
    """Whether ``bench_one_batch_server`` has ``--dataset-path``."""
    trace_name_rank_suffixes: bool = False
    """Trace files are ``{id}-TP-{t}[-DP-{d}][-PP-{p}][-EP-{e}]…`` (else ``{id}-TP-{t}…``)."""
    decode_batch_head: str = "Decode batch."
    """How a decode log line starts: ``"Decode batch."``, ``"Decode batch [{iter}],"``
    (iteration always printed) or ``"Decode batch,"``."""
    decode_line_trailing_comma: bool = False
    """The decode line ends ``#queue-req: N, `` (True) or ``#queue-req: N`` (False)."""
    removed_values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Option -> {value: why} for values this release no longer accepts. Such a value is
    a config error, never swapped for another: it would change what is measured."""
    removed_options: Mapping[str, str] = field(default_factory=dict)
    """Option -> why, for options this release does not have (not yet, or no longer): a
    rendered command with one would fail with "unrecognized arguments"."""
    decode_requires: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    """Option -> (value, why) that a decode server with DP attention must be started with:
    the release's own ``ServerArgs`` validation asserts it, so without it every decode
    node dies at start."""
    prefill_requires: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    """Option -> (value, why) that a prefill server must have when it is set at all
    (its pairing with ``decode_requires``)."""
    deprecated_options: Mapping[str, str] = field(default_factory=dict)
    """Option -> why, for options this release still parses but ignores (a deprecation
    warning, no effect): setting one would suggest an effect the server does not have."""
    load_balance_methods: tuple[str, ...] = ()
    """The values ``--load-balance-method`` accepts (its argparse choices)."""
    load_balance_default: str = "round_robin"
    """``--load-balance-method`` when it is not given."""
    dp_routing: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Method -> server mode (``plain``, ``prefill``, ``decode``) -> the rule by which the
    DP controller picks a request's DP rank: one of :data:`ROUTING_RULES`."""
    routed_rank_keys: tuple[str, ...] = ()
    """``/generate`` body keys that pick the DP rank themselves, the first one set wins
    (none: the body cannot choose)."""
    routed_rank_methods: frozenset[str] | None = None
    """The methods that honour :attr:`routed_rank_keys` (None: every method)."""
    beyond_known: bool = False
    """The version is newer than the newest release this table knows."""

    # -- option spelling ---------------------------------------------------------------

    def option_args(self, name: str, value: Any, *, key: str) -> list[str]:
        """Command-line tokens for one ``server_args`` entry ``name: value``.

        ``true`` gives the bare flag, ``false``/``null`` nothing, a list the flag followed
        by each value, anything else the flag and its value. ``key`` is the config key
        named in errors (e.g. ``server_args.decode.cuda-graph-bs-decode``).
        """
        if name in LEGACY_OPTION_NAMES:
            raise ConfigError(
                f"config key {key}: {name!r} is an old spelling; write "
                f"{LEGACY_OPTION_NAMES[name]!r} instead (pdbench spells it as SGLang "
                f"{self.version} expects)"
            )
        if value is None or value is False:
            return []
        if name == "moe-a2a-backend" and self.deepep_moe_flag:
            if value == "deepep":
                return ["--enable-deepep-moe"]
            if value == "none":
                return []
            raise ConfigError(
                f"config key {key}: SGLang {self.version} has no --moe-a2a-backend (added "
                f"in {_first_release_with('moe-a2a-backend')}); only 'deepep' (spelled "
                f"--enable-deepep-moe) or 'none' can be expressed, not {value!r}"
            )
        for v in value if isinstance(value, list) else [value]:
            why = self.removed_values.get(name, {}).get(str(v))
            if why:
                raise ConfigError(
                    f"config key {key}: SGLang {self.version} does not accept {v!r}: {why}"
                )
        if name in self.removed_options:
            raise ConfigError(
                f"config key {key}: SGLang {self.version} has no --{name}: "
                f"{self.removed_options[name]}"
            )
        if name in self.deprecated_options:
            raise ConfigError(
                f"config key {key}: SGLang {self.version} ignores --{name}: "
                f"{self.deprecated_options[name]}"
            )
        spelled = self.renames.get(name, name)
        if spelled is None:
            raise ConfigError(
                f"config key {key}: SGLang {self.version} has no --{name} (it arrived in "
                f"{_first_release_with(name)}); remove it or raise sglang.version"
            )
        return _render_option(spelled, value, key)

    def dp_attention_args(self, dp: int) -> list[str]:
        """DP attention with ``dp`` attention-DP ranks; nothing when ``dp`` is 1."""
        if dp <= 1:
            return []
        if self.dp_attention == "attn-dp-size":
            return ["--attn-dp-size", str(dp)]
        return ["--dp-size", str(dp), "--enable-dp-attention"]

    def start_profile_num_steps(self, batches: int) -> int:
        """The ``num_steps`` to send (without ``start_step``) so ``batches`` are captured."""
        return batches + 1 if self.profile_captures_one_less else batches

    @property
    def decode_snapshot(self) -> str:
        """How a decode snapshot asks for exactly the batches it wants, starting at a step
        boundary: ``"by_stage"`` (``profile_by_stage``: a ``-DECODE`` trace of ``num_steps``
        decode batches from the next decode batch on; idle batches do not count),
        ``"start_step"`` (``start_step`` 1, which the server raises to its next forward:
        ``num_steps`` batches from there) or ``"immediate"`` (capture from the request on;
        ``num_steps`` is compensated where the release captures one batch less)."""
        if self.profile_by_stage_on_pd_decode and "profile_by_stage" in self.start_profile_keys:
            return "by_stage"
        if "start_step" in self.start_profile_keys:
            return "start_step"
        return "immediate"

    def decode_snapshot_options(self) -> dict[str, Any]:
        """The ``/start_profile`` keys that select :attr:`decode_snapshot`. ``start_step`` is
        1, not 0: the server tests it for truth, so 0 would mean "no start step"."""
        return {
            "by_stage": {"profile_by_stage": True},
            "start_step": {"start_step": 1},
            "immediate": {},
        }[self.decode_snapshot]

    def load_balance_method(self, configured: str | None, *, key: str) -> str:
        """``--load-balance-method`` as the server runs with it (the default when None);
        ConfigError naming ``key`` for a value this release's parser refuses."""
        method = self.load_balance_default if configured is None else str(configured)
        if method not in self.load_balance_methods:
            raise ConfigError(
                f"config key {key}: SGLang {self.version} does not accept "
                f"load-balance-method {method!r} (its parser's choices: "
                f"{', '.join(self.load_balance_methods)})"
            )
        return method

    def dp_rank_rule(self, mode: str, method: str | None = None) -> str:
        """How a server in ``mode`` (``plain``, ``prefill``, ``decode``) started with
        ``--load-balance-method method`` (None: the default) picks a request's DP rank, when
        the request does not name one (:attr:`routed_rank_keys`)."""
        method = self.load_balance_default if method is None else method
        return self.dp_routing[method][mode]

    def routed_rank(self, body: Mapping, method: str | None = None) -> Any:
        """The DP rank a ``/generate`` body names for itself, if this release reads it with
        ``--load-balance-method method``; None otherwise."""
        method = self.load_balance_default if method is None else method
        if self.routed_rank_methods is not None and method not in self.routed_rank_methods:
            return None
        for name in self.routed_rank_keys:
            if body.get(name) is not None:
                return body[name]
        return None

    def as_dict(self) -> dict:
        """Plain values, for manifests and the dialect table in the docs."""
        return {
            "version": self.version,
            "moe_a2a_deepep": "--enable-deepep-moe"
            if self.deepep_moe_flag
            else "--moe-a2a-backend deepep",
            "cuda_graph_bs_decode": "--" + (self.renames.get("cuda-graph-bs-decode") or "-"),
            "legacy_cuda_graph_bs_accepted": self.legacy_cuda_graph_bs_accepted,
            "dp_attention": "--attn-dp-size N"
            if self.dp_attention == "attn-dp-size"
            else "--dp-size N --enable-dp-attention",
            "profile_captures_one_less": self.profile_captures_one_less,
            "start_profile_keys": sorted(self.start_profile_keys),
            "profile_by_stage_on_pd_decode": self.profile_by_stage_on_pd_decode,
            "decode_snapshot": self.decode_snapshot,
            "server_info_path": self.server_info_path,
            "request_error_log": self.request_error_log,
            "stream_error_detail": self.stream_error_detail,
            "bench_serving_tokenize_prompt": self.bench_serving_tokenize_prompt,
            "bench_serving_module": self.bench_serving_module,
            "bench_one_batch_server_module": self.bench_one_batch_server_module,
            "one_batch_server_info_path": self.one_batch_server_info_path,
            "one_batch_server_datasets": sorted(self.one_batch_server_datasets)
            if self.one_batch_server_datasets is not None else None,
            "one_batch_server_dataset_path": self.one_batch_server_dataset_path,
            "trace_name_rank_suffixes": self.trace_name_rank_suffixes,
            "decode_batch_head": self.decode_batch_head,
            "decode_line_trailing_comma": self.decode_line_trailing_comma,
            "removed_values": {k: sorted(v) for k, v in self.removed_values.items()},
            "removed_options": sorted(self.removed_options),
            "deprecated_options": sorted(self.deprecated_options),
            "load_balance_methods": list(self.load_balance_methods),
            "load_balance_default": self.load_balance_default,
            "dp_routing": {m: dict(r) for m, r in self.dp_routing.items()},
            "routed_rank_keys": list(self.routed_rank_keys),
            "decode_requires": {k: v for k, (v, _) in self.decode_requires.items()},
            "beyond_known": self.beyond_known,
        }


def _render_option(flag: str, value: Any, key: str) -> list[str]:
    if value is True:
        return [f"--{flag}"]
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"config key {key}: an empty list gives no value for --{flag}")
        return [f"--{flag}", *(_scalar(v, key) for v in value)]
    return [f"--{flag}", _scalar(value, key)]


def _scalar(value: Any, key: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        raise ConfigError(f"config key {key}: {value!r} is not a valid option value")
    return str(value)


@dataclass(frozen=True)
class Change:
    """One row of :data:`CHANGES`: from release ``since`` on, these fields change."""

    since: str
    fields: Mapping[str, Any]
    source: str


_CUDA_GRAPH_OLD = {
    "cuda-graph-bs-decode": "cuda-graph-bs",
    "cuda-graph-max-bs-decode": "cuda-graph-max-bs",
    **{name: None for name in _PER_PHASE_CUDA_GRAPH},
}
_CUDA_GRAPH_NEW = {
    "cuda-graph-bs-decode": "cuda-graph-bs-decode",
    "cuda-graph-max-bs-decode": "cuda-graph-max-bs-decode",
    **{name: name for name in _PER_PHASE_CUDA_GRAPH},
}

# The one table. Rows in version order; each cites its source.
CHANGES: tuple[Change, ...] = (
    Change(
        "0.4.6.post3",
        {
            # --enable-deepep-moe is the only DeepEP switch until --moe-a2a-backend
            # (2025-08-01, #8658); wheels 0.4.6.post3, 0.4.9, 0.4.10: no --moe-a2a-backend.
            "deepep_moe_flag": True,
            # --cuda-graph-bs, --cuda-graph-max-bs (as in the #6017 and #7227 recipes);
            # wheel 0.5.12: no -decode form.
            "renames": _CUDA_GRAPH_OLD,
            "legacy_cuda_graph_bs_accepted": True,
            # --tp-size N --dp-size N --enable-dp-attention (#6017, #7227 recipes).
            "dp_attention": "enable-dp-attention",
            # num_steps=N captured N-1 batches before the 2026-07-10 fix (#30215).
            "profile_captures_one_less": True,
            # wheels 0.5.1.post3 and older: no --prefill-round-robin-balance (0.5.2 row).
            "removed_options": {
                "prefill-round-robin-balance": "it arrived in 0.5.2; remove it or raise "
                "sglang.version",
            },
            # DataParallelController (wheels 0.4.6.post3, 0.4.10): round_robin is a
            # counter without PD and `bootstrap_room % dp` on a PD server; shortest_queue
            # raises NotImplementedError at the first request. No body key picks a rank.
            "load_balance_methods": ("round_robin", "shortest_queue"),
            "load_balance_default": "round_robin",
            "dp_routing": {
                "round_robin": _RR_ROOM,
                "shortest_queue": _routing(FAILS, FAILS, FAILS),
            },
            "routed_rank_keys": (),
            "routed_rank_methods": None,
            "deprecated_options": {},
            # The keys of wheel 0.4.6.post3's ProfileReqInput.
            "start_profile_keys": frozenset({"output_dir", "num_steps", "activities"}),
            # A PD decode server's PREBUILT batches (KV arrived from prefill) go through
            # run_batch, whose by-stage check raises on them (0.5.5.post2 ... 0.5.9); before
            # the PREBUILT mode (0.5.5 and older) they are counted as a prefill stage.
            "profile_by_stage_on_pd_decode": False,
            # /get_server_info (merged endpoint since 2024-11-24, #2152).
            "server_info_path": "/get_server_info",
            # wheel 0.4.6.post3 http_server.py: logger.error(f"Error: {e}"); a streamed
            # refusal is {"error": {"message": ...}} then [DONE].
            "request_error_log": "Error: ",
            "stream_error_detail": False,
            # wheel 0.4.6.post3's bench_serving has no --tokenize-prompt.
            "bench_serving_tokenize_prompt": False,
            # The benchmark clients' modules (python -m ...).
            "bench_serving_module": "sglang.bench_serving",
            "bench_one_batch_server_module": "sglang.bench_one_batch_server",
            # wheel 0.4.6.post3's bench_one_batch_server posts /generate only (random ids
            # of its own, no --dataset-name or --dataset-path, no server info).
            "one_batch_server_info_path": None,
            "one_batch_server_datasets": None,
            "one_batch_server_dataset_path": False,
            # {profile_id}-TP-{tp}.trace.json.gz (no DP/EP part before #11413).
            "trace_name_rank_suffixes": False,
            # "Decode batch. #running-req: …, #queue-req: N" (wheels 0.4.6.post3, 0.4.9).
            "decode_batch_head": "Decode batch.",
            "decode_line_trailing_comma": False,
        },
        "sglang #5572 (/slow_down), #2152, #30215; wheels 0.4.6.post3, 0.4.9",
    ),
    Change(
        "0.4.7",
        {
            # wheel 0.4.7: GenerateReqInput.data_parallel_rank sends a request to that
            # rank, honoured by round_robin only (the only method that routes).
            "routed_rank_keys": ("data_parallel_rank",),
            "routed_rank_methods": frozenset({"round_robin"}),
            # wheel 0.4.7 http_server.py: logger.error(f"[http_server] Error: {e}").
            "request_error_log": "[http_server] Error: ",
            # wheel 0.4.7's bench_serving has --tokenize-prompt (random datasets, sglang
            # backend only).
            "bench_serving_tokenize_prompt": True,
            # wheel 0.4.7's bench_one_batch_server reads GET /get_server_info
            # (internal_states[0].last_gen_throughput) after the batch; 0.4.10 also takes
            # its tokenizer from there (tokenizer_path, or prefill[0].tokenizer_path).
            "one_batch_server_info_path": "/get_server_info",
            # v0.4.7 adds profile_by_stage, with_stack, record_shapes (wheel 0.4.9 has them).
            "start_profile_keys": frozenset(
                {
                    "output_dir",
                    "num_steps",
                    "activities",
                    "profile_by_stage",
                    "with_stack",
                    "record_shapes",
                }
            ),
        },
        "sglang v0.4.7 ProfileReqInput; wheel 0.4.9; wheels 0.4.6.post3, 0.4.7, 0.4.10 "
        "(GenerateReqInput.data_parallel_rank, DataParallelController, "
        "bench_one_batch_server.py)",
    ),
    Change(
        "0.4.10",
        {
            # wheel 0.4.10 ProfileReqInput already has start_step.
            "start_profile_keys": frozenset(
                {
                    "output_dir",
                    "num_steps",
                    "activities",
                    "profile_by_stage",
                    "with_stack",
                    "record_shapes",
                    "start_step",
                }
            ),
            # 2025-07-19 (#8161) timestamp removed, trailing ", " kept (wheel 0.4.10).
            "decode_line_trailing_comma": True,
        },
        "sglang #8161; wheel 0.4.10",
    ),
    Change(
        "0.5.0rc0",
        {
            # --moe-a2a-backend since 2025-08-01 (#8658); wheel 0.5.0rc0 parses both
            # spellings; --enable-deepep-moe became a no-op 2025-09-23 and an error in 0.5.4.
            "deepep_moe_flag": False,
            # wheel 0.5.0rc0: minimum_tokens (fewest tokens; data_parallel_rank is not
            # read by it); wheel 0.4.10 has no such choice.
            "load_balance_methods": ("round_robin", "shortest_queue", "minimum_tokens"),
            "dp_routing": {
                "round_robin": _RR_ROOM,
                "shortest_queue": _routing(FAILS, FAILS, FAILS),
                "minimum_tokens": _routing(FEWEST_TOKENS, FEWEST_TOKENS, FEWEST_TOKENS),
            },
        },
        "sglang #8658; wheels 0.4.10, 0.5.0rc0, 0.5.1, 0.5.4",
    ),
    Change(
        "0.5.2",
        {
            # wheel 0.5.2's bench_one_batch_server gains --dataset-path (0.5.0rc0: none).
            "one_batch_server_dataset_path": True,
            # wheels 0.5.2 ... 0.5.7: ServerArgs._handle_disaggregation asserts, for a
            # decode server with dp_size > 1, `prefill_round_robin_balance` ("Prefill round
            # robin balance is required when dp size > 1. Please make sure that the prefill
            # instance is launched with `--load-balance-method round_robin` and
            # `--prefill-round-robin-balance` is set for decode server."); 0.5.1.post3 has
            # neither the option nor the assertion. Decode then expects request i on DP
            # rank i mod dp, which prefill's round-robin balancing provides.
            "decode_requires": {
                "prefill-round-robin-balance": (
                    True,
                    "its ServerArgs asserts it for a decode server with DP attention "
                    "(dp_size > 1); without it every decode node dies at start",
                )
            },
            "prefill_requires": {
                "load-balance-method": (
                    "round_robin",
                    "decode started with --prefill-round-robin-balance expects prefill to "
                    "spread requests over its DP ranks round-robin",
                )
            },
            "removed_options": {},
            # wheel 0.5.2: every method reads data_parallel_rank first
            # (maybe_external_dp_rank_routing); shortest_queue still fails (NameError).
            "routed_rank_methods": None,
        },
        "wheels 0.5.1.post3, 0.5.2, 0.5.7: ServerArgs._handle_disaggregation; sglang "
        "#10169 (--prefill-round-robin-balance, 2025-09-08); wheels 0.5.0rc0, 0.5.2 "
        "(bench_one_batch_server.py)",
    ),
    Change(
        "0.5.4",
        {
            # wheel 0.5.4's bench_one_batch_server: --dataset-name {mmmu, random}
            # (0.5.2: no such flag); the same choices in wheel 0.5.9.
            "one_batch_server_datasets": frozenset({"mmmu", "random"}),
            # -DP-/-PP-/-EP- in trace names since 2025-10-13 (#11413); wheel 0.5.4.
            "trace_name_rank_suffixes": True,
            # 2025-10-23 (#9366) "Decode batch [iter], " with the iteration always
            # printed; wheel 0.5.4 prints forward_ct unconditionally.
            "decode_batch_head": "Decode batch [{iter}],",
            # wheel 0.5.4 ProfileReqInput has merge_profiles (added with #11413).
            "start_profile_keys": frozenset(
                {
                    "output_dir",
                    "num_steps",
                    "activities",
                    "profile_by_stage",
                    "with_stack",
                    "record_shapes",
                    "start_step",
                    "merge_profiles",
                }
            ),
            # wheel 0.5.4 (0.5.3 not checked): shortest_queue sends to the rank with the
            # fewest requests in the schedulers' load reports (DPBudget); minimum_tokens
            # logs that it is deprecated and falls back to round_robin.
            "dp_routing": {
                "round_robin": _RR_ROOM,
                "shortest_queue": _routing(FEWEST_REQUESTS, FEWEST_REQUESTS, FEWEST_REQUESTS),
                "minimum_tokens": _RR_ROOM,
            },
        },
        "sglang #9366, #11413; wheels 0.5.2, 0.5.4 (DataParallelController), 0.5.9 "
        "(bench_one_batch_server)",
    ),
    Change(
        "0.5.5",
        {
            # 2025-10-26 (#12116) "Decode batch," with [iter] only when
            # SGLANG_LOG_FORWARD_ITERS=1; wheel 0.5.5.post2; the public v0.5.5.post2 GB200
            # EP48 decode log in shifangx/Scripts-SGLang (commit 481e976) has this head.
            "decode_batch_head": "Decode batch,",
        },
        "sglang #12116; wheel 0.5.5.post2; v0.5.5.post2 GB200 EP48 decode log "
        "(shifangx/Scripts-SGLang 481e976)",
    ),
    Change(
        "0.5.6",
        {
            # v0.5.6 adds profile_prefix, profile_stages (wheel 0.5.6).
            "start_profile_keys": frozenset(
                {
                    "output_dir",
                    "num_steps",
                    "activities",
                    "profile_by_stage",
                    "with_stack",
                    "record_shapes",
                    "start_step",
                    "merge_profiles",
                    "profile_prefix",
                    "profile_stages",
                }
            ),
            # /server_info, /get_server_info a deprecated alias; wheel 0.5.6 has the
            # route, 0.5.5.post2 does not.
            "server_info_path": "/server_info",
        },
        "wheels 0.5.5.post2, 0.5.6 (ProfileReqInput, HTTP routes)",
    ),
    Change(
        "0.5.7",
        {
            # sglang #15164 (2025-12-15): decode_round_robin, a counter on a PD decode
            # server (round_robin's rule elsewhere); wheel 0.5.7 has it, 0.5.6 does not.
            "load_balance_methods": (
                "round_robin", "decode_round_robin", "shortest_queue", "minimum_tokens"),
            "dp_routing": {
                "round_robin": _RR_ROOM,
                "decode_round_robin": _routing(ROUND_ROBIN, ROOM, ROUND_ROBIN),
                "shortest_queue": _routing(FEWEST_REQUESTS, FEWEST_REQUESTS, FEWEST_REQUESTS),
                "minimum_tokens": _RR_ROOM,
            },
        },
        "sglang #15164; wheels 0.5.6, 0.5.7",
    ),
    Change(
        "0.5.8",
        {
            # wheel 0.5.8: the assertion is gone and --prefill-round-robin-balance parses
            # as a DeprecatedAction (a warning, no effect) until 0.5.20 removes it. sglang
            # #16110 (2025-12-30): --load-balance-method auto (default) = prefill
            # follow_bootstrap_room, decode and plain round_robin; round_robin is a real
            # counter, except that a PD prefill server given round_robin warns and follows
            # the room (backward compatibility, wheels 0.5.8, 0.5.9); total_requests and
            # total_tokens balance by load reports; decode_round_robin is gone.
            "decode_requires": {},
            "prefill_requires": {},
            "removed_options": {},
            "deprecated_options": {
                "prefill-round-robin-balance": "deprecated in 0.5.8 (parsed with a warning, "
                "no effect; removed in 0.5.20): decode picks DP ranks by "
                "--load-balance-method (default auto: round robin); remove it",
            },
            "load_balance_methods": (
                "auto", "round_robin", "follow_bootstrap_room", "total_requests", "total_tokens"),
            "load_balance_default": "auto",
            "dp_routing": {
                "auto": _routing(ROUND_ROBIN, ROOM, ROUND_ROBIN),
                "round_robin": _routing(ROUND_ROBIN, ROOM, ROUND_ROBIN),
                "follow_bootstrap_room": _routing(ROOM, ROOM, ROOM),
                "total_requests": _routing(FEWEST_REQUESTS, FEWEST_REQUESTS, FEWEST_REQUESTS),
                "total_tokens": _routing(FEWEST_TOKENS, FEWEST_TOKENS, FEWEST_TOKENS),
            },
        },
        "sglang #16110; wheels 0.5.7, 0.5.8, 0.5.9",
    ),
    Change(
        "0.5.9",
        {
            # 2026-01-30 (#17836) trailing ", " dropped; wheel 0.5.9 ends
            # "#queue-req: N", wheel 0.5.6 still ", " (0.5.7 and 0.5.8 not checked).
            "decode_line_trailing_comma": False,
        },
        "sglang #17836; wheels 0.5.6, 0.5.9",
    ),
    Change(
        "0.5.14",
        {
            # wheel 0.5.14's sglang/benchmark/one_batch_server.py reads GET /server_info
            # (0.5.9's sglang/test/bench_one_batch_server_internal.py: /get_server_info;
            # 0.5.10-0.5.13 not checked) and gains --dataset-name random-ids.
            "one_batch_server_info_path": "/server_info",
            "one_batch_server_datasets": frozenset({"mmmu", "random", "random-ids",
                                                    "generated-shared-prefix"}),
            # wheel 0.5.14 http_server.py: a streamed refusal's error also has "type":
            # "invalid_request_error", "code": 400, "retryable": false (0.5.9: message
            # only; 0.5.10-0.5.13 not checked). SGLang 0.5.17 on an H100 logged
            # "[http_server] Error: Requested token count exceeds …" and answered 200.
            "stream_error_detail": True,
            # per-phase cuda-graph flags (#23906, 2026-06-09); wheel 0.5.14 parses
            # --cuda-graph-bs-decode and still accepts --cuda-graph-bs; wheel 0.5.12 has
            # no -decode form (0.5.13 not checked).
            "renames": _CUDA_GRAPH_NEW,
            # wheel 0.5.14 disaggregation/decode.py: get_next_disagg_decode_batch_to_run
            # merges a PREBUILT batch into the running batch itself and never returns it,
            # so run_batch (and the by-stage check in it) only sees DECODE and IDLE
            # batches; wheel 0.5.9 still returns it to run_batch (0.5.10 - 0.5.13 not
            # checked). Wheel 0.5.22 also skips PREBUILT in the check.
            "profile_by_stage_on_pd_decode": True,
            # wheel 0.5.14 (0.5.10-0.5.13 not checked): a prefill server given round_robin
            # routes round robin (the fallback to the room is gone); the body's rank is
            # routed_dp_rank, data_parallel_rank its deprecated alias (routed_dp_rank wins).
            "dp_routing": {
                "auto": _routing(ROUND_ROBIN, ROOM, ROUND_ROBIN),
                "round_robin": _routing(ROUND_ROBIN, ROUND_ROBIN, ROUND_ROBIN),
                "follow_bootstrap_room": _routing(ROOM, ROOM, ROOM),
                "total_requests": _routing(FEWEST_REQUESTS, FEWEST_REQUESTS, FEWEST_REQUESTS),
                "total_tokens": _routing(FEWEST_TOKENS, FEWEST_TOKENS, FEWEST_TOKENS),
            },
            "routed_rank_keys": ("routed_dp_rank", "data_parallel_rank"),
        },
        "sglang #23906; wheels 0.5.9, 0.5.12, 0.5.14 (decode.py, "
        "ServerArgs._handle_load_balance_method, GenerateReqInput, bench_one_batch_server), "
        "0.5.22",
    ),
    Change(
        "0.5.15",
        {
            # wheel 0.5.15: the /start_profile body is ProfileReq and the server keeps a
            # client profile_id (`req.profile_id or str(time.time())`); wheel 0.5.14
            # always sets its own. Client-settable since 2026-06-24 (commit d5c566e59).
            "start_profile_keys": frozenset(
                {
                    "output_dir",
                    "num_steps",
                    "activities",
                    "profile_by_stage",
                    "with_stack",
                    "record_shapes",
                    "start_step",
                    "merge_profiles",
                    "profile_prefix",
                    "profile_stages",
                    "profile_id",
                }
            ),
            # sglang.bench_serving / bench_one_batch_server are FutureWarning shims
            # of sglang.benchmark.serving / .one_batch_server (wheel 0.5.15, not 0.5.14).
            # wheels 0.5.15, 0.5.16: GenerateReqInput has routed_dp_rank and no
            # data_parallel_rank (a body key FastAPI drops); back as an alias in 0.5.19
            # (0.5.17 and 0.5.18 not checked).
            "routed_rank_keys": ("routed_dp_rank",),
            "bench_serving_module": "sglang.benchmark.serving",
            "bench_one_batch_server_module": "sglang.benchmark.one_batch_server",
        },
        "sglang commit d5c566e59; wheels 0.5.14, 0.5.15",
    ),
    Change(
        "0.5.16",
        {
            # fix of 2026-07-10 (#30215), target = forward_ct + num_steps + 1;
            # wheel 0.5.16 has it, 0.5.15 does not; a real 0.5.17 profile recorded on an
            # H200 shows it (num_steps 10 -> 10 step spans).
            "profile_captures_one_less": False,
        },
        "sglang #30215; wheels 0.5.15, 0.5.16; a real 0.5.17 profile recorded on an H200",
    ),
    Change(
        "0.5.19",
        {
            # detailed_annotations: wheel 0.5.19 ProfileReq has it, 0.5.18 does not.
            "start_profile_keys": _ALL_PROFILE_KEYS,
            # wheel 0.5.19: data_parallel_rank is a deprecated alias of routed_dp_rank
            # again (the gateway's dp-aware mode sends that spelling).
            "routed_rank_keys": ("routed_dp_rank", "data_parallel_rank"),
        },
        "wheels 0.5.18, 0.5.19 (ProfileReq); wheels 0.5.16, 0.5.19 (GenerateReqInput)",
    ),
    Change(
        "0.5.20",
        {
            # wheel 0.5.20's one_batch_server adds sharegpt and custom datasets (0.5.19
            # does not; 0.5.22 adds longbench_v2).
            "one_batch_server_datasets": frozenset({"mmmu", "random", "random-ids",
                                                    "generated-shared-prefix", "sharegpt",
                                                    "custom"}),
            # 0.5.23 rejects --cuda-graph-bs ("ambiguous option": it could match
            # --cuda-graph-bs-decode and --cuda-graph-bs-prefill, #23906); parsed with the
            # wheels, 0.5.20 already rejects it and 0.5.19 accepts it.
            "legacy_cuda_graph_bs_accepted": False,
            # wheel 0.5.20's parser no longer lists --prefill-round-robin-balance (0.5.19
            # still parses it as deprecated).
            "deprecated_options": {},
            "removed_options": {
                "prefill-round-robin-balance": "removed in 0.5.20 (deprecated without effect "
                "since 0.5.8): decode picks DP ranks by --load-balance-method (default auto: "
                "round robin); remove it",
            },
            # sglang #32111 (2026-07-22) deprecated the cutlass_mla attention backend;
            # wheel 0.5.20 no longer lists it (0.5.19 does), 0.5.23 rejects it ("invalid
            # choice"). #32111 names trtllm_mla as the replacement.
            "removed_values": {
                "attention-backend": {
                    "cutlass_mla": "the cutlass_mla attention backend was removed in 0.5.20 "
                    "(sglang #32111); choose another, e.g. trtllm_mla, and note that it "
                    "changes the measured kernel",
                }
            },
        },
        "sglang #23906, #32111; wheels 0.5.19, 0.5.20, 0.5.23 (server and one_batch_server)",
    ),
    Change(
        "0.5.22",
        {
            # --attn-dp-size N replaces --dp-size N --enable-dp-attention (deprecated
            # with a warning); wheel 0.5.22 has --attn-dp-size, 0.5.21 does not.
            "dp_attention": "attn-dp-size",
        },
        "wheels 0.5.21, 0.5.22, 0.5.23",
    ),
)

NEWEST_KNOWN = "0.5.23"


def parse_version(text: str, *, key: str = "sglang.version") -> Version:
    try:
        return Version(str(text).strip())
    except InvalidVersion:
        raise ConfigError(
            f"config key {key}: {text!r} is not a version (e.g. 0.5.5.post2)"
        ) from None


def dialect_for_version(version: str, *, key: str = "sglang.version") -> Dialect:
    """The dialect of SGLang ``version`` (``"0.5.5.post2"``, ``"v0.4.9"``, …)."""
    release = parse_version(version, key=key)
    if release < Version(OLDEST_SUPPORTED):
        raise ConfigError(
            f"config key {key}: SGLang {version} is older than {OLDEST_SUPPORTED}, the "
            "first release with the /slow_down endpoint that the fill procedure needs"
        )
    values: dict[str, Any] = {}
    for change in CHANGES:
        if Version(change.since) <= release:
            values.update(change.fields)
    values["renames"] = MappingProxyType(dict(values["renames"]))
    for name in ("removed_options", "deprecated_options", "decode_requires",
                 "prefill_requires"):
        values[name] = MappingProxyType(dict(values.get(name, {})))
    values["dp_routing"] = MappingProxyType(
        {m: MappingProxyType(dict(r)) for m, r in values["dp_routing"].items()})
    values["removed_values"] = MappingProxyType(
        {k: MappingProxyType(dict(v)) for k, v in values.get("removed_values", {}).items()}
    )
    return Dialect(
        version=str(version),
        release=release,
        beyond_known=release > Version(NEWEST_KNOWN),
        **values,
    )


def dialect_for(cfg: Mapping) -> Dialect:
    """The dialect of the configured SGLang (``cfg["sglang"]["version"]``)."""
    try:
        version = cfg["sglang"]["version"]
    except (KeyError, TypeError):
        raise ConfigError("config key sglang.version: missing") from None
    return dialect_for_version(version)


def client_dialect_for(cfg: Mapping) -> Dialect:
    """The dialect of the benchmark client's SGLang: ``workload.client_version`` where set
    (a client of another release than the servers, run by ``workload.python``), else
    ``sglang.version``."""
    version = cfg.get("workload", {}).get("client_version")
    if version is None:
        return dialect_for(cfg)
    return dialect_for_version(str(version), key="workload.client_version")


def check_config(cfg: Mapping, derived: frozenset[str] = frozenset()) -> Dialect:
    """Spell every ``server_args`` entry for the configured release; ConfigError names the
    first key that cannot be expressed (an old spelling, a removed value, an option the
    release lacks). Meant for configuration validation, before anything is rendered."""
    dialect = dialect_for(cfg)
    for section in ("common", "prefill", "decode"):
        for name, value in cfg["server_args"][section].items():
            key = f"server_args.{section}.{name}"
            tokens = dialect.option_args(name, value, key=key)
            if tokens:
                check_option(dialect.version, tokens[0][2:], key=key, derived=derived)
    _check_required_options(cfg, dialect)
    for role in ("prefill", "decode"):
        server_dp_rule(cfg, role, dialect)
    return dialect


def server_dp_rule(cfg: Mapping, role: str, dialect: Dialect | None = None) -> tuple[str, str]:
    """``(rule, method)``: how the configured ``role`` server (``prefill`` or ``decode``)
    picks the DP rank of a request that names none (one of :data:`ROUTING_RULES`), and its
    ``--load-balance-method`` as it runs. ConfigError, naming the key, for a method the
    release's parser refuses or one that fails at the first request."""
    dialect = dialect or dialect_for(cfg)
    args = cfg["server_args"]
    section = role if "load-balance-method" in args[role] else "common"
    key = f"server_args.{section}.load-balance-method"
    method = dialect.load_balance_method(args[section].get("load-balance-method"), key=key)
    rule = dialect.dp_rank_rule(role, method)
    if rule == FAILS:
        raise ConfigError(
            f"config key {key}: SGLang {dialect.version} accepts load-balance-method "
            f"{method!r} but its DP controller raises at the first request "
            "(NotImplementedError up to 0.5.1, NameError in 0.5.2) and the server dies; "
            f"use one of {', '.join(m for m in dialect.load_balance_methods if m != method)}"
        )
    return rule, method


@cache
def option_table(version: str) -> Mapping | None:
    """The server options of one SGLang release as its own parser lists them
    (``data/sglang-options/<version>.json``, written by ``scripts/sglang-option-table``):
    ``{"allow_abbrev", "options": {option: dest}}``; None for a release without one."""
    name = f"data/sglang-options/{version.lstrip('v')}.json"
    path = resources.files("pdbench").joinpath(name)
    return json.loads(path.read_text()) if path.is_file() else None


@cache
def _shipped_tables() -> tuple[Mapping, ...]:
    folder = resources.files("pdbench").joinpath("data/sglang-options")
    return tuple(json.loads(p.read_text()) for p in sorted(folder.iterdir(), key=str)
                 if p.name.endswith(".json"))


def _resolve(table: Mapping, flag: str) -> list[str]:
    """The options argparse would take ``--flag`` for: itself, else every option it is a
    prefix of (argparse takes a unique prefix when the parser allows abbreviations)."""
    options = table["options"]
    if flag in options:
        return [flag]
    return [o for o in options if o.startswith(flag)] if table["allow_abbrev"] else []


def check_option(version: str, flag: str, *, key: str,
                 derived: frozenset[str] = frozenset()) -> None:
    """``--flag`` must be an option of the release that does not set what the workflow
    derives under another spelling (an alias such as ``--tensor-parallel-size`` or
    ``--model``, or a prefix such as ``--nnode``) and is not ``--config`` (a file of
    server args that could set anything). Releases without a table are checked for the
    aliases and prefixes of every shipped table. ``derived``: the options the workflow
    sets itself, by their names in the config."""
    if flag in derived:
        return  # named as derived by the config's own check, in the workflow's words
    table = option_table(version)
    tables = (table,) if table else _shipped_tables()
    for t in tables:
        matches = _resolve(t, flag)
        if table and not matches:
            having = sorted((Version(t["sglang"]) for t in _shipped_tables()
                             if flag in t["options"]))
            hint = (f"releases from {having[0]} have it; raise sglang.version or remove it"
                    if having else "no release pdbench knows has it; check the spelling")
            raise ConfigError(
                f"config key {key}: SGLang {version} has no --{flag}: its own parser lists "
                f"no such option (and no option it abbreviates); {hint}")
        if table and len(matches) > 1:
            raise ConfigError(
                f"config key {key}: --{flag} is ambiguous for SGLang {version} (it "
                f"abbreviates {', '.join('--' + m for m in matches[:5])}); write it out")
        derived_dests = {t["options"][n]: n for n in sorted(derived) if n in t["options"]}
        for match in matches if len(matches) == 1 else []:
            dest = t["options"][match]
            if dest == "config":
                raise ConfigError(
                    f"config key {key}: --{flag} loads server args from a file, which "
                    "could set what the workflow derives; give the options here instead")
            if dest in derived_dests:
                raise ConfigError(
                    f"config key {key}: --{flag} is SGLang's "
                    f"{'abbreviation' if match != flag else 'other spelling'} of "
                    f"--{derived_dests[dest]}, which the workflow sets from the grid point and "
                    "node plan; remove it (see README, 'What the workflow derives')")
            if table and match != flag:
                # argparse would take it, but the dialect table (renames per release)
                # knows options by their full names.
                raise ConfigError(
                    f"config key {key}: --{flag} abbreviates --{match}; write the full name")


def _check_required_options(cfg: Mapping, dialect: Dialect) -> None:
    """Options the release's own validation insists on (:attr:`Dialect.decode_requires`).

    Wide-EP decode always runs DP attention (dp = EP > 1), so a decode requirement
    holds for every grid point."""
    args = cfg["server_args"]
    for role, required in (("decode", dialect.decode_requires),
                           ("prefill", dialect.prefill_requires)):
        merged = {**args["common"], **args[role]}
        for name, (value, why) in required.items():
            have = merged.get(name)
            section = role if name in args[role] else "common"
            if role == "decode" and have != value or role == "prefill" and \
                    have is not None and have != value:
                raise ConfigError(
                    f"config key server_args.{section if have is not None else role}.{name}: "
                    f"SGLang {dialect.version} needs {name}: {_yaml_value(value)} here "
                    f"({why}); set it" + (
                        f", together with server_args.prefill.{next(iter(dialect.prefill_requires))}: "
                        f"{_yaml_value(next(iter(dialect.prefill_requires.values()))[0])}"
                        if role == "decode" and dialect.prefill_requires else "")
                )


def _yaml_value(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def _first_release_with(option: str) -> str:
    """The first release of the table in which ``option`` can be spelled."""
    for change in CHANGES:
        if option == "moe-a2a-backend":
            if change.fields.get("deepep_moe_flag") is False:
                return change.since
            continue
        renames = change.fields.get("renames")
        if renames is not None and renames.get(option, option) is not None:
            return change.since
    return "an unknown release"


def dialect_table(versions: list[str] | None = None) -> list[dict]:
    """One row per release in ``CHANGES`` (or per given version): for docs and tests."""
    versions = versions or [c.since for c in CHANGES]
    return [dialect_for_version(v).as_dict() for v in versions]


__all__ = [
    "BALANCED_RULES",
    "FAILS",
    "FEWEST_REQUESTS",
    "FEWEST_TOKENS",
    "ROOM",
    "ROUND_ROBIN",
    "ROUTING_RULES",
    "server_dp_rule",
    "CHANGES",
    "Change",
    "Dialect",
    "LEGACY_OPTION_NAMES",
    "check_config",
    "NEWEST_KNOWN",
    "OLDEST_SUPPORTED",
    "dialect_for",
    "dialect_for_version",
    "dialect_table",
    "parse_version",
]

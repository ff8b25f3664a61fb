"""PD router generations: how each router pdbench can launch is started, when it is
ready, what it logs about its workers and which endpoints it serves.

``router.implementation`` picks the generation, ``router.version`` the release (default:
the one checked). Two generations exist:

- ``sglang-router`` (PyPI ``sglang-router`` 0.3.x, ``python -m sglang_router.launch_router``),
  built from ``sgl-router/`` (later ``sgl-model-gateway/``) of github.com/sgl-project/sglang;
  its Python package also ships MiniLB (``--mini-lb``, ``sglang_router/mini_lb.py``).
- ``smg``, the SGLang Model Gateway as its own project (PyPI ``smg`` 1.x,
  ``python -m smg.launch_router``; github.com/smg-project/smg, ``model_gateway/``).

Every fact below was read from the installed wheels (``--help``, ``router_args.py``,
``mini_lb.py``) and measured against the SGLang emulator on localhost
(tests/integration/test_router_client.py keeps measuring them); the routes agree with the
public source (smg ``model_gateway/src/server.rs``: ``public_routes`` and ``admin_routes``).
A version inside a generation's accepted series but other than the checked one is
assumed to behave like the checked one; a version outside it is a config error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from .errors import ConfigError

# What a router answers at a server-info path: the worker's own /get_server_info
# (proxied to the first prefill server), an aggregate in the form bench_one_batch_server
# reads (``internal_states`` of the decode servers, ``prefill``/``decode`` lists: MiniLB),
# or a summary of the router itself (no tokenizer path, no internal states).
WORKER_INFO = "worker"
AGGREGATE_INFO = "aggregate"
ROUTER_SUMMARY = "router"


@dataclass(frozen=True)
class RouterDialect:
    """One router generation at one version. Build it with :func:`router_dialect`."""

    implementation: str
    """``sglang-router`` or ``smg``."""
    version: str
    """``router.version`` as configured, else :attr:`checked`."""
    checked: str
    """The release whose wheel the facts were read from."""
    package: str
    """The PyPI distribution (what the provenance records the version of)."""
    module: str
    """``python -m`` module of the launcher."""
    pd_flag: str = "--pd-disaggregation"
    prefill_flag: str = "--prefill"
    """``--prefill URL BOOTSTRAP_PORT`` (nargs "+", the port a number, ``none`` or omitted)."""
    decode_flag: str = "--decode"
    """``--decode URL``, repeatable."""
    host_flag: str = "--host"
    port_flag: str = "--port"
    metrics_port_flag: str = "--prometheus-port"
    metrics_port_default: int = 29000
    policies: frozenset[str] = frozenset()
    """Values of ``--policy`` (``router.policy``)."""
    mini_lb: bool = False
    """Whether ``--mini-lb`` (the Python MiniLB instead of the Rust router) exists."""
    readiness_path: str = "/readiness"
    """200 with ``{"status": "ready", "healthy_workers": N, "total_workers": M}`` once at
    least one prefill and one decode worker are healthy; 503 before."""
    healthy_workers_key: str = "healthy_workers"
    mini_lb_readiness_path: str = "/health"
    """MiniLB has no /readiness; its /health is 200 from the start (workers unchecked)."""
    server_info: Mapping[str, str] = field(default_factory=dict)
    """Server-info path -> what it answers (:data:`WORKER_INFO`, :data:`ROUTER_SUMMARY`)."""
    mini_lb_server_info: Mapping[str, str] = field(default_factory=dict)
    serves: frozenset[str] = frozenset()
    """Paths the Rust router answers (besides the server-info ones)."""
    mini_lb_serves: frozenset[str] = frozenset()
    """Paths MiniLB answers (besides the server-info ones)."""
    worker_ready_line: str = ""
    """Regex of the log line printed when a configured worker is registered and healthy."""
    worker_failed_line: str = ""
    """Regex of the log line printed when a configured worker could not be added; the
    router keeps running without it (it does not exit), so pdbench reads the log."""
    source: str = ""

    def serves_path(self, path: str, *, mini_lb: bool) -> bool:
        return path in (self.mini_lb_serves if mini_lb else self.serves) or \
            self.server_info_kind(path, mini_lb=mini_lb) is not None

    def server_info_kind(self, path: str, *, mini_lb: bool) -> str | None:
        """What the router answers at ``path`` (None: 404)."""
        return (self.mini_lb_server_info if mini_lb else self.server_info).get(path)


_COMMON_PATHS = frozenset({
    "/generate", "/v1/completions", "/v1/chat/completions", "/v1/models",
    "/get_model_info", "/flush_cache", "/health", "/liveness", "/readiness",
    "/health_generate", "/get_loads", "/workers",
})

# One row per generation, each from its checked wheel.
GENERATIONS: Mapping[str, RouterDialect] = MappingProxyType({
    "sglang-router": RouterDialect(
        implementation="sglang-router",
        version="0.3.2",
        checked="0.3.2",
        package="sglang-router",
        module="sglang_router.launch_router",
        policies=frozenset({"random", "round_robin", "cache_aware", "power_of_two", "manual"}),
        mini_lb=True,
        server_info=MappingProxyType({"/get_server_info": ROUTER_SUMMARY}),
        # mini_lb.py: @app.get("/get_server_info") gathers every server's info and
        # returns the decode servers' internal_states with the prefill/decode lists.
        mini_lb_server_info=MappingProxyType({"/get_server_info": AGGREGATE_INFO}),
        serves=_COMMON_PATHS,
        mini_lb_serves=frozenset({"/health", "/health_generate", "/flush_cache",
                                  "/model_info", "/get_model_info", "/generate",
                                  "/v1/chat/completions", "/v1/completions", "/v1/models"}),
        worker_ready_line=r"Activated \d+ worker\(s\) \(marked as healthy\)",
        worker_failed_line=r"Failed job: type=AddWorker, worker=(?P<url>\S+?),",
        source="wheel sglang-router 0.3.2 (--help, router_args.py, mini_lb.py); "
        "measured: /get_server_info answers {router_manager, routers_count, workers_count}, "
        "/server_info and /model_info are 404",
    ),
    "smg": RouterDialect(
        implementation="smg",
        version="1.13.0",
        checked="1.13.0",
        package="smg",
        module="smg.launch_router",
        policies=frozenset({"random", "round_robin", "passthrough", "cache_aware",
                            "power_of_two", "least_load", "manual", "consistent_hashing",
                            "prefix_hash"}),
        mini_lb=False,
        server_info=MappingProxyType({"/get_server_info": WORKER_INFO}),
        serves=_COMMON_PATHS,
        worker_ready_line=r"Activated \d+ of \d+ worker\(s\)",
        worker_failed_line=r"Failed job: type=AddWorker, worker=(?P<url>\S+?),",
        source="wheel smg 1.13.0 (--help, router_args.py); smg model_gateway/src/server.rs "
        "public_routes (/get_server_info, /get_model_info, no /server_info); measured: "
        "/get_server_info is the first prefill server's",
    ),
})

# The versions each generation accepts: the checked release's series.
ACCEPTED: Mapping[str, SpecifierSet] = MappingProxyType({
    "sglang-router": SpecifierSet(">=0.3.0,<0.4"),
    "smg": SpecifierSet(">=1.13.0,<2"),
})

DEFAULT_IMPLEMENTATION = "sglang-router"


def router_dialect(cfg: Mapping) -> RouterDialect:
    """The router generation of ``cfg["router"]`` (``implementation``, ``version``)."""
    router = cfg.get("router") or {}
    implementation = router.get("implementation") or DEFAULT_IMPLEMENTATION
    if implementation not in GENERATIONS:
        raise ConfigError(
            f"config key router.implementation: {implementation!r} is not a router pdbench "
            f"knows ({', '.join(sorted(GENERATIONS))})")
    base = GENERATIONS[implementation]
    version = router.get("version")
    if version is None:
        return base
    try:
        parsed = Version(str(version))
    except InvalidVersion:
        raise ConfigError(f"config key router.version: {version!r} is not a version "
                          f"(e.g. {base.checked})") from None
    accepted = ACCEPTED[implementation]
    if parsed not in accepted:
        raise ConfigError(
            f"config key router.version: {implementation} {version} is outside what pdbench "
            f"checked ({implementation} {accepted}, checked {base.checked}); its command "
            "line, readiness and routes may differ: use a checked release")
    return replace(base, version=str(version))


def check_config(cfg: Mapping) -> RouterDialect:
    """The configured router can be spelled: a known generation and version, MiniLB only
    where it exists, a policy the generation knows. ConfigError names the key."""
    gen = router_dialect(cfg)
    router = cfg["router"]
    if router.get("mini_lb") and not gen.mini_lb:
        raise ConfigError(
            f"config key router.mini_lb: {gen.implementation} {gen.version} has no MiniLB "
            "(--mini-lb is sglang-router's); set router.mini_lb: false or "
            "router.implementation: sglang-router")
    policy = router.get("policy")
    if policy and str(policy) not in gen.policies:
        raise ConfigError(
            f"config key router.policy: {gen.implementation} {gen.version} has no policy "
            f"{policy!r} (it knows {', '.join(sorted(gen.policies))})")
    return gen


def worker_failures(log_text: str, dialect: RouterDialect) -> list[str]:
    """Worker URLs the router log says it could not add."""
    return [m.group("url") for m in re.finditer(dialect.worker_failed_line, log_text)]


def worker_ready_count(log_text: str, dialect: RouterDialect) -> int:
    """How many times the router logged a worker as registered and healthy."""
    return len(re.findall(dialect.worker_ready_line, log_text))


__all__ = [
    "ACCEPTED",
    "AGGREGATE_INFO",
    "DEFAULT_IMPLEMENTATION",
    "GENERATIONS",
    "ROUTER_SUMMARY",
    "RouterDialect",
    "WORKER_INFO",
    "check_config",
    "router_dialect",
    "worker_failures",
    "worker_ready_count",
]

"""DP-rank routing per SGLang release: the facts in the dialect table, the emulator's rank
choice that follows them, and the statistics of the per-rank request counts.

The per-rank counts are checked by a chi-square goodness-of-fit against the uniform
multinomial where the release routes by the random bootstrap room, and must be exactly
balanced where it routes round robin. The same check is shown to reject the wrong rule
(everything on rank 0; round robin where random is expected), so it can fail.
"""

from __future__ import annotations

import math
import random

import pytest

from pdbench.dialects import (
    FAILS,
    FEWEST_REQUESTS,
    FEWEST_TOKENS,
    ROOM,
    ROUND_ROBIN,
    dialect_for_version,
)
from pdbench.emulator.args import StartupError, UsageError, parse_args
from pdbench.emulator.experts import ExpertRecorder
from pdbench.emulator.scheduler import Engine

REQUESTS = 20_000
SEED = 20_251_205
ALPHA = 0.001  # two-sided: too uneven for random, or too even to be random


def server_args(mode: str, dp: int, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--model-path", "dummy-model", "--disaggregation-mode", mode, "--tp-size",
            str(dp), "--dp-size", str(dp), "--ep-size", str(dp), "--enable-dp-attention",
            *extra]


def engine(version: str, mode: str, dp: int = 48, method: str | None = None) -> Engine:
    extra = ("--load-balance-method", method) if method else ()
    if mode == "decode" and dialect_for_version(version).decode_requires:
        extra += ("--prefill-round-robin-balance",)
    cfg = parse_args(server_args(mode, dp, extra),
                     {"PDBENCH_EMULATOR_SGLANG_VERSION": version})
    recorder = ExpertRecorder(None, None, cfg.model_path)
    return Engine(cfg, emit=lambda lines: None, log=lambda line: None, recorder=recorder,
                  eplb="none")


def rank_counts(route, dp: int, n: int = REQUESTS, seed: int = SEED) -> list[int]:
    """Per-rank counts of ``n`` requests with the router's random 63-bit rooms."""
    rng = random.Random(seed)
    counts = [0] * dp
    for _ in range(n):
        counts[route(rng.getrandbits(63))] += 1
    return counts


def chi2_survival(statistic: float, df: int) -> float:
    """P(chi2(df) > statistic): 1 - the regularized lower incomplete gamma P(df/2, x/2),
    summed as its power series (converges for every x; terms fall once n > x - a)."""
    a, x = df / 2, statistic / 2
    if x <= 0:
        return 1.0
    term = 1.0 / a
    total = term
    n = 0
    while term > total * 1e-17:
        n += 1
        term *= x / (a + n)
        total += term
    lower = math.exp(a * math.log(x) - x - math.lgamma(a)) * total
    return max(0.0, 1.0 - lower)


def uniform_fit_p(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    statistic = sum((c - expected) ** 2 / expected for c in counts)
    return chi2_survival(statistic, len(counts) - 1)


def looks_uniform_random(counts: list[int]) -> bool:
    """Multinomial(N, 1/dp) at level ALPHA, two-sided: counts that are too uneven fail,
    and so do counts too even to be random (round robin's chi-square is 0, p = 1)."""
    p = uniform_fit_p(counts)
    return ALPHA / 2 < p < 1 - ALPHA / 2


def exactly_balanced(counts: list[int]) -> bool:
    return max(counts) - min(counts) <= 1


def test_chi2_survival_matches_the_table():
    # 0.999 quantiles of chi-square (standard tables): df 1 -> 10.828, df 47 -> 82.720.
    assert chi2_survival(10.828, 1) == pytest.approx(0.001, rel=1e-3)
    assert chi2_survival(82.720, 47) == pytest.approx(0.001, rel=1e-3)
    assert chi2_survival(47.0, 47) == pytest.approx(0.4735, abs=1e-3)


# -- the facts: which rule each release applies -----------------------------------------

RULES = [
    # (version, mode, --load-balance-method or None for the default, rule)
    ("0.4.6.post3", "decode", None, ROOM),
    ("0.4.6.post3", "prefill", None, ROOM),
    ("0.4.6.post3", "null", None, ROUND_ROBIN),
    ("0.4.6.post3", "decode", "shortest_queue", FAILS),
    ("0.5.0rc0", "decode", "minimum_tokens", FEWEST_TOKENS),
    ("0.5.2", "decode", "shortest_queue", FAILS),
    ("0.5.4", "decode", "shortest_queue", FEWEST_REQUESTS),
    ("0.5.4", "decode", "minimum_tokens", ROOM),  # deprecated: falls back to round_robin
    ("0.5.5.post2", "decode", None, ROOM),
    ("0.5.5.post2", "decode", "round_robin", ROOM),  # the flag does not change routing
    ("0.5.5.post2", "prefill", "round_robin", ROOM),
    ("0.5.5.post2", "null", None, ROUND_ROBIN),
    ("0.5.7", "decode", "decode_round_robin", ROUND_ROBIN),
    ("0.5.7", "prefill", "decode_round_robin", ROOM),
    ("0.5.8", "decode", None, ROUND_ROBIN),  # auto
    ("0.5.8", "prefill", None, ROOM),  # auto = follow_bootstrap_room
    ("0.5.8", "prefill", "round_robin", ROOM),  # kept for backward compatibility
    ("0.5.8", "decode", "follow_bootstrap_room", ROOM),
    ("0.5.8", "decode", "total_requests", FEWEST_REQUESTS),
    ("0.5.9", "decode", "total_tokens", FEWEST_TOKENS),
    ("0.5.14", "prefill", "round_robin", ROUND_ROBIN),
    ("0.5.23", "decode", None, ROUND_ROBIN),
    ("0.5.23", "prefill", None, ROOM),
    ("0.5.23", "decode", "follow_bootstrap_room", ROOM),
    ("0.5.23", "null", None, ROUND_ROBIN),
]


@pytest.mark.parametrize(("version", "mode", "method", "rule"), RULES)
def test_rule_per_release_mode_and_method(version, mode, method, rule):
    """The dialect table and the emulator's parsed command line agree on the rule."""
    plain = {"null": "plain"}.get(mode, mode)
    assert dialect_for_version(version).dp_rank_rule(plain, method) == rule
    assert engine(version, mode, dp=4, method=method).cfg.dp_rule == rule


# -- the statistics --------------------------------------------------------------------

RANDOM_CASES = [(v, m, meth) for v, m, meth, rule in RULES if rule == ROOM]
BALANCED_CASES = [(v, m, meth) for v, m, meth, rule in RULES if rule == ROUND_ROBIN]


@pytest.mark.parametrize(("version", "mode", "method"), RANDOM_CASES)
def test_room_routing_is_uniform_multinomial(version, mode, method):
    e = engine(version, mode, method=method)
    counts = rank_counts(e.route, 48)
    assert sum(counts) == REQUESTS
    assert looks_uniform_random(counts), (uniform_fit_p(counts), counts)
    assert not exactly_balanced(counts)
    # The rule itself: room % dp, request by request.
    rng = random.Random(1)
    rooms = [rng.getrandbits(63) for _ in range(200)]
    assert [e.route(r) for r in rooms] == [r % 48 for r in rooms]


@pytest.mark.parametrize(("version", "mode", "method"), BALANCED_CASES)
def test_round_robin_is_exactly_balanced(version, mode, method):
    e = engine(version, mode, method=method)
    counts = rank_counts(e.route, 48)
    assert exactly_balanced(counts), counts
    assert not looks_uniform_random(counts)  # too even to be random: the test tells


@pytest.mark.parametrize(
    ("wrong_rule", "name"),
    [
        (lambda room: 0, "everything on rank 0"),
        (None, "round robin where random is expected"),
        (lambda room: (room % 48) if room % 5 else 0, "room % dp with a fifth sent to rank 0"),
    ],
)
def test_the_fit_rejects_a_wrong_rule(wrong_rule, name):
    """The same check at the same seed fails for rules other than room % dp."""
    if wrong_rule is None:
        counter = iter(range(REQUESTS))
        wrong_rule = lambda room: next(counter) % 48  # noqa: E731
    counts = rank_counts(wrong_rule, 48)
    assert not looks_uniform_random(counts), name


def test_fewest_requests_spreads_evenly_without_rooms():
    e = engine("0.5.8", "decode", dp=8, method="total_requests")
    from pdbench.emulator.scheduler import Req

    class Sink:
        def progress(self, req): ...
        def finish(self, req): ...
        def fail(self, req, message): ...
        def flush(self): ...

    for i in range(80):
        e.submit_decode(Req(Sink(), i, 10, 10), None, 30.0)
    assert [len(r.queue) for r in e.ranks] == [10] * 8


# -- a rank the request names itself ---------------------------------------------------

@pytest.mark.parametrize(
    ("version", "method", "body", "rank"),
    [
        ("0.4.6.post3", None, {"data_parallel_rank": 3}, None),  # no such field yet
        ("0.4.7", None, {"data_parallel_rank": 3}, 3),
        ("0.5.0rc0", "minimum_tokens", {"data_parallel_rank": 3}, None),  # not read by it
        ("0.5.2", "minimum_tokens", {"data_parallel_rank": 3}, 3),
        ("0.5.5.post2", None, {"routed_dp_rank": 3}, None),  # not a field of 0.5.5.post2
        ("0.5.9", None, {"data_parallel_rank": 3}, 3),
        ("0.5.14", None, {"routed_dp_rank": 2, "data_parallel_rank": 3}, 2),
        ("0.5.14", None, {"data_parallel_rank": 3}, 3),  # the deprecated alias
        ("0.5.15", None, {"data_parallel_rank": 3}, None),  # dropped by the body parser
        ("0.5.16", None, {"routed_dp_rank": 1}, 1),
        ("0.5.19", None, {"data_parallel_rank": 3}, 3),  # an alias again
        ("0.5.23", None, {"routed_dp_rank": 1}, 1),
    ],
)
def test_routed_rank_key_per_release(version, method, body, rank):
    assert dialect_for_version(version).routed_rank(body, method) == rank


# -- what the release refuses, the emulator refuses --------------------------------------

@pytest.mark.parametrize(
    ("version", "method", "error"),
    [
        ("0.5.5.post2", "auto", "argument --load-balance-method: invalid choice: 'auto'"),
        ("0.5.6", "decode_round_robin", "invalid choice: 'decode_round_robin'"),
        ("0.5.8", "shortest_queue", "invalid choice: 'shortest_queue'"),
        ("0.5.23", "minimum_tokens", "invalid choice: 'minimum_tokens'"),
        ("0.4.10", "minimum_tokens", "invalid choice: 'minimum_tokens'"),
    ],
)
def test_emulator_refuses_methods_the_release_lacks(version, method, error):
    with pytest.raises(UsageError, match=error):
        parse_args(server_args("prefill", 4, ("--load-balance-method", method)),
                   {"PDBENCH_EMULATOR_SGLANG_VERSION": version})


@pytest.mark.parametrize(
    ("version", "outcome"),
    [
        ("0.5.1", "unrecognized arguments: --prefill-round-robin-balance"),
        ("0.5.5.post2", None),
        ("0.5.8", "deprecated"),
        ("0.5.19", "deprecated"),
        ("0.5.20", "unrecognized arguments: --prefill-round-robin-balance"),
    ],
)
def test_prefill_round_robin_balance_per_release(version, outcome):
    argv = server_args("decode", 4, ("--prefill-round-robin-balance",))
    env = {"PDBENCH_EMULATOR_SGLANG_VERSION": version}
    if outcome and outcome.startswith("unrecognized"):
        with pytest.raises(UsageError, match=outcome):
            parse_args(argv, env)
        return
    cfg = parse_args(argv, env)
    deprecations = [w for w in cfg.warnings if "'--prefill-round-robin-balance' is deprecated"
                    in w]
    assert len(deprecations) == (1 if outcome == "deprecated" else 0)


def test_decode_without_the_flag_dies_0_5_2_to_0_5_7():
    for version in ("0.5.2", "0.5.7"):
        with pytest.raises(StartupError, match="Prefill round robin balance is required"):
            parse_args(server_args("decode", 4), {"PDBENCH_EMULATOR_SGLANG_VERSION": version})


@pytest.mark.parametrize(("version", "error"), [
    ("0.4.10", "NotImplementedError"),
    ("0.5.2", "NameError: name 'req' is not defined"),
])
def test_shortest_queue_fails_at_the_first_request_up_to_0_5_2(version, error):
    """Accepted at start (like the release), the DP controller dies at the first request."""
    e = engine(version, "null", dp=4, method="shortest_queue")
    assert e.pending_crash is None
    e.route(None)
    assert e.pending_crash == f"DataParallelController hit an exception: {error}"

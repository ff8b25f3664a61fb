"""The default workload fills every DP rank with a stated probability when decode picks
ranks at random (``bootstrap_room % dp``), and is twice the target otherwise.

The numbers for the EP48 rehearsal (dp 48, 8 requests per rank: config/config.yaml with
config/rehearsal.yaml on top) are the ones docs/method.md quotes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

from pdbench import config as config_mod
from pdbench.commands import client_concurrency, client_prompts, fill_prompts
from pdbench.errors import ConfigError
from pdbench.fillsize import (
    binomial_below,
    fill_probability,
    prompts_to_fill,
    shortfall_bounds,
)
from pdbench.launch_checks import check as check_launch

REPO = Path(__file__).resolve().parents[1]


def merged(base: dict, over: dict) -> dict:
    """Nested mappings merged key by key, as Snakemake merges --configfile files."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(*names: str, **edits) -> dict:
    raw: dict = {}
    for name in names:
        raw = merged(raw, yaml.safe_load((REPO / "config" / name).read_text()))
    for dotted, value in edits.items():
        *parents, last = dotted.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return config_mod.validate(raw)


def first_point(cfg):
    return next(iter(config_mod.grid_points(cfg)))


def simulated_shortfall(prompts: int, ranks: int, target: int, trials: int, seed: int) -> float:
    counts = np.random.default_rng(seed).multinomial(prompts, [1 / ranks] * ranks, size=trials)
    return float((counts.min(axis=1) < target).mean())


# -- the numbers ---------------------------------------------------------------------------

def test_binomial_tail_against_direct_sums():
    # Small cases summed with exact integers.
    from fractions import Fraction
    from math import comb

    for n, dp, t in [(10, 2, 3), (100, 4, 20), (384, 48, 8)]:
        p = Fraction(1, dp)
        exact = sum(comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(t))
        assert binomial_below(n, 1 / dp, t) == pytest.approx(float(exact), rel=1e-10)


@pytest.mark.parametrize(("prompts", "ranks", "target"), [
    (768, 48, 8),     # the rehearsal's old default, 2 x target
    (1198, 48, 8),    # the rehearsal's new default
    (119, 8, 4),
    (60, 4, 10),
])
def test_bounds_contain_the_simulated_shortfall(prompts, ranks, target):
    """Bonferroni's bounds hold the Monte-Carlo estimate (200 000 draws, 4 standard errors)."""
    low, high = shortfall_bounds(prompts, ranks, target)
    trials = 200_000
    seen = simulated_shortfall(prompts, ranks, target, trials, seed=prompts)
    slack = 4 * max(seen * (1 - seen), 1e-4) ** 0.5 / trials**0.5
    assert low - slack <= seen <= high + slack, (low, seen, high)


def test_too_few_prompts_cannot_fill():
    assert shortfall_bounds(383, 48, 8) == (1.0, 1.0)  # pigeonhole
    assert fill_probability(8, 1, 8) == 1.0
    assert fill_probability(7, 1, 8) == 0.0


@pytest.mark.parametrize(("ranks", "target", "probability", "expected"), [
    (48, 8, 0.999, 1198),      # the EP48 rehearsal
    (48, 1024, 0.999, 55632),  # the default config (below 2 x target = 98304)
    (48, 768, 0.999, 42510),   # the runbook's 768 per rank
    (48, 8, 0.99, 1045),
    (1, 8, 0.999, 8),
])
def test_prompts_to_fill_is_the_smallest_that_reaches_the_probability(
        ranks, target, probability, expected):
    n = prompts_to_fill(ranks, target, probability)
    assert n == expected
    assert fill_probability(n, ranks, target) >= probability
    if n > ranks * target:
        assert fill_probability(n - 1, ranks, target) < probability


def test_the_rehearsal_default_fills_in_simulation():
    """At 1198 prompts 99.9% of simulated fills bring all 48 ranks to 8; at the old default
    (768 = 2 x target) over a third of them leave some rank short."""
    assert simulated_shortfall(1198, 48, 8, 200_000, seed=7) < 0.0012
    assert simulated_shortfall(768, 48, 8, 200_000, seed=7) > 0.3


# -- the default workload -----------------------------------------------------------------

def test_rehearsal_default_prompts():
    """EP48 rehearsal on SGLang 0.5.5.post2: decode routes by bootstrap_room % 48."""
    cfg = load("config.yaml", "rehearsal.yaml")
    point = first_point(cfg)
    assert (point.decode_dp, point.target_batch_per_rank) == (48, 8)
    assert fill_prompts(cfg, point) == 1198
    assert client_prompts(cfg, point) == 1198  # not 2 x 384 = 768
    assert client_concurrency(cfg, point) == 1198
    # config.validate ran the launch checks already; again, for every point explicitly:
    check_launch(cfg, config_mod.grid_points(cfg), REPO)  # the larger workload passes


def test_default_config_prompts_stay_twice_the_target():
    cfg = load("config.yaml")
    point = first_point(cfg)
    assert fill_prompts(cfg, point) == 55632
    assert client_prompts(cfg, point) == 2 * point.target_global_batch == 98304


@pytest.mark.parametrize(("edits", "prompts"), [
    # Round robin on decode (0.5.8 and later by default): dp x target is enough, so the
    # default stays twice the target.
    ({"sglang__version": "0.5.23", "server_args__decode__prefill-round-robin-balance": None},
     768),
    # 0.5.7's decode_round_robin: a counter.
    ({"sglang__version": "0.5.7",
      "server_args__decode__load-balance-method": "decode_round_robin"}, 768),
    # follow_bootstrap_room on decode: random again.
    ({"sglang__version": "0.5.23", "server_args__decode__prefill-round-robin-balance": None,
      "server_args__decode__load-balance-method": "follow_bootstrap_room"}, 1198),
    # A stricter probability asks for more.
    ({"fill__rank_fill_probability": 0.99999}, 1485),
    # The fill counts a rank full at target_fraction of its target: 4 of 8 per rank.
    ({"fill__target_fraction": 0.5}, 847),
    # A configured number is sent as configured.
    ({"workload__num_prompts": 500}, 500),
])
def test_rehearsal_prompts_per_routing(edits, prompts):
    cfg = load("config.yaml", "rehearsal.yaml", **edits)
    assert client_prompts(cfg, first_point(cfg)) == prompts


def test_fill_probability_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"fill\.rank_fill_probability"):
        load("config.yaml", "rehearsal.yaml", fill__rank_fill_probability=1.0)

"""Server options per SGLang release, from each release's own parser: the shipped tables
are what the parsers say (regenerated here), and a config key that is no option of the
configured release, abbreviates one, or spells a derived option another way is refused."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import yaml

from pdbench import config
from pdbench.dialects import option_table
from pdbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TABLES = REPO / "src" / "pdbench" / "data" / "sglang-options"
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.sglang
@pytest.mark.parametrize("table", sorted(p.name for p in TABLES.glob("*.json")))
def test_shipped_table_is_what_the_release_parser_says(table):
    from sglang_check import default_python, option_table as read_table

    version = table[: -len(".json")]
    release = REPO / ".cache" / "sglang-releases" / version
    python = Path(os.environ.get("PDBENCH_SGLANG_PYTHON") or default_python())
    installed = json.loads((TABLES / table).read_text())
    if release.is_dir():
        fresh = read_table(python, sglang_path=release)
    else:
        fresh = read_table(python)
        if fresh["sglang"] != version:
            from integration.helpers import skip_or_fail

            skip_or_fail(f"SGLang {version} is not set up (scripts/setup-sglang-release "
                        f"{version}); the virtualenv has {fresh['sglang']}")
    assert fresh == installed, (f"{table} differs from SGLang {version}'s parser: run "
                                f"scripts/sglang-option-table {version}")


def with_option(version: str, name: str, value=8) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg["sglang"]["version"] = version
    if version != "0.5.5.post2":  # ignored from 0.5.8, removed in 0.5.20
        del cfg["server_args"]["decode"]["prefill-round-robin-balance"]
    cfg["server_args"]["decode"][name] = value
    return cfg


CASES = [
    # (release, option, expected) — 0.5.5.post2 and 0.5.23 have tables; 0.5.10 has none
    (v, name, msg)
    for v in ("0.5.5.post2", "0.5.23", "0.5.10")
    for name, msg in [
        ("tensor-parallel-size", "other spelling of --tp-size"),
        ("expert-parallel-size", "other spelling of --ep-size"),
        ("data-parallel-size", "other spelling of --dp-size"),
        ("model", "other spelling of --model-path"),
        ("nnode", "abbreviation of --nnodes"),
        ("served-model", "abbreviation of --served-model-name"),
        ("nccl-init-addr", "other spelling of --dist-init-addr"),
        ("config", "loads server args from a file"),
    ]
] + [
    (v, name, msg)
    for v in ("0.5.5.post2", "0.5.23")
    for name, msg in [
        ("no-such-option", "has no --no-such-option"),
        ("disable-radix", "abbreviates --disable-radix-cache; write the full name"),
        ("mem-fraction", "abbreviates --mem-fraction-static"),
        ("enable", "is ambiguous"),
    ]
]


@pytest.mark.parametrize("version, name, expected", CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_option_the_release_does_not_take_as_written_is_refused(version, name, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        config.validate(with_option(version, name))
    assert f"server_args.decode.{name}" in str(err.value)


@pytest.mark.parametrize("version", ["0.5.5.post2", "0.5.23", "0.5.10"])
def test_real_options_pass(version):
    config.validate(with_option(version, "watchdog-timeout", 100))
    config.validate(with_option(version, "disable-radix-cache", True))


def test_a_release_without_a_table_is_checked_for_aliases_only():
    assert option_table("0.5.10") is None
    config.validate(with_option("0.5.10", "some-option-of-0-5-10", 1))
    assert option_table("0.5.23")["options"]["tp-size"] == "tp_size"

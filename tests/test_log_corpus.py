"""Real, published SGLang log lines (tests/data/log-corpus) through the log grammar."""

import re
from pathlib import Path

import pytest
import yaml

from pdbench import loglines
from pdbench.loglines import parse_line

CORPUS = Path(__file__).parent / "data" / "log-corpus" / "sglang-log-lines.yaml"
ENTRIES = yaml.safe_load(CORPUS.read_text())
RELEASE = re.compile(r"\d+\.\d+\.\d+(?:\.post\d+|rc\d+)?\Z")
KEYS = {"line", "source", "date", "release", "release_basis", "hardware", "vendor", "expected"}


def _id(entry):
    return f"{entry['source'].rsplit('/', 2)[-2:][-1]}-{entry['release']}-{entry['line'][:40]}"


@pytest.mark.parametrize("entry", ENTRIES, ids=[_id(e) for e in ENTRIES])
def test_every_published_line_gives_its_record(entry):
    loglines._plans.clear()
    for _ in range(2):  # the general path, then the layout it compiled
        record = parse_line(entry["line"])
        got = None if record is None else {k: v for k, v in record.items() if v is not None}
        assert got == entry["expected"], entry["source"]


def test_corpus_coverage():
    assert all(set(e) == KEYS for e in ENTRIES)
    assert all(re.match(r"https://github\.com/[\w.-]+/[\w.-]+/", e["source"]) for e in ENTRIES)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", e["date"]) for e in ENTRIES)
    assert all(e["release_basis"].startswith(("stated:", "inferred:", "unknown:", "a PR", "main"))
               for e in ENTRIES)
    releases = {e["release"] for e in ENTRIES if RELEASE.match(e["release"])}
    assert len(releases) >= 12, sorted(releases)
    vendors = {e["vendor"] for e in ENTRIES} - {"unknown"}
    assert {"nvidia", "amd"} <= vendors, vendors
    kinds = {e["expected"]["kind"] for e in ENTRIES if e["expected"]}
    assert kinds >= {"decode", "prefill", "ready"}
    # Lines no grammar entry matched must be deliberate: only a line that is no record.
    assert [e["line"] for e in ENTRIES if e["expected"] is None] == [
        '[2026-04-05 20:02:51] INFO:     127.0.0.1:40052 - "POST /v1/chat/completions '
        'HTTP/1.1" 200 OK'
    ]

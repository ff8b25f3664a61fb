"""The experiment page: a median per point (never the best snapshot), emulated runs labelled."""

from __future__ import annotations

from pdbench.report import EMULATED_LABEL, point_summary, render


def rows(emulated: str = "False") -> list[dict]:
    base = {"decode_gpus": "48", "fill_ended_by": "reached", "emulated": emulated}
    return [
        {**base, "point": "p1", "snapshot": "1", "tokens_per_s_per_gpu": "100.0",
         "global_batch": "384", "step_ms": "60.0"},
        {**base, "point": "p1", "snapshot": "2", "tokens_per_s_per_gpu": "130.0",
         "global_batch": "384", "step_ms": "62.0"},
        {**base, "point": "p1", "snapshot": "3", "tokens_per_s_per_gpu": "900.0",
         "global_batch": "380", "step_ms": "61.0"},
        {**base, "point": "p<2>", "snapshot": "1", "tokens_per_s_per_gpu": "120.0",
         "global_batch": "384", "step_ms": "60.8"},
    ]


def test_the_headline_is_the_median_with_its_spread_and_count():
    p1, p2 = point_summary(rows())
    assert (p1["point"], p1["snapshots"]) == ("p1", 3)
    assert p1["tokens_per_s_per_gpu_median"] == 130.0  # not the best (900)
    assert (p1["tokens_per_s_per_gpu_min"], p1["tokens_per_s_per_gpu_max"]) == (100.0, 900.0)
    assert (p1["global_batch_median"], p1["step_ms_median"]) == (384.0, 61.0)
    assert p2["snapshots"] == 1 and p2["tokens_per_s_per_gpu_median"] == 120.0


def test_page_shows_median_escapes_names_and_labels_only_emulated_runs():
    page = render("ep48", rows())
    assert "<td>p1</td><td>130</td><td>100 \u2013 900</td><td>3</td>" in page
    assert "p&lt;2&gt;" in page and "p<2>" not in page
    assert "best" not in page.lower()
    assert EMULATED_LABEL not in page
    emulated = render("ep48", rows(emulated="True"))
    assert f"<title>pdbench ep48 ({EMULATED_LABEL})</title>" in emulated
    assert f"<h1>Decode throughput: ep48 ({EMULATED_LABEL})</h1>" in emulated

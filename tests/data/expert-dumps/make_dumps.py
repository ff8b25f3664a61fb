"""Write small expert-distribution dumps with torch.save, in every layout SGLang's recorder writes.

The layouts (read from the recorder of each release, ``srt/eplb/expert_distribution.py``,
``srt/managers/`` before v0.4.10):

* ``stat-v0.4.7.pt``: ``stat``/``stat_approx`` of v0.4.7–v0.5.0rc0, ``{rank, logical_count}``,
  ``logical_count`` int32 ``[buffer, layers, experts]``, one row per forward pass; the last
  row is zero, as in a circular buffer that was not filled;
* ``stat-v0.5.2.pt``: the same from v0.5.2 on, plus ``average_utilization_rate_over_window``;
* ``per-pass.pt``: ``per_pass``, ``{records, last_physical_to_logical_map}``, each record
  ``{forward_pass_id, rank, gatherer_key, global_physical_count}`` over 6 physical experts
  (4 logical + 2 redundant); two records share a pass id (two gatherers of one pass);
* ``per-token-v0.4.7.pt``: ``per_token`` before records carried ``global_physical_count``:
  ``topk_ids_of_layer`` ``[layers, tokens, top-k]`` physical ids (``-1`` unused) with the
  forward batch's metadata and ``misc_objects``;
* ``legacy.pt``: a stat dump in torch's pre-1.6 (non-zip) format, which only torch reads;
* ``views.pt``: what the reader must also get right though the recorder does not write it:
  a ``logical_count`` that is a strided view with an offset into a larger storage, a
  bfloat16 and a uint16 tensor (``_rebuild_tensor_v3``), and an ``OrderedDict``.

``expected.json`` holds, per file, what ``torch.load`` returns (shapes and sums) and, where
SGLang is importable, the balancedness that SGLang's own ``compute_gpu_physical_count`` and
``compute_utilization_rate`` give. Run with the SGLang environment's Python:

    .venv-sglang/bin/python tests/data/expert-dumps/make_dumps.py
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
EP = 3


def stat_counts() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    counts = torch.randint(0, 50, (4, 3, 6), generator=g, dtype=torch.int32)
    counts[:, 0] = 0  # a dense layer
    counts[3] = 0  # a buffer row no pass filled
    return counts


def per_pass_map() -> torch.Tensor:
    return torch.tensor([[0, 1, 2, 3, 0, 1], [3, 2, 1, 0, 3, 0], [0, 1, 2, 3, 2, 2]])


def per_pass_records() -> list[dict]:
    g = torch.Generator().manual_seed(11)
    records = []
    for pass_id, key in ((5, "primary"), (6, "primary"), (6, "child_a"), (9, "primary")):
        count = torch.randint(0, 30, (3, 6), generator=g, dtype=torch.int32)
        records.append(dict(forward_pass_id=pass_id, rank=0, gatherer_key=key,
                            global_physical_count=count))
    return records


def per_token_records() -> list[dict]:
    ids = torch.tensor([
        [[0, 4], [1, 4], [5, -1]],
        [[3, 3], [2, 0], [-1, -1]],
        [[4, 4], [4, 1], [0, 2]],
    ], dtype=torch.int32)  # [layers=3, tokens=3, top-k=2]
    return [dict(forward_pass_id=1, rank=0, gatherer_key="primary", input_ids=[11, 12, 13],
                 positions=[0, 1, 2], extend_seq_lens=None, forward_mode=2,
                 topk_ids_of_layer=ids,
                 misc_objects=[dict(layer_id=0, num_tokens_per_rank=[3, 0])])]


def sglang_balancedness(physical: torch.Tensor) -> dict | None:
    """SGLang's numbers for ``[passes, layers, physical]`` counts, if SGLang imports."""
    try:
        from sglang.srt.eplb.expert_distribution import (
            compute_gpu_physical_count,
            compute_utilization_rate,
        )
    except ImportError:
        return None
    gpu = compute_gpu_physical_count(physical, num_gpu=EP)
    passes = gpu[gpu.sum(dim=(1, 2)) > 0]
    return {
        "ep": EP,
        "window": compute_utilization_rate(gpu.sum(dim=0)).mean().item(),
        "per_pass": compute_utilization_rate(passes).mean(dim=-1).mean().item(),
        "window_per_layer": compute_utilization_rate(gpu.sum(dim=0)).tolist(),
    }


def main() -> None:
    expected = {"torch": torch.__version__}
    stat = stat_counts()
    torch.save(dict(rank=0, logical_count=stat), HERE / "stat-v0.4.7.pt")
    torch.save(dict(rank=0, logical_count=stat, average_utilization_rate_over_window=0.83),
               HERE / "stat-v0.5.2.pt")
    torch.save(dict(rank=0, logical_count=stat.to(torch.int64),
                    average_utilization_rate_over_window=None),
               HERE / "legacy.pt", _use_new_zipfile_serialization=False)
    for name in ("stat-v0.4.7.pt", "stat-v0.5.2.pt", "legacy.pt"):
        loaded = torch.load(HERE / name, weights_only=True)
        expected[name] = {
            "keys": sorted(loaded),
            "shape": list(loaded["logical_count"].shape),
            "per_layer_sum": loaded["logical_count"].sum(dim=(0, 2)).tolist(),
            "average_utilization_rate_over_window":
                loaded.get("average_utilization_rate_over_window"),
            # trivial placement: physical = logical
            "sglang": sglang_balancedness(loaded["logical_count"]),
        }

    mapping = per_pass_map()
    torch.save(dict(records=per_pass_records(), last_physical_to_logical_map=mapping),
               HERE / "per-pass.pt")
    loaded = torch.load(HERE / "per-pass.pt", weights_only=True)
    by_pass: dict[int, torch.Tensor] = {}
    for rec in loaded["records"]:
        pid = rec["forward_pass_id"]
        by_pass[pid] = by_pass.get(pid, 0) + rec["global_physical_count"]
    physical = torch.stack([by_pass[k] for k in sorted(by_pass)])
    logical = torch.zeros(physical.shape[0], 3, 4, dtype=physical.dtype)
    logical.scatter_add_(2, mapping.unsqueeze(0).expand(physical.shape[0], -1, -1), physical)
    expected["per-pass.pt"] = {
        "passes": physical.shape[0],
        "physical_sum": physical.sum(dim=0).tolist(),
        "logical_sum": logical.sum(dim=0).tolist(),
        "sglang": sglang_balancedness(physical),
    }

    torch.save(dict(records=per_token_records(), last_physical_to_logical_map=mapping),
               HERE / "per-token-v0.4.7.pt")
    loaded = torch.load(HERE / "per-token-v0.4.7.pt", weights_only=True)
    ids = loaded["records"][0]["topk_ids_of_layer"]
    physical = torch.stack([torch.bincount(ids[i][ids[i] >= 0].flatten(), minlength=6)
                            for i in range(3)])
    expected["per-token-v0.4.7.pt"] = {
        "physical_sum": physical.tolist(),
        "sglang": sglang_balancedness(physical.unsqueeze(0)),
    }
    base = torch.arange(2 * 3 * 8, dtype=torch.int32).reshape(2, 3, 8)
    views = dict(logical_count=base[1:, :, 1::2], rank=0,
                 extra=OrderedDict(bf16=torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
                                   u16=torch.tensor([7, 65535], dtype=torch.uint16)))
    torch.save(views, HERE / "views.pt")
    loaded = torch.load(HERE / "views.pt", weights_only=True)
    expected["views.pt"] = {
        "logical_count": loaded["logical_count"].tolist(),
        "bf16": loaded["extra"]["bf16"].float().tolist(),
        "u16": loaded["extra"]["u16"].tolist(),
    }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""The experiment grid: points (EP size x prefill groups x EPLB mode) and everything
derived from them once (node counts, GPU counts, DP size, the per-rank fill target,
point names), and the server options the workflow derives itself.

Results of a point live in ``results/{experiment}/{name}/`` (:mod:`pdbench.layout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .errors import ConfigError

EPLB_MODES = ("none", "static", "online")

# Server options that the workflow derives from the grid point and node plan. A value
# for one of them in ``server_args`` would silently fight the plan, so it is an error.
DERIVED_SERVER_ARGS = frozenset(
    {
        "model-path",
        "tp-size",
        "tp",
        "dp-size",
        "dp",
        "ep-size",
        "ep",
        "attn-dp-size",
        "enable-dp-attention",
        "nnodes",
        "node-rank",
        "dist-init-addr",
        "host",
        "port",
        "disaggregation-mode",
        "disaggregation-bootstrap-port",
        "init-expert-location",
        "enable-eplb",
        "expert-distribution-recorder-mode",
        "expert-distribution-recorder-buffer-size",
        "served-model-name",
    }
)


def decode_server_args(cfg: Mapping) -> dict:
    return {**cfg["server_args"]["common"], **cfg["server_args"]["decode"]}


def prefill_server_args(cfg: Mapping) -> dict:
    return {**cfg["server_args"]["common"], **cfg["server_args"]["prefill"]}


# The names Point.experiment and Point.name produce, as patterns (the workflow's
# wildcard constraints). Prefill groups are 1-3 (the schema's range).
EXPERIMENT_PATTERN = r"ep\d+"
POINT_PATTERN = r"p[1-3](-eplb_(static|online))?"


@dataclass(frozen=True)
class Point:
    """One grid point: an EP size, a number of prefill groups and an EPLB mode.

    Results live in ``results/{experiment}/{name}/``.
    """

    ep: int
    prefill_groups: int
    eplb: str
    gpus_per_node: int
    nodes_per_prefill_group: int
    decode_max_running_requests: int
    # This point's run is also static EPLB's recording pass for its EP size (see
    # :func:`grid_points`): its decode records the expert distribution.
    records_experts: bool = False

    @property
    def experiment(self) -> str:
        return f"ep{self.ep}"

    @property
    def name(self) -> str:
        return f"p{self.prefill_groups}" + ("" if self.eplb == "none" else f"-eplb_{self.eplb}")

    @property
    def decode_nodes(self) -> int:
        return self.ep // self.gpus_per_node

    @property
    def decode_gpus(self) -> int:
        return self.ep

    @property
    def decode_dp(self) -> int:
        # Wide-EP decode runs DP attention with one attention-DP rank per GPU (tp = dp = ep).
        return self.ep

    @property
    def prefill_gpus_per_group(self) -> int:
        return self.nodes_per_prefill_group * self.gpus_per_node

    @property
    def total_nodes(self) -> int:
        return self.prefill_groups * self.nodes_per_prefill_group + self.decode_nodes

    @property
    def target_batch_per_rank(self) -> int:
        """The per-DP-rank running batch SGLang admits: max_running_requests // dp."""
        return self.decode_max_running_requests // self.decode_dp

    @property
    def target_global_batch(self) -> int:
        return self.target_batch_per_rank * self.decode_dp

    def as_dict(self) -> dict:
        return {
            "experiment": self.experiment,
            "point": self.name,
            "ep": self.ep,
            "prefill_groups": self.prefill_groups,
            "eplb": self.eplb,
            "gpus_per_node": self.gpus_per_node,
            "nodes_per_prefill_group": self.nodes_per_prefill_group,
            "prefill_gpus_per_group": self.prefill_gpus_per_group,
            "decode_nodes": self.decode_nodes,
            "decode_gpus": self.decode_gpus,
            "decode_dp": self.decode_dp,
            "total_nodes": self.total_nodes,
            "decode_max_running_requests": self.decode_max_running_requests,
            "target_batch_per_rank": self.target_batch_per_rank,
            "target_global_batch": self.target_global_batch,
            "records_experts": self.records_experts,
        }


def grid_points(cfg: Mapping) -> list[Point]:
    """Every point of the grid, in a stable order (EP, prefill groups, EPLB mode).

    Static EPLB without a supplied file (``eplb.static.init_expert_location``) needs a
    recorded expert distribution per EP size. The recording pass is the run of that EP
    size's first ``none`` point (fewest prefill groups): no extra allocation, the same EP
    size and workload, and it comes first in grid order, so with ``site.reuse_allocation``
    the static points (later in that order) never wait on a point that waits on them. Its
    ``records_experts`` is true. The routing depends on the tokens, not on how many
    prefill groups feed them, so one recording serves every static point of the size.
    """
    grid = cfg["grid"]
    mrr = decode_server_args(cfg)["max-running-requests"]
    points = [
        Point(
            ep=ep,
            prefill_groups=groups,
            eplb=eplb,
            gpus_per_node=cfg["site"]["gpus_per_node"],
            nodes_per_prefill_group=cfg["topology"]["nodes_per_prefill_group"],
            decode_max_running_requests=mrr,
        )
        for ep in sorted(grid["ep_sizes"])
        for groups in sorted(grid["prefill_groups"])
        for eplb in sorted(grid["eplb"], key=EPLB_MODES.index)
    ]
    if "static" not in grid["eplb"] or cfg["eplb"]["static"]["init_expert_location"]:
        return points
    recorders = {}
    for point in points:
        if point.eplb == "none":
            recorders.setdefault(point.ep, point)
    return [replace(p, records_experts=True) if recorders.get(p.ep) == p else p
            for p in points]


def expert_recorder(cfg: Mapping, ep: int) -> Point | None:
    """The point whose run records static EPLB's expert distribution for EP size ``ep``
    (None: a file is supplied, or the grid has no static point)."""
    for point in grid_points(cfg):
        if point.ep == ep and point.records_experts:
            return point
    return None


def find_point(cfg: Mapping, experiment: str, name: str) -> Point:
    """The grid point behind ``results/{experiment}/{name}``; ConfigError if not in the grid."""
    for point in grid_points(cfg):
        if point.experiment == experiment and point.name == name:
            return point
    known = ", ".join(f"{p.experiment}/{p.name}" for p in grid_points(cfg))
    raise ConfigError(f"{experiment}/{name} is not a point of the configured grid (known: {known})")


def allocation_neighbours(cfg: Mapping, point: Point) -> tuple[Point | None, Point | None]:
    """With ``site.reuse_allocation``: the grid points just before and after ``point``
    that need the same number of nodes (they share one allocation, in grid order)."""
    if not cfg["site"]["reuse_allocation"]:
        return None, None
    same = [p for p in grid_points(cfg) if p.total_nodes == point.total_nodes]
    i = same.index(point)
    return (same[i - 1] if i > 0 else None), (same[i + 1] if i + 1 < len(same) else None)


def experiments(cfg: Mapping) -> list[str]:
    return sorted({p.experiment for p in grid_points(cfg)}, key=lambda e: int(e[2:]))

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
    # With site.share_servers: the prefill groups of the servers this point runs on (the
    # largest point of its sharing group; :func:`sharing_groups`); 0: its own.
    server_prefill_groups: int = 0

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
    def shares_servers(self) -> bool:
        return self.server_prefill_groups > 0

    @property
    def started_prefill_groups(self) -> int:
        """Prefill groups started in the allocation: this point's, or on shared servers
        every group of the largest point (those beyond this point's stay idle)."""
        return max(self.prefill_groups, self.server_prefill_groups)

    @property
    def allocated_nodes(self) -> int:
        """Nodes of the allocation this point runs in (its own, or the shared one)."""
        return self.started_prefill_groups * self.nodes_per_prefill_group + self.decode_nodes

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
            "shares_servers": self.shares_servers,
            "allocated_nodes": self.allocated_nodes,
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
    if "static" in grid["eplb"] and not cfg["eplb"]["static"]["init_expert_location"]:
        recorders = {}
        for point in points:
            if point.eplb == "none":
                recorders.setdefault(point.ep, point)
        points = [replace(p, records_experts=True) if recorders.get(p.ep) == p else p
                  for p in points]
    if not cfg["site"].get("share_servers"):
        return points
    groups, _ = sharing_groups(points)
    started = {p: max(q.prefill_groups for q in group) for group in groups for p in group}
    return [replace(p, server_prefill_groups=started[p]) if p in started else p
            for p in points]


def share_key(point: Point) -> tuple | None:
    """Points with the same key need the same servers (same EP size, same flags) and may
    share them; None: this point's servers are its own (the point that records static
    EPLB's expert distribution starts its decode with the recorder on)."""
    if point.records_experts:
        return None
    return (point.ep, point.eplb)


def sharing_groups(points: list[Point]) -> tuple[list[list[Point]], list[tuple[Point, str]]]:
    """Groups of points that can run on one set of servers (more than one point each; in
    grid order, per EP size and EPLB mode), and every other point with why not."""
    by_key: dict[tuple, list[Point]] = {}
    alone = []
    for point in points:
        key = share_key(point)
        if key is None:
            alone.append((point, "records static EPLB's expert distribution: its decode "
                                 "starts with the recorder on"))
        else:
            by_key.setdefault(key, []).append(point)
    groups = []
    for (ep, eplb), members in sorted(by_key.items(),
                                      key=lambda kv: (kv[0][0], EPLB_MODES.index(kv[0][1]))):
        if len(members) > 1:
            groups.append(members)
        else:
            alone.append((members[0], f"no other point of EP {ep} with EPLB {eplb}"))
    return groups, alone


def server_neighbours(cfg: Mapping, point: Point) -> tuple[Point | None, Point | None]:
    """With ``site.share_servers``: the points just before and after ``point`` on the
    same servers (grid order); the first starts them, the last stops them."""
    if not point.shares_servers:
        return None, None
    same = [p for p in grid_points(cfg)
            if p.shares_servers and share_key(p) == share_key(point)]
    i = same.index(point)
    return (same[i - 1] if i > 0 else None), (same[i + 1] if i + 1 < len(same) else None)


def servers_home(cfg: Mapping, point: Point) -> Point:
    """The point whose run started the servers this point runs on (its logs are there)."""
    previous, _ = server_neighbours(cfg, point)
    while previous is not None:
        point = previous
        previous, _ = server_neighbours(cfg, point)
    return point


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
    """The grid points just before and after ``point`` in its allocation: on shared
    servers (``site.share_servers``) the points of its sharing group; with
    ``site.reuse_allocation`` the other points of the same size (in grid order)."""
    if point.shares_servers:
        return server_neighbours(cfg, point)
    if not cfg["site"]["reuse_allocation"]:
        return None, None
    same = [p for p in grid_points(cfg)
            if not p.shares_servers and p.allocated_nodes == point.allocated_nodes]
    i = same.index(point)
    return (same[i - 1] if i > 0 else None), (same[i + 1] if i + 1 < len(same) else None)


def experiments(cfg: Mapping) -> list[str]:
    return sorted({p.experiment for p in grid_points(cfg)}, key=lambda e: int(e[2:]))

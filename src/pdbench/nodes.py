"""Stage: the node and port plan of a point's allocation (rule ``node_list``).

The runbook's ``get_node_list_env.sh``: which nodes run which prefill group, the decode
server, the router and the client, and on which ports (:mod:`pdbench.topology` decides);
written as ``node_list_env.sh`` (the runbook's variable names) and as JSON.
"""

from __future__ import annotations

from .grid import Point
from .context import PointContext
from .errors import InputError
from .layout import read_json, write_text
from .topology import NodePlan, expand_nodelist, plan


def plan_of_allocation(cfg: dict, point: Point, allocation: dict,
                       addresses: dict[str, str] | None = None) -> NodePlan:
    """The plan for the nodes an allocation record holds."""
    try:
        nodes = expand_nodelist(allocation["nodelist"])
    except (KeyError, TypeError):
        raise InputError("the allocation record has no 'nodelist'") from None
    return plan(point, nodes, cfg["ports"], {**(allocation.get("addresses") or {}),
                                              **(addresses or {})} or None)


def node_list(ctx: PointContext) -> NodePlan:
    """``node_list_env.sh`` and ``plan.json`` of the point's allocation."""
    node_plan = plan_of_allocation(ctx.cfg, ctx.point, read_json(ctx.paths.allocation))
    write_text(ctx.paths.env_sh, node_plan.to_env_sh())
    write_text(ctx.paths.plan, node_plan.to_json())
    return node_plan


__all__ = ["node_list", "plan_of_allocation"]

"""Stage: the node and port plan of a point's allocation (rule ``node_list``).

The runbook's ``get_node_list_env.sh``: which nodes run which prefill group, the decode
server, the router and the client, and on which ports (:mod:`pdbench.topology` decides);
written as ``node_list_env.sh`` (the runbook's variable names) and as JSON.
"""

from __future__ import annotations

from .context import PointContext
from .layout import write_text
from .topology import NodePlan


def node_list(ctx: PointContext) -> NodePlan:
    """``node_list_env.sh`` and ``plan.json`` of the point's allocation."""
    node_plan = ctx.plan
    write_text(ctx.paths.env_sh, node_plan.to_env_sh())
    write_text(ctx.paths.plan, node_plan.to_json())
    return node_plan


__all__ = ["node_list"]

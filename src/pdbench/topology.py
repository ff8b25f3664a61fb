"""Node and port plan: the one place that decides which node runs what on which port.

Layout of an allocation (the runbook's, generalised to 1-3 prefill groups)::

    node 0 .. n-1      prefill group 1   (node 0 also runs the router and the client)
    node n .. 2n-1     prefill group 2   (if any)
    node 2n .. 3n-1    prefill group 3   (if any)
    the next D nodes   the decode server (D = EP / GPUs per node)

Any further nodes of the allocation are left unused.

Ports. On a real cluster every node is its own host, so every server uses the
conventional ports (HTTP 30000, bootstrap 8998, dist-init 5757, router 8000): SGLang runs
a dummy health server on the HTTP port of every non-zero node rank, which never collides
across hosts. When two planned nodes share one address (a local test cluster, where all
virtual nodes are 127.0.0.1) every (server, node rank) gets its own HTTP port and every
server its own bootstrap and dist-init port, counted from ``ports.shared_host_base``.

``node_list_env.sh`` keeps the variable names of the runbook's ``get_node_list_env.sh``
(``PREFILL_NODE_LIST``, ``PREFILL_HEAD_NODE``, ``DECODE_NODE_LIST``, ``DECODE_HEAD_NODE``,
``NODE_LIST``, ``HEAD_NODE``) so existing scripts can source it, and adds per-group and
per-endpoint variables; see :meth:`NodePlan.env_variables` for the full list.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import hostlist

from .errors import ConfigError, InputError, PdbenchError
from .grid import Point

# Server slots in the shared-host port scheme; the decode server comes after any
# prefill group. Each slot owns a block of ports so that no two node ranks collide.
_DECODE_SLOT = 9
_PORTS_PER_SLOT = 100


def expand_nodelist(expression: str) -> list[str]:
    """Expand a Slurm hostlist expression (``gb-[001-003,007]``) into node names.

    Uses python-hostlist, which implements Slurm's grammar (ranges, zero padding,
    several bracket groups, comma-separated lists).
    """
    expression = expression.strip()
    if not expression:
        raise PdbenchError("empty Slurm node list")
    try:
        return hostlist.expand_hostlist(expression)
    except hostlist.BadHostlist as exc:
        raise PdbenchError(f"bad Slurm node list {expression!r}: {exc}") from None


def compress_nodelist(nodes: Sequence[str]) -> str:
    return hostlist.collect_hostlist(list(nodes))


def slurm_node_addresses(nodes: Sequence[str], timeout: float = 30.0) -> dict[str, str]:
    """NodeAddr of each node from ``scontrol show node`` (how other nodes reach it)."""
    try:
        out = subprocess.run(
            ["scontrol", "-o", "show", "node", compress_nodelist(nodes)],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PdbenchError(f"scontrol show node failed: {exc}") from None
    addresses = {}
    for line in out.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if "NodeName" in fields:
            addresses[fields["NodeName"]] = fields.get("NodeAddr", fields["NodeName"])
    missing = [n for n in nodes if n not in addresses]
    if missing:
        raise PdbenchError(f"scontrol does not know node(s): {', '.join(missing)}")
    return addresses


@dataclass(frozen=True)
class ServerNode:
    rank: int
    node: str
    address: str
    http_port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.http_port}"


@dataclass(frozen=True)
class ServerPlan:
    """One multi-node SGLang server: a prefill group or the decode server."""

    role: str  # "prefill" | "decode"
    group: int  # 1-based prefill group; 0 for decode
    nodes: tuple[ServerNode, ...]
    gpus_per_node: int
    dist_init_port: int
    bootstrap_port: int

    @property
    def name(self) -> str:
        return f"prefill-{self.group}" if self.role == "prefill" else "decode"

    @property
    def head(self) -> ServerNode:
        return self.nodes[0]

    @property
    def url(self) -> str:
        """Only node rank 0 of a multi-node SGLang server serves the real API."""
        return self.head.url

    @property
    def dist_init_addr(self) -> str:
        return f"{self.head.address}:{self.dist_init_port}"

    @property
    def node_names(self) -> list[str]:
        return [n.node for n in self.nodes]

    @property
    def gpus(self) -> int:
        return len(self.nodes) * self.gpus_per_node

    @property
    def tp(self) -> int:
        return self.gpus

    dp = tp  # DP attention: one attention-DP rank per GPU
    ep = tp


@dataclass(frozen=True)
class NodePlan:
    experiment: str
    point: str
    nodes: tuple[str, ...]
    addresses: Mapping[str, str]
    shared_host: bool
    prefill: tuple[ServerPlan, ...]
    decode: ServerPlan
    router_node: str
    router_address: str
    router_port: int
    unused_nodes: tuple[str, ...] = field(default=())
    # On shared servers (site.share_servers): prefill groups started in the allocation
    # that this point's router leaves out.
    idle_prefill: tuple[ServerPlan, ...] = field(default=())

    @property
    def servers(self) -> tuple[ServerPlan, ...]:
        """The servers this point uses (its router's workers)."""
        return (*self.prefill, self.decode)

    @property
    def started_servers(self) -> tuple[ServerPlan, ...]:
        """Every server started in the allocation, idle prefill groups included."""
        return (*self.prefill, *self.idle_prefill, self.decode)

    @property
    def router_url(self) -> str:
        return f"http://{self.router_address}:{self.router_port}"

    @property
    def client_node(self) -> str:
        return self.router_node

    def server(self, name: str) -> ServerPlan:
        for server in self.started_servers:
            if server.name == name:
                return server
        raise KeyError(f"no server {name!r} in the plan "
                       f"(have {[s.name for s in self.started_servers]})")

    def to_dict(self) -> dict:
        def server_dict(s: ServerPlan) -> dict:
            return {
                "name": s.name,
                "role": s.role,
                "group": s.group,
                "nodes": [asdict(n) | {"url": n.url} for n in s.nodes],
                "url": s.url,
                "gpus": s.gpus,
                "tp": s.tp,
                "dp": s.dp,
                "ep": s.ep,
                "dist_init_addr": s.dist_init_addr,
                "bootstrap_port": s.bootstrap_port,
            }

        return {
            "experiment": self.experiment,
            "point": self.point,
            "nodes": list(self.nodes),
            "nodelist": compress_nodelist(self.nodes),
            "addresses": dict(self.addresses),
            "shared_host": self.shared_host,
            "prefill": [server_dict(s) for s in self.prefill],
            "idle_prefill": [server_dict(s) for s in self.idle_prefill],
            "decode": server_dict(self.decode),
            "router": {
                "node": self.router_node,
                "address": self.router_address,
                "port": self.router_port,
                "url": self.router_url,
            },
            "client_node": self.client_node,
            "unused_nodes": list(self.unused_nodes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def env_variables(self) -> dict[str, str]:
        """Variables of ``node_list_env.sh``, in output order."""
        first = self.prefill[0]
        env = {
            # The runbook's names (get_node_list_env.sh); prefill = group 1.
            "PREFILL_NODE_LIST": ",".join(first.node_names),
            "PREFILL_HEAD_NODE": first.head.node,
            "DECODE_NODE_LIST": ",".join(self.decode.node_names),
            "DECODE_HEAD_NODE": self.decode.head.node,
            "NODE_LIST": ",".join(self.nodes),
            "HEAD_NODE": self.nodes[0],
            # Added: every group, endpoint and port.
            "PDBENCH_EXPERIMENT": self.experiment,
            "PDBENCH_POINT": self.point,
            "PREFILL_GROUPS": str(len(self.prefill)),
        }
        for server in self.servers:
            key = f"PREFILL_{server.group}" if server.role == "prefill" else "DECODE"
            env[f"{key}_NODE_LIST"] = ",".join(server.node_names)
            env[f"{key}_HEAD_NODE"] = server.head.node
            env[f"{key}_HEAD_ADDR"] = server.head.address
            env[f"{key}_URL"] = server.url
            env[f"{key}_HTTP_PORTS"] = ",".join(str(n.http_port) for n in server.nodes)
            env[f"{key}_DIST_INIT_ADDR"] = server.dist_init_addr
            env[f"{key}_BOOTSTRAP_PORT"] = str(server.bootstrap_port)
        env.update(
            {
                "ROUTER_NODE": self.router_node,
                "ROUTER_URL": self.router_url,
                "ROUTER_PORT": str(self.router_port),
                "CLIENT_NODE": self.client_node,
            }
        )
        return env

    def to_env_sh(self) -> str:
        lines = [
            "# node_list_env.sh: node and port plan of one pdbench grid point.",
            f"# {self.experiment}/{self.point}: {len(self.prefill)} prefill group(s), "
            f"decode on {len(self.decode.nodes)} node(s), router and client on "
            f"{self.router_node}.",
            "# Source it: . node_list_env.sh",
        ]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.env_variables().items()]
        return "\n".join(lines) + "\n"


def plan(
    point: Point,
    nodes: Sequence[str],
    ports: Mapping[str, int],
    addresses: Mapping[str, str] | None = None,
) -> NodePlan:
    """Place ``point`` on the allocation's ``nodes`` (in Slurm's order).

    ``addresses`` maps node name -> address others reach it at (Slurm's NodeAddr);
    by default the node name itself. ``ports`` is the config's ``ports`` section.
    """
    nodes = list(nodes)
    if len(set(nodes)) != len(nodes):
        raise PdbenchError(f"node list has duplicates: {nodes}")
    if len(nodes) < point.allocated_nodes:
        raise ConfigError(
            f"{point.experiment}/{point.name} needs {point.allocated_nodes} nodes "
            f"({point.started_prefill_groups} prefill group(s) x "
            f"{point.nodes_per_prefill_group} + "
            f"{point.decode_nodes} decode) but the allocation has {len(nodes)}: "
            f"{compress_nodelist(nodes) if nodes else '(none)'}"
        )
    addresses = {n: (addresses or {}).get(n, n) for n in nodes}
    used = nodes[: point.allocated_nodes]
    shared_host = len({addresses[n] for n in used}) < len(used)

    def http_port(slot: int, rank: int) -> int:
        if not shared_host:
            return ports["http"]
        return ports["shared_host_base"] + slot * _PORTS_PER_SLOT + rank

    def slot_port(slot: int, conventional: str, offset: int) -> int:
        if not shared_host:
            return ports[conventional]
        return ports["shared_host_base"] + slot * _PORTS_PER_SLOT + offset

    def server(role: str, group: int, slot: int, names: Sequence[str]) -> ServerPlan:
        return ServerPlan(
            role=role,
            group=group,
            nodes=tuple(
                ServerNode(rank=r, node=n, address=addresses[n], http_port=http_port(slot, r))
                for r, n in enumerate(names)
            ),
            gpus_per_node=point.gpus_per_node,
            # Offsets 90+ of a slot block are free: node ranks use 0..(nodes-1) < 90.
            dist_init_port=slot_port(slot, "dist_init", 90),
            bootstrap_port=slot_port(slot, "bootstrap", 91),
        )

    n = point.nodes_per_prefill_group
    # On shared servers every point of the group lays its nodes out as the largest one:
    # the servers stay where they are, and a point's router takes the first groups.
    started = tuple(server("prefill", g + 1, g, used[g * n : (g + 1) * n])
                    for g in range(point.started_prefill_groups))
    prefill, idle = started[: point.prefill_groups], started[point.prefill_groups :]
    decode = server("decode", 0, _DECODE_SLOT, used[point.started_prefill_groups * n :])
    # On a shared host the router takes slot 10; router_port + 1 is kept for its metrics.
    router_port = (
        ports["router"] if not shared_host else ports["shared_host_base"] + 10 * _PORTS_PER_SLOT
    )
    _check_ports_unique(started, decode, router_port, used[0], addresses)
    return NodePlan(
        experiment=point.experiment,
        point=point.name,
        nodes=tuple(used),
        addresses=addresses,
        shared_host=shared_host,
        prefill=prefill,
        decode=decode,
        router_node=used[0],
        router_address=addresses[used[0]],
        router_port=router_port,
        unused_nodes=tuple(nodes[point.allocated_nodes :]),
        idle_prefill=idle,
    )


def _check_ports_unique(prefill, decode, router_port, router_node, addresses) -> None:
    """Every (address, port) a process binds must be distinct; a clash is a bug here."""
    taken: dict[tuple[str, int], str] = {}

    def take(address: str, port: int, what: str) -> None:
        key = (address, port)
        if key in taken:
            raise PdbenchError(
                f"port plan clash: {what} and {taken[key]} both use {address}:{port}"
            )
        taken[key] = what

    for s in (*prefill, decode):
        for node in s.nodes:
            take(node.address, node.http_port, f"{s.name} node {node.rank} http")
        take(s.head.address, s.dist_init_port, f"{s.name} dist-init")
        if s.role == "prefill":
            take(s.head.address, s.bootstrap_port, f"{s.name} bootstrap")
    take(addresses[router_node], router_port, "router")


def plan_of_allocation(point: Point, allocation: Mapping, ports: Mapping,
                       addresses: Mapping[str, str] | None = None) -> NodePlan:
    """The plan for the nodes an allocation record holds (its ``nodelist`` and node
    ``addresses``, overridden by ``addresses``)."""
    try:
        nodes = expand_nodelist(allocation["nodelist"])
    except (KeyError, TypeError):
        raise InputError("the allocation record has no 'nodelist'") from None
    merged = {**(allocation.get("addresses") or {}), **(addresses or {})}
    return plan(point, nodes, ports, merged or None)

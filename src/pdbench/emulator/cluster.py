"""Node 0 and its peers: one TCP connection per peer on ``--dist-init-addr``.

Node 0 listens on the port of ``--dist-init-addr`` (as torch's TCP store does there) and
waits for every node rank 1..nnodes-1 to connect and say hello before warm-up ends. It
then streams each peer what that peer's DP ranks print (log lines, profiler commands and
the profiled steps, from which the peer writes its own ranks' traces). Messages are JSON
lines. Both sides send a heartbeat every 2 s; a connection that closes, fails or stays
silent for 10 s is a lost node: node 0 logs an error naming it and exits non-zero, as a
multi-node SGLang server dies when NCCL loses a rank; a peer that loses node 0 exits too
(status 0 after node 0's orderly ``bye``, 1 otherwise).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

HEARTBEAT_S = 2.0
SILENCE_S = 10.0
LINE_LIMIT = 1 << 26  # a long profile's step list travels as one line


def _encode(msg: dict) -> bytes:
    return (json.dumps(msg, separators=(",", ":")) + "\n").encode()


class Peer:
    def __init__(self, node_rank: int, reader, writer, address: str) -> None:
        self.node_rank = node_rank
        self.reader = reader
        self.writer = writer
        self.address = address
        self.acks: dict[str, asyncio.Future] = {}

    def send(self, msg: dict) -> None:
        if not self.writer.is_closing():
            self.writer.write(_encode(msg))


class Hub:
    """Node 0's side."""

    def __init__(
        self,
        host: str,
        port: int,
        nnodes: int,
        on_lost: Callable[[int, str, str], None],
        log: Callable[[str], None],
    ) -> None:
        self.host, self.port, self.nnodes = host, port, nnodes
        self.peers: dict[int, Peer] = {}
        self.on_lost = on_lost
        self.log = log
        self.all_connected = asyncio.Event()
        self.closing = False
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        if nnodes <= 1:
            self.all_connected.set()

    async def start(self) -> None:
        if self.nnodes <= 1:
            return
        self._server = await asyncio.start_server(
            self._accept, "0.0.0.0", self.port, reuse_address=True, limit=LINE_LIMIT
        )
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))

    async def _accept(self, reader, writer) -> None:
        peername = writer.get_extra_info("peername")
        address = f"{peername[0]}:{peername[1]}" if peername else "?"
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
            hello = json.loads(line)
            rank = int(hello["node_rank"])
        except (ValueError, KeyError, TypeError, asyncio.TimeoutError, ConnectionError):
            writer.close()
            return
        if not 1 <= rank < self.nnodes or rank in self.peers:
            writer.write(
                _encode(
                    {
                        "t": "fatal",
                        "msg": f"node rank {rank} is not expected or already connected to node 0",
                    }
                )
            )
            writer.close()
            return
        peer = Peer(rank, reader, writer, address)
        self.peers[rank] = peer
        peer.send({"t": "welcome"})
        self.log(
            f"node rank {rank} connected from {address} ({len(self.peers)}/{self.nnodes - 1} peers)"
        )
        if len(self.peers) == self.nnodes - 1:
            self.all_connected.set()
        try:
            await self._read(peer)
        except asyncio.CancelledError:
            return

    async def _read(self, peer: Peer) -> None:
        reason = "the connection closed"
        try:
            while True:
                try:
                    line = await asyncio.wait_for(peer.reader.readline(), SILENCE_S)
                except asyncio.TimeoutError:
                    reason = f"no heartbeat for {SILENCE_S:.0f} s"
                    break
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("t") == "ack":
                    fut = peer.acks.pop(msg.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except (ConnectionError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if not self.closing:
            self.on_lost(peer.node_rank, peer.address, reason)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            for peer in list(self.peers.values()):
                peer.send({"t": "hb"})

    def send(self, node_rank: int, msg: dict) -> None:
        peer = self.peers.get(node_rank)
        if peer is not None:
            peer.send(msg)

    async def request(self, node_rank: int, msg: dict, ack_id: str, timeout: float) -> Any:
        """Send and wait for the peer's ``ack`` with ``id == ack_id``."""
        peer = self.peers.get(node_rank)
        if peer is None:
            return None
        fut = asyncio.get_running_loop().create_future()
        peer.acks[ack_id] = fut
        peer.send({**msg, "id": ack_id})
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            peer.acks.pop(ack_id, None)
            return None

    async def close(self) -> None:
        self.closing = True
        for peer in self.peers.values():
            peer.send({"t": "bye"})
            try:
                await asyncio.wait_for(peer.writer.drain(), 2)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            peer.writer.close()
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()


class Link:
    """A peer's side: connect to node 0, then dispatch its messages."""

    def __init__(
        self,
        host: str,
        port: int,
        node_rank: int,
        dispatch: Callable[[dict], Awaitable[dict | None]],
    ) -> None:
        self.host, self.port, self.node_rank = host, port, node_rank
        self.dispatch = dispatch
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None

    async def connect(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Exception | None = None
        while loop.time() < deadline:
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, limit=LINE_LIMIT), 5
                )
                self.writer.write(_encode({"t": "hello", "node_rank": self.node_rank}))
                line = await asyncio.wait_for(self.reader.readline(), 30)
                msg = json.loads(line) if line else {"t": "fatal", "msg": "closed at hello"}
                if msg.get("t") == "fatal":
                    raise ConnectionAbortedError(msg.get("msg"))
                return
            except ConnectionAbortedError:
                raise
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                last = exc
                await asyncio.sleep(0.2)
        raise TimeoutError(
            f"could not reach node 0 at {self.host}:{self.port} within {timeout:.0f} s ({last})"
        )

    async def run(self) -> str:
        """Serve node 0's messages; return ``"bye"`` or a reason the connection was lost."""
        assert self.reader is not None and self.writer is not None
        hb = asyncio.ensure_future(self._heartbeat())
        try:
            while True:
                try:
                    line = await asyncio.wait_for(self.reader.readline(), SILENCE_S)
                except asyncio.TimeoutError:
                    return f"no heartbeat from node 0 for {SILENCE_S:.0f} s"
                except ConnectionError as exc:
                    return f"{type(exc).__name__}: {exc}"
                if not line:
                    return "node 0 closed the connection"
                msg = json.loads(line)
                kind = msg.get("t")
                if kind == "bye":
                    return "bye"
                if kind == "fatal":
                    return str(msg.get("msg"))
                if kind == "hb":
                    continue
                reply = await self.dispatch(msg)
                if reply is not None and "id" in msg:
                    self.writer.write(_encode({"t": "ack", "id": msg["id"], **reply}))
        finally:
            hb.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.writer is not None and not self.writer.is_closing():
                self.writer.write(_encode({"t": "hb"}))

"""PD "KV transfer": which bootstrap rooms a prefill server has finished.

The prefill server's node 0 serves ``--disaggregation-bootstrap-port`` (the real mooncake
prefill binds it too) with:

* ``GET /health`` -> 200 ``OK``;
* ``GET /route`` -> a small JSON description of the prefill server;
* ``GET /pdbench/rooms`` -> a chunked stream of JSON lines ``{"rooms": [...]}``: first the
  rooms finished in the last ``ROOM_TTL_S`` seconds, then each room as its prefill finishes;
* ``GET /pdbench/room/<room>`` -> 200 once that room is finished, 404 before.

A decode server keeps one ``/pdbench/rooms`` stream open per prefill bootstrap address it
has seen in a request (``RoomWatcher``), so a request whose room is already finished is
admitted at once and one that is not waits without polling. ``bootstrap_host`` 2.2.2.2
(SGLang's fake host) and requests without a bootstrap host need no transfer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Callable

from . import httpd

FAKE_BOOTSTRAP_HOST = "2.2.2.2"
ROOM_TTL_S = 600.0
MAX_ROOMS = 1_000_000


def room_key(room) -> str:
    return str(room)


class RoomBoard:
    """The prefill side: finished rooms and the decode servers listening for them."""

    def __init__(self, describe: Callable[[], dict]) -> None:
        self.ready: OrderedDict[str, float] = OrderedDict()
        self.sinks: list[httpd.ChunkSink] = []
        self.describe = describe
        self._server: asyncio.AbstractServer | None = None

    def mark_ready(self, rooms: list[str]) -> None:
        if not rooms:
            return
        now = time.monotonic()
        for room in rooms:
            self.ready[room] = now
            self.ready.move_to_end(room)
        while self.ready and (
            len(self.ready) > MAX_ROOMS or next(iter(self.ready.values())) < now - ROOM_TTL_S
        ):
            self.ready.popitem(last=False)
        data = (json.dumps({"rooms": rooms}) + "\n").encode()
        alive = []
        for sink in self.sinks:
            if sink.write(data):
                alive.append(sink)
        self.sinks = alive

    async def handle(self, req: httpd.Request):
        if req.path == "/health":
            return httpd.Response(200, "OK")
        if req.path == "/route":
            return httpd.json_response(self.describe())
        if req.path == "/pdbench/rooms":
            return httpd.StreamResponse(self._stream, content_type="application/jsonl")
        if req.path.startswith("/pdbench/room/"):
            room = req.path[len("/pdbench/room/") :]
            status = 200 if room in self.ready else 404
            return httpd.json_response({"room": room, "ready": status == 200}, status)
        return httpd.Response(404, "Not Found")

    async def _stream(self, sink: httpd.ChunkSink) -> None:
        sink.write((json.dumps({"rooms": list(self.ready)}) + "\n").encode())
        self.sinks.append(sink)
        while not sink.closed:
            await asyncio.sleep(5)
            if not sink.write(b"\n"):
                break
            await sink.drain()

    async def start(self, port: int) -> None:
        self._server = await httpd.serve("0.0.0.0", port, self.handle)


class RoomWatcher:
    """The decode side: wait for rooms of any number of prefill servers."""

    def __init__(self, log_error: Callable[[str], None]) -> None:
        self.ready: dict[tuple[str, int], OrderedDict[str, float]] = {}
        self.waiters: dict[tuple[str, int], dict[str, list[Callable[[], None]]]] = {}
        self.tasks: dict[tuple[str, int], asyncio.Task] = {}
        self.log_error = log_error

    def wait(
        self, host: str, port: int, room: str, on_ready: Callable[[], None]
    ) -> Callable[[], None]:
        """Call ``on_ready`` once the room is finished; return a function that cancels."""
        addr = (host, int(port))
        ready = self.ready.setdefault(addr, OrderedDict())
        if room in ready:
            del ready[room]
            on_ready()
            return lambda: None
        waiting = self.waiters.setdefault(addr, {})
        waiting.setdefault(room, []).append(on_ready)
        if addr not in self.tasks or self.tasks[addr].done():
            self.tasks[addr] = asyncio.ensure_future(self._watch(addr))

        def cancel() -> None:
            callbacks = waiting.get(room)
            if callbacks and on_ready in callbacks:
                callbacks.remove(on_ready)
                if not callbacks:
                    waiting.pop(room, None)

        return cancel

    def _deliver(self, addr: tuple[str, int], rooms: list) -> None:
        waiting = self.waiters.get(addr, {})
        ready = self.ready.setdefault(addr, OrderedDict())
        now = time.monotonic()
        for room in rooms:
            room = room_key(room)
            callbacks = waiting.pop(room, None)
            if callbacks:
                for cb in callbacks:
                    cb()
            else:
                ready[room] = now
        while ready and (len(ready) > MAX_ROOMS or next(iter(ready.values())) < now - ROOM_TTL_S):
            ready.popitem(last=False)

    async def _watch(self, addr: tuple[str, int]) -> None:
        host, port = addr
        failures = 0
        while True:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                writer.write(f"GET /pdbench/rooms HTTP/1.1\r\nhost: {host}:{port}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
                if failures:
                    self.log_error(f"reconnected to the prefill bootstrap server {host}:{port}")
                failures = 0
                buf = b""
                while True:
                    size_line = await reader.readline()
                    if not size_line:
                        raise ConnectionError("the bootstrap stream ended")
                    size = int(size_line.strip() or b"0", 16)
                    if size == 0:
                        raise ConnectionError("the bootstrap stream ended")
                    buf += await reader.readexactly(size)
                    await reader.readline()
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if line.strip():
                            self._deliver(addr, json.loads(line)["rooms"])
            except asyncio.CancelledError:
                raise
            except (
                OSError,
                asyncio.TimeoutError,
                asyncio.IncompleteReadError,
                ValueError,
                KeyError,
            ) as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    self.log_error(
                        f"cannot reach the prefill bootstrap server {host}:{port} "
                        f"({type(exc).__name__}: {exc}); retrying"
                    )
                await asyncio.sleep(min(0.2 * failures, 2.0))

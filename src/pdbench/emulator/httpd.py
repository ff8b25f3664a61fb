"""A small HTTP/1.1 server on asyncio streams: keep-alive, Content-Length and chunked bodies,
chunked streaming responses. One coroutine per connection, no thread per request, so a
node process stays small with thousands of open streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "peer", "version")

    def __init__(self, method, path, query, headers, body, peer, version):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer
        self.version = version

    def json(self, *, optional: bool = False) -> Any:
        if not self.body.strip():
            if optional:
                return None
            raise HTTPError(400, "the request has no JSON body")
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise HTTPError(400, f"the request body is not valid JSON: {exc}") from None


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int = 200,
        body: bytes | str = b"",
        content_type: str = "text/plain; charset=utf-8",
        headers: dict | None = None,
    ):
        self.status = status
        self.body = body.encode() if isinstance(body, str) else body
        self.content_type = content_type
        self.headers = headers or {}


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(obj), "application/json")


class ChunkSink:
    """The writing side of a streaming response (chunked transfer encoding)."""

    __slots__ = ("writer", "closed")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closed = False

    def write(self, data: bytes) -> bool:
        """Queue one chunk; False once the client has gone."""
        if self.closed or self.writer.is_closing():
            self.closed = True
            return False
        if data:
            self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        return True

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.closed = True


class StreamResponse:
    """``run(sink)`` produces the body; the connection is kept alive afterwards."""

    __slots__ = ("status", "content_type", "run")

    def __init__(
        self,
        run: Callable[[ChunkSink], Awaitable[None]],
        status: int = 200,
        content_type: str = "text/event-stream; charset=utf-8",
    ) -> None:
        self.status = status
        self.content_type = content_type
        self.run = run


Handler = Callable[[Request], Awaitable["Response | StreamResponse"]]


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readline()
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


def _head(status: int, content_type: str, extra: dict, length: int | None, keep: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"content-type: {content_type}",
        "server: pdbench-emulator",
    ]
    if length is None:
        lines.append("transfer-encoding: chunked")
    else:
        lines.append(f"content-length: {length}")
    if not keep:
        lines.append("connection: close")
    for k, v in extra.items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _connection(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    handler: Handler,
    access_log: Callable[[str], None] | None,
) -> None:
    peer = writer.get_extra_info("peername")
    peer_text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "-"
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            try:
                text = head.decode("latin-1")
                request_line, *header_lines = text.split("\r\n")
                method, target, version = request_line.split(" ", 2)
            except ValueError:
                writer.write(_head(400, "text/plain", {}, 0, False))
                return
            headers = {}
            for line in header_lines:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    body = await _read_chunked(reader)
                else:
                    n = int(headers.get("content-length", "0") or 0)
                    body = await reader.readexactly(n) if n > 0 else b""
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                return
            conn = headers.get("connection", "").lower()
            keep = (version == "HTTP/1.1" and conn != "close") or (
                version == "HTTP/1.0" and conn == "keep-alive"
            )
            parts = urlsplit(target)
            req = Request(
                method.upper(),
                parts.path,
                dict(parse_qsl(parts.query)),
                headers,
                body,
                peer_text,
                version,
            )
            try:
                resp = await handler(req)
            except HTTPError as exc:
                resp = json_response(
                    {"error": {"message": exc.message, "code": exc.status}}, exc.status
                )
            except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the server
                resp = Response(500, f"Internal Server Error: {type(exc).__name__}: {exc}\n")
            if isinstance(resp, StreamResponse):
                writer.write(_head(resp.status, resp.content_type, {}, None, keep))
                sink = ChunkSink(writer)
                try:
                    await resp.run(sink)
                finally:
                    if not sink.closed and not writer.is_closing():
                        writer.write(b"0\r\n\r\n")
                status = resp.status
                if sink.closed:
                    keep = False
            else:
                writer.write(
                    _head(resp.status, resp.content_type, resp.headers, len(resp.body), keep)
                    + resp.body
                )
                status = resp.status
            if access_log is not None:
                access_log(
                    f'{peer_text} - "{method} {target} {version}" {status} '
                    f"{_REASONS.get(status, '')}"
                )
            try:
                await writer.drain()
            except ConnectionError:
                return
            if not keep:
                return
    except asyncio.CancelledError:
        return
    finally:
        try:
            writer.close()
        except RuntimeError:
            pass


async def serve(
    host: str, port: int, handler: Handler, access_log: Callable[[str], None] | None = None
) -> asyncio.AbstractServer:
    """Start serving; raises OSError when the address is taken."""
    return await asyncio.start_server(
        lambda r, w: _connection(r, w, handler, access_log),
        host,
        port,
        reuse_address=True,
        backlog=4096,
        limit=1 << 20,
    )

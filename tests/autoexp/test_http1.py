"""The forwarder's own HTTP/1.1 client (:mod:`autoexp.proxy.http1`) against raw servers on
127.0.0.1 that send exactly the bytes a test gives: framing (length, chunked, to the
connection's end, no body), informational answers, connection reuse, an idle connection
the upstream closed, timeouts, resets, malformed answers and backpressure; on asyncio's
event loop and on uvloop's (the proxy's, whose transports differ)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop

from autoexp.proxy import http1
from autoexp.proxy.http1 import BUFFER_BYTES, Answer, Pool, UpstreamError

LOOPS = ["asyncio", "uvloop"]


def run(kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    try:
        loop.run_until_complete(_within(main()))
    finally:
        loop.close()


_OPEN: list[Server | Pool] = []  # closed after each test, passed or failed


async def _within(test: Coroutine[Any, Any, None]) -> None:
    try:
        await asyncio.wait_for(test, 20)
    finally:  # uvloop hung closing its loop with a server or connections left open
        for thing in reversed(_OPEN):
            if isinstance(thing, Pool):
                thing.close()
            elif thing.server is not None:
                await thing.stop()
        _OPEN.clear()
        # what a test left (a server's handler still asleep) ends before the loop does
        rest = asyncio.all_tasks() - {asyncio.current_task()}
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.sleep(0.01)  # closed transports finish closing


Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """A raw server: each connection is served by ``reply`` once per request head read;
    what it received and how many connections it saw are kept."""

    reply: Reply
    heads: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        _OPEN.append(self)
        return self

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                await self.reply(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        server, self.server = self.server, None
        server.close()
        for writer in self.writers:
            writer.transport.abort()
        await server.wait_closed()


def answer_with(data: bytes, *, close: bool = False) -> Reply:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return reply


def pool_for(server: Server, read_timeout_s: float = 5.0) -> Pool:
    pool = Pool(server.base, connect_timeout_s=2.0, read_timeout_s=read_timeout_s)
    _OPEN.append(pool)
    return pool


async def body(answer: Answer) -> bytes:
    try:
        return b"".join([c async for c in answer.chunks()])
    finally:
        answer.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
INFORMATIONAL = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize(
    ("raw", "close", "want"),
    [
        (OK, False, b"hello"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
            False,
            b"hello",
        ),
        # no length, not chunked: the body ends with the connection
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello", True, b"hello"),
        (b"HTTP/1.0 200 OK\r\n\r\nhello", True, b"hello"),
        # 204 and 304 have no body whatever their head says
        (b"HTTP/1.1 204 No Content\r\n\r\n", False, b""),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False, b""),
        # informational answers before the final one are skipped
        (INFORMATIONAL + OK, False, b"hello"),
    ],
)
def test_answers_are_framed_as_their_heads_say(
    kind: str, raw: bytes, close: bool, want: bytes
) -> None:
    async def main() -> None:
        server = await Server(answer_with(raw, close=close)).start()
        pool = pool_for(server)
        answer = await pool.request("GET", "/x?q=1", [("Accept", "*/*")])
        assert answer.status in (200, 204, 304)
        assert await body(answer) == want
        if raw.endswith(OK):  # the final head's headers only
            assert ("X-A", "1") in answer.headers
            assert not any(k == "Link" for k, _ in answer.headers)
        assert server.heads[0].startswith(b"GET /x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        pool.close()
        await server.stop()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_keep_alive_connections_are_reused_and_close_ones_are_not(kind: str) -> None:
    async def main() -> None:
        server = await Server(answer_with(OK)).start()
        pool = pool_for(server)
        for _ in range(5):
            assert await body(await pool.request("GET", "/", [])) == b"hello"
        assert server.connections == 1
        closing = await Server(
            answer_with(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        ).start()
        other = pool_for(closing)
        for _ in range(3):
            assert await body(await other.request("GET", "/", [])) == b"ok"
        assert closing.connections == 3
        # an answer not read whole leaves its connection unusable: not pooled again
        half = await pool.request("GET", "/", [])
        half.close()
        assert await body(await pool.request("GET", "/", [])) == b"hello"
        pool.close()
        other.close()
        await server.stop()
        await closing.stop()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_the_request_head_is_what_was_given(kind: str) -> None:
    async def main() -> None:
        server = await Server(answer_with(OK)).start()
        pool = pool_for(server)
        headers = [("X-Ünï", "välue"), ("Set-Thing", "a"), ("Set-Thing", "b")]
        await body(await pool.request("POST", "/p", headers))
        await body(await pool.request("GET", "/g", []))
        post, get = server.heads
        assert post.startswith(b"POST /p HTTP/1.1\r\nHost: 127.0.0.1:")
        # names and values as UTF-8, repeated headers kept, an empty body said for POST
        assert b"X-\xc3\x9cn\xc3\xaf: v\xc3\xa4lue\r\nSet-Thing: a\r\nSet-Thing: b\r\n" in post
        assert post.endswith(b"Content-Length: 0\r\n\r\n")
        assert b"Content-Length" not in get
        pool.close()
        await server.stop()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_an_idle_connection_closed_by_the_upstream_is_replaced_for_safe_methods(
    kind: str,
) -> None:
    # The upstream answers a first request, then, reading the second on the same
    # connection, closes it without a byte back (as one whose keep-alive timeout struck
    # just then): a GET is sent again on a new connection; a POST is not (it may have
    # been acted on), the caller sees why.
    async def main() -> None:
        async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(server.heads) == 2:
                writer.close()
            else:
                writer.write(OK)
                await writer.drain()

        server = await Server(reply).start()
        pool = pool_for(server)
        assert await body(await pool.request("GET", "/", [])) == b"hello"
        assert await body(await pool.request("GET", "/", [])) == b"hello"
        assert (server.connections, len(server.heads)) == (2, 3)

        silent = await Server(answer_with(b"", close=True)).start()
        other = pool_for(silent)
        with pytest.raises(UpstreamError, match="closed before answering"):
            await other.request("POST", "/", [])

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_failures_are_upstream_errors_or_timeouts(kind: str) -> None:
    async def main() -> None:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            writer.transport.abort()

        async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            await writer.drain()
            await asyncio.sleep(5)

        servers = [
            await Server(s).start()
            for s in (hang, cut, stall, answer_with(b"SSH-2.0-OpenSSH\r\n\r\n"))
        ]
        hanging, cutting, stalling, garbage = (pool_for(s, read_timeout_s=0.2) for s in servers)
        with pytest.raises(TimeoutError):
            await hanging.request("GET", "/", [])
        answer = await cutting.request("GET", "/", [])
        with pytest.raises(UpstreamError, match="mid-answer"):
            await body(answer)
        answer = await stalling.request("GET", "/", [])
        with pytest.raises(TimeoutError):
            await body(answer)
        with pytest.raises(UpstreamError, match="malformed answer"):
            await garbage.request("GET", "/", [])
        free = await Server(answer_with(OK)).start()
        await free.stop()  # nothing listens there now
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool_for(free).request("GET", "/", [])
        for pool in (hanging, cutting, stalling, garbage):
            pool.close()
        for s in servers:
            await s.stop()

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_large_answer_is_streamed_with_backpressure(kind: str) -> None:
    # 8 MiB, 32 times what the client buffers: while its reader waits, the client must
    # stop reading from the upstream (its buffer stays bounded: without the pause it held
    # all 8 MiB after the wait), and all of it still arrives, in order.
    size = 8 * 1024 * 1024
    data = bytes(range(256)) * (size // 256)

    async def main() -> None:
        server = await Server(
            answer_with(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + data)
        ).start()
        pool = pool_for(server)
        answer = await pool.request("GET", "/", [])
        await asyncio.sleep(0.3)  # the upstream has written all it could meanwhile
        held = answer.buffered
        # one read past the threshold at most (a read is at most 256 KiB here)
        assert 0 < held <= BUFFER_BYTES + 256 * 1024, held
        got = [c async for c in answer.chunks()]
        answer.close()
        assert b"".join(got) == data

    run(kind, main)


def test_a_base_that_is_not_http_or_https_is_refused() -> None:
    for base in ("ftp://x", "http://", "ws://127.0.0.1:1"):
        with pytest.raises(ValueError, match="http:// or https://host:port"):
            Pool(base, connect_timeout_s=1.0, read_timeout_s=1.0)
    # https:// (for WebSocket handshakes only: the forwarder says which): TLS, port 443
    tls = Pool("https://127.0.0.1", connect_timeout_s=1.0, read_timeout_s=1.0)
    plain = Pool("http://127.0.0.1", connect_timeout_s=1.0, read_timeout_s=1.0)
    assert (tls.port, plain.port) == (443, 80) and tls.tls is not None and plain.tls is None


@pytest.mark.parametrize("kind", LOOPS)
def test_a_connection_idle_too_long_is_not_reused(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an upstream host gone without closing its connections would cost the next request
    # on one of them its read timeout: past IDLE_S they are closed, not reused
    monkeypatch.setattr(http1, "IDLE_S", 0.2)

    async def main() -> None:
        server = await Server(answer_with(OK)).start()
        pool = pool_for(server)
        for _ in range(2):
            assert await body(await pool.request("GET", "/", [])) == b"hello"
        assert server.connections == 1
        await asyncio.sleep(0.3)
        assert await body(await pool.request("GET", "/", [])) == b"hello"
        assert server.connections == 2

    run(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_line_break_inside_a_header_is_never_sent(kind: str) -> None:
    # it would make the upstream read a header (or a request) nobody sent; the config
    # refuses such alternative names and aiohttp's parser such client headers, and this
    # client does not rely on either
    async def main() -> None:
        server = await Server(answer_with(OK)).start()
        pool = pool_for(server)
        for headers in ([("X-Autoexp-Alternative", "b\r\nX-Evil: 1")], [("X-A\n", "1")]):
            with pytest.raises(UpstreamError, match="line break"):
                await pool.request("GET", "/", headers)
        with pytest.raises(UpstreamError, match="line break"):
            await pool.request("GET", "/ HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /", [])
        assert server.heads == [] and server.connections == 0

    run(kind, main)

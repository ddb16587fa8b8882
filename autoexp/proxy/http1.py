"""A lean pooled HTTP/1.1 client for the forwarder's common case: a request without a
body to a plain-``http://`` upstream.

Why not aiohttp's client for everything: in ``benchmarks/proxy.py`` (a pass-through proxy
in front of nginx, 2 cores, uvloop, wrk c64) a request forwarded through
``aiohttp.ClientSession.request`` cost the proxy 169 us of CPU and through this client 73
(5,901 against 13,583 requests/s, one run at commit ``9d0ea5b``); py-spy had put about
half of the aiohttp proxy's samples in its client. Parsing is httptools' (llhttp, the
parser Node.js uses); what is written by hand here is the connection pool, the request
head and the waiting.

Requests with a body, ``CONNECT``, and ``https://`` upstreams stay on aiohttp's client
(:mod:`autoexp.proxy.upstream` chooses). A ``HEAD``'s answer carries no body whatever its
head says, which llhttp cannot be told through httptools: its parsing stops at the head,
and the connection is closed rather than reused, so that a body sent anyway (some
upstreams do) is never read as the next answer. aiohttp's client, which took ``HEAD``
before, refuses such an answer when its body comes in the same read (a 502), where nginx
relays the head.

A WebSocket handshake (:meth:`Pool.upgrade`, ``http://`` or ``https://``) goes on a
connection of its own, never pooled: an upstream that declines it answers as to any
request; one that switches protocols (``101``) turns the connection into a byte tunnel,
read through :meth:`Answer.chunks` (no read timeout: a WebSocket may stay quiet for
hours) and written through :meth:`Answer.send`.

Failures are :class:`UpstreamError` (an ``aiohttp.ClientConnectionError``, so the
forwarder treats both clients' failures alike) and :class:`TimeoutError`: the connect
timeout bounds opening a connection, the read timeout each wait for the upstream's next
bytes, as aiohttp's ``sock_connect`` and ``sock_read`` do. A pooled connection the
upstream closed while it was idle is found out by the request sent on it (no answer
byte, the connection lost): an idempotent request is then sent once more on a new one.
A connection idle for more than ``IDLE_S`` (15 s, aiohttp's keep-alive timeout) is closed
rather than reused: an upstream host gone without closing it would otherwise cost a
request its read timeout.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import httptools

__all__ = ["CONTROL", "HEAD_BYTES", "HEAD_FIELDS", "IDEMPOTENT", "Answer", "Pool", "UpstreamError"]

IDLE_MAX = 1024  # idle keep-alive connections kept per upstream
IDLE_S = 15.0  # an idle connection older is not reused (aiohttp's keepalive_timeout)
BUFFER_BYTES = 256 * 1024  # answer bytes buffered before reading from the upstream pauses
# an answer's head larger, or with more fields, is the upstream's fault: a 502, not memory
# spent without bound (Envoy's default is 60 KiB and 100 fields; nginx's, 4 or 8 KiB)
HEAD_BYTES = 64 * 1024
HEAD_FIELDS = 256
# what aiohttp's server refuses to write in a head (RFC 9110 5.5), so what no answer may
# carry: llhttp refuses it in a header, not in the reason phrase (nor does aiohttp's client)
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# methods a request may be sent again with (here on a new connection; in the forwarder,
# to control after an alternative failed)
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def chunked(coding: str) -> bool:
    """Whether a Transfer-Encoding value is ``chunked`` alone: the only coding either
    client undoes. With another (``gzip, chunked``) both would pass the coded bytes on as
    the body, the coding lost; such an answer is the upstream's error (a 502, as nginx
    answers it), and a request in one a 501."""
    return coding.strip().lower() == "chunked"


class _HeadDone(Exception):
    """Raised from the parser's callback once a HEAD's answer has its head."""


class UpstreamError(aiohttp.ClientConnectionError):
    """The upstream could not be reached, closed the connection before its answer was
    whole, or answered what is not HTTP/1.x."""


class Answer:
    """One exchange on one connection: the head as it arrives, then the body's pieces.

    Filled by the connection's parser callbacks (on the event loop), read by
    :meth:`head` and :meth:`chunks`."""

    __slots__ = (
        "_conn",
        "_error",
        "_waiter",
        "buffered",
        "chunks_in",
        "complete",
        "has_head",
        "head_bytes",
        "headers",
        "read_timeout_s",
        "reason",
        "received",
        "status",
    )

    def __init__(self, conn: _Connection, read_timeout_s: float) -> None:
        self._conn = conn
        self.read_timeout_s = read_timeout_s  # each wait for the upstream's next bytes
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.head_bytes = 0  # received while the final head was not whole
        self.has_head = False
        self.received = False  # any byte of the answer (so it cannot be sent again)
        self.complete = False
        self.chunks_in: deque[bytes] = deque()
        self.buffered = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # --- filled by the connection --------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def fail(self, error: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()

    def body(self, data: bytes) -> None:
        self.chunks_in.append(data)
        self.buffered += len(data)
        if self.buffered > BUFFER_BYTES:
            self._conn.pause()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    # --- read by the forwarder -------------------------------------------------------

    async def _wait(self) -> None:
        """Until the parser has more for the reader, an error, or the read timeout."""
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        # a tunnel may stay quiet for as long as its two ends like
        timer = (
            None if self._conn.tunneling else loop.call_later(self.read_timeout_s, _expire, waiter)
        )
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error

    async def head(self) -> None:
        """Wait for the answer's status and headers."""
        while not self.has_head:
            await self._wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive, until the answer is whole."""
        while True:
            while self.chunks_in:
                data = self.chunks_in.popleft()
                self.buffered -= len(data)
                if self.buffered <= BUFFER_BYTES // 2:
                    self._conn.resume()
                yield data
            if self.complete:
                return
            await self._wait()

    def close(self) -> None:
        """Done with it: a connection whose answer was not read whole is not reused."""
        if not self.complete:
            self._conn.abort()

    # --- a tunnel, after the upstream switched protocols ------------------------------

    @property
    def upgraded(self) -> bool:
        """The upstream switched protocols: :meth:`chunks` gives the tunnel's bytes until
        the upstream closes it, :meth:`send` writes to it."""
        return self._conn.tunneling

    def send(self, data: bytes) -> None:
        """Bytes to the upstream through the tunnel (dropped once it is closed)."""
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def on_writable(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Called as the tunnel's write buffer to the upstream fills past its high-water
        mark and drains again: the sender stops reading its side meanwhile."""
        self._conn.on_pause, self._conn.on_resume = pause, resume


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("upstream: no bytes within the read timeout"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream; one exchange at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.keep = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        # a line ended by LF alone, as aiohttp's client takes it (RFC 9112 2.2 allows it)
        self._parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self._informational = False
        self._feeding = 0  # the length of the read being parsed
        self._paused = False
        self.head_only = False  # its request is a HEAD: the answer ends with its head
        self.upgrading = False  # its request asked to switch to WebSocket
        self.tunneling = False  # and the upstream did: bytes pass as they come
        self.on_pause: Callable[[], None] | None = None  # the tunnel's writer is full
        self.on_resume: Callable[[], None] | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None:  # bytes while idle: not an HTTP/1.1 peer we can reuse
            self.abort()
            return
        answer.received = True
        if self.tunneling:
            answer.body(data)
            return
        try:
            self._feeding = len(data)
            self._parser.feed_data(data)
            if not answer.has_head:  # every byte of it was the head's: bounded as it comes
                answer.head_bytes += len(data)
                if answer.head_bytes > HEAD_BYTES:
                    raise httptools.HttpParserError(f"a head over {HEAD_BYTES} bytes")
        except httptools.HttpParserUpgrade as e:
            if self.upgrading and answer.status == 101:  # the tunnel begins
                self.tunneling = True
                tail = data[e.args[0] :]
                if tail:  # the first bytes of the new protocol, in the same packet
                    answer.body(tail)
                return
            answer.fail(UpstreamError("upstream: switched protocols unasked"))
            self.abort()
        except httptools.HttpParserError as e:
            if not answer.complete:  # (a HEAD's, complete: stopped at its head)
                answer.fail(UpstreamError(f"upstream: malformed answer ({e})"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        answer, self.answer = self.answer, None
        if answer is None or answer.complete:
            return
        if self.tunneling:  # closed by the upstream (or by the proxy, the client gone)
            if exc is None:
                answer.finish()
            else:
                answer.fail(UpstreamError(f"upstream: tunnel broken ({exc})"))
            return
        if answer.has_head and exc is None and self._until_close(answer):
            answer.finish()  # a body delimited by the connection's end: whole
        else:
            why = "before answering" if not answer.has_head else "mid-answer"
            answer.fail(UpstreamError(f"upstream: connection closed {why}"))

    # --- httptools callbacks ---

    def on_status(self, reason: bytes) -> None:
        assert self.answer is not None
        self.answer.reason = text = reason.decode("latin-1")
        if CONTROL.search(text):
            raise httptools.HttpParserError("a control character in the reason phrase")

    def on_header(self, name: bytes, value: bytes) -> None:
        answer = self.answer
        assert answer is not None
        if answer.has_head:  # a trailer field: dropped, as aiohttp's client drops them
            return
        if (
            len(name) == 17
            and name.lower() == b"transfer-encoding"
            and not chunked(value.decode("latin-1"))
        ):
            raise httptools.HttpParserError("a transfer coding but chunked")
        # as aiohttp's client decodes them: bytes that are not UTF-8 pass through
        answer.headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        answer = self.answer
        assert answer is not None
        headers = answer.headers
        if len(headers) > HEAD_FIELDS:
            raise httptools.HttpParserError(f"more than {HEAD_FIELDS} header fields")
        # a head that came in one read: measured only if that read could hold too much
        if answer.head_bytes + self._feeding > HEAD_BYTES:
            if sum(len(k) + len(v) for k, v in headers) > HEAD_BYTES:
                raise httptools.HttpParserError(f"a head over {HEAD_BYTES} bytes")
        status = self._parser.get_status_code()
        if 100 <= status < 200 and not (status == 101 and self.upgrading):
            # 100 Continue, 103 Early Hints: the final head follows
            self._informational = True
            answer.headers = []
            return
        answer.status = status
        answer.has_head = True
        self.keep = self._parser.should_keep_alive()
        answer._wake()
        if self.head_only:
            # a HEAD's answer is its head, whatever length it declares (llhttp, not told
            # the method, would wait for that body). The connection is not reused: an
            # upstream that sends a body anyway (some do; aiohttp's client refuses it, a
            # 502 where nginx relays the head) must not have it read as the next answer.
            self.answer = None
            answer.finish()
            raise _HeadDone  # the parser stops here; data_received closes the connection

    def on_body(self, data: bytes) -> None:
        assert self.answer is not None
        self.answer.body(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self.upgrading and self._parser.get_status_code() == 101:
            return  # the switch: llhttp stops here, data_received takes the tunnel over
        answer, self.answer = self.answer, None
        assert answer is not None
        answer.finish()
        if self.keep and self.transport is not None and not self.upgrading:
            self.resume()
            self.pool.release(self)
        else:
            self.abort()

    # --- helpers ---

    @staticmethod
    def _until_close(answer: Answer) -> bool:
        names = {k.lower() for k, _ in answer.headers}
        return "content-length" not in names and "transfer-encoding" not in names

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.keep = False
        if self.transport is not None:
            self.transport.abort()

    # asyncio's flow control of what the tunnel writes to the upstream

    def pause_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        if self.on_resume is not None:
            self.on_resume()

    def send(self, head: bytes, read_timeout_s: float, head_only: bool = False) -> Answer:
        assert self.transport is not None
        self.head_only = head_only
        self.answer = answer = Answer(self, read_timeout_s)
        self.transport.write(head)
        return answer


class Pool:
    """Keep-alive connections to one ``http://host:port`` upstream, most recently used
    first; a connection goes back to the pool when its answer has been parsed whole.
    An ``https://`` one serves :meth:`upgrade` only (certificates checked against the
    system's authorities, as aiohttp's client does)."""

    def __init__(self, base: str, *, connect_timeout_s: float, read_timeout_s: float) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            raise ValueError(f"an http:// or https://host:port base URL, got {base!r}")
        self.host = parts.hostname
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        self.netloc = parts.netloc.encode("idna")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._idle: list[_Connection] = []
        self._closed = False

    def release(self, conn: _Connection) -> None:
        if self._closed or len(self._idle) >= IDLE_MAX:
            conn.abort()
        else:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.append(conn)

    def forget(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                )
        except TimeoutError:  # an OSError too, but the connect timeout's: a 504 as aiohttp's
            raise
        except OSError as e:
            raise UpstreamError(f"upstream: cannot connect to {self.host}:{self.port}: {e}") from e
        return conn

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        host: str | None = None,
        read_timeout_s: float | None = None,
    ) -> Answer:
        """Send a request without a body; its answer once the head has arrived. The
        caller reads the body from :meth:`Answer.chunks` and calls :meth:`Answer.close`.
        ``host``: its ``Host`` header (the upstream's own by default); ``read_timeout_s``:
        this request's (the pool's by default)."""
        head = self._head(method, target, headers, host)
        timeout_s = self.read_timeout_s if read_timeout_s is None else read_timeout_s
        head_only = method == "HEAD"
        stale = asyncio.get_running_loop().time() - IDLE_S
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_since < stale:  # the most recent: the others are older still
                conn.abort()
                self._drop_idle()
                break
            if conn.transport is None or conn.transport.is_closing():
                continue
            answer = conn.send(head, timeout_s, head_only)
            try:
                await answer.head()
                return answer
            except UpstreamError:
                # closed by the upstream while idle, before any byte of this answer:
                # the request is sent again on a new connection if that is safe
                if answer.received or method not in IDEMPOTENT:
                    raise
            except BaseException:
                answer.close()
                raise
        return await self._exchange(await self._connect(), head, timeout_s, head_only)

    async def upgrade(
        self, target: str, headers: list[tuple[str, str]], host: str | None = None
    ) -> Answer:
        """Send a WebSocket handshake (``GET``; ``headers`` ask for the switch) on a new
        connection; its answer once the head has arrived. :attr:`Answer.upgraded` says
        whether the upstream switched; the caller calls :meth:`Answer.close` either way."""
        head = self._head("GET", target, headers, host)
        conn = await self._connect()
        conn.upgrading = True
        return await self._exchange(conn, head, self.read_timeout_s)

    async def _exchange(
        self, conn: _Connection, head: bytes, read_timeout_s: float, head_only: bool = False
    ) -> Answer:
        answer = conn.send(head, read_timeout_s, head_only)
        try:
            await answer.head()
        except BaseException:
            answer.close()
            raise
        return answer

    def _head(
        self, method: str, target: str, headers: list[tuple[str, str]], host: str | None
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape")]
        netloc = self.netloc if host is None else host.encode("utf-8", "surrogateescape")
        lines.append(b"Host: " + netloc + b"\r\n")
        for name, value in headers:
            lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        if method in ("POST", "PUT", "PATCH"):  # no body, said (as aiohttp's client does)
            lines.append(b"Content-Length: 0\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
            # a line break inside a header would split it in two for the upstream; aiohttp's
            # parser refuses them from clients and the config from alternatives' names
            raise UpstreamError("request head: a header holds a line break; not sent")
        return head

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()

    def close(self) -> None:
        """Close every idle connection; those in use close when their answers end."""
        self._closed = True
        self._drop_idle()

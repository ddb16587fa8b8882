"""An upstream's answer reaches the client as it was sent, and a client's request the
upstream, through either of the proxy's clients (a GET: autoexp's own HTTP/1.1 client; a
POST: aiohttp's): the upstream here is a raw socket server on 127.0.0.1 reading and
writing exact bytes, and so is the client, so what the proxy adds, drops or merges shows."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from autoexp.engine import Engine, ExperimentSpec
from autoexp.proxy.http1 import HEAD_BYTES, HEAD_FIELDS
from autoexp.proxy.routes import ProxySettings
from autoexp.store.memory import MemoryStore
from policies import ThompsonBeta
from tests.autoexp.conftest import Sidecar

SECRET = "f" * 32
ANSWERS = {
    # no Content-Type: a browser sniffs it; aiohttp alone would say octet-stream (download)
    "/untyped": b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n<p>sniff</p>\n",
    # a trailer field stays out of the head (aiohttp's client drops trailers; so does ours)
    "/trailers": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum\r\n\r\n2\r\nok\r\n0\r\nX-Checksum: 1234\r\n\r\n"
    ),
    # 103 Early Hints, then the answer: the answer's head is the one relayed
    "/early": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Final: yes\r\n"
        b"Content-Length: 2\r\n\r\nok"
    ),
    # a 20 KiB Set-Cookie (aiohttp's client took 8,190 bytes a line before: a 502 there)
    "/big": (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: s="
        + b"z" * 20_000
        + b"\r\nContent-Length: 2\r\n\r\nok"
    ),
    # lines ended by LF alone: taken by both clients (RFC 9112 2.2 lets a recipient)
    "/lf": b"HTTP/1.1 200 OK\nContent-Type: text/plain\nContent-Length: 2\n\nok",
    # a control character in a header: refused by both, a 502 (aiohttp's client took it,
    # and its server then refused to write it: a 500 from the proxy, with a traceback)
    "/ctl": b"HTTP/1.1 200 OK\r\nX-Ctl: a\x01b\r\nContent-Length: 2\r\n\r\nok",
    # and with a chunked body, whose framing a failed attempt to write the head left set
    # for the 502 after it (its JSON went out chunked under a Content-Length), or in the
    # reason phrase
    "/ctl-chunked": (
        b"HTTP/1.1 200 OK\r\nX-Ctl: a\x7fb\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    ),
    "/ctl-reason": b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok",
    # a header the upstream's Connection names is hop-by-hop: not relayed
    "/named": (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\n"
        b"X-Public: 2\r\nContent-Length: 2\r\n\r\nok"
    ),
    # a transfer coding but chunked: both clients undid the chunking and passed the gzip
    # bytes on as the body, the coding lost (nginx: a 502); as two fields, the same
    "/te-gzip": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    ),
    "/te-two": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "/te-last": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    # answers to HEAD: the head alone, as it must be; with a body anyway, in the same
    # packet (aiohttp's client, which took HEAD before, refused that: a 502); chunked
    "/head": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: 1\r\n\r\n",
    "/head-body": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Head: 2\r\n\r\nhello",
    "/head-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 3\r\n\r\n",
    # over the caps: the upstream's fault, a 502
    "/huge": (
        b"HTTP/1.1 200 OK\r\nX-Huge: "
        + b"h" * (HEAD_BYTES + 1)
        + b"\r\nContent-Length: 2\r\n\r\nok"
    ),
    "/many": (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"X-F%d: v\r\n" % i for i in range(HEAD_FIELDS + 1))
        + b"Content-Length: 2\r\n\r\nok"
    ),
}


@pytest.fixture
def raw_upstream() -> Iterator[str]:
    """Answers each request with ``ANSWERS[path]``, byte for byte, keeping the connection
    open for the next (the proxy pools it) until the peer closes."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while not stop.is_set():
                line = f.readline()
                if not line:
                    return
                length, head = 0, [line]
                while (h := f.readline()) not in (b"\r\n", b""):
                    head.append(h)
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":")[1])
                body = f.read(length)
                path = line.split()[1].decode()
                if path.startswith(("/echo", "//echo")):  # the request as received
                    got = b"".join(head) + b"\r\n" + body
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(got))
                    conn.sendall(got)
                    continue
                if path == "/endless":  # a head that never ends, in 4 KiB pieces
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Endless: ")
                    with contextlib.suppress(OSError):  # the proxy gave up on it
                        for _ in range(64):  # 256 KiB at most
                            conn.sendall(b"e" * 4096)
                            time.sleep(0.002)
                    stop.wait(10)  # and the connection open, as a stuck upstream keeps it
                    return
                conn.sendall(ANSWERS[path])

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


@pytest.fixture
def side(raw_upstream: str) -> Iterator[Sidecar]:
    spec = ExperimentSpec(name="e", alternatives=("v1", "v2"), policy=ThompsonBeta())
    engine = Engine(MemoryStore(), [spec], secret=SECRET, seed=1)
    settings = ProxySettings(upstream=raw_upstream, connect_timeout_s=1.0, read_timeout_s=5.0)
    sidecar = Sidecar(engine, proxy=settings, routes=[])
    try:
        yield sidecar
    finally:
        sidecar.close()


def exchange(
    port: int,
    method: str,
    path: str,
    extra: str = "",
    connection: str = "close",
    body: bytes | None = None,
) -> tuple[int, dict[str, list[str]], bytes]:
    """One request on a new connection (closed after it): status, head, raw body."""
    if body is None:
        body = b"x" if method == "POST" else b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: app\r\nConnection: {connection}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    if method == "GET":
        request = request.replace(b"Content-Length: 0\r\n", b"")
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        while chunk := s.recv(65536):
            got += chunk
    head, _, raw = got.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.lower(), []).append(value.strip())
    return int(status_line.split()[1]), headers, raw


@pytest.mark.parametrize("method", ["GET", "POST"])  # autoexp's client; aiohttp's
def test_the_answer_is_relayed_without_a_type_a_trailer_or_a_hint_added(
    side: Sidecar, method: str
) -> None:
    status, headers, body = exchange(side.port, method, "/untyped")
    assert status == 200 and body == b"<p>sniff</p>\n"
    assert "content-type" not in headers, headers

    status, headers, body = exchange(side.port, method, "/trailers")
    assert status == 200 and "x-checksum" not in headers, headers
    assert body == b"2\r\nok\r\n0\r\n\r\n"  # re-chunked by the proxy, without the trailer

    status, headers, body = exchange(side.port, method, "/early")
    assert status == 200 and body == b"ok"
    assert headers["x-final"] == ["yes"] and "link" not in headers


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_both_clients_take_the_same_heads_and_refuse_the_same_heads(
    side: Sidecar, method: str
) -> None:
    status, headers, body = exchange(side.port, method, "/big")
    assert status == 200 and body == b"ok"
    assert headers["set-cookie"] == ["s=" + "z" * 20_000]
    status, headers, body = exchange(side.port, method, "/lf")
    assert status == 200 and body == b"ok" and headers["content-type"] == ["text/plain"]
    # a head over the cap whether it comes in one read or in many (the 504 of the read
    # timeout, 5 s, if the proxy waited for a head that never ends), one with a control
    # character, or in a transfer coding the proxy does not undo
    refused = ("/huge", "/many", "/endless", "/ctl", "/ctl-chunked", "/ctl-reason")
    for path in (*refused, "/te-gzip", "/te-two", "/te-last"):
        status, headers, body = exchange(side.port, method, path)
        assert status == 502, (path, status, body[:200])
        assert int(headers["content-length"][0]) == len(body) and json.loads(body)["error"]
    # the proxy still answers: the next request after a refused head is relayed
    assert exchange(side.port, method, "/early")[0] == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_headers_named_by_connection_are_hop_by_hop_both_ways(side: Sidecar, method: str) -> None:
    # RFC 9110 7.6.1: a proxy removes the headers a Connection header lists, as it removes
    # Connection itself; other headers pass
    _, _, body = exchange(
        side.port, method, "/echo", "X-Secret: s\r\nX-Kept: k\r\n", "close, X-Secret"
    )
    upstream_saw = body.decode().lower()
    assert "x-secret" not in upstream_saw and "x-kept: k" in upstream_saw, upstream_saw
    status, headers, body = exchange(side.port, method, "/named")
    assert status == 200 and body == b"ok"
    assert "x-internal" not in headers and headers["x-public"] == ["2"], headers


def test_a_request_with_a_body_reaches_the_upstream_with_only_the_clients_headers(
    side: Sidecar,
) -> None:
    # aiohttp's client, which sends requests with bodies, adds Accept, User-Agent, a
    # Content-Type and Accept-Encoding: gzip, deflate to what it is given; a compressing
    # upstream then answered gzip to a client that never said it could read it.
    _, _, body = exchange(side.port, "POST", "/echo")
    upstream_saw = body.decode().lower()
    for name in ("accept", "accept-encoding", "user-agent", "content-type"):
        assert f"\r\n{name}:" not in upstream_saw, upstream_saw
    # the client's own pass as they were
    _, _, body = exchange(side.port, "POST", "/echo", "Accept-Encoding: br\r\nUser-Agent: me/1\r\n")
    upstream_saw = body.decode().lower()
    assert "accept-encoding: br\r\n" in upstream_saw and "user-agent: me/1\r\n" in upstream_saw


def test_a_compressed_request_body_reaches_the_upstream_as_the_client_sent_it(
    side: Sidecar,
) -> None:
    # aiohttp's server decompressed a gzip body, and the proxy sent it on labelled gzip
    # still, cut to the compressed length: the upstream got 43 bytes of plain text
    # where the client sent 43 bytes of gzip
    sent = gzip.compress(b"hello world " * 100)
    _, _, echoed = exchange(side.port, "POST", "/echo", "Content-Encoding: gzip\r\n", body=sent)
    head, _, body = echoed.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert body == sent and gzip.decompress(body) == b"hello world " * 100


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_the_request_target_reaches_the_upstream_as_the_client_wrote_it(
    side: Sidecar, method: str
) -> None:
    # aiohttp's client (a POST here) resolved dot segments and re-quoted: the upstream got
    # /x for /echo/%2e%2e/x (another path than the one routes matched), ~ for %7e and
    # %25zz for %zz; autoexp's client dropped an empty query. nginx passes them as they
    # came, and so does the proxy now.
    kept = [
        "/echo/../x",
        "/echo/./x",
        "/echo/%2e%2e/x",
        "/echo/a/..",
        "//echo",
        "/echo%7e",
        "/echo%2Fx",
        "/echo%70",
        "/echo;v=1",
        "/echo?q=%zz",
        "/echo?q=a+b&&c=%2B",
        "/echo?=&=",
    ]
    if method == "GET":
        kept.append("/echo?")  # aiohttp's client (yarl) drops an empty query: POST /echo
    for target in kept:
        status, _, body = exchange(side.port, method, target)
        assert status == 200 and body.startswith(f"{method} {target} HTTP/1.1\r\n".encode()), (
            target,
            body[:80],
        )
    # an absolute-form target goes on in origin form; a fragment (no browser sends one)
    # stays out
    for target, sent in [("http://app/echo?a=1", "/echo?a=1"), ("/echo?b=2#top", "/echo?b=2")]:
        status, _, body = exchange(side.port, method, target)
        assert status == 200 and body.startswith(f"{method} {sent} HTTP/1.1\r\n".encode()), (
            target,
            body[:80],
        )


def test_a_heads_answer_ends_at_its_head_and_a_body_sent_anyway_is_dropped(
    side: Sidecar,
) -> None:
    # A HEAD's answer has no body, whatever its head declares. Each is relayed, its
    # Content-Length kept and no body; a proxy that waited for the declared body would
    # answer the read timeout's 504 after 5 s, and aiohttp's client, which took HEAD
    # before, answered the one with a body in the same packet a 502 (nginx relays it).
    # The connection each came on is not reused, so a body sent anyway is never read as
    # the next answer: on a keep-alive connection of the client's, HEADs and GETs in turn
    # each get their own answer.
    for n, path in enumerate(("/head", "/head-body", "/head-chunked"), start=1):
        status, headers, body = exchange(side.port, "HEAD", path, connection="close")
        assert (status, body, headers["x-head"]) == (200, b"", [str(n)]), (path, headers)
        if n < 3:
            assert headers["content-length"] == ["5"]
    answers = b""
    with socket.create_connection(("127.0.0.1", side.port), timeout=10) as s:
        for path in ("/head-body", "/early", "/head-body", "/early"):
            method = "HEAD" if path.startswith("/head") else "GET"
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: app\r\n\r\n".encode())
            want = b"X-Head: 2" if method == "HEAD" else b"X-Final: yes"
            while want not in answers:
                chunk = s.recv(65536)
                assert chunk, answers
                answers += chunk
            answers = answers.partition(want)[2]
            if method == "GET":  # its own body follows, then nothing else
                while not answers.endswith(b"ok"):
                    answers += s.recv(65536)
                assert answers.endswith(b"\r\n\r\nok") and b"hello" not in answers
                answers = b""

"""Tunnels (CONNECT and SOCKS5) move bytes intact, both ways, in bulk.

A raw TCP upstream on 127.0.0.1 echoes, swallows or produces random bytes;
the proxy allows only that address and port.  The checks compare every
byte, so a buffer handed back to the pool too early, or mixed up between
tunnels, shows as corrupted data.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from srt_kernel.proxy import http
from tests.conftest_proxy import (
    TIMEOUT,
    Proxy,
    policy,
    read_response,
    recv_exact,
    start_proxy,
)

MIB = 1 << 20


class _Handler(socketserver.BaseRequestHandler):
    """'E': echo to EOF; 'U': read to EOF, reply SHA-256; 'D'+n+seed: send n."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        mode = sock.recv(1)
        if mode == b"E":
            while data := sock.recv(MIB):
                sock.sendall(data)
        elif mode == b"U":
            digest = hashlib.sha256()
            while data := sock.recv(MIB):
                digest.update(data)
            sock.sendall(digest.digest())
        elif mode == b"D":
            head = recv_exact(sock, 16)
            count, seed = struct.unpack("!QQ", head)
            sock.sendall(_pattern(count, seed))
        sock.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _pattern(count: int, seed: int) -> bytes:
    """``count`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(count)


def _recv_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while piece := sock.recv(MIB):
        chunks.append(piece)
    return b"".join(chunks)


@pytest.fixture
def raw_upstream() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def tunnel_proxy(raw_upstream: int) -> Iterator[Proxy]:
    p = start_proxy(policy(allowed=[f"127.0.0.1:{raw_upstream}"]))
    yield p
    p.server.stop()


def open_tunnel(proxy: Proxy, port: int, kind: str) -> socket.socket:
    """A socket tunnelled to 127.0.0.1:``port`` by CONNECT or SOCKS5."""
    if kind == "connect":
        sock = socket.create_connection(
            ("127.0.0.1", proxy.server.http_port), timeout=TIMEOUT
        )
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
        status, _headers, _body = read_response(sock)
        assert status == 200
        return sock
    sock = socket.create_connection(
        ("127.0.0.1", proxy.server.socks_port), timeout=TIMEOUT
    )
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(
        b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big")
    )
    assert recv_exact(sock, 10)[:2] == b"\x05\x00"
    return sock


def echo_through(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` from a thread while reading the echo; then half-close."""
    failure: list[BaseException] = []

    def send() -> None:
        try:
            sock.sendall(b"E" + data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            failure.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        echoed = _recv_to_eof(sock)
    finally:
        sender.join(TIMEOUT)
    assert not failure
    return echoed


@pytest.fixture(params=["connect", "socks"])
def tunnel(
    request: pytest.FixtureRequest, tunnel_proxy: Proxy, raw_upstream: int
) -> Iterator[socket.socket]:
    """A socket tunnelled to the raw upstream, by CONNECT and by SOCKS5."""
    with open_tunnel(tunnel_proxy, raw_upstream, request.param) as sock:
        yield sock


def test_bulk_echo_both_ways_at_once(tunnel: socket.socket) -> None:
    data = os.urandom(24 * MIB + 12345)
    echoed = echo_through(tunnel, data)
    assert len(echoed) == len(data)
    assert echoed == data


def test_upload_then_half_close(tunnel: socket.socket) -> None:
    data = os.urandom(40 * MIB + 1)
    tunnel.sendall(b"U" + data)
    # The reply comes back over the half that is still open.
    tunnel.shutdown(socket.SHUT_WR)
    assert recv_exact(tunnel, 32) == hashlib.sha256(data).digest()
    assert tunnel.recv(1) == b""


def test_download_to_a_slow_reader(tunnel: socket.socket) -> None:
    """The client stalls first, so the proxy's writes block part way."""
    count, seed = 32 * MIB + 7, 3
    tunnel.sendall(b"D" + struct.pack("!QQ", count, seed))
    time.sleep(0.5)
    received = bytearray()
    while len(received) < 4 * MIB:
        received += tunnel.recv(64 * 1024)
        time.sleep(0.001)
    received += _recv_to_eof(tunnel)
    assert bytes(received) == _pattern(count, seed)


def test_many_tunnels_keep_their_own_bytes(
    tunnel_proxy: Proxy, raw_upstream: int
) -> None:
    payloads = [os.urandom(2 * MIB + n) for n in range(16)]
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        kind = "connect" if index % 2 else "socks"
        try:
            with open_tunnel(tunnel_proxy, raw_upstream, kind) as sock:
                results[index] = echo_through(sock, payloads[index])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors
    for index, payload in enumerate(payloads):
        assert results[index] == payload


class _Endless:
    """A socket stand-in that always has bytes to read and room to write."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.written = 0

    def recv_into(self, buffer: Any) -> int:
        count = min(len(buffer), self.left)
        self.left -= count
        return count

    def send(self, data: Any) -> int:
        self.written += len(data)
        return len(data)

    def shutdown(self, how: int) -> None:
        pass

    def gettimeout(self) -> float:
        return 0.0


def test_a_pump_that_never_waits_still_yields_to_the_loop() -> None:
    total = 16 * http.TUNNEL_BUFFER_MAX
    end = _Endless(total)
    progress_when_others_ran: list[int] = []

    async def other() -> None:
        while end.written < total:
            progress_when_others_ran.append(end.written)
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(
            http._pump(end, end),  # type: ignore[arg-type]
            other(),
        )

    asyncio.run(main())
    assert end.written == total
    # The other task ran many times while the pump was part way through.
    assert len([p for p in progress_when_others_ran if 0 < p < total]) >= 8


def test_buffer_pool_keeps_at_most_its_limit() -> None:
    pool = http._BufferPool(limit=3 * 1024)
    first, second = pool.take(1024), pool.take(1024)
    assert len(first) == len(second) == 1024 and first is not second
    pool.give(first)
    pool.give(second)
    assert pool.take(1024) in (first, second)
    pool.give(bytearray(2048))
    pool.give(bytearray(2048))  # over the limit: dropped
    kept = pool.take(2048)
    assert pool.take(2048) is not kept

"""The SOCKS5 proxy over real sockets, with a raw client (RFC 1928 bytes)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from tests.conftest_proxy import (
    TIMEOUT,
    Proxy,
    Upstream,
    other_upstream,
    policy,
    proxy,
    read_response,
    recv_exact,
    seen_connections,
    start_proxy,
    start_upstream,
    upstream,
)

__all__ = ["other_upstream", "proxy", "upstream"]  # fixtures used by name


def socks_request(
    proxy_port: int, atyp: int, address: bytes, port: int, command: int = 1
) -> tuple[int, socket.socket]:
    """Greet, send one request; return the reply code and the socket."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(bytes([5, command, 0, atyp]) + address + struct.pack("!H", port))
    head = recv_exact(sock, 4)
    assert head[0] == 5 and head[2] == 0
    size = {1: 4, 4: 16}[head[3]]
    recv_exact(sock, size + 2)
    return head[1], sock


def domain(name: str) -> bytes:
    raw = name.encode()
    return bytes([len(raw)]) + raw


def get_through(sock: socket.socket) -> int:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return read_response(sock)[0]


@pytest.mark.parametrize(
    ("atyp", "address", "code"),
    [
        # domain names, judged like HTTP hosts
        (3, domain("allowed.test"), 0x00),
        (3, domain("A.Wild.TEST."), 0x00),
        (3, domain("other.test"), 0x02),
        (3, domain("deny.wild.test"), 0x02),
        (3, domain("wild.test"), 0x02),
        # names spelling an address are addresses
        (3, domain("2130706433"), 0x00),
        # malformed names: refused before any lookup
        (3, domain("a\x00b.test"), 0x02),
        (3, domain("a b.test"), 0x02),
        (3, b"\x04\xff\xfe\xfd\xfc", 0x02),
        # a name that is allowed but has no address
        (3, domain("nowhere.wild.test"), 0x04),
        # IPv4: the listed loopback address on its port
        (1, ipaddress.IPv4Address("127.0.0.1").packed, 0x00),
        (1, ipaddress.IPv4Address("127.0.0.2").packed, 0x02),
        # IPv6 literals: mapped IPv4 folded, others refused unless listed
        (4, ipaddress.IPv6Address("::ffff:127.0.0.1").packed, 0x00),
        (4, ipaddress.IPv6Address("::1").packed, 0x02),
        (4, ipaddress.IPv6Address("fd00:ec2::254").packed, 0x02),
    ],
)
def test_connect(
    proxy: Proxy, upstream: Upstream, atyp: int, address: bytes, code: int
) -> None:
    reply, sock = socks_request(proxy.server.socks_port, atyp, address, upstream.port)
    with sock:
        assert reply == code
        if code == 0:
            assert get_through(sock) == 200
    if code == 0:
        assert seen_connections(upstream.recorder, 1) == 1
    else:
        assert len(upstream.recorder.connections) == 0
    event = proxy.events[-1]
    assert (event.protocol, event.port) == ("socks5", upstream.port)
    assert event.decision == ("allow" if code == 0 else "deny")


def test_denied_name_upstream_saw_nothing(
    proxy: Proxy, other_upstream: Upstream
) -> None:
    for name in ("other.test", "allowed.test"):
        reply, sock = socks_request(
            proxy.server.socks_port, 3, domain(name), other_upstream.port
        )
        sock.close()
        assert reply == 0x02
    assert other_upstream.recorder.connections == []
    assert proxy.events[-1].rule == "resolved to 127.0.0.1 (loopback)"


@pytest.mark.parametrize(
    ("command", "name"),
    [
        # BIND and UDP ASSOCIATE are refused with "command not supported"
        (2, "BIND"),
        (3, "UDP ASSOCIATE"),
        (9, "command 9"),
    ],
)
def test_other_commands_refused(
    proxy: Proxy, upstream: Upstream, command: int, name: str
) -> None:
    reply, sock = socks_request(
        proxy.server.socks_port, 3, domain("allowed.test"), upstream.port, command
    )
    sock.close()
    assert reply == 0x07
    assert proxy.events[-1].rule == f"SOCKS5 {name} is not supported"
    assert upstream.recorder.connections == []


def test_unknown_address_type_refused(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.server.socks_port)) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x09\x00\x50")
        assert recv_exact(sock, 2) == b"\x05\x08"


def test_no_acceptable_method(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.server.socks_port)) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"\x05\x01\x02")
        assert recv_exact(sock, 2) == b"\x05\xff"
        assert sock.recv(1) == b""


@pytest.mark.parametrize(
    "garbage",
    [
        # not SOCKS5 at all, truncated, wrong version in the request
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",
        b"\x05",
        b"\x05\x01\x00\x04\x01\x00\x03",
    ],
)
def test_garbage_closes_and_proxy_keeps_serving(
    proxy: Proxy, upstream: Upstream, garbage: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.server.socks_port)) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1024):
            pass
    reply, sock = socks_request(
        proxy.server.socks_port, 3, domain("allowed.test"), upstream.port
    )
    with sock:
        assert reply == 0
    assert seen_connections(upstream.recorder, 1) == 1


def test_connection_refused_reply(proxy: Proxy) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy.server.set_policy(policy(allowed=[f"127.0.0.1:{closed_port}"]))
    reply, sock = socks_request(
        proxy.server.socks_port, 1, bytes([127, 0, 0, 1]), closed_port
    )
    sock.close()
    assert reply == 0x05


def test_ipv6_connect(tmp_path: Path) -> None:
    try:
        up6 = start_upstream(tmp_path, v6=True)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    p = start_proxy(policy(allowed=[f"[::1]:{up6.port}"]))
    try:
        reply, sock = socks_request(
            p.server.socks_port, 4, ipaddress.IPv6Address("::1").packed, up6.port
        )
        with sock:
            assert reply == 0
            assert get_through(sock) == 200
        reply, sock = socks_request(
            p.server.socks_port, 4, ipaddress.IPv6Address("::1").packed, up6.port + 1
        )
        sock.close()
        assert reply == 0x02
    finally:
        p.server.stop()
        up6.server.shutdown()
        up6.server.server_close()

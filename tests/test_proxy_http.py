"""The HTTP proxy over real sockets: CONNECT, absolute-form, refusals, audit."""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from srt_kernel.audit import AuditLog
from srt_kernel.errors import ProxyError
from srt_kernel.hosts import parse_host
from srt_kernel.proxy.decision import choose_address
from srt_kernel.proxy.resolver import StaticResolver
from srt_kernel.proxy.server import ProxyServer
from tests.conftest_proxy import (
    NAMES,
    TIMEOUT,
    Proxy,
    Upstream,
    other_upstream,
    policy,
    proxy,
    raw_exchange,
    read_response,
    standard_policy,
    start_proxy,
    start_upstream,
    upstream,
)

__all__ = ["other_upstream", "proxy", "upstream"]  # fixtures used by name

MARKER = "blocked-by-srt-kernel"


def http_get(
    proxy_port: int, url: str, extra: str = ""
) -> tuple[int, dict[str, str], bytes]:
    request = (
        f"GET {url} HTTP/1.1\r\nHost: ignored.test\r\n{extra}Connection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        return read_response(sock)


def connect(
    proxy_port: int, target: str
) -> tuple[int, dict[str, str], bytes, socket.socket]:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    status, headers, body = read_response(sock)
    return status, headers, body, sock


def tunnel_get(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.sendall(b"GET /tunnelled HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return read_response(sock)


# -- N2, N3, N4, N7: names through plain HTTP and CONNECT ---------------------


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        # exact allow, and a name not listed
        ("allowed.test", True),
        ("ALLOWED.test.", True),
        ("other.test", False),
        # wildcards: strictly under the suffix, any case
        ("a.wild.test", True),
        ("A.B.WILD.test", True),
        ("wild.test", False),
        ("evilwild.test", False),
        ("wild.test.evil.test", False),
        # a deny entry beats the wildcard allow
        ("deny.wild.test", False),
    ],
)
@pytest.mark.parametrize("method", ["http", "connect"])
def test_names(
    proxy: Proxy, upstream: Upstream, name: str, allowed: bool, method: str
) -> None:
    target = f"{name}:{upstream.port}"
    if method == "http":
        status, headers, body = http_get(
            proxy.server.http_port, f"http://{target}/page"
        )
    else:
        status, headers, body, sock = connect(proxy.server.http_port, target)
        if allowed:
            with sock:
                assert tunnel_get(sock)[0] == 200
        sock.close()

    if allowed:
        assert status == 200
        assert len(upstream.recorder.connections) == 1
    else:
        assert status == 403
        assert headers["x-proxy-error"] == MARKER
        text = body.decode()
        assert f"port {upstream.port}" in text
        assert str(parse_host(name)) in text
        assert "network." in text
        assert upstream.recorder.connections == []
    event = proxy.events[-1]
    assert (event.host, event.port) == (str(parse_host(name)), upstream.port)
    assert event.decision == ("allow" if allowed else "deny")
    assert event.protocol == method


def test_denied_host_upstream_saw_nothing(
    proxy: Proxy, other_upstream: Upstream
) -> None:
    status, headers, body = http_get(
        proxy.server.http_port, other_upstream.url("other.test")
    )
    assert (status, headers["x-proxy-error"]) == (403, MARKER)
    assert body.decode() == (
        f"srt-kernel blocked the connection to other.test port {other_upstream.port}"
        ": not in allowedDomains. To allow it, add 'other.test' to "
        "network.allowedDomains.\n"
    )
    assert other_upstream.recorder.connections == []


def test_port_scoped_entry(proxy: Proxy) -> None:
    # port.test is allowed on 443 only: port 22 is refused by the name rule.
    status, _, body = http_get(proxy.server.http_port, "http://port.test:22/")
    assert status == 403
    assert "allowedDomains allows port.test only on port 443" in body.decode()
    # On 443 the name rule passes; its loopback address is what refuses it.
    status, _, body, sock = connect(proxy.server.http_port, "port.test:443")
    sock.close()
    assert status == 403
    assert "resolved to 127.0.0.1 (loopback)" in body.decode()


# -- N5, N6: IP literals and names that resolve to special addresses -----------


@pytest.mark.parametrize(
    ("name", "reason", "literal"),
    [
        # names resolving to loopback, unspecified, mapped loopback
        ("zero.test", "resolved to 0.0.0.0 (unspecified)", "0.0.0.0"),
        ("six.test", "resolved to ::1 (loopback)", "[::1]"),
        ("mapped.test", "resolved to 127.0.0.1 (loopback)", "127.0.0.1"),
        ("allowed.test", "resolved to 127.0.0.1 (loopback)", "127.0.0.1"),
    ],
)
@pytest.mark.parametrize("method", ["http", "connect"])
def test_name_resolving_to_local_refused_on_unlisted_port(
    proxy: Proxy,
    other_upstream: Upstream,
    name: str,
    reason: str,
    literal: str,
    method: str,
) -> None:
    target = f"{name}:{other_upstream.port}"
    if method == "http":
        status, headers, body = http_get(proxy.server.http_port, f"http://{target}/")
    else:
        status, headers, body, sock = connect(proxy.server.http_port, target)
        sock.close()
    assert (status, headers["x-proxy-error"]) == (403, MARKER)
    assert reason in body.decode()
    assert f"add '{literal}:{other_upstream.port}'" in body.decode()
    assert other_upstream.recorder.connections == []


def test_allowed_name_on_listed_loopback_port_works(
    proxy: Proxy, upstream: Upstream
) -> None:
    # mapped.test answers ::ffff:127.0.0.1, folded to the listed 127.0.0.1:PA.
    for name in ("allowed.test", "mapped.test"):
        status, _, _ = http_get(proxy.server.http_port, upstream.url(name))
        assert status == 200
    assert len(upstream.recorder.connections) == 2


def test_metadata_address_refused(proxy: Proxy) -> None:
    net = policy(allowed=["meta.test"])
    host = parse_host("meta.test")
    # Precondition, checked without IO: the core refuses it before any dial.
    decision = choose_address(net, host, 80, [ipaddress.ip_address(NAMES["meta.test"])])
    assert not decision.allowed
    status, headers, body = http_get(proxy.server.http_port, "http://meta.test/")
    assert (status, headers["x-proxy-error"]) == (403, MARKER)
    assert "resolved to 169.254.169.254 (cloud metadata service)" in body.decode()
    assert proxy.events[-1].address == "169.254.169.254"


@pytest.mark.parametrize(
    ("literal", "rule"),
    [
        # every spelling of 127.0.0.1, listed only with another port
        ("127.0.0.1", "allowedDomains allows 127.0.0.1 only on port"),
        ("2130706433", "allowedDomains allows 127.0.0.1 only on port"),
        ("0x7f000001", "allowedDomains allows 127.0.0.1 only on port"),
        ("0177.0.0.1", "allowedDomains allows 127.0.0.1 only on port"),
        ("127.1", "allowedDomains allows 127.0.0.1 only on port"),
        ("[::ffff:127.0.0.1]", "allowedDomains allows 127.0.0.1 only on port"),
        # other local literals, not listed at all
        ("[::1]", "not in allowedDomains"),
        ("0.0.0.0", "not in allowedDomains"),
        ("127.0.0.2", "not in allowedDomains"),
    ],
)
@pytest.mark.parametrize("method", ["http", "connect"])
def test_unlisted_ip_literal_refused(
    proxy: Proxy, other_upstream: Upstream, literal: str, rule: str, method: str
) -> None:
    target = f"{literal}:{other_upstream.port}"
    if method == "http":
        status, headers, body = http_get(proxy.server.http_port, f"http://{target}/")
    else:
        status, headers, body, sock = connect(proxy.server.http_port, target)
        sock.close()
    assert (status, headers["x-proxy-error"]) == (403, MARKER)
    assert rule in body.decode()
    assert other_upstream.recorder.connections == []


@pytest.mark.parametrize(
    "literal", ["127.0.0.1", "2130706433", "0x7f.1", "[::ffff:7f00:1]"]
)
def test_listed_ip_literal_allowed_in_any_spelling(
    proxy: Proxy, upstream: Upstream, literal: str
) -> None:
    status, _, _, sock = connect(proxy.server.http_port, f"{literal}:{upstream.port}")
    with sock:
        assert status == 200
        assert tunnel_get(sock)[0] == 200


def test_ipv6_connect(tmp_path: Path) -> None:
    try:
        up6 = start_upstream(tmp_path, v6=True)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    p = start_proxy(policy(allowed=[f"[::1]:{up6.port}"]))
    try:
        status, _, _, sock = connect(p.server.http_port, f"[::1]:{up6.port}")
        with sock:
            assert status == 200
            assert tunnel_get(sock)[0] == 200
        status, headers, _, sock = connect(p.server.http_port, f"[::1]:{up6.port + 1}")
        sock.close()
        assert (status, headers["x-proxy-error"]) == (403, MARKER)
        assert [e.decision for e in p.events] == ["allow", "deny"]
    finally:
        p.server.stop()
        up6.server.shutdown()
        up6.server.server_close()


# -- N9: malformed and origin-form requests -------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        # origin-form and asterisk-form sent to a proxy
        b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
        # broken request lines
        b"GET http://allowed.test/\r\n\r\n",
        b"GET  http://allowed.test/ HTTP/1.1\r\n\r\n",
        b"GET http://allowed.test/ HTTP/9.9\r\n\r\n",
        b"G\x00T http://allowed.test/ HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        # broken headers
        b"GET http://allowed.test/ HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET http://allowed.test/ HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET http://allowed.test/ HTTP/1.1\r\n folded\r\n\r\n",
        # bad targets and hosts
        b"CONNECT allowed.test HTTP/1.1\r\n\r\n",
        b"CONNECT allowed.test:0 HTTP/1.1\r\n\r\n",
        b"CONNECT allowed.test:99999 HTTP/1.1\r\n\r\n",
        b"CONNECT a%00b.test:80 HTTP/1.1\r\n\r\n",
        b"CONNECT [::1:80 HTTP/1.1\r\n\r\n",
        b"GET http://user:pw@allowed.test/ HTTP/1.1\r\n\r\n",
        b"GET http://allowed..test/ HTTP/1.1\r\n\r\n",
        b"GET http:/// HTTP/1.1\r\n\r\n",
        # ambiguous body framing (request smuggling)
        b"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 3\r\n"
        b"Content-Length: 4\r\n\r\nabcd",
        b"POST http://allowed.test/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        # a head too large
        b"GET http://allowed.test/ HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    ],
)
def test_malformed_gets_400_and_proxy_keeps_serving(
    proxy: Proxy, upstream: Upstream, request_bytes: bytes
) -> None:
    answer = raw_exchange(proxy.server.http_port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert upstream.recorder.connections == []
    status, _, _ = http_get(proxy.server.http_port, upstream.url("allowed.test"))
    assert status == 200


def test_client_closing_mid_head_does_not_hurt(
    proxy: Proxy, upstream: Upstream
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.server.http_port)) as sock:
        sock.sendall(b"GET http://allowed.test/ HTTP/1.1\r\nHo")
    assert http_get(proxy.server.http_port, upstream.url("allowed.test"))[0] == 200


# -- N10: Host header, hop-by-hop headers --------------------------------------


def test_host_header_rewritten_to_target(
    proxy: Proxy, upstream: Upstream, other_upstream: Upstream
) -> None:
    status, _, body = http_get(
        proxy.server.http_port,
        upstream.url("allowed.test", "/echo"),
        extra=f"Host: other.test:{other_upstream.port}\r\n",
    )
    assert status == 200
    seen = dict(json.loads(body)["headers"])
    assert seen["Host"] == f"allowed.test:{upstream.port}"
    assert other_upstream.recorder.connections == []


def test_mismatching_host_never_reaches_header_host(
    proxy: Proxy, other_upstream: Upstream, upstream: Upstream
) -> None:
    status, headers, _ = http_get(
        proxy.server.http_port,
        other_upstream.url("other.test"),
        extra=f"Host: allowed.test:{upstream.port}\r\n",
    )
    assert (status, headers["x-proxy-error"]) == (403, MARKER)
    assert other_upstream.recorder.connections == []
    assert upstream.recorder.connections == []


def test_hop_by_hop_and_proxy_headers_stripped(
    proxy: Proxy, upstream: Upstream
) -> None:
    extra = (
        "Proxy-Authorization: Basic c2VjcmV0\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Proxy-Anything: x\r\n"
        "Keep-Alive: timeout=5\r\n"
        "TE: trailers\r\n"
        "Upgrade: websocket\r\n"
        "Connection: X-Secret-Hop\r\n"
        "X-Secret-Hop: 1\r\n"
        "X-End-To-End: kept\r\n"
    )
    status, headers, body = http_get(
        proxy.server.http_port, upstream.url("allowed.test", "/echo?q=1"), extra
    )
    assert status == 200
    echoed = json.loads(body)
    names = {k.lower() for k, _ in echoed["headers"]}
    assert names == {"host", "x-end-to-end", "connection"}
    assert dict(echoed["headers"])["Connection"] == "close"
    assert echoed["path"] == "/echo?q=1"
    assert headers["x-upstream"] == "yes"


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        # Content-Length and chunked request bodies reach the upstream intact
        ("Content-Length: 11\r\n", b"hello world"),
        ("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    ],
)
def test_post_bodies(
    proxy: Proxy, upstream: Upstream, framing: str, body: bytes
) -> None:
    request = (
        f"POST {upstream.url('allowed.test', '/echo')} HTTP/1.1\r\n"
        f"Host: x\r\n{framing}Connection: close\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", proxy.server.http_port)) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(request)
        status, _, answer = read_response(sock)
    assert status == 200
    assert json.loads(answer)["body"] == "hello world"


def test_chunked_response_relayed(proxy: Proxy, upstream: Upstream) -> None:
    answer = raw_exchange(
        proxy.server.http_port,
        f"GET {upstream.url('allowed.test', '/chunked')} HTTP/1.1\r\n"
        "Host: x\r\nConnection: close\r\n\r\n".encode(),
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n"


# -- keep-alive, set_policy, upstream failures -----------------------------------


def test_keep_alive_judges_each_request(
    proxy: Proxy, upstream: Upstream, other_upstream: Upstream
) -> None:
    with socket.create_connection(("127.0.0.1", proxy.server.http_port)) as sock:
        sock.settimeout(TIMEOUT)
        statuses = []
        for url in (
            upstream.url("allowed.test"),
            other_upstream.url("other.test"),
            upstream.url("a.wild.test"),
        ):
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status, headers, _ = read_response(sock)
            statuses.append((status, headers.get("x-proxy-error")))
    assert statuses == [(200, None), (403, MARKER), (200, None)]
    assert other_upstream.recorder.connections == []
    assert [e.decision for e in proxy.events] == ["allow", "deny", "allow"]


def test_set_policy_applies_to_next_request(proxy: Proxy, upstream: Upstream) -> None:
    with socket.create_connection(("127.0.0.1", proxy.server.http_port)) as sock:
        sock.settimeout(TIMEOUT)
        request = f"GET {upstream.url('allowed.test')} HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request.encode())
        assert read_response(sock)[0] == 200
        proxy.server.set_policy(
            policy(allowed=[f"127.0.0.1:{upstream.port}"], denied=["allowed.test"])
        )
        proxy.server.set_label("cell 2")
        sock.sendall(request.encode())
        status, headers, body = read_response(sock)
    assert (status, headers["x-proxy-error"]) == (403, MARKER)
    assert "deniedDomains entry 'allowed.test'" in body.decode()
    assert proxy.events[-1].label == "cell 2"


def test_upstream_refused_gives_502(proxy: Proxy) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    proxy.server.set_policy(
        policy(allowed=["allowed.test", f"127.0.0.1:{closed_port}"])
    )
    status, headers, body = http_get(
        proxy.server.http_port, f"http://allowed.test:{closed_port}/"
    )
    assert (status, headers["x-proxy-error"]) == (502, "upstream-failed-srt-kernel")
    assert "Connection refused" in body.decode()


def test_lookup_failure_gives_502(proxy: Proxy) -> None:
    status, headers, body = http_get(
        proxy.server.http_port, "http://nowhere.wild.test/"
    )
    assert (status, headers["x-proxy-error"]) == (502, "upstream-failed-srt-kernel")
    assert "the name lookup failed" in body.decode()


# -- audit log --------------------------------------------------------------------


def test_audit_file_in_place_of_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("kept\n")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError) as refused:
        AuditLog(link)
    assert refused.value.errno == errno.ELOOP
    assert target.read_text() == "kept\n"


def test_audit_file_lines(tmp_path: Path, upstream: Upstream) -> None:
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path)
    p = start_proxy(standard_policy(upstream), audit)
    try:
        http_get(p.server.http_port, upstream.url("allowed.test"))
        http_get(p.server.http_port, "http://other.test/")
    finally:
        p.server.stop()
        audit.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [list(line) for line in lines] == [
        ["time", "label", "protocol", "host", "port", "decision", "rule", "address"]
    ] * 2
    assert lines[0]["time"].endswith("+00:00")
    assert [(x["host"], x["port"], x["decision"], x["address"]) for x in lines] == [
        ("allowed.test", upstream.port, "allow", "127.0.0.1"),
        ("other.test", 80, "deny", None),
    ]
    assert lines[1]["rule"] == "not in allowedDomains"
    assert lines[0]["rule"] == (
        f"allowedDomains entry 'allowed.test', resolved to 127.0.0.1, "
        f"allowedDomains entry '127.0.0.1:{upstream.port}'"
    )


# -- Unix-socket mode ---------------------------------------------------------------


def _unix_request(path: Path, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(data)
        chunks = []
        while piece := sock.recv(65536):
            chunks.append(piece)
        return b"".join(chunks)


def test_unix_socket_mode(tmp_path: Path, upstream: Upstream) -> None:
    socket_dir = tmp_path / "proxy"
    server = ProxyServer(
        standard_policy(upstream), socket_dir, resolver=StaticResolver(NAMES)
    )
    server.start()
    try:
        assert stat.S_IMODE(os.stat(socket_dir).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(server.http_socket).st_mode)
        answer = _unix_request(
            server.http_socket,
            f"GET {upstream.url('allowed.test')} HTTP/1.1\r\nHost: x\r\n"
            "Connection: close\r\n\r\n".encode(),
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
        answer = _unix_request(
            server.http_socket,
            b"GET http://other.test/ HTTP/1.1\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 403 ")
        assert b"X-Proxy-Error: blocked-by-srt-kernel" in answer
        name = b"allowed.test"
        answer = _unix_request(
            server.socks_socket,
            b"\x05\x01\x00"
            + b"\x05\x01\x00\x03"
            + bytes([len(name)])
            + name
            + upstream.port.to_bytes(2, "big")
            + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert answer[:4] == b"\x05\x00\x05\x00"
        assert b"hello from upstream" in answer
    finally:
        server.stop()
    assert not server.http_socket.exists()


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701])
def test_socket_dir_must_be_private(tmp_path: Path, mode: int) -> None:
    socket_dir = tmp_path / "shared"
    socket_dir.mkdir()
    socket_dir.chmod(mode)
    server = ProxyServer(policy(), socket_dir, resolver=StaticResolver({}))
    with pytest.raises(ProxyError, match="mode 700"):
        server.start()


def test_socket_dir_symlink_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    server = ProxyServer(policy(), link, resolver=StaticResolver({}))
    with pytest.raises(ProxyError, match="not a directory"):
        server.start()

"""Helpers for the proxy tests: local upstream servers, policies, a raw client.

Import from this module explicitly.  Upstreams bind 127.0.0.1 (or ::1)
port 0 and record every connection and request; names end in ``.test``
and are answered by a StaticResolver, never by DNS.
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from srt_kernel.audit import AuditEvent, AuditLog
from srt_kernel.hosts import parse_pattern
from srt_kernel.policy import NetworkPolicy
from srt_kernel.proxy.resolver import StaticResolver
from srt_kernel.proxy.server import ProxyServer

__all__ = ["NetworkPolicy"]

TIMEOUT = 30.0

# Every *.test name the tests use, and the address the static resolver gives.
NAMES: dict[str, str] = {
    "allowed.test": "127.0.0.1",
    "other.test": "127.0.0.1",
    "wild.test": "127.0.0.1",
    "a.wild.test": "127.0.0.1",
    "a.b.wild.test": "127.0.0.1",
    "evilwild.test": "127.0.0.1",
    "wild.test.evil.test": "127.0.0.1",
    "deny.wild.test": "127.0.0.1",
    "port.test": "127.0.0.1",
    "zero.test": "0.0.0.0",
    "six.test": "::1",
    "mapped.test": "::ffff:127.0.0.1",
    "meta.test": "169.254.169.254",
}


def policy(
    allowed: Sequence[str] = (),
    denied: Sequence[str] = (),
    denied_resolved: Sequence[str] = (),
    host_addresses: tuple[tuple[str, str], ...] = (),
) -> NetworkPolicy:
    """A NetworkPolicy from entry texts."""
    return NetworkPolicy(
        allowed=tuple(
            parse_pattern(t, field="network.allowedDomains") for t in allowed
        ),
        denied=tuple(parse_pattern(t, field="network.deniedDomains") for t in denied),
        denied_resolved=tuple(ipaddress.ip_network(n) for n in denied_resolved),
        host_addresses=host_addresses,
    )


@dataclass
class Recorder:
    """What an upstream saw."""

    connections: list[tuple[str, int]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def seen_connections(recorder: Recorder, expected: int, timeout: float = 10.0) -> int:
    """How many connections the upstream has seen, waiting up to ``timeout``
    for ``expected`` of them: a proxy's reply to CONNECT comes once the TCP
    connection is made, which can be before the upstream's thread accepts it.
    """
    deadline = time.monotonic() + timeout
    while True:
        with recorder.lock:
            count = len(recorder.connections)
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    recorder: Recorder
    root: Path
    git_root: Path | None

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.recorder.lock:
            self.recorder.connections.append(tuple(client_address[:2]))
        return True


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _record(self, body: bytes) -> None:
        with self.server.recorder.lock:
            self.server.recorder.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": [(k, v) for k, v in self.headers.items()],
                    "body": body,
                }
            )

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _send(self, status: int, body: bytes, headers: dict[str, str] = {}) -> None:  # noqa: B006
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/git/") and self.server.git_root is not None:
            self._git(parts.path[len("/git") :], parts.query)
            return
        body = self._body()
        self._record(body)
        if parts.path == "/redirect":
            target = parse_qs(parts.query)["to"][0]
            self._send(302, b"", {"Location": target})
        elif parts.path == "/echo":
            payload = {
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
            }
            self._send(200, json.dumps(payload).encode(), {"X-Upstream": "yes"})
        elif parts.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        else:
            file = (self.server.root / parts.path.lstrip("/")).resolve()
            if file.is_dir():
                file = file / "index.html"
            if self.server.root.resolve() in file.parents and file.is_file():
                kind = "text/html" if file.suffix == ".html" else "application/zip"
                self._send(200, file.read_bytes(), {"Content-Type": kind})
            else:
                self._send(200, b"hello from upstream\n", {"X-Upstream": "yes"})

    def _git(self, path_info: str, query: str) -> None:
        """Run ``git http-backend`` as a CGI program (smart HTTP)."""
        assert self.server.git_root is not None
        body = self._body()
        self._record(body)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.git_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.server.git_root),
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        result = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = result.stdout.partition(b"\n\n")
        status = 200
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        self._send(status, payload, headers)


@dataclass
class Upstream:
    """A recording HTTP server on loopback."""

    server: _Server
    recorder: Recorder
    host: str
    port: int

    def url(self, name: str, path: str = "/") -> str:
        return f"http://{name}:{self.port}{path}"


def start_upstream(
    root: Path, *, v6: bool = False, git_root: Path | None = None
) -> Upstream:
    cls = _V6Server if v6 else _Server
    host = "::1" if v6 else "127.0.0.1"
    server = cls((host, 0), _Handler)
    server.recorder = Recorder()
    server.root = root
    server.git_root = git_root
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return Upstream(server, server.recorder, host, server.server_address[1])


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    """The allowed upstream ("PA")."""
    root = tmp_path / "www-a"
    root.mkdir()
    up = start_upstream(root)
    yield up
    up.server.shutdown()
    up.server.server_close()


@pytest.fixture
def other_upstream(tmp_path: Path) -> Iterator[Upstream]:
    """A second upstream ("PO") whose port no policy lists."""
    root = tmp_path / "www-o"
    root.mkdir()
    up = start_upstream(root)
    yield up
    up.server.shutdown()
    up.server.server_close()


@dataclass
class Proxy:
    server: ProxyServer
    events: list[AuditEvent]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    @property
    def socks_url(self) -> str:
        return f"socks5h://127.0.0.1:{self.server.socks_port}"


def start_proxy(net_policy: NetworkPolicy, audit: AuditLog | None = None) -> Proxy:
    audit = audit or AuditLog()
    events: list[AuditEvent] = []
    audit.subscribe(events.append)
    server = ProxyServer(
        net_policy,
        resolver=StaticResolver(NAMES),
        audit=audit,
        tcp=True,
        label="test",
    )
    server.start()
    return Proxy(server, events)


def standard_policy(up: Upstream) -> NetworkPolicy:
    """allowed.test and *.wild.test, less deny.wild.test, with PA listed."""
    return policy(
        allowed=[
            "allowed.test",
            "*.wild.test",
            f"127.0.0.1:{up.port}",
            "zero.test",
            "six.test",
            "meta.test",
            "mapped.test",
            "port.test:443",
        ],
        denied=["deny.wild.test"],
    )


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[Proxy]:
    p = start_proxy(standard_policy(upstream))
    yield p
    p.server.stop()


def raw_exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send ``data`` to 127.0.0.1:port and read until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            chunks.append(piece)
            if not until_close:
                break
        return b"".join(chunks)


def recv_exact(sock: socket.socket, count: int) -> bytes:
    """Exactly ``count`` bytes from ``sock``; ConnectionError if it closes first."""
    data = b""
    while len(data) < count:
        piece = sock.recv(count - len(data))
        if not piece:
            raise ConnectionError(f"closed after {data[:80]!r}")
        data += piece
    return data


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length framed HTTP response from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed after {data!r}")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return status, headers, rest[:length]


def make_wheel(directory: Path, name: str = "tinypkg", version: str = "1.0") -> Path:
    """Write a minimal pure-Python wheel and a PEP 503 index for it."""
    wheel_name = f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        archive.writestr(
            f"{dist}/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        )
        archive.writestr(
            f"{dist}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
        )
        archive.writestr(f"{dist}/RECORD", "")
    package_dir = directory / "simple" / name
    package_dir.mkdir(parents=True)
    (package_dir / wheel_name).write_bytes(buffer.getvalue())
    (package_dir / "index.html").write_text(
        f'<html><body><a href="{wheel_name}">{wheel_name}</a></body></html>\n'
    )
    (directory / "simple" / "index.html").write_text(
        f'<html><body><a href="{name}/">{name}</a></body></html>\n'
    )
    return package_dir / wheel_name

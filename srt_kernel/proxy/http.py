"""The HTTP side of the proxy, and the stream layer it shares with SOCKS5.

Layers, bottom up:

* :class:`SockReader`: a buffered reader over a non-blocking socket on the
  running event loop, with hard limits on line and head sizes.
* :func:`dial` and :func:`relay`: connect to exactly one checked address,
  and move a tunnel's bytes in both directions, through a buffer per
  direction that grows while the tunnel is busy (see :func:`_pump`).
* :class:`Gate`: judges one connection (decision core, one lookup,
  audit event) against the policy current at that moment.
* :func:`serve_http`: one client connection of the HTTP proxy.  ``CONNECT``
  opens a tunnel; an absolute-form request (``GET http://host/path``) is
  forwarded with hop-by-hop and ``Proxy-*`` headers removed and ``Host`` set
  to the target; each request of a keep-alive connection is judged on its
  own.  Origin-form and malformed requests get 400, refusals 403 with
  ``X-Proxy-Error: blocked-by-srt-kernel``, upstream failures 502.

Any error this module did not expect ends the client connection; it never
lets a request through.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import threading
from collections.abc import Collection
from urllib.parse import urlsplit

from tornado import httputil

from srt_kernel.audit import AuditLog
from srt_kernel.errors import HostError
from srt_kernel.hosts import Host, IPAddress, parse_host
from srt_kernel.log import get_logger
from srt_kernel.proxy.decision import (
    Decision,
    NetworkRules,
    check_address,
    choose_address,
    decide_host,
)
from srt_kernel.proxy.resolver import (
    ChainResolver,
    ResolveError,
    Resolver,
    StaticResolver,
)
from srt_kernel.record import Record, replace

# Not typing.TYPE_CHECKING, as in the rest of the package.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from srt_kernel.audit import Protocol_

logger = get_logger(__name__)

BLOCK_MARKER = "blocked-by-srt-kernel"
UPSTREAM_MARKER = "upstream-failed-srt-kernel"
MAX_HEAD = 64 * 1024
MAX_LINE = 8 * 1024
HEAD_TIMEOUT = 120.0
CONNECT_TIMEOUT = 30.0
CHUNK = 256 * 1024
TUNNEL_BUFFER_MIN = 16 * 1024
TUNNEL_BUFFER_MAX = 4 * 1024 * 1024
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
_PORT_RE = re.compile(r"[0-9]{1,5}")


class ProtocolError(Exception):
    """The client or upstream broke HTTP or SOCKS framing; ends the connection."""


class UpstreamFailure(Exception):
    """The upstream failed before its response head reached the client."""


# -- stream layer ----------------------------------------------------------


class SockReader:
    """Buffered reads from a non-blocking socket on the running loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._loop = asyncio.get_running_loop()

    async def _fill(self) -> bool:
        data = await self._loop.sock_recv(self.sock, CHUNK)
        if not data:
            return False
        self._buf += data
        return True

    async def read_until(self, delimiter: bytes, limit: int) -> bytes | None:
        """Bytes up to and including ``delimiter``; None on EOF before any."""
        start = 0
        while True:
            index = self._buf.find(delimiter, start)
            if index > limit:
                raise ProtocolError(f"a line or head is longer than {limit} bytes")
            if index >= 0:
                end = index + len(delimiter)
                data = bytes(self._buf[:end])
                del self._buf[:end]
                return data
            if len(self._buf) > limit:
                raise ProtocolError(f"a line or head is longer than {limit} bytes")
            start = max(0, len(self._buf) - len(delimiter) + 1)
            if not await self._fill():
                if not self._buf:
                    return None
                raise ProtocolError("the connection closed in the middle of a head")

    async def read_exact(self, count: int) -> bytes:
        """Exactly ``count`` bytes, or ProtocolError at EOF."""
        while len(self._buf) < count:
            if not await self._fill():
                raise ProtocolError("the connection closed in the middle of a message")
        data = bytes(self._buf[:count])
        del self._buf[:count]
        return data

    async def read_some(self, most: int) -> bytes:
        """Up to ``most`` bytes; empty at EOF."""
        if not self._buf and not await self._fill():
            return b""
        data = bytes(self._buf[:most])
        del self._buf[:most]
        return data

    def take_buffer(self) -> bytes:
        """Whatever was read ahead and not consumed."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


async def dial(address: IPAddress, port: int) -> socket.socket:
    """Connect to exactly ``address:port``; raise OSError on failure."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (str(address), port)),
            CONNECT_TIMEOUT,
        )
    except asyncio.TimeoutError:
        sock.close()
        raise TimeoutError(errno.ETIMEDOUT, "connection timed out") from None
    except BaseException:
        sock.close()
        raise
    return sock


class _BufferPool:
    """Spare tunnel buffers by size, for the tunnels of one event loop.

    A pump hands its buffer back whenever it has to wait for input, so an
    idle tunnel holds none, and a busy one takes a buffer back without
    allocating and zero-filling it again.  At most ``limit`` bytes are kept.
    """

    def __init__(self, limit: int) -> None:
        self._spare: dict[int, list[bytearray]] = {}
        self._limit = limit
        self._kept = 0

    def take(self, size: int) -> bytearray:
        spare = self._spare.get(size)
        if not spare:
            return bytearray(size)
        self._kept -= size
        return spare.pop()

    def give(self, buffer: bytearray) -> None:
        if self._kept + len(buffer) <= self._limit:
            self._spare.setdefault(len(buffer), []).append(buffer)
            self._kept += len(buffer)


_pools = threading.local()


def _buffer_pool() -> _BufferPool:
    """The pool of the calling thread, which runs one proxy event loop."""
    pool: _BufferPool | None = getattr(_pools, "pool", None)
    if pool is None:
        pool = _pools.pool = _BufferPool(4 * TUNNEL_BUFFER_MAX)
    return pool


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await future
    finally:
        loop.remove_reader(sock.fileno())


async def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until end of file, then half-close ``dst``.

    Each read takes the bytes waiting, up to the buffer's size, and each
    write passes them on at once.  A read that fills the buffer doubles it,
    up to TUNNEL_BUFFER_MAX: a bulk transfer then moves megabytes per system
    call and wakes its two peers seldom, while a quiet tunnel uses a small
    buffer, and one waiting for input none (see :class:`_BufferPool`).  A
    pump that moved TUNNEL_BUFFER_MAX bytes without waiting for input yields
    to the loop, so a tunnel whose ends never make it wait cannot starve the
    other connections.
    """
    loop = asyncio.get_running_loop()
    pool = _buffer_pool()
    size = TUNNEL_BUFFER_MIN
    buffer: bytearray | None = None
    unyielded = 0
    try:
        while True:
            if buffer is None:
                buffer = pool.take(size)
            try:
                count = src.recv_into(buffer)
            except BlockingIOError:
                pool.give(buffer)
                buffer = None
                unyielded = 0
                await _readable(src)
                continue
            if not count:
                return
            await loop.sock_sendall(dst, memoryview(buffer)[:count])
            if count == size and size < TUNNEL_BUFFER_MAX:
                pool.give(buffer)
                buffer = None
                size *= 2
            unyielded += count
            if unyielded >= TUNNEL_BUFFER_MAX:
                unyielded = 0
                await asyncio.sleep(0)
    finally:
        if buffer is not None:
            pool.give(buffer)
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            logger.debug("peer already gone when half-closing the tunnel")


async def relay(
    client: socket.socket, upstream: socket.socket, early: bytes = b""
) -> None:
    """Move bytes both ways until both sides have closed, then close both."""
    loop = asyncio.get_running_loop()
    try:
        if early:
            await loop.sock_sendall(upstream, early)
        outcome = await asyncio.gather(
            _pump(client, upstream),
            _pump(upstream, client),
            return_exceptions=True,
        )
        for item in outcome:
            if isinstance(item, OSError):
                logger.debug("tunnel ended with %s", item)
            elif isinstance(item, BaseException):
                raise item
    finally:
        upstream.close()
        client.close()


# -- the gate: one decision per connection or request -----------------------


class Verdict(Record):
    """A decision, plus whether a refusal came from a failed lookup."""

    decision: Decision
    lookup_failed: bool = False


class Gate:
    """Judges connections against the policy current at each call."""

    def __init__(
        self,
        policy: NetworkRules,
        audit: AuditLog,
        base_resolver: Resolver,
        host_addresses: tuple[tuple[str, str], ...] = (),
        label: str = "",
        local_addresses: Collection[IPAddress] = (),
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.base_resolver = base_resolver
        self.label = label
        self.local_addresses = local_addresses
        self.resolver = self._chain(host_addresses)

    def _chain(self, pairs: tuple[tuple[str, str], ...]) -> Resolver:
        if not pairs:
            return self.base_resolver
        return ChainResolver(StaticResolver.from_pairs(pairs), self.base_resolver)

    def set_policy(
        self, policy: NetworkRules, pairs: tuple[tuple[str, str], ...]
    ) -> None:
        """Swap in a new policy; the next decision sees it."""
        resolver = self._chain(pairs)
        self.policy, self.resolver = policy, resolver

    async def authorize(self, protocol: Protocol_, host: Host, port: int) -> Verdict:
        """Decide ``host:port``: rules, one lookup, address check, audit."""
        policy, resolver, label = self.policy, self.resolver, self.label
        decision = first = decide_host(policy, host, port)
        lookup_failed = False
        if decision.allowed and host.ip is not None:
            decision = check_address(policy, host, port, host.ip, self.local_addresses)
        elif decision.allowed and host.name is not None:
            try:
                addresses = await resolver.resolve(host.name)
            except ResolveError as exc:
                lookup_failed = True
                decision = Decision(
                    allowed=False,
                    host=host,
                    port=port,
                    rule=f"the name lookup failed ({exc})",
                    fix="check the name, or that it resolves from this machine",
                )
            else:
                decision = choose_address(
                    policy, host, port, addresses, self.local_addresses
                )
        if decision.allowed and decision.rule != first.rule:
            decision = replace(decision, rule=f"{first.rule}, {decision.rule}")
        self.audit.record(
            label=label,
            protocol=protocol,
            host=str(host),
            port=port,
            decision="allow" if decision.allowed else "deny",
            rule=decision.rule,
            address=None if decision.address is None else str(decision.address),
        )
        return Verdict(decision, lookup_failed)

    def refuse_text(self, protocol: Protocol_, text: str, port: int, rule: str) -> None:
        """Audit a refusal of a host that is not valid host grammar."""
        self.audit.record(
            label=self.label,
            protocol=protocol,
            host=text,
            port=port,
            decision="deny",
            rule=rule,
        )


# -- HTTP ------------------------------------------------------------------


def _response(
    status: int,
    reason: str,
    body: str,
    *,
    marker: str = "",
    close: bool = True,
) -> bytes:
    payload = body.encode("utf-8")
    lines = [f"HTTP/1.1 {status} {reason}"]
    if marker:
        lines.append(f"X-Proxy-Error: {marker}")
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(payload)}",
        f"Connection: {'close' if close else 'keep-alive'}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode("latin-1") + payload


def _split_authority(authority: str, default: int | None) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets); raise ProtocolError if bad."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ProtocolError(f"the authority {authority!r} has an unclosed '['")
        host, rest = authority[: close + 1], authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ProtocolError(f"the authority {authority!r} is malformed")
        port_text = rest[1:] if rest else ""
    elif ":" in authority:
        host, port_text = authority.rsplit(":", 1)
    else:
        host, port_text = authority, ""
    if not port_text:
        if default is None:
            raise ProtocolError(f"the authority {authority!r} has no port")
        return host, default
    if not _PORT_RE.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        raise ProtocolError(f"the authority {authority!r} has an invalid port")
    return host, int(port_text)


def _connection_tokens(headers: httputil.HTTPHeaders) -> set[str]:
    tokens: set[str] = set()
    for value in headers.get_list("Connection"):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _end_to_end(headers: httputil.HTTPHeaders) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones, those named in Connection, Proxy-*."""
    drop = _HOP_BY_HOP | _connection_tokens(headers)
    return [
        (name, value)
        for name, value in headers.get_all()
        if name.lower() not in drop and not name.lower().startswith("proxy-")
    ]


def _body_framing(headers: httputil.HTTPHeaders) -> tuple[str, int]:
    """("chunked", 0), ("length", n) or ("none", 0); ProtocolError if ambiguous."""
    encodings = headers.get_list("Transfer-Encoding")
    lengths = headers.get_list("Content-Length")
    if encodings:
        if lengths:
            raise ProtocolError("both Transfer-Encoding and Content-Length are set")
        codings = [c.strip().lower() for v in encodings for c in v.split(",")]
        if codings[-1] != "chunked" or codings.count("chunked") != 1:
            raise ProtocolError(f"unsupported Transfer-Encoding {encodings!r}")
        return "chunked", 0
    if lengths:
        values = {v.strip() for item in lengths for v in item.split(",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise ProtocolError(f"invalid Content-Length {lengths!r}")
        return "length", int(next(iter(values)))
    return "none", 0


async def _copy_body(
    reader: SockReader,
    dst: socket.socket,
    framing: str,
    length: int,
) -> None:
    """Forward a message body exactly as framed; "close" reads to EOF."""
    loop = asyncio.get_running_loop()
    if framing == "length":
        remaining = length
        while remaining:
            data = await reader.read_some(min(remaining, CHUNK))
            if not data:
                raise ProtocolError("the body ended before its Content-Length")
            await loop.sock_sendall(dst, data)
            remaining -= len(data)
    elif framing == "chunked":
        while True:
            line = await reader.read_until(b"\r\n", MAX_LINE)
            if line is None:
                raise ProtocolError("the chunked body ended early")
            size_text = line[:-2].split(b";", 1)[0].strip()
            if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size_text):
                raise ProtocolError(f"invalid chunk size line {line[:40]!r}")
            size = int(size_text, 16)
            await loop.sock_sendall(dst, b"%x\r\n" % size)
            if size == 0:
                break
            await _copy_body(reader, dst, "length", size)
            if await reader.read_exact(2) != b"\r\n":
                raise ProtocolError("a chunk is not followed by CRLF")
            await loop.sock_sendall(dst, b"\r\n")
        while True:
            trailer = await reader.read_until(b"\r\n", MAX_LINE)
            if trailer is None:
                raise ProtocolError("the chunked body ended in its trailer")
            await loop.sock_sendall(dst, trailer)
            if trailer == b"\r\n":
                break
    elif framing == "close":
        while True:
            data = await reader.read_some(CHUNK)
            if not data:
                break
            await loop.sock_sendall(dst, data)


def _parse_head(head: bytes) -> tuple[str, httputil.HTTPHeaders]:
    try:
        text = head.decode("latin-1")
        first, _, rest = text.partition("\r\n")
        return first, httputil.HTTPHeaders.parse(rest)
    except httputil.HTTPInputError as exc:
        raise ProtocolError(str(exc)) from exc


class HTTPProxy:
    """Serves one client connection of the HTTP proxy."""

    def __init__(self, gate: Gate, client: socket.socket) -> None:
        self.gate = gate
        self.client = client
        self.reader = SockReader(client)
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.client, data)

    async def serve(self) -> None:
        """Handle requests until the client or a framing error ends them."""
        try:
            while await self._one_request():
                pass
        except ProtocolError as exc:
            logger.info("HTTP proxy: bad request: %s", exc)
            await self._try_send(
                _response(400, "Bad Request", f"Bad request: {exc}.\n")
            )
            await self._linger()
        except (OSError, asyncio.TimeoutError) as exc:
            logger.debug("HTTP proxy: client connection ended: %s", exc)
        finally:
            self.client.close()

    async def _linger(self) -> None:
        """Half-close, then drain a little input so the answer is not reset."""
        try:
            self.client.shutdown(socket.SHUT_WR)
            deadline = self.loop.time() + LINGER_SECONDS
            drained = 0
            while drained < LINGER_BYTES and self.loop.time() < deadline:
                data = await asyncio.wait_for(
                    self.loop.sock_recv(self.client, CHUNK),
                    max(0.0, deadline - self.loop.time()),
                )
                if not data:
                    break
                drained += len(data)
        except (OSError, asyncio.TimeoutError) as exc:
            logger.debug("HTTP proxy: stopped draining a refused client: %s", exc)

    async def _try_send(self, data: bytes) -> None:
        try:
            await self.send(data)
        except OSError as exc:
            logger.debug("HTTP proxy: could not send an error: %s", exc)

    async def _one_request(self) -> bool:
        head = await asyncio.wait_for(
            self.reader.read_until(b"\r\n\r\n", MAX_HEAD), HEAD_TIMEOUT
        )
        if head is None:
            return False
        first, headers = _parse_head(head)
        try:
            start = httputil.parse_request_start_line(first)
        except httputil.HTTPInputError as exc:
            raise ProtocolError(f"malformed request line {first[:80]!r}") from exc

        if start.method == "CONNECT":
            await self._connect(start.path)
            return False
        if not start.path.lower().startswith("http://"):
            await self.send(
                _response(
                    400,
                    "Bad Request",
                    f"This is a proxy: send absolute-form requests "
                    f"('GET http://host/path') or CONNECT, not {start.path[:80]!r}.\n",
                )
            )
            return False
        return await self._forward(start, headers)

    async def _connect(self, target: str) -> None:
        host_text, port = _split_authority(target, None)
        host = self._host(host_text, port, "connect")
        if host is None:
            await self.send(
                _response(400, "Bad Request", f"Invalid host {host_text!r}.\n")
            )
            return
        upstream = await self._open(host, port, "connect", close=True)
        if upstream is None:
            return
        await self.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await relay(self.client, upstream, self.reader.take_buffer())

    def _host(self, text: str, port: int, protocol: Protocol_) -> Host | None:
        try:
            return parse_host(text)
        except HostError as exc:
            self.gate.refuse_text(protocol, text, port, f"invalid host: {exc}")
            return None

    async def _open(
        self, host: Host, port: int, protocol: Protocol_, *, close: bool
    ) -> socket.socket | None:
        """Authorize and dial; on refusal or failure answer and return None."""
        verdict = await self.gate.authorize(protocol, host, port)
        decision = verdict.decision
        if verdict.lookup_failed:
            await self.send(
                _response(
                    502,
                    "Bad Gateway",
                    decision.message() + "\n",
                    marker=UPSTREAM_MARKER,
                    close=close,
                )
            )
            return None
        if not decision.allowed:
            await self.send(
                _response(
                    403,
                    "Forbidden",
                    decision.message() + "\n",
                    marker=BLOCK_MARKER,
                    close=close,
                )
            )
            return None
        assert decision.address is not None
        try:
            return await dial(decision.address, port)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            await self.send(
                _response(
                    502,
                    "Bad Gateway",
                    f"srt-kernel could not connect to {host} port {port} "
                    f"({decision.address}): {reason}.\n",
                    marker=UPSTREAM_MARKER,
                    close=close,
                )
            )
            return None

    async def _forward(
        self, start: httputil.RequestStartLine, headers: httputil.HTTPHeaders
    ) -> bool:
        """Forward one absolute-form request; return whether to keep going."""
        parts = urlsplit(start.path)
        authority = parts.netloc
        if "@" in authority or not authority:
            raise ProtocolError(f"the request target {start.path[:80]!r} is malformed")
        host_text, port = _split_authority(authority, 80)
        framing, length = _body_framing(headers)
        keep_alive = start.version == "HTTP/1.1" and "close" not in (
            _connection_tokens(headers)
        )
        # A refused request with a body would leave the body in the stream.
        can_continue = keep_alive and framing == "none"

        host = self._host(host_text, port, "http")
        if host is None:
            raise ProtocolError(f"invalid host {host_text!r}")
        upstream = await self._open(host, port, "http", close=not can_continue)
        if upstream is None:
            return can_continue

        try:
            return await self._exchange(
                upstream,
                start,
                parts.path,
                parts.query,
                host,
                port,
                headers,
                framing,
                length,
                keep_alive,
            )
        except UpstreamFailure as exc:
            await self.send(
                _response(
                    502,
                    "Bad Gateway",
                    f"srt-kernel got no valid response from {host} port {port}: "
                    f"{exc}.\n",
                    marker=UPSTREAM_MARKER,
                )
            )
            return False
        finally:
            upstream.close()

    async def _exchange(
        self,
        upstream: socket.socket,
        start: httputil.RequestStartLine,
        path: str,
        query: str,
        host: Host,
        port: int,
        headers: httputil.HTTPHeaders,
        framing: str,
        length: int,
        keep_alive: bool,
    ) -> bool:
        target = (path or "/") + (f"?{query}" if query else "")
        authority = host.for_url() + ("" if port == 80 else f":{port}")
        lines = [f"{start.method} {target} HTTP/1.1", f"Host: {authority}"]
        lines += [
            f"{name}: {value}"
            for name, value in _end_to_end(headers)
            if name.lower() != "host"
        ]
        if framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        elif framing == "length":
            lines.append(f"Content-Length: {length}")
        lines += ["Connection: close", "", ""]
        await self.loop.sock_sendall(upstream, "\r\n".join(lines).encode("latin-1"))

        if "100-continue" in headers.get("Expect", "").lower():
            await self.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await _copy_body(self.reader, upstream, framing, length)

        up = SockReader(upstream)
        try:
            status, response_headers = await self._response_head(up)
        except (OSError, ProtocolError, asyncio.TimeoutError) as exc:
            raise UpstreamFailure(str(exc) or type(exc).__name__) from exc

        if start.method == "HEAD" or status.code in (204, 304) or status.code < 200:
            body_framing, body_length = "none", 0
        else:
            body_framing, body_length = _body_framing(response_headers)
            if body_framing == "none":
                body_framing, keep_alive = "close", False

        out = [f"HTTP/1.1 {status.code} {status.reason}"]
        out += [f"{name}: {value}" for name, value in _end_to_end(response_headers)]
        if body_framing == "chunked":
            out.append("Transfer-Encoding: chunked")
        elif body_framing == "length":
            out.append(f"Content-Length: {body_length}")
        elif "Content-Length" in response_headers and status.code != 204:
            out.append(f"Content-Length: {response_headers['Content-Length']}")
        out += [f"Connection: {'keep-alive' if keep_alive else 'close'}", "", ""]
        await self.send("\r\n".join(out).encode("latin-1"))
        await _copy_body(up, self.client, body_framing, body_length)
        return keep_alive

    async def _response_head(
        self, up: SockReader
    ) -> tuple[httputil.ResponseStartLine, httputil.HTTPHeaders]:
        """Read the final response head, relaying 1xx interim responses."""
        while True:
            head = await asyncio.wait_for(
                up.read_until(b"\r\n\r\n", MAX_HEAD), HEAD_TIMEOUT
            )
            if head is None:
                raise ProtocolError("the upstream closed without a response")
            first, headers = _parse_head(head)
            try:
                status = httputil.parse_response_start_line(first)
            except httputil.HTTPInputError as exc:
                raise ProtocolError(f"the upstream sent {first[:80]!r}") from exc
            if status.code == 101:
                raise ProtocolError("the upstream switched protocols unasked")
            if status.code >= 200:
                return status, headers
            await self.send(head)


async def serve_http(gate: Gate, client: socket.socket) -> None:
    """Serve one HTTP proxy client connection to its end."""
    await HTTPProxy(gate, client).serve()

"""The SOCKS5 side of the proxy (RFC 1928), CONNECT only, no authentication.

Promises:

* Domain names are judged exactly like HTTP hosts (one normalisation, the
  same decision core, one lookup); IPv4 and IPv6 literals are refused
  unless listed in ``allowedDomains``.
* BIND and UDP ASSOCIATE are refused with reply 0x07 (command not
  supported), unknown address types with 0x08, refusals by rule with 0x02;
  upstream failures map to 0x03 (network unreachable), 0x04 (host
  unreachable), 0x05 (connection refused), 0x06 (timed out) or 0x01.
* A client that offers no "no authentication" method gets 0xFF and is
  closed.  Every request, allowed or refused, is one audit event.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct

from srt_kernel.errors import HostError
from srt_kernel.hosts import Host, parse_host
from srt_kernel.log import get_logger
from srt_kernel.proxy.http import Gate, ProtocolError, SockReader, dial, relay

logger = get_logger(__name__)

VERSION = 5
NO_AUTH = 0x00
NO_ACCEPTABLE = 0xFF
CMD_CONNECT, CMD_BIND, CMD_UDP = 1, 2, 3
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4

REP_SUCCEEDED = 0x00
REP_FAILURE = 0x01
REP_NOT_ALLOWED = 0x02
REP_NETWORK_UNREACHABLE = 0x03
REP_HOST_UNREACHABLE = 0x04
REP_REFUSED = 0x05
REP_TIMED_OUT = 0x06
REP_COMMAND_NOT_SUPPORTED = 0x07
REP_ADDRESS_NOT_SUPPORTED = 0x08

_COMMAND_NAMES = {CMD_BIND: "BIND", CMD_UDP: "UDP ASSOCIATE"}
HANDSHAKE_TIMEOUT = 60.0


def reply(code: int, bound: tuple[str, int] | None = None) -> bytes:
    """A SOCKS5 reply with ``code`` and the bound address (0.0.0.0:0 if none)."""
    address, port = bound or ("0.0.0.0", 0)
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes([VERSION, code, 0, atyp]) + ip.packed + struct.pack("!H", port)


def _error_code(exc: OSError) -> int:
    if isinstance(exc, TimeoutError) or exc.errno == errno.ETIMEDOUT:
        return REP_TIMED_OUT
    return {
        errno.ECONNREFUSED: REP_REFUSED,
        errno.ENETUNREACH: REP_NETWORK_UNREACHABLE,
        errno.EHOSTUNREACH: REP_HOST_UNREACHABLE,
    }.get(exc.errno or 0, REP_FAILURE)


class SocksProxy:
    """Serves one SOCKS5 client connection."""

    def __init__(self, gate: Gate, client: socket.socket) -> None:
        self.gate = gate
        self.client = client
        self.reader = SockReader(client)
        self.loop = asyncio.get_running_loop()

    async def serve(self) -> None:
        """Run the handshake, judge the request, then relay or refuse."""
        try:
            target = await asyncio.wait_for(self._handshake(), HANDSHAKE_TIMEOUT)
            if target is not None:
                upstream = await self._open(*target)
                if upstream is not None:
                    await relay(self.client, upstream, self.reader.take_buffer())
        except ProtocolError as exc:
            logger.info("SOCKS5 proxy: bad request: %s", exc)
        except (OSError, asyncio.TimeoutError) as exc:
            logger.debug("SOCKS5 proxy: client connection ended: %s", exc)
        finally:
            self.client.close()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.client, data)

    async def _handshake(self) -> tuple[Host, int] | None:
        version, count = await self.reader.read_exact(2)
        if version != VERSION:
            raise ProtocolError(f"SOCKS version {version} is not 5")
        methods = await self.reader.read_exact(count)
        if NO_AUTH not in methods:
            await self.send(bytes([VERSION, NO_ACCEPTABLE]))
            return None
        await self.send(bytes([VERSION, NO_AUTH]))

        version, command, _reserved, atyp = await self.reader.read_exact(4)
        if version != VERSION:
            raise ProtocolError(f"SOCKS version {version} is not 5")
        text = await self._address(atyp)
        (port,) = struct.unpack("!H", await self.reader.read_exact(2))
        if text is None:
            self.gate.refuse_text("socks5", f"address type {atyp}", port, "bad type")
            await self.send(reply(REP_ADDRESS_NOT_SUPPORTED))
            return None

        if command != CMD_CONNECT:
            name = _COMMAND_NAMES.get(command, f"command {command}")
            self.gate.refuse_text(
                "socks5", text, port, f"SOCKS5 {name} is not supported"
            )
            await self.send(reply(REP_COMMAND_NOT_SUPPORTED))
            return None

        try:
            host = parse_host(text)
        except HostError as exc:
            self.gate.refuse_text("socks5", text, port, f"invalid host: {exc}")
            await self.send(reply(REP_NOT_ALLOWED))
            return None
        if port == 0:
            self.gate.refuse_text("socks5", str(host), port, "port 0")
            await self.send(reply(REP_NOT_ALLOWED))
            return None
        return host, port

    async def _address(self, atyp: int) -> str | None:
        if atyp == ATYP_IPV4:
            return str(ipaddress.IPv4Address(await self.reader.read_exact(4)))
        if atyp == ATYP_IPV6:
            return str(ipaddress.IPv6Address(await self.reader.read_exact(16)))
        if atyp == ATYP_DOMAIN:
            (length,) = await self.reader.read_exact(1)
            raw = await self.reader.read_exact(length)
            # Undecodable bytes become U+FFFD, which parse_host refuses.
            return raw.decode("utf-8", errors="replace")
        return None

    async def _open(self, host: Host, port: int) -> socket.socket | None:
        verdict = await self.gate.authorize("socks5", host, port)
        decision = verdict.decision
        if verdict.lookup_failed:
            await self.send(reply(REP_HOST_UNREACHABLE))
            return None
        if not decision.allowed:
            await self.send(reply(REP_NOT_ALLOWED))
            return None
        assert decision.address is not None
        try:
            upstream = await dial(decision.address, port)
        except OSError as exc:
            logger.info("SOCKS5 proxy: %s port %s: %s", host, port, exc)
            await self.send(reply(_error_code(exc)))
            return None
        try:
            bound = upstream.getsockname()
            await self.send(reply(REP_SUCCEEDED, (str(bound[0]), int(bound[1]))))
        except BaseException:
            upstream.close()
            raise
        return upstream


async def serve_socks(gate: Gate, client: socket.socket) -> None:
    """Serve one SOCKS5 client connection to its end."""
    await SocksProxy(gate, client).serve()

"""Kernel connection files: the five channels, their addresses and key.

Kept apart from the relay so that the supervisor can read and write
connection files before it loads ZeroMQ (it starts the sandbox first, and
imports the relay while the inner kernel starts up).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from srt_kernel.errors import KernelError
from srt_kernel.record import Record

# Not typing.TYPE_CHECKING: importing typing costs the kernel's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHANNELS = ("shell", "control", "stdin", "iopub", "hb")


class Connection(Record):
    """The parts of a connection file that the relay uses."""

    transport: str
    ip: str
    ports: Mapping[str, int]
    key: bytes
    signature_scheme: str = "hmac-sha256"

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> Connection:
        """Read a connection file's dict (``shell_port``, ``key`` ...)."""
        try:
            ports = {name: int(info.get(f"{name}_port", 0)) for name in CHANNELS}
            key = info.get("key", "")
            return cls(
                transport=str(info.get("transport", "tcp")),
                ip=str(info["ip"]),
                ports=ports,
                key=key.encode() if isinstance(key, str) else bytes(key),
                signature_scheme=str(info.get("signature_scheme", "hmac-sha256")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KernelError(
                f"A connection file is missing or has a bad field ({exc}); "
                "it needs ip, key and the five *_port numbers."
            ) from exc

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Connection:
        """Read a connection file."""
        try:
            info = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KernelError(
                f"Cannot read the connection file {os.fspath(path)!r} ({exc})."
            ) from exc
        if not isinstance(info, dict):
            raise KernelError(f"The connection file {os.fspath(path)!r} is not JSON.")
        return cls.from_dict(info)

    def ipc_path(self, channel: str) -> str:
        """The socket file of ``channel`` for ipc transport."""
        return f"{self.ip}-{self.ports[channel]}"


def reserve_ports(conn: Connection) -> dict[str, socket.socket]:
    """Listening TCP sockets on the frontend's ports, bound before ZeroMQ loads.

    A frontend connects as soon as it has started the kernel.  Bound here,
    first thing, the ports take its connections into their backlogs while
    the sandbox starts; the relay then hands each socket to ZeroMQ
    (``ZMQ_USE_FD``).  Unbound, a refused frontend would wait out ZeroMQ's
    reconnect interval and miss the first cell's outputs, and another
    process could take a port the connection file promised.  Only for an
    IPv4 address and fixed ports; otherwise nothing is reserved and the
    relay binds as usual.
    """
    host = "0.0.0.0" if conn.ip in ("*", "0.0.0.0") else conn.ip
    try:
        if conn.transport != "tcp" or ipaddress.ip_address(host).version != 4:
            return {}
    except ValueError:
        return {}
    reserved: dict[str, socket.socket] = {}
    try:
        for channel in CHANNELS:
            port = conn.ports.get(channel, 0)
            if not port:
                raise KernelError(f"the {channel} port is not fixed")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            reserved[channel] = sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
    except (OSError, KernelError):
        for sock in reserved.values():
            sock.close()
        return {}
    return reserved

"""Kernel connection files: the five channels, their addresses and key.

Kept apart from the relay so that the supervisor can read and write
connection files before it loads ZeroMQ (it starts the sandbox first, and
imports the relay while the inner kernel starts up).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srt_kernel.errors import KernelError
from srt_kernel.record import Record

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

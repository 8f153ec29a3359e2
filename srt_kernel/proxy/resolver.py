"""Name resolution for the proxy.

A :class:`Resolver` turns a normalised name into addresses.  The proxy asks
once per connection and dials exactly the address it checked, so a second
lookup cannot answer differently (DNS rebinding).

* :class:`SystemResolver` uses ``getaddrinfo`` on a worker thread, never on
  the event loop.
* :class:`StaticResolver` answers from a fixed table and refuses every
  other name; tests use it for ``*.test`` names, and the static
  ``host_addresses`` of a policy are served by one consulted first.
* :class:`ChainResolver` asks a static table first, then another resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from typing import Protocol

from srt_kernel.errors import HostError
from srt_kernel.hosts import IPAddress, fold_ip, parse_host
from srt_kernel.log import get_logger

logger = get_logger(__name__)


class ResolveError(HostError):
    """A name has no address (or could not be looked up)."""


class Resolver(Protocol):
    """Turns a normalised host name into its addresses."""

    async def resolve(self, name: str) -> list[IPAddress]:
        """Return the addresses of ``name``; raise ResolveError if none."""
        ...


class SystemResolver:
    """The operating system's resolver, run off the event loop."""

    async def resolve(self, name: str) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                name, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except OSError as exc:
            raise ResolveError(f"name {name!r} could not be resolved: {exc}") from exc
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            text = str(sockaddr[0]).split("%", 1)[0]
            address = fold_ip(ipaddress.ip_address(text))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ResolveError(f"name {name!r} has no address")
        return addresses


class StaticResolver:
    """Answers from a fixed table of names; every other name is refused.

    Keys are host names as written (normalised on construction); values
    are one address or several.
    """

    def __init__(self, table: Mapping[str, str | IPAddress | Iterable[str]]) -> None:
        self._table: dict[str, list[IPAddress]] = {}
        for key, value in table.items():
            host = parse_host(key)
            if host.name is None:
                raise HostError(f"static resolver key {key!r} is not a host name")
            values = (
                [value]
                if isinstance(
                    value, str | ipaddress.IPv4Address | ipaddress.IPv6Address
                )
                else list(value)
            )
            self._table.setdefault(host.name, []).extend(
                fold_ip(ipaddress.ip_address(v)) for v in values
            )

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> StaticResolver:
        """Build one from ``(name, ip)`` pairs, as in ``host_addresses``."""
        table: dict[str, list[str]] = {}
        for name, address in pairs:
            table.setdefault(name, []).append(address)
        return cls(table)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is in the table."""
        return name in self._table

    async def resolve(self, name: str) -> list[IPAddress]:
        try:
            return list(self._table[name])
        except KeyError:
            raise ResolveError(
                f"name {name!r} is not in the static host table"
            ) from None


class ChainResolver:
    """A static table first, then ``fallback`` for every other name."""

    def __init__(self, first: StaticResolver, fallback: Resolver) -> None:
        self._first = first
        self._fallback = fallback

    async def resolve(self, name: str) -> list[IPAddress]:
        if self._first.knows(name):
            return await self._first.resolve(name)
        return await self._fallback.resolve(name)

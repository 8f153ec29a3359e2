"""The filtering proxy: the sandbox's only way to the network.

``ProxyServer`` (server.py) serves HTTP (http.py) and SOCKS5 (socks.py) on
Unix sockets from a thread of its own; decision.py is the pure policy core
and resolver.py the name lookup it is given.
"""

from __future__ import annotations

from srt_kernel.proxy.decision import Decision, block_message
from srt_kernel.proxy.resolver import Resolver, StaticResolver, SystemResolver
from srt_kernel.proxy.server import ProxyServer

__all__ = [
    "Decision",
    "ProxyServer",
    "Resolver",
    "StaticResolver",
    "SystemResolver",
    "block_message",
]

"""The filtering proxy server: its thread, event loop and listening sockets.

A :class:`ProxyServer` runs a tornado IOLoop on a thread of its own, so
code that blocks elsewhere in the process never stalls it.  It serves two
listening sockets, HTTP and SOCKS5: for a sandbox, ones made inside the
sandbox's network namespace (:mod:`srt_kernel.sandbox.netns`) and handed
over as ``listeners``; otherwise two Unix sockets, ``http.sock`` and
``socks.sock``, in a private directory (created with mode 0700; an existing
one must be ours and 0700), or with ``tcp=True`` two 127.0.0.1 ports (tests
and the benchmark).

The policy is swapped atomically by :meth:`ProxyServer.set_policy`: the
next request is judged by the new one, requests already judged keep going.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path

from tornado import netutil
from tornado.ioloop import IOLoop

from srt_kernel.audit import AuditLog
from srt_kernel.errors import ProxyError
from srt_kernel.hosts import IPAddress, fold_ip
from srt_kernel.log import get_logger
from srt_kernel.proxy.decision import NetworkRules
from srt_kernel.proxy.http import Gate, serve_http
from srt_kernel.proxy.listen import BACKLOG, bind_proxy_sockets
from srt_kernel.proxy.resolver import Resolver, SystemResolver
from srt_kernel.proxy.socks import serve_socks

logger = get_logger(__name__)

Handler = Callable[[Gate, socket.socket], Awaitable[None]]


def host_addresses() -> set[IPAddress]:
    """This machine's own interface addresses, read from /proc (Linux).

    Returns an empty set where /proc does not tell; loopback and the
    other special ranges are refused by kind anyway.
    """
    found: set[IPAddress] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as trie:
            previous = ""
            for line in trie:
                if "/32 host LOCAL" in line and previous.strip().startswith("|--"):
                    found.add(ipaddress.IPv4Address(previous.split()[-1]))
                previous = line
    except (OSError, ValueError) as exc:
        logger.warning("could not read this host's IPv4 addresses: %s", exc)
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            for line in table:
                raw = line.split()[0]
                text = ":".join(raw[i : i + 4] for i in range(0, 32, 4))
                found.add(fold_ip(ipaddress.IPv6Address(text)))
    except FileNotFoundError:
        logger.debug("no IPv6 on this host")
    except (OSError, ValueError, IndexError) as exc:
        logger.warning("could not read this host's IPv6 addresses: %s", exc)
    return found


class ProxyServer:
    """The HTTP and SOCKS5 filtering proxy, on its own thread and IOLoop."""

    def __init__(
        self,
        policy: NetworkRules,
        socket_dir: str | os.PathLike[str] | None = None,
        *,
        resolver: Resolver | None = None,
        audit: AuditLog | None = None,
        label: str = "",
        tcp: bool = False,
        local_addresses: Collection[IPAddress] | None = None,
        listeners: Mapping[str, socket.socket] | None = None,
    ) -> None:
        if socket_dir is None and not tcp and listeners is None:
            raise ProxyError("a ProxyServer needs a socket_dir, listeners, or tcp=True")
        self.socket_dir = Path(socket_dir) if socket_dir is not None else None
        self.tcp = tcp
        self.audit = audit if audit is not None else AuditLog()
        self.gate = Gate(
            policy=policy,
            audit=self.audit,
            base_resolver=resolver if resolver is not None else SystemResolver(),
            host_addresses=_pairs(policy),
            label=label,
            local_addresses=(
                frozenset(local_addresses)
                if local_addresses is not None
                else frozenset(host_addresses())
            ),
        )
        self.http_socket = self.socket_dir / "http.sock" if self.socket_dir else Path()
        self.socks_socket = (
            self.socket_dir / "socks.sock" if self.socket_dir else Path()
        )
        self.http_port = 0
        self.socks_port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ioloop: IOLoop | None = None
        self._listeners: list[socket.socket] = []
        #: Sockets bound beforehand (listen.bind_proxy_sockets), by protocol.
        self._bound = dict(listeners) if listeners is not None else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._removers: list[Callable[[], None]] = []

    @property
    def policy(self) -> NetworkRules:
        """The policy the next request will be judged by."""
        return self.gate.policy

    def set_policy(self, policy: NetworkRules) -> None:
        """Judge every following request by ``policy``."""
        self.gate.set_policy(policy, _pairs(policy))

    def set_label(self, label: str) -> None:
        """Label the following audit events (``"cell 3"``)."""
        self.gate.label = label

    def _bind(self) -> list[tuple[socket.socket, Handler]]:
        if self._bound is not None:
            bound, self._bound = self._bound, None
            return [(bound["http"], serve_http), (bound["socks"], serve_socks)]
        if self.tcp:
            http = netutil.bind_sockets(
                0, "127.0.0.1", family=socket.AF_INET, backlog=BACKLOG
            )[0]
            socks = netutil.bind_sockets(
                0, "127.0.0.1", family=socket.AF_INET, backlog=BACKLOG
            )[0]
            self.http_port = http.getsockname()[1]
            self.socks_port = socks.getsockname()[1]
            return [(http, serve_http), (socks, serve_socks)]
        assert self.socket_dir is not None
        bound = bind_proxy_sockets(str(self.socket_dir))
        return [(bound["http"], serve_http), (bound["socks"], serve_socks)]

    def start(self) -> None:
        """Bind the sockets here, then serve them on a new thread."""
        if self._thread is not None:
            raise ProxyError("this ProxyServer was already started")
        listeners = self._bind()
        self._listeners = [sock for sock, _ in listeners]
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._ioloop = IOLoop.current()
                for sock, handler in listeners:
                    self._removers.append(
                        netutil.add_accept_handler(sock, self._acceptor(handler))
                    )
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._shutdown_loop(loop)

        self._thread = threading.Thread(
            target=run, name="srt-kernel-proxy", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            raise ProxyError(f"the proxy loop could not start: {failure[0]}") from (
                failure[0]
            )
        logger.info(
            "proxy listening: http %s, socks %s",
            self.http_port or self.http_socket,
            self.socks_port or self.socks_socket,
        )

    def _acceptor(self, handler: Handler) -> Callable[[socket.socket, object], None]:
        def accept(conn: socket.socket, _address: object) -> None:
            conn.setblocking(False)
            task = asyncio.ensure_future(self._guard(handler, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return accept

    async def _guard(self, handler: Handler, conn: socket.socket) -> None:
        try:
            await handler(self.gate, conn)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception:
            # An unexpected error ends the connection; nothing was let through.
            logger.exception("proxy connection failed; closing it")
            conn.close()

    def _shutdown_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            loop.run_until_complete(
                asyncio.gather(*self._tasks, return_exceptions=True)
            )
        loop.run_until_complete(loop.shutdown_asyncgens())
        if self._ioloop is not None:
            self._ioloop.close(all_fds=False)
        else:
            loop.close()

    def stop(self) -> None:
        """Stop serving, close every connection and remove the sockets."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def halt() -> None:
            for remove in self._removers:
                remove()
            for sock in self._listeners:
                sock.close()
            loop.stop()

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(halt)
        thread.join(timeout=30)
        self._loop = None
        if self.socket_dir is not None and not self.tcp:
            for path in (self.http_socket, self.socks_socket):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def __enter__(self) -> ProxyServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _pairs(policy: NetworkRules) -> tuple[tuple[str, str], ...]:
    return tuple(getattr(policy, "host_addresses", ()))

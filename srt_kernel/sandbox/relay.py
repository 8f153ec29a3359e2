"""The in-sandbox network relay: 127.0.0.1 ports to the proxy's Unix sockets.

The sandbox has a network namespace of its own with only a loopback
device.  :mod:`.init` listens on 127.0.0.1 there and joins every accepted
connection to the host-side proxy through its Unix socket, which is
mounted read-only into the sandbox.  The relay decides nothing: the proxy
judges every request.  Bytes move with ``splice(2)`` through a pipe where
the kernel offers it, so they are never copied into Python.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

_CHUNK = 1 << 20
_HAS_SPLICE = hasattr(os, "splice")


def listen(port: int) -> socket.socket:
    """A listening TCP socket on 127.0.0.1:``port`` (in the sandbox's netns)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(512)
    return sock


def serve(listener: socket.socket, target: str) -> None:
    """Accept forever; join each connection to the Unix socket ``target``."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=_join, args=(conn, target), daemon=True).start()


def _join(conn: socket.socket, target: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(target)
    except OSError:
        # The proxy is gone: the connection fails, it is never let out.
        conn.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
    back.start()
    _pump(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until end of file, then half-close ``dst``."""
    try:
        if _HAS_SPLICE:
            _splice_loop(src, dst)
        else:
            _copy_loop(src, dst)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _copy_loop(src: socket.socket, dst: socket.socket) -> None:
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = src.recv_into(buf)
        if n == 0:
            return
        dst.sendall(view[:n])


def _splice_loop(src: socket.socket, dst: socket.socket) -> None:
    r, w = os.pipe()
    try:
        sfd, dfd = src.fileno(), dst.fileno()
        while True:
            n = os.splice(sfd, w, _CHUNK)
            if n == 0:
                return
            while n:
                n -= os.splice(r, dfd, n)
    finally:
        os.close(r)
        os.close(w)

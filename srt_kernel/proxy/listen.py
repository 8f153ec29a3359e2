"""The proxy's listening Unix sockets, bound without tornado.

For a proxy that serves a socket directory rather than a sandbox (a
sandbox's sockets are made inside it: :mod:`srt_kernel.sandbox.netns`):
the directory is private (0700, ours), each socket 0600.
"""

from __future__ import annotations

import os
import socket
import stat

from srt_kernel.errors import ProxyError

#: Longest path a Unix socket address holds (sun_path, less the NUL).
UNIX_PATH_MAX = 107
BACKLOG = 1024
#: The two sockets of the proxy, by protocol.
SOCKET_NAMES = {"http": "http.sock", "socks": "socks.sock"}


def prepare_dir(path: str) -> None:
    """Create ``path`` 0700, or check that an existing one is ours and 0700."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ProxyError(
            f"cannot create the proxy socket directory {path!r}: {exc.strerror}; "
            "give a directory whose parent exists and is writable"
        ) from exc
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise ProxyError(
            f"the proxy socket directory {path!r} is not a directory "
            "(or is a symlink); remove it or give another path"
        )
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o700:
        raise ProxyError(
            f"the proxy socket directory {path!r} has owner {info.st_uid} and "
            f"mode {stat.S_IMODE(info.st_mode):o}; it must be owned by uid "
            f"{os.getuid()} with mode 700 (chmod 700 it or give another path)"
        )


def bind_unix(path: str) -> socket.socket:
    """A non-blocking socket listening on ``path`` (mode 0600).

    A stale socket file there is replaced; any other file is an error.
    """
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ProxyError(
            f"the socket path {path!r} is longer than {UNIX_PATH_MAX} bytes; "
            "give a shorter socket_dir"
        )
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ProxyError(f"cannot replace the old socket {path!r}: {exc}") from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ProxyError(
            f"cannot listen on {path!r}: {exc}; remove the file if it is not a "
            "socket, or give another socket_dir"
        ) from exc
    return sock


def bind_proxy_sockets(socket_dir: str) -> dict[str, socket.socket]:
    """Both listening sockets in ``socket_dir`` (created 0700), by protocol."""
    prepare_dir(socket_dir)
    bound: dict[str, socket.socket] = {}
    try:
        for protocol, name in SOCKET_NAMES.items():
            bound[protocol] = bind_unix(os.path.join(socket_dir, name))
    except BaseException:
        for sock in bound.values():
            sock.close()
        raise
    return bound

"""Listening sockets inside the sandbox's network namespace, held outside.

The sandbox has a network namespace of its own with only a loopback
device, and its proxy variables point at 127.0.0.1 ports there.  Something
must listen on those ports, inside that namespace, before the command
starts, and be out of the command's reach.  Rather than a relay process in
the sandbox, a short-lived helper forked from the launcher joins the
sandbox's user and network namespaces (``setns``), creates the listening
sockets there, and passes them back over a socket pair (``SCM_RIGHTS``).
The launcher's proxy then accepts the sandbox's connections itself: no
process of ours runs inside the sandbox, and no byte takes a second hop.

bubblewrap waits (``--block-fd``) until the sockets are in place, so the
command's first connection waits in the backlog and is never refused.

Joining a user namespace needs a single-threaded process and the
``CAP_SYS_ADMIN`` that the namespace's owner (the launcher's user) has over
it; the helper is a fork, which is single-threaded, and it only makes
system calls before ``_exit``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import warnings
from collections.abc import Callable, Mapping

from srt_kernel.errors import SandboxError

SetNs = Callable[[int, int], None]

#: ioctl(2) on a namespace fd: the user namespace that owns it (linux/nsfs.h).
NS_GET_USERNS = 0xB701
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
BACKLOG = 1024


class NamespaceError(SandboxError):
    """The listening sockets could not be made inside the sandbox."""


def _setns_function() -> SetNs:
    """``os.setns`` (Python 3.12+), or libc's through ctypes."""
    setns: SetNs | None = getattr(os, "setns", None)
    if setns is not None:
        return setns
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def libc_setns(fd: int, nstype: int) -> None:
        if libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return libc_setns


def _sandbox_netns(pid: int, parent: int) -> int:
    """An fd of the network namespace of ``pid``, checked to be bwrap's child.

    The pid came from bubblewrap's ``--info-fd``; ``/proc/PID`` is opened
    once and everything read through it, so a pid reused by another
    process after the sandbox died cannot be mistaken for it.
    """
    proc = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with open(os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)) as f:
            stat = f.read()
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid != parent:
            raise NamespaceError(
                f"process {pid} is not the sandbox started by bubblewrap "
                f"(its parent is {ppid}, not {parent}); the sandbox has ended"
            )
        return os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc)
    finally:
        os.close(proc)


def listen_inside(
    pid: int, parent: int, ports: Mapping[str, int]
) -> dict[str, socket.socket]:
    """Sockets listening on 127.0.0.1 in the network namespace of ``pid``.

    ``parent`` is bubblewrap's pid (the parent of ``pid``); ``ports`` maps a
    name to a port.  Returns non-blocking listening sockets by name.
    Raises :class:`NamespaceError` with the reason when they cannot be made.
    """
    setns = _setns_function()
    try:
        netns = _sandbox_netns(pid, parent)
    except OSError as exc:
        raise NamespaceError(
            f"the sandbox's network namespace cannot be opened: {exc}"
        ) from exc
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() beside threads; the child
            # below makes system calls only, then _exit()s.
            warnings.simplefilter("ignore", DeprecationWarning)
            child = os.fork()
        if child == 0:  # pragma: no cover - the forked helper
            ours.close()
            _helper(netns, setns, ports, theirs)
        theirs.close()
        return _receive(ours, child, ports)
    finally:
        os.close(netns)
        ours.close()
        theirs.close()


def _helper(
    netns: int, setns: SetNs, ports: Mapping[str, int], out: socket.socket
) -> None:
    """In the forked helper: join, listen, send the sockets back, exit."""
    status = 1
    try:
        userns = fcntl.ioctl(netns, NS_GET_USERNS)
        setns(userns, CLONE_NEWUSER)
        setns(netns, CLONE_NEWNET)
        made = []  # the socket objects must live until they are sent
        for port in ports.values():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(BACKLOG)
            made.append(sock)
        socket.send_fds(out, [b"ok"], [sock.fileno() for sock in made])
        status = 0
    except BaseException as exc:
        with contextlib.suppress(OSError):
            out.sendall(f"error: {exc}".encode(errors="replace")[:4000])
    finally:
        os._exit(status)


def _receive(
    ours: socket.socket, child: int, ports: Mapping[str, int]
) -> dict[str, socket.socket]:
    try:
        message, fds, _flags, _addr = socket.recv_fds(
            ours, 4096, len(ports), socket.MSG_CMSG_CLOEXEC
        )
    finally:
        _, raw = os.waitpid(child, 0)
    sockets = [socket.socket(fileno=fd) for fd in fds]
    if message != b"ok" or len(sockets) != len(ports) or raw != 0:
        for sock in sockets:
            sock.close()
        reason = message.decode(errors="replace").removeprefix("error: ")
        raise NamespaceError(
            "the listening sockets could not be made inside the sandbox's "
            f"network namespace: {reason or 'the helper exited early'}"
        )
    for sock in sockets:
        sock.setblocking(False)
    return dict(zip(ports, sockets, strict=True))

"""The sandbox's first process: network relay, then the command.

bubblewrap starts this as pid 1 of the sandbox (``python -I -S``, see
:data:`srt_kernel.sandbox.plan.BOOT`).  In order, it:

1. makes itself non-dumpable, so that the command cannot read or write its
   memory through ``/proc/1/mem`` (and the command's seccomp filter refuses
   ``ptrace``);
2. binds the relay's listening sockets on 127.0.0.1 *before* the command
   exists, so the command's first connection is queued, never refused;
3. forks the command: the child starts a session of its own (and takes its
   pseudo-terminal as controlling terminal when it has one), applies the
   seccomp filter, and executes the command;
4. relays connections to the proxy's Unix sockets, forwards INT, TERM, HUP
   and QUIT to the command, reaps every process (it is pid 1), and exits
   with the command's status (128 + N for a signal).

It imports only the standard library and the seccomp builder, to start fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import termios
import threading

from srt_kernel.sandbox import relay

PR_SET_DUMPABLE = 4
#: Exit status when the sandbox itself could not be set up (as ``env`` and
#: container runtimes use 125 for their own failures).
SETUP_FAILED = 125


def _fail(message: str) -> int:
    sys.stderr.write(f"srt-kernel: {message}\n")
    sys.stderr.flush()
    return SETUP_FAILED


def _set_dumpable(value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE) failed: {os.strerror(err)}")


def _child(
    command: list[str], config: dict[str, object], listeners: list[socket.socket]
) -> None:
    """In the forked child: never returns."""
    try:
        for sock in listeners:
            sock.close()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        if config.get("tty") and os.isatty(0):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if config.get("seccomp"):
            from srt_kernel.sandbox import seccomp

            program = seccomp.build_filter(
                allow_unix_sockets=bool(config.get("allow_unix_sockets"))
            )
            seccomp.apply(program)
        os.execvp(command[0], command)
    except FileNotFoundError:
        sys.stderr.write(f"srt-kernel: command not found: {command[0]}\n")
        sys.stderr.flush()
        os._exit(127)
    except PermissionError as exc:
        sys.stderr.write(f"srt-kernel: cannot run {command[0]}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(126)
    except BaseException as exc:  # any failure before exec: the command must not run
        sys.stderr.write(f"srt-kernel: the sandbox could not be completed: {exc}\n")
        sys.stderr.flush()
        os._exit(SETUP_FAILED)


def main(argv: list[str]) -> int:
    """``CONFIG_JSON -- COMMAND [ARG]...``; returns the command's status."""
    if len(argv) < 3 or argv[1] != "--":
        return _fail("internal error: init expects CONFIG -- COMMAND")
    config = json.loads(argv[0])
    command = argv[2:]

    try:
        _set_dumpable(0)
    except OSError as exc:
        return _fail(str(exc))

    listeners: list[socket.socket] = []
    routes: list[tuple[socket.socket, str]] = []
    proxy_dir = config.get("proxy_dir")
    if isinstance(proxy_dir, str):
        try:
            for port_key, name in (
                ("http_port", "http.sock"),
                ("socks_port", "socks.sock"),
            ):
                sock = relay.listen(int(str(config[port_key])))
                listeners.append(sock)
                routes.append((sock, os.path.join(proxy_dir, name)))
        except OSError as exc:
            return _fail(f"the network relay could not listen: {exc}")

    pid = os.fork()
    if pid == 0:
        _child(command, config, listeners)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    for sig in forwarded:
        signal.signal(sig, forward)

    for sock, target in routes:
        threading.Thread(
            target=relay.serve, args=(sock, target), daemon=True, name="relay"
        ).start()

    status = SETUP_FAILED
    while True:
        try:
            done, raw = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if done == pid:
            status = os.waitstatus_to_exitcode(raw)
            if status < 0:
                status = 128 - status
            break
    return status

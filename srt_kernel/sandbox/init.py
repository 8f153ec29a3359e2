"""The sandbox's first process when the command has a terminal.

Without a terminal bubblewrap applies the filter and runs the command
itself (:func:`srt_kernel.sandbox.plan.direct_exec`).  With one, the
command must lead a session of its own with the pseudo-terminal as its
controlling terminal, which bubblewrap cannot arrange, so bubblewrap starts
this as pid 1 of the sandbox (``python -I -S``, see
:data:`srt_kernel.sandbox.plan.BOOT`).  In order, it:

1. makes itself non-dumpable, so that the command cannot read or write its
   memory through ``/proc/1/mem`` (init runs without the seccomp filter;
   the command's filter refuses ``ptrace``);
2. forks the command: the child starts a session of its own, takes its
   pseudo-terminal as controlling terminal, applies the seccomp filter,
   and executes the command;
3. forwards INT, TERM, HUP and QUIT to the command, reaps every process (it
   is pid 1), and exits with the command's status (128 + N for a signal).

It imports only the standard library and the seccomp builder, and of the
standard library only what it uses (no ``json``, no ``typing``): the
command waits for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import sys
import termios

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


def _child(command: list[str], config: dict[str, str]) -> None:
    """In the forked child: never returns."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        if config.get("tty") == "1" and os.isatty(0):
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if config.get("seccomp") != "0":
            from srt_kernel.sandbox import seccomp

            program = seccomp.build_filter(
                allow_unix_sockets=config.get("allow_unix_sockets") == "1"
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
    """``KEY=VALUE... -- COMMAND [ARG]...``; returns the command's status.

    The keys are those of :func:`srt_kernel.sandbox.plan.init_config`.
    """
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        return _fail("internal error: init expects KEY=VALUE... -- COMMAND")
    split = argv.index("--")
    config = dict(word.partition("=")[::2] for word in argv[:split])
    command = argv[split + 1 :]

    try:
        _set_dumpable(0)
    except OSError as exc:
        return _fail(str(exc))

    pid = os.fork()
    if pid == 0:
        _child(command, config)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    for sig in forwarded:
        signal.signal(sig, forward)

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

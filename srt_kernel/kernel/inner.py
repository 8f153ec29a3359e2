"""The entry point of the inner kernel, the one that runs inside the sandbox.

``python -m srt_kernel.kernel.inner [--seccomp | --no-seccomp] -f CONN
[ipykernel options]`` runs a plain ipykernel whose ZMQ sockets are
``ipc://`` files: the connection file's ``ip`` is a path prefix in the
sandbox's private directory and each channel becomes ``<ip>-<port>``.

It promises:

- the connection file's transport is ``ipc`` (anything else is refused);
- ``JPY_PARENT_PID`` is ignored and removed (inside a pid namespace the
  parent poller would end the kernel at once);
- matplotlib's config dir and IPython's history file live in the private
  directory, so no warning about a read-only home lands in a cell;
- with ``--seccomp`` (the default) the seccomp filter is applied to every
  thread of the process after all sockets are bound and before the shell
  is built, that is before any start-up file or cell runs; if it cannot be
  applied the kernel exits with status 3 and runs nothing (fail closed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from tornado.ioloop import IOLoop
from traitlets import Bool

from srt_kernel.errors import KernelError, SrtKernelError
from srt_kernel.log import get_logger

log = get_logger(__name__)

#: Exit status when the kernel refuses to start (bad connection file,
#: seccomp failure).
EXIT_REFUSED = 3


class SandboxedKernelApp(IPKernelApp):
    """IPKernelApp that locks itself with seccomp once its sockets are bound."""

    name = "srt-kernel-inner"
    #: Set from the command line only (``--no-seccomp``), never from a
    #: configuration file.
    seccomp = Bool(True, help="Apply the seccomp filter after binding.")

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        """Read no configuration file.

        Configuration files are Python, and IPython reads them (from
        ``sys.prefix/etc/ipython``, ``/etc/ipython``, the profile) before
        the seccomp filter is on; a folder that cells can write may hold one
        (a virtual environment inside the project).  The kernel's options
        come from its command line.
        """

    def init_kernel(self) -> None:
        # Every socket is bound (init_sockets, init_heartbeat ran before);
        # the shell, start-up files and cells come after this.
        super().init_kernel()  # type: ignore[no-untyped-call]

        # The main thread's loop is made before the filter; socketpair stays
        # allowed, so later loops (subshells, asyncio.run in cells) work too.
        IOLoop.current()
        if self.seccomp:
            apply_seccomp()
        else:
            log.warning("the inner kernel runs without its seccomp filter")

    def init_path(self) -> None:
        """Make the notebook's packages and folder importable, as in any kernel.

        The interpreter started isolated (``-I``): until the seccomp filter
        is on (:meth:`init_kernel`, which runs first), nothing was imported
        from the folders that cells can write, so a module planted there
        cannot run unfiltered, and programs were found only in the system's
        folders.  Now the user's ``PATH`` is back, ``PYTHONPATH`` (``%pip``'s
        folder) goes
        first, as the interpreter would have put it, the user's site-packages
        if the supervisor's interpreter uses it, and the working folder before
        site-packages, as IPython does.
        """
        if "SRT_KERNEL_PATH" in os.environ:
            os.environ["PATH"] = os.environ.pop("SRT_KERNEL_PATH")
        entries = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
        sys.path[:0] = [p for p in entries if p not in sys.path]
        if os.environ.get("SRT_KERNEL_USER_SITE"):
            import site

            known = len(sys.path)
            site.addsitedir(site.getusersitepackages())  # after the filter
            added = sys.path[known:]
            del sys.path[known:]
            at = _first_site_packages()
            sys.path[at:at] = added
        if "" not in sys.path and not self.ignore_cwd:
            sys.path.insert(_first_site_packages(), "")


def _first_site_packages() -> int:
    return next(
        (
            i
            for i, p in enumerate(sys.path)
            if os.path.basename(p) in ("site-packages", "dist-packages")
        ),
        len(sys.path),
    )


def apply_seccomp() -> None:
    """Apply the sandbox's seccomp filter to all threads, or raise.

    Raises :class:`~srt_kernel.errors.SeccompError` (or another
    :class:`SrtKernelError`) when the filter cannot be built or applied.
    """
    from srt_kernel.sandbox import seccomp

    program = seccomp.build_filter()
    seccomp.apply(program, tsync=True)
    log.info("seccomp filter applied to the inner kernel")


def read_connection_file(path: str) -> dict[str, Any]:
    """Read the connection file and check that it asks for ipc transport."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KernelError(
            f"Cannot read the connection file {path!r} ({exc}); give the inner "
            "kernel a readable JSON connection file."
        ) from exc
    if not isinstance(info, dict):
        raise KernelError(f"The connection file {path!r} is not a JSON object.")
    if info.get("transport") != "ipc" or not isinstance(info.get("ip"), str):
        raise KernelError(
            f"The connection file {path!r} has transport "
            f'{info.get("transport")!r}; the inner kernel needs "transport": '
            '"ipc" and an "ip" that is a path prefix in its private directory.'
        )
    return info


def private_dir(info: dict[str, Any]) -> Path:
    """The directory that holds the kernel's socket files."""
    return Path(str(info["ip"])).parent


def prepare_environment(directory: Path) -> list[str]:
    """Set up the process environment; return extra ipykernel options."""
    os.environ.pop("JPY_PARENT_PID", None)
    mpl = directory / "mplconfig"
    mpl.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("MPLCONFIGDIR", str(mpl))
    # The user's ~/.ipython is read-only in the sandbox; IPython would warn
    # in the first cell and fall back to a temporary folder of its own.
    ipython = directory / "ipython"
    ipython.mkdir(mode=0o700, exist_ok=True)
    os.environ["IPYTHONDIR"] = str(ipython)
    return [
        "--IPKernelApp.parent_handle=0",
        f"--HistoryManager.hist_file={directory / 'history.sqlite'}",
    ]


def split_args(argv: list[str]) -> tuple[bool, str, list[str]]:
    """Return (seccomp, connection file, the other arguments)."""
    use_seccomp = True
    connection = ""
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--seccomp":
            use_seccomp = True
        elif arg == "--no-seccomp":
            use_seccomp = False
        elif arg == "-f":
            connection = next(args, "")
        elif arg.startswith("--f="):
            connection = arg[len("--f=") :]
        else:
            rest.append(arg)
    if not connection:
        raise KernelError(
            "The inner kernel needs a connection file: pass '-f CONNECTION_FILE'."
        )
    return use_seccomp, connection, rest


def main(argv: list[str] | None = None) -> int:
    """Run the inner kernel until it is shut down; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        use_seccomp, connection, rest = split_args(argv)
        info = read_connection_file(connection)
        extra = prepare_environment(private_dir(info))
        app = SandboxedKernelApp.instance()
        app.seccomp = use_seccomp
        app.initialize(  # type: ignore[no-untyped-call]
            ["-f", connection, *extra, *rest]
        )
    except SrtKernelError as exc:
        print(f"srt-kernel inner kernel: {exc}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    app.start()  # type: ignore[no-untyped-call]
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Install and remove the "Python (sandboxed)" kernelspec.

As ipykernel's own installer does: a ``kernel.json`` and the logos are put
in a temporary folder and handed to jupyter_client's
``KernelSpecManager.install_kernel_spec`` for ``--user``, ``--sys-prefix``
or ``--prefix P`` (the system-wide Jupyter data dir when none is given).

The kernel.json runs the supervisor with this interpreter's absolute path
(``[sys.executable, "-E", "-P", "-m", "srt_kernel.kernel", "-f",
"{connection_file}"]``: ``-E -P`` keep the notebook's folder, which cells
can write, off ``sys.path``; see :func:`supervisor_argv`) and says
``"interrupt_mode": "message"``: the frontend then interrupts with an
``interrupt_request`` on the control channel, which the relay passes to
the inner kernel, instead of signalling the supervisor's process group
(where a signal would also reach bubblewrap unless it sits in a session of
its own).  This works the same for local frontends and kernel gateways; a
SIGINT that reaches the supervisor anyway is translated into the same
message.  ``metadata.debugger`` is false: the debugger is not relayed.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from srt_kernel.errors import KernelError, PolicyError
from srt_kernel.log import get_logger

log = get_logger(__name__)

KERNEL_NAME = "python-sandboxed"
DISPLAY_NAME = "Python (sandboxed)"
LOGOS = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")

#: The repository's kernelspec folder, with the logos.
RESOURCES = Path(__file__).resolve().parents[2] / "kernelspec"


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``--env K=V`` values into a dict; a :class:`PolicyError` on a
    value without ``=``."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PolicyError(
                f"the --env value {pair!r} is not KEY=VALUE; write it as "
                "--env NAME=value.",
                field="--env",
                value=pair,
                source="command line",
            )
        env[key] = value
    return env


#: What an interpreter without ``-P`` (before 3.11) runs instead of ``-m``:
#: it drops the current folder from ``sys.path`` before importing anything.
_BOOT_WITHOUT_SAFE_PATH = (
    "import sys; del sys.path[0]; import runpy; "
    "runpy.run_module('srt_kernel.kernel', run_name='__main__', alter_sys=True)"
)


def supervisor_argv(python: str) -> list[str]:
    """How to start the supervisor with ``python``, the cwd kept off ``sys.path``.

    A frontend starts a kernel in the notebook's folder, which the notebook's
    cells can write.  ``python -m`` would put that folder first on
    ``sys.path``, so a planted ``srt_kernel/`` or a module named like one of
    the supervisor's dependencies would run on the host, unsandboxed, at
    the kernel's next start.  ``-P`` leaves the folder out (an interpreter
    older than 3.11 has no ``-P`` and drops it itself before any import),
    and ``-E`` ignores ``PYTHONPATH``, which may name it too (``.``).
    """
    if hasattr(sys.flags, "safe_path"):  # -P is there (3.11 and later)
        return [python, "-E", "-P", "-m", "srt_kernel.kernel"]
    return [python, "-E", "-c", _BOOT_WITHOUT_SAFE_PATH]


def runs_supervisor(argv: Sequence[str]) -> bool:
    """Whether a kernelspec's argv starts srt-kernel's supervisor."""
    head = list(argv[1:5])
    return (
        head == ["-E", "-P", "-m", "srt_kernel.kernel"]
        or head[:3] == ["-E", "-c", _BOOT_WITHOUT_SAFE_PATH]
        or head[:2] == ["-m", "srt_kernel.kernel"]  # an earlier version's
    )


def stale_kernelspecs() -> list[tuple[str, str]]:
    """Installed kernelspecs that start the supervisor the unprotected way
    (``python -m`` alone, from an earlier version): (name, folder)."""
    manager = KernelSpecManager()
    stale = []
    for name, folder in sorted(manager.find_kernel_specs().items()):
        try:
            argv = manager.get_kernel_spec(name).argv
        except (OSError, ValueError, NoSuchKernel):
            continue
        if list(argv[1:3]) == ["-m", "srt_kernel.kernel"]:
            stale.append((name, folder))
    return stale


def kernel_json(
    display_name: str = DISPLAY_NAME, env: Mapping[str, str] | None = None
) -> dict[str, object]:
    """The kernel.json this installer writes."""
    spec: dict[str, object] = {
        "argv": [
            *supervisor_argv(str(Path(sys.executable).absolute())),
            "-f",
            "{connection_file}",
        ],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
    }
    if env:
        spec["env"] = dict(env)
    return spec


def install(
    *,
    user: bool = False,
    sys_prefix: bool = False,
    prefix: str | None = None,
    name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Install the kernelspec; return the folder it was installed into."""
    if sum((user, sys_prefix, prefix is not None)) > 1:
        raise PolicyError(
            "choose one of --user, --sys-prefix and --prefix, not several.",
            field="--prefix",
            source="command line",
        )
    if sys_prefix:
        prefix = sys.prefix
    with tempfile.TemporaryDirectory(prefix="srt-kernelspec-") as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        (folder / "kernel.json").write_text(
            json.dumps(kernel_json(display_name, env), indent=1) + "\n",
            encoding="utf-8",
        )
        for logo in LOGOS:
            source = RESOURCES / logo
            if source.is_file():
                shutil.copyfile(source, folder / logo)
            else:
                log.warning(
                    "kernelspec logo %s not found; installed without it", source
                )
        try:
            dest = KernelSpecManager().install_kernel_spec(
                str(folder), kernel_name=name, user=user, prefix=prefix
            )
        except OSError as exc:
            raise KernelError(
                f"Cannot install the kernelspec {name!r} ({exc}); try --user or "
                "--prefix with a folder you can write."
            ) from exc
    log.info("installed kernelspec %s in %s", name, dest)
    return Path(dest)


def uninstall(
    name: str = KERNEL_NAME,
    *,
    user: bool = False,
    sys_prefix: bool = False,
    prefix: str | None = None,
) -> Path:
    """Remove the kernelspec ``name``; return the folder that was removed.

    With ``user``, ``sys_prefix`` or ``prefix``, only that place is looked
    at (the places :func:`install` writes to); with none, the first spec of
    that name that Jupyter finds.  A name that is not installed there is a
    :class:`PolicyError` (a mistake in the options); a folder that cannot be
    removed is a :class:`KernelError`.
    """
    if sum((user, sys_prefix, prefix is not None)) > 1:
        raise PolicyError(
            "choose one of --user, --sys-prefix and --prefix, not several.",
            field="--prefix",
            source="command line",
        )
    manager = KernelSpecManager()
    where = ""
    if sys_prefix:
        prefix = sys.prefix
    if user:
        manager.kernel_dirs = [manager.user_kernel_dir]
        where = f" in your kernelspecs ({manager.user_kernel_dir})"
    elif prefix is not None:
        manager.kernel_dirs = [str(Path(prefix) / "share" / "jupyter" / "kernels")]
        where = f" under {prefix!r}"
    try:
        removed = manager.remove_kernel_spec(name)
    except (NoSuchKernel, KeyError) as exc:
        raise PolicyError(
            f"no kernelspec named {name!r} is installed{where}; `jupyter "
            "kernelspec list` shows the installed ones.",
            field="--name",
            value=name,
            source="command line",
        ) from exc
    except OSError as exc:
        raise KernelError(f"Cannot remove the kernelspec {name!r} ({exc}).") from exc
    return Path(removed)

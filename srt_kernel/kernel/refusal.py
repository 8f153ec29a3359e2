"""The kernel the supervisor serves when the user's settings cannot be used.

Invalid settings leave no policy to build a sandbox from.  Running cells
under the built-in defaults would drop what the settings meant to add,
such as their ``denyRead`` entries (a folder of private data that cells
must not read), so no cell runs at all.  The frontend still gets a live
kernel rather than a dead one that says nothing: it answers
``kernel_info`` with a banner naming the problem, and every
``execute_request`` with an error naming it and the fix.

It is ipykernel's base ``Kernel`` with no shell: no code is evaluated,
no extension, start-up file or IPython configuration file is loaded, and
completion and inspection find nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ipykernel.kernelapp import IPKernelApp
from ipykernel.kernelbase import Kernel

from srt_kernel import __version__

#: ``ename`` of the error every cell gets.
ENAME = "SandboxSettingsError"


class RefusingKernel(Kernel):
    """Answers every cell with :attr:`problem`; runs nothing."""

    implementation = "srt-kernel"
    implementation_version = __version__
    language_info: dict[str, object] = {  # noqa: RUF012 (ipykernel's own field)
        "name": "python",
        "version": sys.version.split()[0],
        "mimetype": "text/x-python",
        "file_extension": ".py",
    }
    #: The sentence shown under every cell (set before the kernel starts).
    problem = ""

    @property
    def banner(self) -> str:  # type: ignore[override]
        return f"srt-kernel runs no code: {self.problem}\n"

    @property
    def kernel_info(self) -> dict[str, Any]:
        info: dict[str, Any] = dict(super().kernel_info)
        features = info.get("supported_features", [])
        info["supported_features"] = [f for f in features if f != "debugger"]
        info["debugger"] = False
        return info

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict[str, Any] | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        error = {
            "ename": ENAME,
            "evalue": self.problem,
            "traceback": [f"{ENAME}: {self.problem}"],
        }
        if not silent:
            self.send_response(self.iopub_socket, "error", error)  # type: ignore[no-untyped-call]
        return {
            "status": "error",
            "execution_count": self.execution_count,
            "user_expressions": {},
            **error,
        }


class RefusingKernelApp(IPKernelApp):
    """IPKernelApp for :class:`RefusingKernel`, reading no configuration file."""

    name = "srt-kernel-refusing"

    def load_config_file(self, *args: Any, **kwargs: Any) -> None:
        """Read nothing: a configuration file is Python and could run code."""


def serve(connection_file: str, problem: str) -> int:
    """Serve the frontend's connection file until it shuts the kernel down.

    This process is not sandboxed, and its working folder is the notebook's,
    which cells could write: it moves to ``/`` and keeps the folder off
    ``sys.path``, so no module that ipykernel imports later (``psutil`` for
    a usage request, say) can come from there.
    """
    connection_file = os.path.abspath(connection_file)
    os.chdir("/")
    RefusingKernel.problem = problem
    app = RefusingKernelApp.instance(kernel_class=RefusingKernel, ignore_cwd=True)
    app.initialize(["-f", connection_file])  # type: ignore[no-untyped-call]
    app.start()  # type: ignore[no-untyped-call]
    return 0

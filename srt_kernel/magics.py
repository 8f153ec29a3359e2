"""IPython magics: ``%sandbox`` shows the policy in force.

Inside the sandboxed kernel, ``%sandbox`` prints the policy that the
supervisor resolved for this notebook and where each part came from (the
supervisor writes it to a read-only file that the kernel can see).
Load it in a plain IPython session with ``%load_ext srt_kernel``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class


def in_sandbox() -> bool:
    """Whether this process runs inside an srt-kernel sandbox."""
    return os.environ.get("SRT_KERNEL_SANDBOX") == "1"


@magics_class
class SandboxMagics(Magics):
    @line_magic
    def sandbox(self, line: str) -> None:
        """Show the sandbox policy in force and where each part comes from.

        Usage::

            %sandbox
        """
        if line.strip():
            raise UsageError(
                "%sandbox takes no arguments here; it shows the policy in force."
            )
        if in_sandbox():
            path = os.environ.get("SRT_KERNEL_POLICY", "")
            try:
                print(Path(path).read_text(encoding="utf-8"), end="")
            except OSError as exc:
                raise UsageError(
                    f"the policy description {path!r} cannot be read ({exc})."
                ) from exc
            return
        from srt_kernel import locations
        from srt_kernel import policy as pol

        print(pol.describe(locations.load_policy()))


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(SandboxMagics)

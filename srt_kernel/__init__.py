"""srt-kernel: run untrusted notebook code in an OS sandbox.

A Jupyter kernel whose cells run inside bubblewrap, a tornado proxy that is
the sandbox's only way out, ``%%sandbox`` magics for plain IPython, and the
``srt-kernel`` command line.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext srt_kernel``: register the sandbox magics."""
    from srt_kernel.magics import load_ipython_extension as load

    load(ipython)

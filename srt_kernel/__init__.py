"""srt-kernel: run untrusted notebook code in an OS sandbox.

A Jupyter kernel whose cells run inside bubblewrap, a tornado proxy that is
the sandbox's only way out, ``%%sandbox`` magics for plain IPython, and the
``srt-kernel`` command line.
"""

from __future__ import annotations

__version__ = "0.1.0"

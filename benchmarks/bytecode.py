"""Compile srt_kernel's bytecode before a benchmark measures start-up.

An installed package has its ``.pyc`` files (pip compiles them at install);
an editable checkout writes them on first import, and never when
``PYTHONDONTWRITEBYTECODE`` is set, in which case every start would compile
the sources again and the benchmark would measure the compiler.
"""

from __future__ import annotations

import compileall
from pathlib import Path

import srt_kernel


def compile_package() -> None:
    """Write the ``.pyc`` files of the srt_kernel package being measured."""
    compileall.compile_dir(Path(srt_kernel.__file__).parent, quiet=1)

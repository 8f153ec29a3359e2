"""Loggers that import :mod:`logging` only when something is logged.

Importing :mod:`logging` costs a few milliseconds (it brings threading,
traceback and string formatting with it), which ``srt-kernel run`` would pay
on every start although it rarely logs.  :func:`get_logger` returns a
stand-in that turns into the real :class:`logging.Logger` on first use;
:func:`configure` sets the format the command line prints, applied when
:mod:`logging` is first needed (or at once, when it is already imported).
"""

from __future__ import annotations

import sys

# Not typing.TYPE_CHECKING: importing typing is a cost this module avoids.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any

_pending: dict[str, Any] | None = None


def configure(**basic_config: Any) -> None:
    """``logging.basicConfig(**basic_config)``, now or when logging starts."""
    global _pending
    if "logging" in sys.modules:
        sys.modules["logging"].basicConfig(**basic_config)
    else:
        _pending = basic_config


def _logging() -> Any:
    global _pending
    import logging

    if _pending is not None:
        config, _pending = _pending, None
        logging.basicConfig(**config)
    return logging


class _LazyLogger:
    __slots__ = ("_logger", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: logging.Logger | None = None

    def __getattr__(self, attr: str) -> Any:
        logger = self._logger
        if logger is None:
            logger = self._logger = _logging().getLogger(self._name)
        return getattr(logger, attr)


def get_logger(name: str) -> logging.Logger:
    """The logger called ``name``, created when first used."""
    lazy: Any = _LazyLogger(name)
    return lazy  # type: ignore[no-any-return]

"""The audit log: one JSON object per line for every proxy decision.

Each line is a JSON object with exactly these keys, in this order::

    {"time": "2026-01-01T12:00:00.123456+00:00", "label": "cell 3",
     "protocol": "http", "host": "other.test", "port": 80,
     "decision": "deny", "rule": "not in allowedDomains", "address": null}

* ``time``: ISO-8601, UTC.
* ``label``: what the supervisor was running (``"cell 3"``), may be ``""``.
* ``protocol``: ``"http"`` (absolute-form request), ``"connect"`` (HTTP
  CONNECT tunnel) or ``"socks5"``.
* ``host``: the normalised host (a name, or an address without brackets),
  or the raw text, quoted by JSON, when it was not valid host grammar.
* ``port``: an integer.
* ``decision``: ``"allow"`` or ``"deny"``.
* ``rule``: the sentence naming the rule that decided.
* ``address``: the address dialled or refused, or ``null`` before a lookup.

So ``grep '"decision": "deny"'`` lists every refusal.  Writes are
serialised by a lock; a path is opened for appending with mode 0600.
Callbacks registered with :meth:`AuditLog.subscribe` see every event in the
thread that recorded it, and must not block.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from srt_kernel.log import get_logger
from srt_kernel.record import Record, as_dict

logger = get_logger(__name__)

# Not typing.TYPE_CHECKING: importing typing costs the kernel's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal, TextIO

    Protocol_ = Literal["http", "connect", "socks5"]
    DecisionWord = Literal["allow", "deny"]


class AuditEvent(Record):
    """One decision of the proxy, as written to the log."""

    time: str
    label: str
    protocol: str
    host: str
    port: int
    decision: str
    rule: str
    address: str | None = None

    def to_json(self) -> str:
        """The event as one line of JSON, keys in the documented order."""
        return json.dumps(as_dict(self), ensure_ascii=True)


AuditCallback = Callable[[AuditEvent], None]


class AuditLog:
    """Thread-safe writer of audit events to a file or stream, and callbacks."""

    def __init__(self, target: Path | str | TextIO | None = None) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[AuditCallback] = []
        self._owned = False
        self._stream: TextIO | None
        if target is None:
            self._stream = None
        elif isinstance(target, str | Path):
            # a symlink in its place is refused, not followed
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            fd = os.open(target, flags | os.O_NOFOLLOW, 0o600)
            self._stream = os.fdopen(fd, "a", encoding="utf-8")
            self._owned = True
        else:
            self._stream = target

    def subscribe(self, callback: AuditCallback) -> Callable[[], None]:
        """Call ``callback`` with every future event; returns an unsubscriber."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unsubscribe

    def record(
        self,
        *,
        label: str,
        protocol: Protocol_,
        host: str,
        port: int,
        decision: DecisionWord,
        rule: str,
        address: str | None = None,
    ) -> AuditEvent:
        """Write one event and hand it to the callbacks."""
        event = AuditEvent(
            time=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            label=label,
            protocol=protocol,
            host=host,
            port=port,
            decision=decision,
            rule=rule,
            address=address,
        )
        with self._lock:
            if self._stream is not None:
                self._stream.write(event.to_json() + "\n")
                self._stream.flush()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback(event)
        return event

    def close(self) -> None:
        """Close the file if this log opened it."""
        with self._lock:
            if self._owned and self._stream is not None:
                self._stream.close()
            self._stream = None

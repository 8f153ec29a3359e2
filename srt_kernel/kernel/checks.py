"""Rules for what the inner kernel may send out: it is treated as hostile.

The inner kernel runs the notebook's code, so everything it sends is
hostile until checked.  This module is pure: it holds no sockets.  It
promises that a message :meth:`Gate.check` lets through

- came on a channel that carries its ``msg_type`` from a kernel;
- has, as parent, a request that the frontend really sent (remembered per
  session, a bounded number of them), with the parent header replaced by the
  one the frontend sent, and is routed back only to the frontend that sent
  that request;
- if it is a reply on shell or control, answers a request still waiting for
  a reply, with the matching reply type, once;
- carries nowhere the supervisor's marker key :data:`MARKER`, so nothing
  from inside can pass for the supervisor's own outputs.

A refused message raises :class:`~srt_kernel.errors.KernelError`; the relay
drops it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from srt_kernel.errors import KernelError
from srt_kernel.kernel.messages import JSONDict, Message
from srt_kernel.log import get_logger
from srt_kernel.record import Record

log = get_logger(__name__)

#: The key under which the supervisor marks its own outputs, in the message
#: metadata and in the output's ``metadata``.
MARKER = "srt_kernel"

#: Channels that carry requests from the frontend and replies from the kernel.
REQUEST_CHANNELS = frozenset({"shell", "control"})

#: What the inner kernel may publish on iopub.  ``debug_event`` is missing on
#: purpose: the kernelspec says the debugger is off.
IOPUB_TYPES = frozenset(
    {
        "status",
        "stream",
        "display_data",
        "update_display_data",
        "execute_input",
        "execute_result",
        "error",
        "clear_output",
        "comm_open",
        "comm_msg",
        "comm_close",
        "shutdown_reply",
    }
)

#: What the inner kernel may send on stdin.
STDIN_TYPES = frozenset({"input_request"})

#: Header keys passed on; anything else in a header from inside is dropped.
HEADER_KEYS = ("msg_id", "msg_type", "session", "username", "date", "version")
OPTIONAL_HEADER_KEYS = ("subshell_id",)

#: Execution states a status message may report.
EXECUTION_STATES = frozenset({"busy", "idle", "starting"})


class Request(Record):
    """A request that the frontend sent, as the relay remembers it."""

    channel: str
    header: JSONDict
    idents: tuple[bytes, ...]

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))


def reply_type(request_type: str) -> str | None:
    """Return the reply type of a ``*_request`` type, or None."""
    if request_type.endswith("_request"):
        return request_type[: -len("_request")] + "_reply"
    return None


class RequestTracker:
    """Recent requests of the frontend, per session, bounded.

    ``per_session`` requests are kept for each of the last ``sessions``
    sessions; older ones are forgotten, and output whose parent was forgotten
    is dropped.  Requests awaiting a reply are tracked separately (bounded by
    the same numbers) and consumed by their reply.
    """

    def __init__(self, *, per_session: int = 2048, sessions: int = 64) -> None:
        self._per_session = per_session
        self._sessions = sessions
        self._recent: OrderedDict[str, OrderedDict[str, Request]] = OrderedDict()
        self._awaiting: OrderedDict[str, Request] = OrderedDict()

    def record(self, channel: str, header: JSONDict, idents: list[bytes]) -> Request:
        """Remember a request the frontend sent (its signature was valid)."""
        session = header.get("session")
        msg_id = header.get("msg_id")
        if not isinstance(session, str) or not isinstance(msg_id, str) or not msg_id:
            raise KernelError(
                "A frontend message has no string 'session' and 'msg_id' in "
                "its header; dropped."
            )
        request = Request(channel=channel, header=dict(header), idents=tuple(idents))
        table = self._recent.pop(session, None)
        if table is None:
            table = OrderedDict()
        self._recent[session] = table
        while len(self._recent) > self._sessions:
            self._recent.popitem(last=False)
        table[msg_id] = request
        table.move_to_end(msg_id)
        while len(table) > self._per_session:
            table.popitem(last=False)

        if channel in REQUEST_CHANNELS and reply_type(request.msg_type):
            self._awaiting[msg_id] = request
            limit = self._per_session * self._sessions
            while len(self._awaiting) > limit:
                self._awaiting.popitem(last=False)
        return request

    def find(self, parent: JSONDict) -> Request | None:
        """Return the recorded request that ``parent`` names, if it matches."""
        session = parent.get("session")
        msg_id = parent.get("msg_id")
        if not isinstance(session, str) or not isinstance(msg_id, str):
            return None
        table = self._recent.get(session)
        request = table.get(msg_id) if table is not None else None
        if request is None or parent.get("msg_type") != request.msg_type:
            return None
        return request

    def awaiting(self, msg_id: str) -> Request | None:
        """Return the request ``msg_id`` if it still waits for its reply."""
        return self._awaiting.get(msg_id)

    def answered(self, msg_id: str) -> None:
        """Forget that ``msg_id`` waits for a reply."""
        self._awaiting.pop(msg_id, None)


def strip_marker(value: Any) -> bool:
    """Remove :data:`MARKER` keys from dicts in ``value``; True if any was found."""
    found = False
    if isinstance(value, dict):
        if MARKER in value:
            del value[MARKER]
            found = True
        for item in value.values():
            found = strip_marker(item) or found
    elif isinstance(value, list):
        for item in value:
            found = strip_marker(item) or found
    return found


def clean_header(header: JSONDict) -> JSONDict:
    """Keep only the known header keys, each a string."""
    cleaned: JSONDict = {}
    for key in HEADER_KEYS:
        value = header.get(key, "")
        if not isinstance(value, str):
            raise KernelError(
                f"The header field {key!r} of a kernel message is "
                f"{type(value).__name__}, not a string; dropped."
            )
        cleaned[key] = value
    for key in OPTIONAL_HEADER_KEYS:
        if key in header:
            value = header[key]
            if value is not None and not isinstance(value, str):
                raise KernelError(
                    f"The header field {key!r} of a kernel message is not a "
                    "string; dropped."
                )
            cleaned[key] = value
    if not cleaned["msg_id"] or not cleaned["msg_type"]:
        raise KernelError("A kernel message has no msg_id or msg_type; dropped.")
    return cleaned


class Gate:
    """Checks messages from the inner kernel against the frontend's requests."""

    def __init__(self, tracker: RequestTracker) -> None:
        self.tracker = tracker

    def check(self, channel: str, msg: Message) -> Request | None:
        """Check ``msg``, received from inside on ``channel``, and fix it up.

        On success the message's header is cleaned, its parent header is the
        one the frontend sent, its routing frames are those of that request,
        and marker keys are gone.  Returns the parent request (None only for
        the parentless ``status: starting``).  Raises :class:`KernelError`
        when the message must be dropped.
        """
        msg.header = clean_header(msg.header)
        msg_type = msg.msg_type
        if not isinstance(msg.content, dict):
            raise KernelError(f"A {msg_type} message has no content object.")
        if strip_marker(msg.metadata) | strip_marker(msg.content):
            log.warning(
                "removed the supervisor's marker key %r from a %s message from "
                "the inner kernel",
                MARKER,
                msg_type,
            )

        if channel == "iopub":
            return self._check_iopub(msg)
        if channel == "stdin":
            return self._check_stdin(msg)
        if channel in REQUEST_CHANNELS:
            return self._check_reply(channel, msg)
        raise KernelError(f"The channel {channel!r} carries no kernel messages.")

    def _parent(self, msg: Message) -> Request:
        request = self.tracker.find(msg.parent)
        if request is None:
            raise KernelError(
                f"A {msg.msg_type} message names a parent "
                f"{msg.parent.get('msg_id')!r} that the frontend did not send "
                "(or that was forgotten); dropped."
            )
        msg.parent = dict(request.header)
        return request

    def _check_iopub(self, msg: Message) -> Request | None:
        msg_type = msg.msg_type
        if msg_type not in IOPUB_TYPES:
            raise KernelError(
                f"The inner kernel may not publish {msg_type!r} on iopub; dropped."
            )
        if msg_type == "status":
            state = msg.content.get("execution_state")
            if state not in EXECUTION_STATES:
                raise KernelError(
                    f"A status message reports the state {state!r}; dropped."
                )
            if not msg.parent and state == "starting":
                msg.idents = []
                return None
        request = self._parent(msg)
        if msg_type == "shutdown_reply" and request.msg_type != "shutdown_request":
            raise KernelError(
                "A shutdown_reply on iopub names a parent that is not a "
                "shutdown_request; dropped."
            )
        msg.idents = []
        return request

    def _check_stdin(self, msg: Message) -> Request:
        if msg.msg_type not in STDIN_TYPES:
            raise KernelError(
                f"The inner kernel may not send {msg.msg_type!r} on stdin; dropped."
            )
        request = self._parent(msg)
        if (
            request.msg_type != "execute_request"
            or self.tracker.awaiting(request.msg_id) is None
        ):
            raise KernelError(
                "An input_request names a parent that is not a running "
                "execute_request; dropped."
            )
        if not isinstance(msg.content.get("prompt", ""), str):
            raise KernelError("An input_request has a prompt that is not text.")
        msg.idents = list(request.idents)
        return request

    def _check_reply(self, channel: str, msg: Message) -> Request:
        request = self._parent(msg)
        waiting = self.tracker.awaiting(request.msg_id)
        if waiting is None or waiting.channel != channel:
            raise KernelError(
                f"A {msg.msg_type} on {channel} answers "
                f"{request.msg_id!r}, which waits for no reply on that channel; "
                "dropped."
            )
        expected = reply_type(request.msg_type)
        if msg.msg_type != expected:
            raise KernelError(
                f"A {msg.msg_type} answers a {request.msg_type}, which expects "
                f"a {expected}; dropped."
            )
        self.tracker.answered(request.msg_id)
        msg.idents = list(request.idents)
        return request

"""The relay between the frontend and the sandboxed inner kernel.

The frontend connects, as to any kernel, to five TCP ports on loopback that
the relay binds from the frontend's connection file.  The relay connects to
the inner kernel's five ``ipc://`` socket files and passes messages across,
on a thread of its own:

- frontend to inner: verified with the frontend's key (a replayed signature
  is dropped), remembered as a request, shown to the ``on_request`` hook,
  and re-signed with the inner kernel's key.  The sandbox never holds the
  frontend's key.
- inner to frontend: verified with the inner key, checked by
  :class:`~srt_kernel.kernel.checks.Gate` (channel, type, parent, marker),
  cleaned by :class:`~srt_kernel.kernel.sanitize.Sanitizer`, re-signed with
  the frontend's key and routed only to the frontend that sent the parent
  request.  Anything that fails is dropped and logged.
- heartbeat: relayed, not answered by the relay, so that the frontend sees
  the inner kernel's own liveness (a dead inner kernel is a dead kernel).
  An echo is passed back only to a frontend that has a ping outstanding.
- iopub subscriptions: the frontend's iopub socket is an XPUB, as
  ipykernel's is, and the relay greets every subscription with an
  ``iopub_welcome`` of its own (JEP 65).  The inner kernel's welcome is for
  the relay's subscription and is not passed on.

Before connecting, each socket file is checked with ``lstat``: it must be a
socket owned by this user, so a symlink planted in the sandbox-writable
directory cannot point the relay at another socket.  The inner sockets
never reconnect (``RECONNECT_IVL = -1``).

The supervisor's part: :meth:`Relay.interrupt` sends a signed
``interrupt_request`` to the inner control channel; :meth:`Relay.inject_output`
publishes a supervisor output, marked with ``metadata["srt_kernel"]``; the
``on_idle`` hook may return outputs, which are published between the cell's
last output and its ``idle`` status.  Hooks run on the relay's thread.
"""

from __future__ import annotations

import os
import queue
import socket
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from srt_kernel.errors import KernelError
from srt_kernel.kernel import checks, messages
from srt_kernel.kernel.connection import CHANNELS, Connection
from srt_kernel.kernel.messages import JSONDict, Message, Signer
from srt_kernel.kernel.sanitize import Sanitizer
from srt_kernel.log import get_logger
from srt_kernel.record import Record, field

log = get_logger(__name__)


#: How long the relay waits for the inner kernel to confirm its iopub
#: subscription (ipykernel 7 does at once; older kernels never do).
INNER_WELCOME_TIMEOUT = 5.0

#: Largest heartbeat payload passed on; frontends send a few bytes.
MAX_HEARTBEAT_BYTES = 1024

#: Largest iopub subscription frame answered with a welcome; frontends
#: subscribe to the empty topic.
MAX_SUBSCRIPTION_BYTES = 1024


class Output(Record):
    """An output the supervisor writes: a ``stream`` or a ``display_data``.

    ``content`` is the message content (``{"name": "stderr", "text": ...}``
    or ``{"data": {...}, "metadata": {...}}``); ``marker`` is what goes under
    the ``srt_kernel`` metadata key (what kind of report this is).
    """

    msg_type: str
    content: JSONDict
    marker: JSONDict = field(default_factory=dict)


def check_socket_file(path: str) -> os.stat_result:
    """Check that ``path`` is a socket (not a symlink) owned by this user."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise KernelError(
            f"The inner kernel's socket {path!r} cannot be checked ({exc}); "
            "start the inner kernel and wait for its connection file first."
        ) from exc
    if not stat.S_ISSOCK(info.st_mode):
        raise KernelError(
            f"The inner kernel's socket {path!r} is not a socket file (a symlink "
            "or another file was put there); the relay refuses to connect."
        )
    if info.st_uid != os.getuid():
        raise KernelError(
            f"The inner kernel's socket {path!r} belongs to uid {info.st_uid}, "
            f"not to this user ({os.getuid()}); the relay refuses to connect."
        )
    return info


RequestHook = Callable[[str, Message], None]
ReplyHook = Callable[[str, Message, checks.Request], None]
OutputHook = Callable[[Message, checks.Request], None]
CleanedHook = Callable[[checks.Request, list[str]], None]
IdleHook = Callable[[checks.Request], Sequence[Output]]


class Relay:
    """Relays the five channels between a frontend and the inner kernel.

    ``frontend`` is the frontend's connection (tcp, bound here; a port of 0
    is chosen at bind time, see :attr:`frontend_ports`); ``inner`` the inner
    kernel's (ipc, connected here).  ``allow_active_output`` turns output
    cleaning off; it is read for every message, so the supervisor may change
    it between cells.  ``banner`` replaces the inner kernel's banner in
    ``kernel_info_reply``.
    """

    def __init__(
        self,
        frontend: Connection,
        inner: Connection,
        *,
        allow_active_output: bool = False,
        banner: str | None = None,
        on_request: RequestHook | None = None,
        on_reply: ReplyHook | None = None,
        on_idle: IdleHook | None = None,
        on_output: OutputHook | None = None,
        on_cleaned: CleanedHook | None = None,
        max_bytes: int = messages.DEFAULT_MAX_BYTES,
    ) -> None:
        if frontend.transport != "tcp" or inner.transport != "ipc":
            raise KernelError(
                f"The relay binds tcp for the frontend and connects ipc to the "
                f"inner kernel; got {frontend.transport!r} and {inner.transport!r}."
            )
        self.frontend = frontend
        self.inner = inner
        self.allow_active_output = allow_active_output
        self.banner = banner
        self.on_request = on_request
        self.on_reply = on_reply
        self.on_idle = on_idle
        self.on_output = on_output
        self.on_cleaned = on_cleaned
        self.max_bytes = max_bytes
        self.frontend_ports: dict[str, int] = {}
        self.session = uuid.uuid4().hex

        self._frontend_signer = Signer(frontend.key, frontend.signature_scheme)
        self._inner_signer = Signer(inner.key, inner.signature_scheme)
        self._gate = checks.Gate(checks.RequestTracker())
        self._sanitizer = Sanitizer()
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._pings: dict[bytes, int] = {}
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_address = f"inproc://srt-relay-wake-{self.session}"
        self._context = zmq.Context()
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._replaced = False

    # -- the supervisor's interface ------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Bind, connect and start relaying; raise :class:`KernelError` on failure."""
        self._thread = threading.Thread(
            target=self._run, name="srt-kernel-relay", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise KernelError(f"The relay did not start within {timeout} s.")
        if self._error is not None:
            self._thread.join(timeout)
            if isinstance(self._error, KernelError):
                raise self._error
            raise KernelError(f"The relay could not start: {self._error}") from (
                self._error
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop relaying and close every socket."""
        self._stopping.set()
        self._command("stop", None)
        if self._thread is not None:
            self._thread.join(timeout)
        self._context.term()

    def bind_frontend(
        self, reserved: Mapping[str, socket.socket] | None = None
    ) -> None:
        """Bind the frontend's five ports now (done by :meth:`start` if not).

        ``reserved`` holds listening sockets the supervisor bound first thing
        (:func:`srt_kernel.kernel.connection.reserve_ports`); ZeroMQ takes
        them over, with the connections a frontend made meanwhile (the
        caller closes whatever is not taken).
        """
        reserved = reserved or {}
        ctx = self._context
        kinds = {
            "shell": zmq.ROUTER,
            "control": zmq.ROUTER,
            "stdin": zmq.ROUTER,
            "iopub": zmq.XPUB,
            "hb": zmq.ROUTER,
        }
        for channel, kind in kinds.items():
            sock = ctx.socket(kind)
            sock.linger = 1000
            if kind == zmq.XPUB:
                # Every subscription is seen, so a second frontend is welcomed too.
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
            address = f"tcp://{self.frontend.ip}"
            port = self.frontend.ports[channel]
            held = reserved.get(channel)
            try:
                if held is not None:
                    sock.setsockopt(zmq.USE_FD, held.fileno())
                    sock.bind(f"{address}:{port}")
                    held.detach()  # ZeroMQ owns the descriptor now
                elif port:
                    sock.bind(f"{address}:{port}")
                else:
                    port = sock.bind_to_random_port(address)
            except zmq.ZMQError as exc:
                sock.close()
                raise KernelError(
                    f"Cannot bind the {channel} port {address}:{port} for the "
                    f"frontend ({exc}); choose a free port."
                ) from exc
            self.frontend_ports[channel] = port
            self._sockets[f"f_{channel}"] = sock

    def interrupt(self) -> None:
        """Send a supervisor-signed ``interrupt_request`` to the inner kernel."""
        self._command("interrupt", None)

    def inject_output(self, parent: JSONDict, output: Output) -> None:
        """Publish ``output`` on iopub with ``parent`` (a request header)."""
        if output.msg_type not in {"stream", "display_data"}:
            raise KernelError(
                f"The supervisor can inject stream or display_data outputs, not "
                f"{output.msg_type!r}."
            )
        self._command("inject", (dict(parent), output))

    # -- the thread --------------------------------------------------------

    def _command(self, name: str, value: Any) -> None:
        self._commands.put((name, value))
        if self._ready.is_set() and self._error is None:
            wake = self._context.socket(zmq.PUSH)
            try:
                wake.linger = 1000
                wake.connect(self._wake_address)
                wake.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                log.debug("the relay's wake-up could not be sent", exc_info=True)
            finally:
                wake.close()

    def _run(self) -> None:
        try:
            self._open()
        except BaseException as exc:
            self._error = exc
            self._close()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        finally:
            self._close()

    def _open(self) -> None:
        ctx = self._context
        wake = ctx.socket(zmq.PULL)
        wake.bind(self._wake_address)
        self._sockets["wake"] = wake

        if not self.frontend_ports:
            self.bind_frontend()
        self._connect_inner()

    def _connect_inner(self) -> None:
        """Check each inner socket file, then connect to it once."""
        ctx = self._context
        identity = uuid.uuid4().bytes
        for channel in CHANNELS:
            path = self.inner.ipc_path(channel)
            before = check_socket_file(path)
            kind = zmq.SUB if channel == "iopub" else zmq.DEALER
            sock = ctx.socket(kind)
            sock.linger = 1000
            sock.setsockopt(zmq.RECONNECT_IVL, -1)
            # ipykernel answers input() to the shell request's routing id.
            if channel in {"shell", "stdin"}:
                sock.setsockopt(zmq.ROUTING_ID, identity)
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            self._sockets[f"i_{channel}"] = sock
            sock.connect(f"ipc://{path}")
            after = check_socket_file(path)
            if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
                raise KernelError(
                    f"The inner kernel's socket {path!r} was replaced while the "
                    "relay connected to it; the relay refuses to go on."
                )
        self._await_subscription()

    def _await_subscription(self, timeout: float = INNER_WELCOME_TIMEOUT) -> None:
        """Wait until the inner kernel's iopub has our subscription.

        A subscription takes effect some time after connecting; whatever the
        inner kernel publishes before that is lost (the first cell's status
        and output).  ipykernel 7 says when it has one with an
        ``iopub_welcome`` (JEP 65); an older kernel is given the timeout.
        """
        sock = self._sockets["i_iopub"]
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000), zmq.POLLIN):
                break
            frames = sock.recv_multipart()
            try:
                msg = messages.parse(
                    frames, self._inner_signer, max_bytes=self.max_bytes
                )
            except KernelError:
                continue
            if msg.msg_type == "iopub_welcome":
                return
        log.info("relay: no iopub_welcome from the inner kernel; going on")

    def use_inner(self, inner: Connection) -> None:
        """Set the inner kernel's connection before :meth:`start`."""
        self.inner = inner
        self._inner_signer = Signer(inner.key, inner.signature_scheme)

    def replace_inner(self, inner: Connection) -> None:
        """Relay to a new inner kernel from now on (call from a hook only).

        The supervisor uses it when it rebuilds the sandbox before the first
        cell: the old inner sockets are closed, the new ones checked and
        connected, and the next message goes to the new kernel.
        """
        for channel in CHANNELS:
            sock = self._sockets.pop(f"i_{channel}", None)
            if sock is not None:
                sock.close(linger=0)
        self.inner = inner
        self._inner_signer = Signer(inner.key, inner.signature_scheme)
        self._connect_inner()
        self._replaced = True

    def _close(self) -> None:
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()

    def _loop(self) -> None:
        poller = zmq.Poller()
        handlers: dict[zmq.Socket[bytes], Callable[[list[bytes]], None]] = {}
        for name, sock in self._sockets.items():
            if name == "wake":
                continue
            handlers[sock] = self._handler(name)
            poller.register(sock, zmq.POLLIN)
        poller.register(self._sockets["wake"], zmq.POLLIN)

        while not self._stopping.is_set():
            if self._replaced:
                # the inner sockets were replaced by a hook: poll the new ones
                self._replaced = False
                self._loop()
                return
            events = dict(poller.poll(500))
            if self._sockets["wake"] in events or not events:
                # a command comes with a wake-up once the relay is ready;
                # one queued before that is run at the next time-out
                self._drain_wake()
                self._run_commands()
            for sock, handler in handlers.items():
                if sock not in events or self._replaced:
                    continue
                for _ in range(100):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    handler(frames)
                    if self._inner_replaced():
                        break

    def _inner_replaced(self) -> bool:
        # a method, so that type checkers do not assume a hook left it alone
        return self._replaced

    def _drain_wake(self) -> None:
        wake = self._sockets["wake"]
        while True:
            try:
                wake.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def _run_commands(self) -> None:
        while True:
            try:
                name, value = self._commands.get_nowait()
            except queue.Empty:
                return
            if name == "stop":
                self._stopping.set()
            elif name == "interrupt":
                self._send_interrupt()
            elif name == "inject":
                parent, output = value
                self._publish(parent, output)

    def _handler(self, name: str) -> Callable[[list[bytes]], None]:
        side, channel = name.split("_", 1)
        if channel == "hb":
            return self._hb_in if side == "f" else self._hb_out
        if name == "f_iopub":
            return self._subscribed

        def handle(frames: list[bytes]) -> None:
            try:
                if side == "f":
                    self._inbound(channel, frames)
                else:
                    self._outbound(channel, frames)
            except KernelError as exc:
                log.warning("relay %s %s: %s", side, channel, exc)
            except Exception:
                # An unknown error drops the message: nothing unchecked passes.
                log.exception("relay %s %s: message dropped", side, channel)

        return handle

    # -- frontend to inner -------------------------------------------------

    def _inbound(self, channel: str, frames: list[bytes]) -> None:
        msg = messages.parse(frames, self._frontend_signer, max_bytes=self.max_bytes)
        if msg.signature in self._seen:
            raise KernelError("A frontend message replays a signature; dropped.")
        self._seen[msg.signature] = None
        while len(self._seen) > 100_000:
            self._seen.popitem(last=False)

        if channel in checks.REQUEST_CHANNELS:
            self._gate.tracker.record(channel, msg.header, msg.idents)
        if self.on_request is not None:
            self.on_request(channel, msg)

        _, rest = messages.split(frames)
        signed = rest[1:5]
        out = [
            *msg.idents,
            messages.DELIMITER,
            self._inner_signer.sign(signed),
            *rest[1:],
        ]
        self._sockets[f"i_{channel}"].send_multipart(out)

    def _hb_in(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or sum(map(len, frames)) > MAX_HEARTBEAT_BYTES:
            return
        ident = frames[0]
        if len(self._pings) > 1024 and ident not in self._pings:
            return
        self._pings[ident] = min(self._pings.get(ident, 0) + 1, 64)
        self._sockets["i_hb"].send_multipart(frames)

    def _hb_out(self, frames: list[bytes]) -> None:
        if not frames or sum(map(len, frames)) > MAX_HEARTBEAT_BYTES:
            return
        ident = frames[0]
        pending = self._pings.get(ident, 0)
        if pending <= 0:
            log.warning("relay: dropped a heartbeat echo nobody asked for")
            return
        if pending == 1:
            del self._pings[ident]
        else:
            self._pings[ident] = pending - 1
        self._sockets["f_hb"].send_multipart(frames)

    def _subscribed(self, frames: list[bytes]) -> None:
        """Greet each iopub subscription, as ipykernel does (JEP 65)."""
        for frame in frames:
            if not frame.startswith(b"\x01") or len(frame) > MAX_SUBSCRIPTION_BYTES:
                continue
            topic = frame[1:]
            try:
                subscription = topic.decode("utf-8")
            except UnicodeDecodeError:
                continue
            msg = Message(
                idents=[topic] if topic else [],
                header=messages.new_header("iopub_welcome", self.session),
                parent={},
                metadata={},
                content={"subscription": subscription},
            )
            self._sockets["f_iopub"].send_multipart(
                messages.serialize(msg, self._frontend_signer)
            )

    # -- inner to frontend -------------------------------------------------

    def _outbound(self, channel: str, frames: list[bytes]) -> None:
        msg = messages.parse(frames, self._inner_signer, max_bytes=self.max_bytes)
        if channel == "iopub" and msg.msg_type == "iopub_welcome":
            # ipykernel greets each subscriber (JEP 65); this one is the relay.
            return
        if msg.parent.get("session") == self.session:
            log.debug(
                "relay: answer to the supervisor's %s", msg.parent.get("msg_type")
            )
            return
        if channel == "iopub" and not msg.parent.get("msg_id"):
            # Output from outside any request (start-up, a thread between
            # cells) has no frontend to go to.
            log.debug("relay: dropped a %s with no parent", msg.msg_type)
            return
        request = self._gate.check(channel, msg)
        msg.content = self._sanitizer.clean(
            msg.msg_type, msg.content, allow_active_output=self.allow_active_output
        )
        if request is not None and self._sanitizer.found and self.on_cleaned:
            self.on_cleaned(request, list(self._sanitizer.found))
        if msg.msg_type == "kernel_info_reply":
            msg.content["debugger"] = False
            if self.banner is not None:
                msg.content["banner"] = self.banner

        if request is not None and channel == "iopub" and self.on_output is not None:
            self.on_output(msg, request)
        if (
            request is not None
            and msg.msg_type == "status"
            and msg.content.get("execution_state") == "idle"
            and self.on_idle is not None
        ):
            for output in self.on_idle(request):
                self._publish(request.header, output)

        sock = self._sockets["f_iopub" if channel == "iopub" else f"f_{channel}"]
        sock.send_multipart(messages.serialize(msg, self._frontend_signer))
        if (
            request is not None
            and channel in checks.REQUEST_CHANNELS
            and self.on_reply is not None
        ):
            # told once the reply is on its way: a cell's round trip does
            # not wait for the audit log
            self.on_reply(channel, msg, request)

    def _publish(self, parent: JSONDict, output: Output) -> None:
        content = dict(output.content)
        metadata: JSONDict = {checks.MARKER: dict(output.marker)}
        if output.msg_type == "display_data":
            inner_metadata = dict(content.get("metadata") or {})
            inner_metadata[checks.MARKER] = dict(output.marker)
            content["metadata"] = inner_metadata
            content.setdefault("transient", {})
        msg = Message(
            idents=[],
            header=messages.new_header(output.msg_type, self.session),
            parent=dict(parent),
            metadata=metadata,
            content=content,
        )
        self._sockets["f_iopub"].send_multipart(
            messages.serialize(msg, self._frontend_signer)
        )

    def _send_interrupt(self) -> None:
        msg = Message(
            idents=[],
            header=messages.new_header("interrupt_request", self.session),
            parent={},
            metadata={},
            content={},
        )
        self._sockets["i_control"].send_multipart(
            messages.serialize(msg, self._inner_signer)
        )
        log.info("relay: sent interrupt_request to the inner kernel")

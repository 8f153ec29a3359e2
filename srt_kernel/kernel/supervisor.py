"""The supervisor: the trusted process behind "Python (sandboxed)".

The frontend starts it as it starts any kernel (the kernelspec's argv with
``{connection_file}``).  It:

1. finds the notebook (``SRT_KERNEL_NOTEBOOK``, ``JPY_SESSION_NAME`` or the
   connection file's ``jupyter_session``) and resolves the policy: built-in
   defaults, the user's settings, then the notebook's ``"sandbox"``
   metadata, which may only tighten;
2. starts the proxy (when any host is allowed) and a plain ipykernel inside
   bubblewrap, with its sockets as ``ipc://`` files in a private folder and
   a key of its own;
3. relays the five channels (:mod:`srt_kernel.kernel.relay`), re-reading the
   saved notebook before each cell, labelling the proxy's decisions with the
   cell, and adding a block report under a cell in which something was
   refused (:mod:`srt_kernel.kernel.report`);
4. turns SIGINT into an ``interrupt_request``, and exits when the inner
   kernel does (a dead inner kernel is a dead kernel to the frontend).

Every cell run and every proxy decision goes to the audit log in
srt-kernel's data folder, which the sandbox can neither read nor write.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from srt_kernel import locations
from srt_kernel import policy as pol
from srt_kernel.audit import AuditEvent, AuditLog
from srt_kernel.errors import (
    KernelError,
    PolicyError,
    SandboxUnavailable,
    SrtKernelError,
)
from srt_kernel.hosts import HostPattern, parse_pattern
from srt_kernel.kernel import report
from srt_kernel.kernel.connection import CHANNELS, Connection, reserve_ports
from srt_kernel.kernel.notebook import PolicyState, find_notebook, notebook_policy
from srt_kernel.log import configure as configure_logging
from srt_kernel.log import get_logger
from srt_kernel.record import Record, field, replace
from srt_kernel.sandbox.bwrap import Sandbox
from srt_kernel.sandbox.plan import RUN_INSIDE
from srt_kernel.sandbox.rundir import RunDir

# Not typing.TYPE_CHECKING: importing typing costs the kernel's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    # the relay (ZeroMQ) is imported while the inner kernel starts up
    from srt_kernel.kernel.checks import Request
    from srt_kernel.kernel.messages import Message
    from srt_kernel.kernel.relay import Output, Relay

log = get_logger(__name__)

KERNEL_INSIDE = RUN_INSIDE + "/kernel"
PACKAGES_INSIDE = RUN_INSIDE + "/packages"
POLICY_INSIDE = RUN_INSIDE + "/policy"
#: How long the inner kernel may take to bind its sockets.
START_TIMEOUT = 60.0


def _message_time(msg: Message) -> datetime.datetime:
    """When a message was made (its header's date), or now."""
    date = msg.header.get("date")
    if isinstance(date, str):
        try:
            when = datetime.datetime.fromisoformat(date.replace("Z", "+00:00"))
            if when.tzinfo is not None:
                return when
        except ValueError:
            pass
    return datetime.datetime.now(datetime.timezone.utc)


def vscode_notebook(code: str) -> Path | None:
    """The notebook a VS Code silent request names, or None.

    VS Code names the notebook by assigning ``__vsc_ipynb_file__`` in a
    silent execute before the first cell.  Only a plain assignment of a
    string literal to an existing ``.ipynb`` file is taken.
    """
    if "__vsc_ipynb_file__" not in code:
        return None
    import ast  # only for this rare request: ast is slow to import

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "__vsc_ipynb_file__"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            path = Path(node.value.value)
            if path.is_absolute() and path.suffix == ".ipynb" and path.is_file():
                return path.resolve()
    return None


def cell_narrowing(code: str) -> pol.Layer | None:
    """The network narrowing a ``%%sandbox`` cell asks for, or None.

    Only ``--no-network``, ``--allow`` and ``--deny`` narrow here; anything
    the supervisor cannot read as such means no network for the cell (the
    inner magic then refuses the cell with the reason).
    """
    first = code.lstrip().split("\n", 1)[0]
    if not first.startswith("%%sandbox"):
        return None
    source = "%%sandbox in the cell"
    closed = pol.Layer(source=source, allowed_domains=())
    try:
        words = shlex.split(first[len("%%sandbox") :])
    except ValueError:
        return closed
    allowed: list[HostPattern] = []
    denied: list[HostPattern] = []
    no_network = False
    it = iter(words)
    try:
        for word in it:
            if word == "--no-network":
                no_network = True
            elif word in ("--allow", "--deny"):
                value = next(it)
                pattern = parse_pattern(value, field=word, source=source)
                (allowed if word == "--allow" else denied).append(pattern)
            elif word.startswith(("--allow=", "--deny=")):
                flag, value = word.split("=", 1)
                pattern = parse_pattern(value, field=flag, source=source)
                (allowed if flag == "--allow" else denied).append(pattern)
            else:
                return closed
    except (StopIteration, PolicyError):
        return closed
    if no_network:
        return closed
    return pol.Layer(
        source=source,
        allowed_domains=tuple(allowed) if allowed else None,
        denied_domains=tuple(denied),
    )


def banner(state: PolicyState, notebook: Path | None) -> str:
    net = state.policy.network
    hosts = ", ".join(p.text for p in net.allowed[:5]) or "none"
    if len(net.allowed) > 5:
        hosts += f" and {len(net.allowed) - 5} more"
    writes = ", ".join(state.policy.filesystem.allow_write) or "none"
    where = f"notebook {notebook.name}" if notebook else "no notebook"
    return (
        f"Python {sys.version.split()[0]} in an srt-kernel sandbox ({where}).\n"
        f"Network: {hosts}. Writes: {writes}.\n"
        "Type %sandbox for the whole policy and where each part comes from.\n"
    )


# --------------------------------------------------------------------------
# The supervisor


class CellRecord(Record, frozen=False):
    texts: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    #: When the inner kernel said the cell started and ended (busy, idle).
    started: datetime.datetime | None = None
    ended: datetime.datetime | None = None


class Supervisor:
    """One kernel: a sandbox, a proxy and a relay, and the hooks between."""

    def __init__(self, connection_file: str) -> None:
        self.connection_file = connection_file
        with open(connection_file, encoding="utf-8") as f:
            self.connection_info = json.load(f)
        self.frontend = Connection.from_dict(self.connection_info)
        self.cwd = os.getcwd()
        self.notebook = find_notebook(self.connection_info, self.cwd)
        base_dir = str(self.notebook.parent) if self.notebook else self.cwd
        self.context = locations.gather_context(base_dir)
        user = locations.user_layers(None, self.context)
        self.base = pol.resolve(self.context, user)
        self.state = notebook_policy(self.base, self.notebook, self.context)
        self.started_fs = self.state.policy.filesystem
        self.audit = AuditLog(self._audit_path("network.jsonl"))
        self.cells_log = self._audit_path("cells.jsonl")
        self.audit.subscribe(self._on_audit)
        self.sandbox: Sandbox | None = None
        self.relay: Relay | None = None
        self.cells: dict[str, CellRecord] = {}
        self.current: str | None = None
        self.first_cell_done = False
        self.fs_notice_given = False
        self.narrowings: dict[str, pol.Layer] = {}
        self.denials: list[AuditEvent] = []
        self.lost_reported: set[str] = set()
        #: (inode, size, mtime) of the notebook when its metadata was last read.
        self.notebook_stamp: tuple[int, ...] = ()
        #: Whether a cell (a non-silent execute_request) was sent yet.
        self.cell_seen = False
        self.lock = threading.Lock()

    # -- start and stop ----------------------------------------------------

    def _audit_path(self, name: str) -> Path:
        folder = Path(locations.data_dir()) / "audit"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / name

    def _inner_files(self, kernel_dir: Path) -> Connection:
        key = os.urandom(32).hex()
        inner: dict[str, object] = {
            "transport": "ipc",
            "ip": f"{KERNEL_INSIDE}/k",
            "key": key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "srt-kernel-inner",
        }
        for number, channel in enumerate(CHANNELS, start=1):
            inner[f"{channel}_port"] = number
        path = kernel_dir / "connection.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(inner, f)
        host_view = dict(inner, ip=str(kernel_dir / "k"))
        return Connection.from_dict(host_view)

    def _packages_dir(self) -> Path:
        """The notebook's own package folder (``%pip`` installs there).

        One per notebook (or per working folder without one), in
        srt-kernel's data folder: outside every writable root, so nothing
        but this kernel's sandbox, where it is mounted, can write it.
        """
        import hashlib  # here: it loads OpenSSL, which start-up need not wait for

        key = str(self.notebook) if self.notebook else self.cwd
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        folder = Path(locations.data_dir()) / "packages" / digest
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    def _notebook_protection(self, policy: pol.Policy) -> pol.Policy:
        """The notebook file and what Jupyter writes beside it, protected."""
        if self.notebook is None:
            return policy
        folder = self.notebook.parent
        extra = (
            str(self.notebook),
            str(folder / f".~{self.notebook.name}"),  # the server's save copy
            str(folder / ".ipynb_checkpoints"),
        )
        return replace(policy, protected=policy.protected + extra)

    def _launch(
        self, while_starting: Callable[[], None] | None = None
    ) -> tuple[Sandbox, Connection]:
        """Start a sandbox with the inner kernel; return it when it is ready.

        ``while_starting`` runs once the inner kernel is starting, before
        waiting for it.
        """
        policy = self._notebook_protection(self.state.policy)
        run = RunDir.create(locations.runtime_root())
        kernel_dir = Path(run.path) / "kernel"
        kernel_dir.mkdir(mode=0o700)
        policy_dir = Path(run.path) / "policy"
        policy_dir.mkdir(mode=0o700)
        self._write_policy_files(policy_dir)
        inner = self._inner_files(kernel_dir)

        seccomp = "--no-seccomp" if policy.run_without_seccomp else "--seccomp"
        command = [
            # not resolved: a virtual environment is found from this path
            sys.executable,
            # isolated: neither the notebook's folder nor its package folder
            # (both writable by cells) nor PYTHON* variables count before
            # the inner kernel's seccomp filter is on (inner.init_path)
            "-I",
            "-m",
            "srt_kernel.kernel.inner",
            seccomp,
            "-f",
            f"{KERNEL_INSIDE}/connection.json",
            "--IPKernelApp.extensions=['srt_kernel.magics']",
        ]
        cwd = str(self.notebook.parent) if self.notebook else self.cwd
        sandbox = Sandbox(
            policy,
            command,
            cwd=cwd,
            audit=self.audit,
            run=run,
            init_seccomp=False,
            always_proxy=True,
            defer_proxy=True,
            binds=(
                (str(kernel_dir), KERNEL_INSIDE, True),
                (str(policy_dir), POLICY_INSIDE, False),
                (str(self._packages_dir()), PACKAGES_INSIDE, True),
            ),
            extra_env={
                "SRT_KERNEL_POLICY": f"{POLICY_INSIDE}/policy.txt",
                # %pip installs here, and the kernel imports from here: the
                # interpreter's own site-packages is read-only in the sandbox
                "PIP_TARGET": PACKAGES_INSIDE,
                "PYTHONPATH": PACKAGES_INSIDE,
                # what the inner kernel runs before its filter is on (ipykernel's
                # imports run `uname -p`) comes from the system's folders, not
                # from one on the user's PATH that a cell could write; the
                # user's PATH is back once the filter is on (inner.init_path)
                "PATH": "/usr/bin:/bin",
                "SRT_KERNEL_PATH": os.environ.get("PATH", os.defpath),
                # -I turns the user's site-packages off; the inner kernel
                # turns it back on (after its filter) if this one has it
                "SRT_KERNEL_USER_SITE": "1" if _user_site_enabled() else "",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            },
        )
        try:
            process = sandbox.start(
                # the inner kernel's own stdout carries only start-up chatter;
                # cells' output reaches the frontend through iopub
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=sys.stderr,
            )
            # while the inner kernel starts up: no cell can run before the relay
            sandbox.start_proxy()
            if while_starting is not None:
                while_starting()
            self._wait_for_sockets(inner, process)
        except BaseException:
            sandbox.close()
            raise
        self.started_fs = policy.filesystem
        return sandbox, inner

    def start(self) -> None:
        """Start the sandbox, the proxy and the relay; raise on any failure."""
        relays: list[Relay] = []
        # The frontend's ports are bound now, and handed to ZeroMQ (imported
        # while the inner kernel starts up): a frontend's early connections
        # wait in their backlogs.  The inner side is filled in once ready.
        reserved = reserve_ports(self.frontend)

        def bind_frontend() -> None:
            from srt_kernel.kernel.relay import Relay

            placeholder = Connection(
                "ipc", "", dict.fromkeys(CHANNELS, 0), os.urandom(32).hex().encode()
            )
            relay = Relay(
                self.frontend,
                placeholder,
                allow_active_output=self.state.policy.allow_active_output,
                banner=banner(self.state, self.notebook),
                on_request=self._on_request,
                on_output=self._on_output,
                on_cleaned=self._on_cleaned,
                on_reply=self._on_reply,
                on_idle=self._on_idle,
            )
            relay.bind_frontend(reserved)
            relays.append(relay)

        try:
            self.sandbox, inner = self._launch(while_starting=bind_frontend)
        finally:
            for sock in reserved.values():
                sock.close()  # taken over ones were detached: nothing to do
        relay = relays[0]
        relay.use_inner(inner)
        self.relay = relay
        relay.start()

    def _adopt_notebook(self, notebook: Path) -> None:
        """VS Code named the notebook: apply its policy before the first cell.

        The network part goes to the proxy; when the files part differs from
        the one the sandbox was built with, the sandbox is built again and
        the relay moves to the new inner kernel (no cell has run yet, so no
        state is lost).
        """
        self.notebook = notebook
        self.context = locations.gather_context(str(notebook.parent))
        self.base = pol.resolve(self.context, locations.user_layers(None, self.context))
        self.state = notebook_policy(self.base, notebook, self.context)
        wanted = self._notebook_protection(self.state.policy)
        if self.relay is None or self.sandbox is None:
            return
        have = self.sandbox.policy
        if (wanted.filesystem, wanted.protected, wanted.unprotected) == (
            have.filesystem,
            have.protected,
            have.unprotected,
        ):
            self._apply_network()
            return
        old = self.sandbox
        try:
            new, inner = self._launch()
        except SrtKernelError as exc:
            log.error("rebuilding the sandbox for %s failed: %s", notebook, exc)
            old.close()  # fail closed: the kernel dies rather than run unsandboxed
            raise
        self.sandbox = new
        self.relay.replace_inner(inner)
        old.close()
        self._apply_network()

    def _wait_for_sockets(
        self, inner: Connection, process: subprocess.Popen[bytes]
    ) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        paths = [inner.ipc_path(c) for c in CHANNELS]
        while not all(os.path.lexists(p) for p in paths):
            if process.poll() is not None:
                raise KernelError(
                    f"the sandboxed kernel exited with status {process.returncode} "
                    "before it was ready; its messages are above."
                )
            if time.monotonic() > deadline:
                raise KernelError(
                    f"the sandboxed kernel did not bind its sockets within "
                    f"{START_TIMEOUT:.0f} s."
                )
            time.sleep(0.002)  # five lstat calls a poll; start-up waits on it

    def wait(self) -> int:
        """Relay until the inner kernel exits; return the exit status."""
        while True:
            sandbox = self.sandbox
            assert sandbox is not None
            status = sandbox.wait()
            if self.sandbox is sandbox:
                return status
            # the sandbox was rebuilt for the notebook: wait for the new one

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
        self.audit.close()

    def interrupt(self) -> None:
        if self.relay is not None:
            self.relay.interrupt()

    def describe(self) -> str:
        lines = []
        if self.notebook is not None:
            lines.append(f"Notebook: {self.notebook}")
        lines.append(pol.describe(self.state.policy))
        if self.state.problem:
            lines.append("Problem: " + self.state.problem)
        return "\n".join(lines) + "\n"

    # -- hooks (run on the relay's thread) ----------------------------------

    def _on_audit(self, event: AuditEvent) -> None:
        if event.decision != "deny":
            return
        with self.lock:
            self.denials.append(event)
            del self.denials[:-1000]

    def _denials_between(
        self, start: datetime.datetime | None, end: datetime.datetime | None
    ) -> list[AuditEvent]:
        """Refusals from ``start`` (the cell's busy) to ``end`` (its idle).

        Attributed by time rather than by the proxy's label: the cell's
        first connection can come before the relay has seen its busy status.
        The proxy records a refusal before it answers, so every refusal of
        the cell is recorded by the time its idle status arrives.
        """
        if start is None:
            return []
        with self.lock:
            events = list(self.denials)
        out = []
        for event in events:
            try:
                when = datetime.datetime.fromisoformat(event.time)
            except ValueError:
                continue
            if when >= start and (end is None or when <= end):
                out.append(event)
        return out

    def _on_request(self, channel: str, msg: Message) -> None:
        if channel != "shell" or msg.msg_type != "execute_request":
            return
        code = str(msg.content.get("code", ""))
        if msg.content.get("silent") and not self.cell_seen and self.notebook is None:
            announced = vscode_notebook(code)
            if announced is not None:
                self._adopt_notebook(announced)
        if not msg.content.get("silent"):
            self.cell_seen = True
        with self.lock:
            self.cells[msg.msg_id] = CellRecord()
            while len(self.cells) > 1000:
                self.cells.pop(next(iter(self.cells)))
        self._reread_policy()
        narrowing = cell_narrowing(code)
        if narrowing is not None:
            # Applied before the request reaches the inner kernel, and held
            # until the cell is idle: no connection of the cell can start
            # before it.  Cells still running before it are narrowed too.
            self.narrowings[msg.msg_id] = narrowing
            self._apply_network()

    def _apply_network(self) -> None:
        network = self.state.policy.network
        for layer in self.narrowings.values():
            network = pol.tighten(pol.Policy(network=network), layer).network
        if self.sandbox is not None and self.sandbox.proxy is not None:
            self.sandbox.proxy.set_policy(network)

    def _write_policy_files(self, folder: Path) -> None:
        """What ``%sandbox`` shows inside, and what ``%%sandbox`` checks."""
        (folder / "policy.txt").write_text(self.describe())
        allowed = [p.text for p in self.state.policy.network.allowed]
        (folder / "policy.json").write_text(json.dumps({"allowedDomains": allowed}))

    def _reread_policy(self) -> None:
        """Re-read the saved notebook: tighten the network from the next cell."""
        if self.notebook is None:
            return
        # Only a saved change matters: skip parsing when the file is as it was.
        try:
            st = self.notebook.stat()
            stamp: tuple[int, ...] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = ()
        if stamp and stamp == self.notebook_stamp:
            return
        self.notebook_stamp = stamp
        state = notebook_policy(self.base, self.notebook, self.context)
        changed = state.policy.network != self.state.policy.network
        self.state = replace(
            state, notes=self.state.notes if self.first_cell_done else state.notes
        )
        if changed:
            self._apply_network()
            if self.sandbox is not None and self.sandbox.run is not None:
                self._write_policy_files(Path(self.sandbox.run.path) / "policy")

    def _on_output(self, msg: Message, request: Request) -> None:
        if request.msg_type != "execute_request":
            return
        msg_id = request.msg_id
        if msg.msg_type == "status" and msg.content.get("execution_state") == "busy":
            self.current = msg_id
            if self.sandbox is not None and self.sandbox.proxy is not None:
                self.sandbox.proxy.set_label(msg_id)
            with self.lock:
                record = self.cells.get(msg_id)
                if record is not None:
                    record.started = _message_time(msg)
            return
        if msg.msg_type == "status" and msg.content.get("execution_state") == "idle":
            with self.lock:
                record = self.cells.get(msg_id)
                if record is not None:
                    record.ended = _message_time(msg)
            return
        text = ""
        if msg.msg_type == "stream":
            text = str(msg.content.get("text", ""))
        elif msg.msg_type == "error":
            evalue = str(msg.content.get("evalue", ""))
            traceback = [str(t) for t in msg.content.get("traceback", [])]
            text = "\n".join([evalue, *traceback[-3:]])
        if text:
            with self.lock:
                record = self.cells.get(msg_id)
                if record is not None and len(record.texts) < 200:
                    record.texts.append(text[-20000:])

    def _on_cleaned(self, request: Request, found: list[str]) -> None:
        with self.lock:
            record = self.cells.get(request.msg_id)
            if record is not None:
                record.cleaned.extend(f for f in found if f not in record.cleaned)

    def _on_reply(self, channel: str, msg: Message, request: Request) -> None:
        if msg.msg_type != "execute_reply":
            return
        self._log_cell(request, msg)

    def _log_cell(self, request: Request, reply: Message) -> None:
        entry = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "label": request.msg_id,
            "notebook": str(self.notebook) if self.notebook else None,
            "execution_count": reply.content.get("execution_count"),
            "status": reply.content.get("status"),
        }
        with contextlib.suppress(OSError):
            fd = os.open(self.cells_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(json.dumps(entry) + "\n")

    def _on_idle(self, request: Request) -> list[Output]:
        from srt_kernel.kernel.relay import Output

        if request.msg_type != "execute_request":
            return []
        narrowing = self.narrowings.pop(request.msg_id, None)
        if narrowing is not None:
            self._apply_network()
        with self.lock:
            record = self.cells.pop(request.msg_id, CellRecord())
        outputs: list[Output] = []

        notices = []
        if not self.first_cell_done:
            self.first_cell_done = True
            if self.state.problem:
                notices.append(self.state.problem)
            notices.extend(self.state.notes)
        elif self.state.problem:
            notices.append(self.state.problem)
        if self.state.policy.filesystem != self.started_fs and not self.fs_notice_given:
            self.fs_notice_given = True
            notices.append(
                "the notebook's filesystem policy changed; it applies after a "
                "kernel restart."
            )
        if notices:
            text = "".join(f"srt-kernel: {n}\n" for n in notices)
            outputs.append(
                Output("stream", {"name": "stderr", "text": text}, {"kind": "notice"})
            )

        blocks = self._blocks(record, narrowing) + self._neutralise()
        if blocks:
            outputs.append(
                Output(
                    "display_data",
                    {"data": {"text/plain": report.render(blocks)}, "metadata": {}},
                    {"kind": "block-report", "count": len(blocks)},
                )
            )
        return outputs

    def _neutralise(self) -> list[report.Block]:
        """Protected names that appeared during the cell, moved out of the way.

        A mount protects a name that exists (or has a placeholder) at launch;
        one created deeper, or re-created after the Jupyter server removed
        its save copy, is found here after the cell and renamed (a symlink
        is removed: it holds no data), so no trusted tool reads it.
        """
        if self.sandbox is None:
            return []
        blocks = []
        for path in self.sandbox.created_protected(include_links=True):
            target = Path(path)
            try:
                if target.is_symlink():
                    target.unlink()
                    done = "the symlink was removed"
                else:
                    aside = target.with_name(target.name + ".blocked-by-srt-kernel")
                    target.rename(aside)
                    done = f"it was renamed to {aside.name}"
            except OSError as exc:
                done = f"it could not be moved away ({exc.strerror}); delete it"
            self.sandbox.protected_before.discard(path)
            blocks.append(
                report.Block(
                    "write",
                    path,
                    "a protected name (read or run by git, your shell or Jupyter) "
                    "was created during the cell",
                    f"nothing: {done}",
                )
            )
        for path in self.sandbox.lost_protection():
            if path in self.lost_reported:
                continue
            self.lost_reported.add(path)
            blocks.append(
                report.Block(
                    "write",
                    path,
                    "this protected path was replaced since the kernel started "
                    "(by a tool on your machine, or by code here after that), so "
                    "its protection is gone",
                    "review it, then restart the kernel to protect it again",
                )
            )
        return blocks

    def _advice(self, narrowing: pol.Layer | None) -> report.Advice:
        """What the cell's fixes may point at: settings, metadata, the cell."""
        return report.Advice(
            settings=locations.settings_hint(),
            base=self.base,
            policy=self.state.policy,
            cell=narrowing,
            closed=report.METADATA if self.state.problem else "",
        )

    def _blocks(
        self, record: CellRecord, narrowing: pol.Layer | None = None
    ) -> list[report.Block]:
        blocks: list[report.Block] = []
        seen: set[tuple[str, int]] = set()
        advice = self._advice(narrowing)
        for event in self._denials_between(record.started, record.ended):
            if (event.host, event.port) in seen:
                continue
            seen.add((event.host, event.port))
            blocks.append(
                report.network_block(
                    event.host, event.port, event.rule, event.address, advice
                )
            )
        if record.cleaned:
            blocks.append(report.output_block(record.cleaned, advice))
        plan = self.sandbox.plan if self.sandbox is not None else None
        if plan is not None:
            cwd = str(self.notebook.parent) if self.notebook else self.cwd
            for op, path in report.file_paths(record.texts, cwd):
                block = report.file_block(
                    op, path, plan.resolved, plan.protected, advice
                )
                if block is not None:
                    blocks.append(block)
        return blocks


def settings_problem(exc: PolicyError) -> str:
    """What every cell says when the user's settings cannot be used."""
    text = str(exc).rstrip()
    if not text.endswith("."):
        text += "."
    return (
        f"your srt-kernel settings cannot be used, so no cell runs: {text} "
        "Fix the settings, then restart the kernel."
    )


def _user_site_enabled() -> bool:
    import site

    return bool(site.ENABLE_USER_SITE)


def main(argv: list[str] | None = None) -> int:
    """``python -m srt_kernel.kernel -f CONNECTION_FILE``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "-f":
        print("usage: python -m srt_kernel.kernel -f CONNECTION_FILE", file=sys.stderr)
        return 2
    configure_logging(level="WARNING", format="srt-kernel: %(message)s")
    if sys.path and sys.path[0] in ("", os.getcwd()):
        # A kernelspec from before -P: ``python -m`` put the notebook's
        # folder, which cells can write, first on sys.path.  Nothing more is
        # imported from it; reinstalling the kernelspec closes the start too.
        del sys.path[0]
        log.warning(
            "this kernelspec starts srt-kernel with the notebook's folder on "
            "sys.path, so files a cell wrote there could run outside the "
            "sandbox when the kernel starts; reinstall it: srt-kernel install "
            "--user (or the option you installed it with)"
        )
    supervisor: Supervisor | None = None
    try:
        try:
            supervisor = Supervisor(args[1])
        except PolicyError as exc:
            # Invalid settings: a live kernel that runs nothing and says why,
            # rather than a dead one (see srt_kernel.kernel.refusal).
            print(f"srt-kernel: error: {exc}", file=sys.stderr)
            from srt_kernel.kernel.refusal import serve

            return serve(args[1], settings_problem(exc))
        sup = supervisor

        def on_interrupt(_signum: int, _frame: FrameType | None) -> None:
            sup.interrupt()

        def on_term(_signum: int, _frame: FrameType | None) -> None:
            if sup.sandbox is not None:
                sup.sandbox.close()

        signal.signal(signal.SIGINT, on_interrupt)
        signal.signal(signal.SIGTERM, on_term)
        supervisor.start()
        return supervisor.wait()
    except SandboxUnavailable as exc:
        print(f"srt-kernel: {exc}\n\n{exc.diagnosis}", file=sys.stderr)
        return 125
    except SrtKernelError as exc:
        print(f"srt-kernel: {exc}", file=sys.stderr)
        return 125
    finally:
        if supervisor is not None:
            supervisor.close()

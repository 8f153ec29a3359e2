"""Launch a command in bubblewrap under a policy: the IO side of the plan.

:class:`Sandbox` gathers the facts, plans, creates the private run
directory and placeholders, and starts bubblewrap from the calling thread
(``--die-with-parent`` fires when the thread that started bubblewrap exits,
so start it from a thread that lives as long as the sandbox).  When the
policy allows any host it puts the proxy's listening sockets into the
sandbox's network namespace (:mod:`.netns`) before the command runs, and
starts the proxy on them.  :func:`run_command` adds what a
terminal user needs: a pseudo-terminal when stdin is one, forwarding of
INT, TERM, HUP and window-size changes, and the command's exit status.

Fails closed: when any step fails, the command does not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import tty
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType

from srt_kernel import locations
from srt_kernel.errors import PolicyError, SandboxError, SandboxUnavailable
from srt_kernel.log import get_logger
from srt_kernel.policy import Policy, is_within
from srt_kernel.record import Record, field
from srt_kernel.sandbox import facts as fsfacts
from srt_kernel.sandbox.plan import PROXY_PORTS, LaunchSpec, SandboxPlan, plan_sandbox
from srt_kernel.sandbox.rundir import RunDir

# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import IO, Any

    from srt_kernel.audit import AuditLog
    from srt_kernel.proxy.server import ProxyServer

logger = get_logger(__name__)

#: Exit status of the launcher when the sandbox could not be built.
SANDBOX_FAILED = 125


def which(name: str, path: str | None = None) -> str | None:
    """The executable ``name`` would run, searched on ``path`` (or $PATH).

    ``shutil.which`` for POSIX, here because importing shutil (and the
    compression modules it brings) would cost every run a millisecond or two.
    """
    if "/" in name:
        return name if _executable(name) else None
    search = os.environ.get("PATH", os.defpath) if path is None else path
    if not search:
        return None
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if _executable(candidate):
            return candidate
    return None


def _executable(path: str) -> bool:
    return os.access(path, os.X_OK) and not os.path.isdir(path)


#: The folders bubblewrap is taken from when found on $PATH: the system's
#: own, which no sandbox can write.  A folder a cell can write (a project's
#: ``.venv/bin``, ``~/bin``, ``.``) must never supply the program that
#: builds the next sandbox, which runs on the host.
TRUSTED_BIN = ("/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin")


def locate_bwrap() -> str | None:
    """bubblewrap from ``$SRT_KERNEL_BWRAP`` (an absolute path, set by the
    user), else the first system folder on $PATH that has it."""
    chosen = os.environ.get("SRT_KERNEL_BWRAP")
    if chosen:
        return chosen if os.path.isabs(chosen) and _executable(chosen) else None
    search = os.environ.get("PATH", os.defpath)
    trusted = [f for f in search.split(os.pathsep) if f.rstrip("/") in TRUSTED_BIN]
    return which("bwrap", os.pathsep.join(trusted))


def find_bwrap() -> str:
    """The bubblewrap executable, or :class:`SandboxUnavailable` with the fix."""
    path = locate_bwrap()
    if path is None:
        from srt_kernel import doctor

        elsewhere = which("bwrap")
        if os.environ.get("SRT_KERNEL_BWRAP"):
            problem = (
                f"SRT_KERNEL_BWRAP={os.environ['SRT_KERNEL_BWRAP']!r} is not the "
                "absolute path of a program"
            )
        elif elsewhere is not None:
            problem = (
                f"bubblewrap was found only at {elsewhere}, outside the system "
                f"folders ({', '.join(TRUSTED_BIN)}); a folder a sandbox might "
                "write never supplies it (set SRT_KERNEL_BWRAP to its absolute "
                "path if you trust it)"
            )
        else:
            problem = "bubblewrap (bwrap) is not installed"
        raise SandboxUnavailable(
            f"{problem}, so no sandbox can be built and the command was not run.",
            diagnosis=doctor.install_hint(),
        )
    return path


def _package_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


class Sandbox(Record, frozen=False):
    """One running sandbox.  Use as a context manager, or call :meth:`close`."""

    policy: Policy
    command: Sequence[str]
    cwd: str
    tty: bool = False
    env: Mapping[str, str] | None = None
    audit: Any = None
    #: Without ``audit``: the file the proxy's decisions are appended to,
    #: opened only when the proxy starts (``srt-kernel run``).
    audit_path: str | None = None
    label: str = ""
    run: RunDir | None = None
    plan: SandboxPlan | None = None
    process: subprocess.Popen[bytes] | None = None
    proxy: Any = None
    child_pid: int | None = None
    #: Private folders bound under /run/srt-kernel (see LaunchSpec.binds).
    binds: Sequence[tuple[str, str, bool]] = ()
    #: Apply the seccomp filter before executing the command.  The kernel
    #: turns this off: its inner kernel applies the filter to itself once
    #: its sockets are bound.
    init_seccomp: bool = True
    #: Start the proxy even when no host is allowed, so that every attempt
    #: is refused with a reason and recorded (the kernel does this).
    always_proxy: bool = False
    #: Leave the proxy to :meth:`start_proxy`, called after bubblewrap is
    #: started, so that its start overlaps the command's own.  Only for a
    #: command that makes no connection before the caller says so (the
    #: kernel: no cell runs before the relay is up); such a command is not
    #: held until the proxy's sockets are in, they are put in as it starts.
    defer_proxy: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    protected_before: set[str] = field(default_factory=set)
    links_before: set[str] = field(default_factory=set)
    #: (device, inode) of each protected path held by a mount, at launch.
    held: dict[str, tuple[int, int]] = field(default_factory=dict)
    _info: tuple[int, int] | None = None
    _seccomp_fd: int | None = None
    #: Guards ``proxy`` against a close() while the proxy is still starting.
    _proxy_lock: threading.Lock = field(default_factory=threading.Lock)
    _proxy_closed: bool = False
    #: Closed to wake the thread that waits to start the proxy on first use.
    _proxy_wake: int | None = None
    #: bubblewrap waits on the read end until the proxy's sockets are in place.
    _block: tuple[int, int] | None = None
    #: The proxy's listening sockets in the sandbox, until a proxy takes them.
    _listeners: dict[str, socket.socket] | None = None

    def prepare(self) -> SandboxPlan:
        """Gather facts and plan, without starting anything."""
        if os.environ.get("SRT_KERNEL_SANDBOX") == "1":
            # said before anything fails for it (placeholders in read-only
            # folders, bubblewrap refused a user namespace); doctor is
            # imported only here, as a run pays for every import
            from srt_kernel import doctor

            raise SandboxUnavailable(
                "this is already inside an srt-kernel sandbox, where no sandbox "
                "can be built, so the command was not run.",
                diagnosis=doctor.NESTED_FIX,
            )
        bwrap = find_bwrap()
        if self.run is None:
            self.run = RunDir.create(locations.runtime_root())
        keep = [sys.prefix, os.path.realpath(sys.executable), _package_parent()]
        facts = fsfacts.gather(self.policy, extra=keep)
        self.protected_before = set(facts.found)
        self.links_before = {p for p in self.policy.protected if os.path.islink(p)}
        # bubblewrap reports the sandbox's pid on this pipe; the fd keeps its
        # number in the child (pass_fds), so the plan can name it.
        self._info = os.pipe()
        if self._wants_proxy() and not self.defer_proxy:
            # the command may connect at once: it waits for the sockets
            self._block = os.pipe()
        if self.init_seccomp and not self.tty:
            self._seccomp_fd = _seccomp_program(self.policy)
        spec = LaunchSpec(
            command=tuple(self.command),
            cwd=self.cwd,
            run_dir=self.run.path,
            host_env=dict(os.environ if self.env is None else self.env),
            bwrap=bwrap,
            python=os.path.realpath(sys.executable),
            package_parent=_package_parent(),
            network=self._wants_proxy(),
            seccomp=self.init_seccomp,
            tty=self.tty,
            info_fd=self._info[1],
            block_fd=self._block[0] if self._block is not None else None,
            keep_visible=tuple(keep),
            extra_env=dict(self.extra_env),
            binds=tuple(self.binds),
            seccomp_fd=self._seccomp_fd,
        )
        self.plan = plan_sandbox(self.policy, facts, spec)
        cwd = os.path.realpath(self.cwd)
        # a read-denied folder itself is there (empty); one inside it is not
        resolved = self.plan.resolved
        if not resolved.readable(cwd) and cwd not in resolved.deny_read:
            raise PolicyError(
                f"the working folder {self.cwd} is read-denied by the policy, so "
                "the command could not even start there; run it from another "
                "folder, or re-allow this one with filesystem.allowRead.",
                field="filesystem.denyRead",
                value=self.cwd,
                source="policy",
            )
        return self.plan

    def start(
        self,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Create placeholders, start bubblewrap, put the proxy's sockets in.

        With a network, bubblewrap waits before it runs the command until
        the proxy's listening sockets are in the sandbox (:mod:`.netns`);
        the proxy itself starts on the first connection, or with
        :meth:`start_proxy` when ``defer_proxy`` is set.
        """
        plan = self.plan or self.prepare()
        assert self.run is not None
        if plan.direct and which(self.command[0], path=plan.env.get("PATH")) is None:
            self.close()
            raise CommandNotFound(self.command[0])
        try:
            self.run.make_placeholders(plan.placeholders)
            self.run.record_uses(list(plan.protected))
            self.held = {
                p: i for p in plan.protected if (i := _identity(p)) is not None
            }
            assert self._info is not None
            info_r, info_w = self._info
            self._info = None
            fds = [info_w]
            if self._seccomp_fd is not None:
                fds.append(self._seccomp_fd)
            if self._block is not None:
                # bubblewrap holds the write end too, so its wait never ends
                # in end-of-file: a launcher killed before it lets the
                # command run leaves the command unrun, never unsupervised
                fds.extend(self._block)
            try:
                self.process = subprocess.Popen(
                    list(plan.argv),
                    env=dict(plan.env),
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    pass_fds=fds,
                    start_new_session=True,
                )
            except BaseException:
                os.close(info_r)
                raise
            finally:
                os.close(info_w)
                if self._seccomp_fd is not None:
                    os.close(self._seccomp_fd)
                    self._seccomp_fd = None
            self.child_pid = _read_child_pid(info_r)
            if self.child_pid is not None and self._wants_proxy():
                try:
                    self._place_listeners(self.child_pid)
                except (SandboxError, OSError):
                    if self.process.poll() is None:
                        raise
                    self.child_pid = None  # bubblewrap itself failed: below
        except BaseException:
            self.close()
            raise
        if self.child_pid is None:
            status = self.process.wait()
            self.close()
            from srt_kernel import doctor

            raise SandboxUnavailable(
                f"bubblewrap could not build the sandbox (it exited with "
                f"status {status} before starting the command), so the command "
                "was not run.",
                diagnosis=doctor.diagnose().text(),
            )
        return self.process

    def _wants_proxy(self) -> bool:
        return self.policy.network.enabled or self.always_proxy

    def _place_listeners(self, child_pid: int) -> None:
        """Put the proxy's sockets in the sandbox, then let the command run.

        With ``defer_proxy`` the command was not held (it connects nowhere
        before the caller starts the proxy, and it starts up meanwhile).
        """
        from srt_kernel.sandbox.netns import listen_inside

        assert self.process is not None
        self._listeners = listen_inside(child_pid, self.process.pid, PROXY_PORTS)
        if not self.defer_proxy:
            self._start_proxy_behind()
        if self._block is None:
            return
        block_r, block_w = self._block
        self._block = None
        os.close(block_r)
        try:
            os.write(block_w, b"1")
        finally:
            os.close(block_w)

    def _take_listeners(self) -> dict[str, socket.socket]:
        listeners, self._listeners = self._listeners, None
        if listeners is None:
            raise SandboxError("the proxy's sockets were already taken or closed")
        return listeners

    def start_proxy(self) -> None:
        """Start the proxy (done on first use unless ``defer_proxy``)."""
        self.proxy = self._serve(self._take_listeners())

    def _serve(self, listeners: dict[str, socket.socket]) -> ProxyServer:
        """A started proxy on the sandbox's listening sockets."""
        from srt_kernel.proxy.server import ProxyServer

        if self.audit is None and self.audit_path is not None:
            self.audit = _open_audit_log(self.audit_path)
        proxy = ProxyServer(
            self.policy.network, audit=self.audit, label=self.label, listeners=listeners
        )
        proxy.start()
        return proxy

    def _start_proxy_behind(self) -> None:
        """Start the proxy's server on the sandbox's first connection.

        Importing the server (tornado) takes tens of milliseconds.  A thread
        waits until a listening socket is readable (the connection waits in
        its backlog meanwhile) and only then starts the server, so a command
        that connects nowhere never pays for it and one that does starts
        while the server is being imported.  A server that cannot start
        closes the sockets: the sandbox's connections are refused, never
        let through.
        """
        listeners = self._take_listeners()
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC)
        self._proxy_wake = wake_w

        def wait_and_start() -> ProxyServer | None:
            poller = select.poll()
            for fd in (wake_r, *(sock.fileno() for sock in listeners.values())):
                poller.register(fd, select.POLLIN)
            poller.poll()
            with self._proxy_lock:
                if self._proxy_closed:
                    return None
            return self._serve(listeners)

        def serve() -> None:
            try:
                proxy = wait_and_start()
            except BaseException as exc:
                proxy = None
                logger.error(
                    "the proxy could not start, so the sandbox's connections are "
                    "refused: %s",
                    exc,
                )
            finally:
                os.close(wake_r)
            if proxy is None:
                for sock in listeners.values():
                    sock.close()
                return
            with self._proxy_lock:
                if not self._proxy_closed:
                    self.proxy = proxy
                    return
            proxy.stop()

        threading.Thread(target=serve, name="srt-kernel-proxy", daemon=True).start()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the command.

        Through init, which passes it on; where bubblewrap runs the command
        itself, to the process group of the session the command runs in.
        """
        if self.child_pid is None:
            return
        if self.plan is not None and self.plan.direct:
            # bubblewrap's own pid 1 leads the session the command runs in;
            # as a namespace's init it ignores signals it has no handler for
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child_pid, signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child_pid, signum)

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()

    def created_protected(self, include_links: bool = False) -> list[str]:
        """Protected names that appeared below writable roots during the run.

        With ``include_links``, also a symlink put where a protected path of
        the policy (the notebook's save copy, say) was, or is expected.
        Paths the user made writable on purpose
        (``dangerouslyAllowWriteToProtectedPaths``) are left out, as the plan
        leaves them writable.
        """
        placeholders = {p for p, _ in (self.plan.placeholders if self.plan else ())}
        # most names found are the launch's own (placeholders, names that
        # were there): only the others are resolved, after every cell
        known = self.protected_before | placeholders
        after: set[str] = set()
        skip = set(self.policy.protected)
        for root in self.policy.filesystem.allow_write:
            if os.path.isdir(root):
                after.update(
                    os.path.realpath(p)
                    for p in fsfacts.scan_protected(root, skip)
                    if p not in known
                )
        if include_links:
            after.update(
                p
                for p in self.policy.protected
                if p not in self.links_before
                and os.path.islink(p)
                and any(is_within(p, r) for r in self.policy.filesystem.allow_write)
            )
        return sorted(p for p in after - known if not self._unprotected(p))

    def _unprotected(self, path: str) -> bool:
        """Whether the user's settings make ``path`` writable although
        protected: below an unprotected path and no deny-write rule."""
        fs = self.policy.filesystem
        real = os.path.realpath
        return any(
            is_within(path, real(u)) for u in self.policy.unprotected
        ) and not any(is_within(path, real(d)) for d in fs.deny_write)

    def lost_protection(self) -> list[str]:
        """Protected paths whose mount is gone since launch.

        A file held by a mount and then replaced or removed on the host (git
        renames a new ``.git/config`` over the old one; a second sandbox's
        exit removes a shared placeholder) is no longer covered: whatever
        stands there now may have been written from inside.
        """
        return sorted(
            path
            for path, ident in self.held.items()
            if _identity(path) not in (ident, None)
        )

    def close(self) -> None:
        """Stop everything and remove what the run left on disk."""
        if self.process is not None and self.process.poll() is None:
            # The whole group: before the command is let run (--block-fd),
            # the sandbox's first process is still in bubblewrap's group,
            # and --die-with-parent does not yet hold for it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.kill()
            self.process.wait()
        with self._proxy_lock:
            # a proxy still starting stops itself once it is up
            self._proxy_closed = True
            proxy, self.proxy = self.proxy, None
            if self._proxy_wake is not None:
                os.close(self._proxy_wake)  # wakes a proxy waiting for first use
                self._proxy_wake = None
        if proxy is not None:
            proxy.stop()
        for pair in (self._info, self._block):
            if pair is not None:
                for fd in pair:
                    os.close(fd)
        self._info = self._block = None
        for sock in (self._listeners or {}).values():
            sock.close()
        self._listeners = None
        if self._seccomp_fd is not None:
            os.close(self._seccomp_fd)
            self._seccomp_fd = None
        if self.run is not None:
            self.run.remove()
            self.run = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CommandNotFound(SandboxError):
    """The command does not exist on the sandbox's PATH."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"command not found: {name}")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _seccomp_program(policy: Policy) -> int:
    """A sealed memfd holding the filter, for bubblewrap's --seccomp."""
    from srt_kernel.sandbox import seccomp

    program = seccomp.build_filter(
        allow_unix_sockets=policy.network.allow_all_unix_sockets
    )
    fd = os.memfd_create("srt-kernel-seccomp", os.MFD_CLOEXEC)
    try:
        seccomp.write_program(program, fd)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_child_pid(fd: int) -> int | None:
    """bubblewrap's ``--info-fd`` report: the sandbox's pid, once it exists."""
    chunks = []
    with os.fdopen(fd, "rb") as f:
        while True:
            data = f.read(4096)
            if not data:
                break
            chunks.append(data)
            try:
                info = json.loads(b"".join(chunks))
            except ValueError:
                continue
            pid = info.get("child-pid")
            return int(pid) if isinstance(pid, int) else None
    return None


def _open_audit_log(path: str) -> AuditLog:
    """The audit log at ``path``, or one that records nothing if it cannot be
    written (the proxy's decisions are enforced either way)."""
    from srt_kernel.audit import AuditLog

    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return AuditLog(path)
    except OSError as exc:
        sys.stderr.write(
            f"srt-kernel: warning: the audit log {path} cannot be written ({exc}); "
            "the network policy still applies.\n"
        )
        return AuditLog()


# --------------------------------------------------------------------------
# Running a command for a user at a terminal


def run_command(
    policy: Policy,
    command: Sequence[str],
    *,
    cwd: str,
    debug: bool = False,
    audit: Any = None,
) -> int:
    """Run ``command`` sandboxed, with the terminal relayed; its exit status."""
    use_tty = os.isatty(0) and os.isatty(1)
    sandbox = Sandbox(
        policy,
        command,
        cwd=cwd,
        tty=use_tty,
        audit=audit,
        audit_path=os.path.join(locations.data_dir(), "audit", "network.jsonl"),
        label=f"run {os.path.basename(command[0])}" if command else "run",
    )
    plan = sandbox.prepare()
    if debug:
        sys.stderr.write(plan.describe() + "\n")
        sys.stderr.write("bwrap argv: " + json.dumps(list(plan.argv)) + "\n")
    with sandbox:
        try:
            status = _run_with_pty(sandbox) if use_tty else _run_plain(sandbox)
        except CommandNotFound as exc:
            sys.stderr.write(f"srt-kernel: command not found: {exc.name}\n")
            return 127
        created = sandbox.created_protected()
        lost = sandbox.lost_protection()
    for path in created:
        sys.stderr.write(
            f"srt-kernel: warning: the command created {path}, a protected name "
            "that trusted tools read or run; it could not be blocked because it "
            "appeared during the run. Review or delete it.\n"
        )
    for path in lost:
        sys.stderr.write(
            f"srt-kernel: warning: {path} was replaced during the run, which "
            "undid its protection; review it before a trusted tool uses it.\n"
        )
    return status


def _exit_status(raw: int) -> int:
    return 128 - raw if raw < 0 else raw


@contextlib.contextmanager
def _forward_signals(sandbox: Sandbox, signals: Sequence[int]) -> Iterator[None]:
    def forward(signum: int, _frame: FrameType | None) -> None:
        sandbox.signal(signum)

    old = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _run_plain(sandbox: Sandbox) -> int:
    with _forward_signals(
        sandbox, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    ):
        sandbox.start()
        return _exit_status(sandbox.wait())


def _copy_winsize(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


def _run_with_pty(sandbox: Sandbox) -> int:
    master, slave = os.openpty()
    _copy_winsize(0, master)
    saved = termios.tcgetattr(0)

    def on_winch(_signum: int, _frame: FrameType | None) -> None:
        _copy_winsize(0, master)

    old_winch = signal.signal(signal.SIGWINCH, on_winch)
    try:
        with _forward_signals(sandbox, (signal.SIGTERM, signal.SIGHUP)):
            try:
                sandbox.start(stdin=slave, stdout=slave, stderr=slave)
            finally:
                os.close(slave)
            tty.setraw(0)
            _pump_pty(master, sandbox)
            return _exit_status(sandbox.wait())
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, old_winch)
        os.close(master)


def _pump_pty(master: int, sandbox: Sandbox) -> None:
    assert sandbox.process is not None
    stdin_open = True
    while True:
        fds = [master] + ([0] if stdin_open else [])
        try:
            ready, _, _ = select.select(fds, [], [], 0.2)
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if not data:
                return
            os.write(1, data)
        if 0 in ready:
            data = os.read(0, 65536)
            if data:
                os.write(master, data)
            else:
                stdin_open = False
        if sandbox.process.poll() is not None and master not in ready:
            return

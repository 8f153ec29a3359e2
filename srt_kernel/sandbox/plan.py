"""The bubblewrap plan: a pure function from policy and facts to an argv.

Nothing here touches the file system or starts a process.  The facts it
needs (what exists, where symlinks lead, which protected names a scan
found) arrive as :class:`FsFacts`, gathered by :mod:`.facts`; the plan is
carried out by :mod:`.bwrap`.  Plans are compared byte for byte in tests.

How the mounts are laid out:

* the root is bound read-only; ``/dev`` is minimal, ``/proc`` fresh, and
  ``/run`` (where the proxy sockets are mounted) and ``/tmp`` are private;
* every *rule path* (a writable root, a deny-write, deny-read or allow-read
  path, a protected name, and every directory between a writable root and a
  protected name) gets one mount, shallowest first, that reflects what the
  pure policy says about that path: read-write bind, read-only bind, an
  empty read-only directory (denied directory) or an unreadable file
  (denied file).  A path's nearest rule path decides for it, which is what
  the policy says, because nothing between them has a rule of its own;
* directories between a writable root and a protected name are bound onto
  themselves, so they are mount points and cannot be renamed: renaming
  ``.git`` away and making a new one is refused with ``EBUSY``;
* a protected name or deny path that does not exist yet, inside a writable
  root, gets a placeholder created on the host before launch (an empty file
  or directory, removed again at exit), because a mount needs something to
  sit on.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping

from srt_kernel.policy import BASE_ENV_ALLOW, FilesystemPolicy, Policy, is_within
from srt_kernel.record import Record, field

# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal

    Kind = Literal["file", "dir", "missing", "other"]

#: Names that trusted tools read or run later.  Every existing one below a
#: writable root is protected wherever a scan finds it; those marked
#: ``at_root`` are protected at each writable root even before they exist
#: (tools read them from the folder they start in, and a writable root may
#: be someone's home).  ``(relative path, kind of placeholder, at_root)``.
PROTECTED_NAMES: tuple[tuple[str, Literal["file", "dir"], bool], ...] = (
    # shell start-up files
    (".bashrc", "file", True),
    (".bash_profile", "file", True),
    (".bash_login", "file", True),
    (".bash_logout", "file", True),
    (".profile", "file", True),
    (".zshrc", "file", True),
    (".zshenv", "file", True),
    (".zprofile", "file", True),
    (".zlogin", "file", True),
    (".cshrc", "file", True),
    (".tcshrc", "file", True),
    (".kshrc", "file", True),
    (".inputrc", "file", True),
    (".envrc", "file", True),
    # git: hooks and config run code on the next commit or fetch
    (".git/hooks", "dir", True),
    (".git/config", "file", True),
    (".git/info", "dir", True),
    (".git/modules", "dir", True),
    (".gitconfig", "file", True),
    (".gitmodules", "file", True),
    (".husky", "dir", False),
    # editors and agents that run project-local configuration
    (".vscode", "dir", True),
    (".idea", "dir", True),
    (".mcp.json", "file", True),
    (".claude", "dir", False),
    # Jupyter and IPython: config, start-up files, checkpoints
    (".jupyter", "dir", False),
    (".ipython", "dir", False),
    (".ipynb_checkpoints", "dir", True),
    ("ipython_config.py", "file", True),
    ("ipython_kernel_config.py", "file", True),
    ("jupyter_server_config.py", "file", True),
    ("jupyter_notebook_config.py", "file", True),
    ("jupyter_lab_config.py", "file", True),
    # the JSON forms too: exec_lines and the like run code from them
    ("ipython_config.json", "file", True),
    ("ipython_kernel_config.json", "file", True),
    ("jupyter_server_config.json", "file", True),
    ("jupyter_notebook_config.json", "file", True),
    ("jupyter_lab_config.json", "file", True),
    # Python start-up hooks
    ("sitecustomize.py", "file", False),
    ("usercustomize.py", "file", False),
    # srt-kernel's own settings
    (".srt-settings.json", "file", False),
)

#: First path components that the scan looks for.
PROTECTED_FIRST: frozenset[str] = frozenset(
    n.split("/")[0] for n, _, _ in PROTECTED_NAMES
)

#: Inside the sandbox: srt-kernel's own folder, on the private /run.
RUN_INSIDE = "/run/srt-kernel"
#: The proxy's ports on the sandbox's own 127.0.0.1 (see :mod:`.netns`).
HTTP_PORT = 3128
SOCKS_PORT = 1080
PROXY_PORTS = {"http": HTTP_PORT, "socks": SOCKS_PORT}


class PathFact(Record):
    """What one path is on the host."""

    kind: Kind
    #: The path with every symlink resolved (for a missing path: its deepest
    #: existing ancestor resolved, the rest appended).
    real: str


class FsFacts(Record):
    """File-system facts that a plan needs, gathered by :mod:`.facts`."""

    paths: Mapping[str, PathFact]
    #: Existing protected names found below writable roots (real paths).
    found: tuple[str, ...] = ()

    def fact(self, path: str) -> PathFact:
        return self.paths.get(path, PathFact("missing", path))


class LaunchSpec(Record):
    """Everything about one launch that is not policy."""

    command: tuple[str, ...]
    cwd: str
    #: The private run directory on the host (mode 0700).
    run_dir: str
    #: The host environment, to be filtered through the allowlist.
    host_env: Mapping[str, str]
    bwrap: str = "bwrap"
    #: Interpreter and sys.path entry that run :mod:`.init` inside.
    python: str = "python3"
    package_parent: str = ""
    #: The proxy listens on the sandbox's 127.0.0.1 (:data:`PROXY_PORTS`):
    #: set its variables.
    network: bool = False
    #: Apply the seccomp filter before the command runs (off for the
    #: kernel, whose inner kernel applies it to itself).
    seccomp: bool = True
    tty: bool = False
    #: The fd bubblewrap reports the sandbox's pid on.
    info_fd: int | None = None
    #: An fd bubblewrap waits on before it runs the command: the launcher
    #: writes to it once the proxy's sockets are in the sandbox.
    block_fd: int | None = None
    #: An fd holding the seccomp program for bubblewrap's ``--seccomp``.
    #: Without a terminal bubblewrap applies the filter and runs the
    #: command itself; with one, :mod:`.init` gives the command its
    #: terminal and applies the filter.
    seccomp_fd: int | None = None
    #: Paths that must stay visible although they are under the private /tmp
    #: (the interpreter and the package when installed there).
    keep_visible: tuple[str, ...] = ()
    #: Extra environment set inside (after the allowlist).
    extra_env: Mapping[str, str] = field(default_factory=dict)
    #: Private folders of the launcher bound under ``/run/srt-kernel``:
    #: ``(host path, path inside, writable)``.  Inside paths must be below
    #: :data:`RUN_INSIDE`.
    binds: tuple[tuple[str, str, bool], ...] = ()


class Mount(Record):
    op: str  # "bind", "ro-bind", "tmpfs", "deny-file", "remount-ro"
    dest: str
    src: str = ""


class SandboxPlan(Record):
    argv: tuple[str, ...]
    env: Mapping[str, str]
    mounts: tuple[Mount, ...]
    #: (host path, kind) to create before launch and remove after.
    placeholders: tuple[tuple[str, str], ...]
    #: The filesystem policy with every path resolved: the oracle of tests.
    resolved: FilesystemPolicy
    #: Real paths protected from writes.
    protected: tuple[str, ...]
    private_tmp: bool
    #: bubblewrap runs the command itself (no :mod:`.init`).
    direct: bool = True

    def describe(self) -> str:
        """A readable account of the plan, for ``--debug``."""
        lines = ["sandbox mounts (in order):"]
        for m in self.mounts:
            src = f" <- {m.src}" if m.src and m.src != m.dest else ""
            lines.append(f"  {m.op:<10} {m.dest}{src}")
        if self.placeholders:
            lines.append("placeholders created for missing protected paths:")
            lines.extend(f"  {kind:<4} {path}" for path, kind in self.placeholders)
        lines.append("environment: " + ", ".join(sorted(self.env)))
        return "\n".join(lines)


def _depth(path: str) -> int:
    return 0 if path == "/" else path.count("/")


def _parent(path: str) -> str:
    return posixpath.dirname(path) or "/"


def _real(facts: FsFacts, path: str) -> str:
    return facts.fact(path).real


def resolve_policy(fs: FilesystemPolicy, facts: FsFacts) -> FilesystemPolicy:
    """The policy with every rule path replaced by where it really leads."""

    def real_all(paths: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_real(facts, p) for p in paths))

    def still_real(paths: tuple[str, ...]) -> tuple[str, ...]:
        # an untrusted path that now leads elsewhere (a symlink swapped in
        # after it was judged) is dropped: it grants nothing
        return tuple(p for p in paths if p not in fs.pinned or _real(facts, p) == p)

    return FilesystemPolicy(
        deny_read=real_all(fs.deny_read),
        allow_read=real_all(still_real(fs.allow_read)),
        allow_write=real_all(still_real(fs.allow_write)),
        deny_write=real_all(fs.deny_write),
        sources=fs.sources,
    )


def protected_candidates(policy: Policy) -> list[str]:
    """Protected paths to look up: fixed ones, and names at each root."""
    out = list(policy.protected)
    for root in policy.filesystem.allow_write:
        out.extend(
            posixpath.join(root, name)
            for name, _, at_root in PROTECTED_NAMES
            if at_root
        )
    return out


def _placeholder_kind(path: str, root: str) -> Literal["file", "dir"]:
    rel = posixpath.relpath(path, root)
    for name, kind, _ in PROTECTED_NAMES:
        if rel == name or rel.endswith("/" + name):
            return kind
    return "dir"


def _first_missing(path: str, root: str, facts: FsFacts) -> str:
    """The shallowest component of ``path`` below ``root`` that is missing."""
    rel = posixpath.relpath(path, root).split("/")
    current = root
    for part in rel:
        current = posixpath.join(current, part)
        if facts.fact(current).kind == "missing":
            return current
    return path


def plan_sandbox(policy: Policy, facts: FsFacts, spec: LaunchSpec) -> SandboxPlan:
    """Build the bubblewrap argv for ``spec.command`` under ``policy``."""
    fs = resolve_policy(policy.filesystem, facts)
    # A writable root is an existing folder or file; a missing one gives
    # nothing (the command cannot create it: its parent is read-only).
    dir_roots = [r for r in fs.allow_write if facts.fact(r).kind == "dir" or r == "/"]
    roots = dir_roots + [r for r in fs.allow_write if facts.fact(r).kind == "file"]

    # Protected paths inside writable folders become deny-write rules.
    candidates = [_real(facts, p) for p in policy.protected]
    candidates += [
        posixpath.join(r, name)
        for r in dir_roots
        for name, _, at_root in PROTECTED_NAMES
        if at_root
    ]
    candidates += list(facts.found)
    candidates += list(fs.deny_write)
    protected: list[str] = []
    placeholders: dict[str, str] = {}
    unprotected = [_real(facts, p) for p in policy.unprotected]

    def root_of(path: str) -> str | None:
        return next(
            (r for r in sorted(dir_roots, key=_depth) if is_within(path, r)), None
        )

    for path in sorted(dict.fromkeys(candidates), key=lambda p: (_depth(p), p)):
        root = root_of(path)
        if root is None or path == root:
            continue
        # already read-only: inside a protected folder, or not readable
        if any(is_within(path, p) for p in protected) or not fs.readable(path):
            continue
        # the user made it writable on purpose, by its own explicit setting
        if path not in fs.deny_write and any(is_within(path, u) for u in unprotected):
            continue
        if facts.fact(path).kind == "missing":
            first = _first_missing(path, root, facts)
            kind = "dir" if first != path else _placeholder_kind(path, root)
            placeholders.setdefault(first, kind)
            path = first
        protected.append(path)

    # Read-denied paths that do not exist inside a writable folder could be
    # created by the command: an empty placeholder holds the name, and a
    # missing folder above it is held read-only too.
    for path in fs.deny_read:
        root = root_of(path)
        if root is None or facts.fact(path).kind != "missing":
            continue
        first = _first_missing(path, root, facts)
        placeholders.setdefault(first, "dir")
        if first != path:
            protected.append(first)

    fs = FilesystemPolicy(
        deny_read=fs.deny_read,
        allow_read=fs.allow_read,
        allow_write=tuple(roots),
        deny_write=tuple(dict.fromkeys([*fs.deny_write, *protected])),
        sources=fs.sources,
    )

    def kind_of(path: str) -> Kind:
        if path in placeholders:
            return "dir" if placeholders[path] == "dir" else "file"
        return facts.fact(path).kind

    # Folders between a writable folder and a restricted path are pinned in
    # place (made mount points), so the restriction cannot be renamed away.
    pinned: set[str] = set()
    for path in (*fs.deny_write, *fs.deny_read):
        for root in dir_roots:
            if is_within(path, root) and path != root:
                d = _parent(path)
                while d != root and is_within(d, root):
                    pinned.add(d)
                    d = _parent(d)

    private_tmp = not any(is_within("/tmp", r) for r in dir_roots)
    rule_paths = set(fs.allow_write) | set(fs.deny_write) | set(fs.deny_read)
    rule_paths |= set(fs.allow_read) | pinned
    if private_tmp:
        rule_paths |= {
            _real(facts, p) for p in spec.keep_visible if is_within(p, "/tmp")
        }
    mounts = _mounts(fs, rule_paths, kind_of, spec, private_tmp)

    env = _environment(policy, spec)
    argv = _argv(mounts, spec, policy)
    return SandboxPlan(
        argv=argv,
        env=env,
        mounts=tuple(mounts),
        placeholders=tuple(sorted(placeholders.items())),
        resolved=fs,
        protected=tuple(dict.fromkeys(protected)),
        private_tmp=private_tmp,
        direct=direct_exec(spec),
    )


def _mounts(
    fs: FilesystemPolicy,
    rule_paths: set[str],
    kind_of: Callable[[str], Kind],
    spec: LaunchSpec,
    private_tmp: bool,
) -> list[Mount]:
    mounts = [Mount("ro-bind", "/", "/"), Mount("dev", "/dev"), Mount("proc", "/proc")]
    mounts.append(Mount("tmpfs-1777", "/dev/shm"))
    mounts.append(Mount("tmpfs", "/run"))
    if private_tmp:
        mounts.append(Mount("tmpfs-1777", "/tmp"))
    remount: list[str] = ["/run"]

    # (path, is an empty denied folder) of each mount made so far: what a
    # deeper path shows is decided by the deepest of them above it.
    shown: list[tuple[str, bool]] = []

    def under_denied(path: str) -> bool:
        above = [m for m in shown if is_within(path, m[0]) and path != m[0]]
        return bool(above) and max(above, key=lambda m: _depth(m[0]))[1]

    for path in sorted(rule_paths, key=lambda p: (_depth(p), p)):
        if path == "/":
            if fs.writable("/"):
                mounts[0] = Mount("bind", "/", "/")
            continue
        kind = kind_of(path)
        if kind == "missing":
            continue  # nothing to mount on; a denied folder above hides it
        if not fs.readable(path):
            if under_denied(path):
                continue
            if kind == "dir":
                mounts.append(Mount("tmpfs", path))
                remount.append(path)
                shown.append((path, True))
            else:
                mounts.append(Mount("deny-file", path))
            continue
        op = "bind" if fs.writable(path) else "ro-bind"
        mounts.append(Mount(op, path, path))
        shown.append((path, False))

    for host, inside, writable in spec.binds:
        if not is_within(inside, RUN_INSIDE) or inside == RUN_INSIDE:
            raise ValueError(f"private binds go below {RUN_INSIDE}, not {inside!r}")
        mounts.append(Mount("bind" if writable else "ro-bind", inside, host))
    mounts.extend(
        Mount("remount-ro", d) for d in sorted(remount, key=_depth, reverse=True)
    )
    return mounts


def _mount_args(m: Mount, run_dir: str) -> list[str]:
    if m.op in ("bind", "ro-bind"):
        return [f"--{m.op}", m.src, m.dest]
    if m.op == "dev":
        return ["--dev", m.dest]
    if m.op == "proc":
        return ["--proc", m.dest]
    if m.op == "tmpfs":
        return ["--perms", "0755", "--tmpfs", m.dest]
    if m.op == "tmpfs-1777":
        return ["--perms", "01777", "--tmpfs", m.dest]
    if m.op == "deny-file":
        return ["--ro-bind", posixpath.join(run_dir, "denied"), m.dest]
    if m.op == "remount-ro":
        return ["--remount-ro", m.dest]
    raise ValueError(f"unknown mount operation {m.op!r}")


def init_config(policy: Policy, spec: LaunchSpec) -> list[str]:
    """What :mod:`.init` needs to know, as ``KEY=VALUE`` arguments.

    Plain words rather than JSON: init would pay for importing ``json``
    (and ``re``) on every start.  Flags are ``1`` or ``0``.
    """
    return [
        f"seccomp={int(spec.seccomp)}",
        f"allow_unix_sockets={int(policy.network.allow_all_unix_sockets)}",
        f"tty={int(spec.tty)}",
    ]


#: The inline program that starts :mod:`.init` with ``python -I -S``: no
#: site-packages scan and no environment-controlled start-up.  It ends with
#: ``os._exit``: as pid 1, init's exit ends the sandbox, and the
#: interpreter's clean-up would only delay it.
BOOT = (
    "import os,sys;sys.path.insert(0,sys.argv[1]);"
    "from srt_kernel.sandbox.init import main;s=main(sys.argv[2:]);"
    "sys.stdout.flush();sys.stderr.flush();os._exit(s)"
)


def direct_exec(spec: LaunchSpec) -> bool:
    """Whether bubblewrap runs the command itself, without :mod:`.init`.

    Init is needed only to give the command a terminal of its own.  No
    process may share the sandbox without the filter, since the filtered
    code, as the same user, could rewrite its memory (``/proc/PID/mem``):
    so bubblewrap applies the filter (``--seccomp``) to its own pid 1 and
    the command alike, and a command that applies its filter itself later
    (the kernel, once its sockets are bound) is pid 1 (``--as-pid-1``).
    """
    return not spec.tty


def _argv(mounts: list[Mount], spec: LaunchSpec, policy: Policy) -> tuple[str, ...]:
    direct = direct_exec(spec)
    argv = [
        spec.bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
    ]
    if not direct or not spec.seccomp:
        argv.append("--as-pid-1")
    argv += ["--hostname", "sandbox"]
    for m in mounts:
        argv += _mount_args(m, spec.run_dir)
    argv += ["--chdir", spec.cwd]
    if spec.info_fd is not None:
        argv += ["--info-fd", str(spec.info_fd)]
    if spec.block_fd is not None:
        argv += ["--block-fd", str(spec.block_fd)]
    if direct:
        if spec.seccomp:
            if spec.seccomp_fd is None:
                raise ValueError("a filtered command needs seccomp_fd")
            argv += ["--seccomp", str(spec.seccomp_fd)]
        argv += ["--", *spec.command]
        return tuple(argv)
    argv += ["--", spec.python, "-I", "-S", "-c", BOOT, spec.package_parent]
    argv += [*init_config(policy, spec), "--"]
    argv += list(spec.command)
    return tuple(argv)


#: Loopback names and addresses, which clients then reach directly.
LOOPBACK_NO_PROXY = "localhost,127.0.0.1,::1"


def no_proxy(policy: Policy) -> str:
    """The sandbox's ``NO_PROXY``: its own loopback, unless the host's is allowed.

    The sandbox's loopback is its own: a server started inside it is
    reached directly, without the proxy.  When the policy allows a port of
    the host's loopback (``127.0.0.1:8888``), loopback requests go to the
    proxy instead, which reaches the host's allowed ports and refuses the
    rest; a server inside is then reached with the client's own bypass
    (``curl --noproxy '*'``).
    """
    if any(p.is_loopback for p in policy.network.allowed):
        return ""
    return LOOPBACK_NO_PROXY


def _environment(policy: Policy, spec: LaunchSpec) -> dict[str, str]:
    allow = (
        set(BASE_ENV_ALLOW)
        | set(policy.env_allow)
        | {
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "VIRTUAL_ENV",
        }
    )
    env = {k: v for k, v in spec.host_env.items() if k in allow}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["TMPDIR"] = "/tmp"
    env["SRT_KERNEL_SANDBOX"] = "1"
    # Tools that write caches and config get private places, so that no
    # read-only warning ends up in the output.
    env["XDG_CACHE_HOME"] = "/tmp/.cache"
    env["MPLCONFIGDIR"] = "/tmp/.config/matplotlib"
    if spec.network:
        http = f"http://127.0.0.1:{HTTP_PORT}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            env[name] = http
            env[name.lower()] = http
        env["NO_PROXY"] = env["no_proxy"] = no_proxy(policy)
        env["SRT_KERNEL_SOCKS_PROXY"] = f"socks5h://127.0.0.1:{SOCKS_PORT}"
    env.update(spec.extra_env)
    return env

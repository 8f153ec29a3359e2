"""The pure plan: bubblewrap's argv for each combination of rules, as tables.

No disk and no sandbox: the file-system facts are given, so each row says
exactly which mounts a policy and a set of facts must produce.  The black-box
tests (test_run_*.py, test_fs_property.py) check that bubblewrap then does
what the plan says.
"""

from __future__ import annotations

import pytest

from srt_kernel.hosts import parse_pattern
from srt_kernel.policy import FilesystemPolicy, NetworkPolicy, Policy
from srt_kernel.sandbox.plan import (
    BOOT,
    PROTECTED_NAMES,
    FsFacts,
    LaunchSpec,
    Mount,
    PathFact,
    SandboxPlan,
    plan_sandbox,
)

HOME = "/home/u"
P = "/home/u/proj"
RUN = "/tmp/srt-kernel-1000/run-1-ab"

#: Mounts every plan starts with (the host's /tmp hidden: no writable root
#: is under it).
BASE = [
    Mount("ro-bind", "/", "/"),
    Mount("dev", "/dev"),
    Mount("proc", "/proc"),
    Mount("tmpfs-1777", "/dev/shm"),
    Mount("tmpfs", "/run"),
    Mount("tmpfs-1777", "/tmp"),
]


def facts(found: tuple[str, ...] = (), links: dict[str, str] | None = None) -> FsFacts:
    """Facts for the paths the rows use; ``links`` maps a symlink to its target."""
    kinds = {
        "/home": "dir",
        HOME: "dir",
        P: "dir",
        f"{HOME}/.ssh": "dir",
        f"{HOME}/.aws": "dir",
        f"{HOME}/.aws/credentials": "file",
        f"{HOME}/secret": "dir",
        f"{HOME}/secret/ok": "dir",
        f"{P}/locked.txt": "file",
        f"{P}/a": "dir",
        f"{P}/a/b": "dir",
        f"{P}/a/b/c": "dir",
        "/data": "dir",
        "/data/proj": "dir",
        "/tmp": "dir",
        "/tmp/work": "dir",
    }
    paths = {p: PathFact(k, p) for p, k in kinds.items()}  # type: ignore[arg-type]
    for link, target in (links or {}).items():
        paths[link] = paths[target]
    return FsFacts(paths=paths, found=found)


def spec(**kw: object) -> LaunchSpec:
    values: dict[str, object] = {
        "command": ("true",),
        "cwd": P,
        "run_dir": RUN,
        "host_env": {"PATH": "/usr/bin", "HOME": HOME, "AWS_SECRET_ACCESS_KEY": "s"},
        "bwrap": "bwrap",
        "python": "/usr/bin/python3",
        "package_parent": "/opt/pkg",
        "info_fd": 4,
        "seccomp_fd": 5,
    }
    values.update(kw)
    return LaunchSpec(**values)  # type: ignore[arg-type]


def plan(fs: FilesystemPolicy, f: FsFacts | None = None, **kw: object) -> SandboxPlan:
    return plan_sandbox(Policy(filesystem=fs), f or facts(), spec(**kw))


def rule_mounts(result: SandboxPlan) -> list[Mount]:
    """The mounts after BASE, without the root's protected-name mounts."""
    at_root = {
        f"{root}/{name}"
        for root in result.resolved.allow_write
        for name, _, _ in PROTECTED_NAMES
        if "/" not in name or name.startswith(".git/")
        for name in [name.partition("/")[0]]
    }
    mounts = list(result.mounts)
    start = len(BASE) if mounts[5] == BASE[5] else len(BASE) - 1
    assert mounts[:start] == BASE[:start]
    rest = mounts[start:]
    assert rest[-1] == Mount("remount-ro", "/run")
    return [m for m in rest[:-1] if m.dest not in at_root or m.op != "ro-bind"]


ROWS: list[tuple[str, FilesystemPolicy, FsFacts | None, list[Mount]]] = [
    (
        "a writable folder",
        FilesystemPolicy(allow_write=(P,)),
        None,
        [Mount("bind", P, P)],
    ),
    (
        "a read-denied folder is an empty read-only tmpfs",
        FilesystemPolicy(allow_write=(P,), deny_read=(f"{HOME}/.ssh",)),
        None,
        [
            Mount("tmpfs", f"{HOME}/.ssh"),
            Mount("bind", P, P),
            Mount("remount-ro", f"{HOME}/.ssh"),
        ],
    ),
    (
        "a read-denied file is the unreadable file of the run folder",
        FilesystemPolicy(allow_write=(P,), deny_read=(f"{HOME}/.aws/credentials",)),
        None,
        [Mount("bind", P, P), Mount("deny-file", f"{HOME}/.aws/credentials")],
    ),
    (
        "allowRead re-opens a folder inside a denied one",
        FilesystemPolicy(
            allow_write=(P,),
            deny_read=(f"{HOME}/secret",),
            allow_read=(f"{HOME}/secret/ok",),
        ),
        None,
        [
            Mount("bind", P, P),
            Mount("tmpfs", f"{HOME}/secret"),
            Mount("ro-bind", f"{HOME}/secret/ok", f"{HOME}/secret/ok"),
            Mount("remount-ro", f"{HOME}/secret"),
        ],
    ),
    (
        "denyWrite inside a writable folder is a read-only bind",
        FilesystemPolicy(allow_write=(P,), deny_write=(f"{P}/locked.txt",)),
        None,
        [Mount("bind", P, P), Mount("ro-bind", f"{P}/locked.txt", f"{P}/locked.txt")],
    ),
    (
        "denyWrite deep down pins the folders above it",
        FilesystemPolicy(allow_write=(P,), deny_write=(f"{P}/a/b/c",)),
        None,
        [
            Mount("bind", P, P),
            Mount("bind", f"{P}/a", f"{P}/a"),
            Mount("bind", f"{P}/a/b", f"{P}/a/b"),
            Mount("ro-bind", f"{P}/a/b/c", f"{P}/a/b/c"),
        ],
    ),
    (
        "a missing denyWrite path is held by a placeholder",
        FilesystemPolicy(allow_write=(P,), deny_write=(f"{P}/new/x",)),
        None,
        [Mount("bind", P, P), Mount("ro-bind", f"{P}/new", f"{P}/new")],
    ),
    (
        "a symlinked writable folder is mounted where it leads",
        FilesystemPolicy(allow_write=(f"{HOME}/link",)),
        facts(links={f"{HOME}/link": "/data/proj"}),
        [Mount("bind", "/data/proj", "/data/proj")],
    ),
    (
        "a protected name found deep down is held read-only",
        FilesystemPolicy(allow_write=(P,)),
        facts(found=(f"{P}/a/b/.git",)),
        [
            Mount("bind", P, P),
            Mount("bind", f"{P}/a", f"{P}/a"),
            Mount("bind", f"{P}/a/b", f"{P}/a/b"),
            Mount("ro-bind", f"{P}/a/b/.git", f"{P}/a/b/.git"),
        ],
    ),
    (
        "a writable folder under /tmp keeps the host's /tmp",
        FilesystemPolicy(allow_write=("/tmp/work",)),
        None,
        [Mount("bind", "/tmp/work", "/tmp/work")],
    ),
]


@pytest.mark.parametrize(
    ("fs", "given", "expected"),
    [row[1:] for row in ROWS],
    ids=[row[0] for row in ROWS],
)
def test_mounts(
    fs: FilesystemPolicy, given: FsFacts | None, expected: list[Mount]
) -> None:
    assert rule_mounts(plan(fs, given)) == expected


def test_missing_protected_names_at_a_root_get_placeholders() -> None:
    result = plan(FilesystemPolicy(allow_write=(P,)))
    held = dict(result.placeholders)
    assert held[f"{P}/.bashrc"] == "file"
    assert held[f"{P}/.vscode"] == "dir"
    assert held[f"{P}/.git"] == "dir"  # no repository: .git is held empty
    assert Mount("ro-bind", f"{P}/.git", f"{P}/.git") in result.mounts
    assert Mount("ro-bind", f"{P}/.bashrc", f"{P}/.bashrc") in result.mounts


def test_an_existing_repository_stays_writable_but_its_config_and_hooks_do_not() -> (
    None
):
    given = facts()
    paths = dict(given.paths)
    paths[f"{P}/.git"] = PathFact("dir", f"{P}/.git")
    paths[f"{P}/.git/config"] = PathFact("file", f"{P}/.git/config")
    result = plan(FilesystemPolicy(allow_write=(P,)), FsFacts(paths=paths))
    git = [
        m
        for m in result.mounts
        if m.dest.startswith(f"{P}/.git/") or m.dest == f"{P}/.git"
    ]
    assert git == [
        Mount("bind", f"{P}/.git", f"{P}/.git"),  # pinned: it cannot be renamed away
        Mount("ro-bind", f"{P}/.git/config", f"{P}/.git/config"),
        Mount("ro-bind", f"{P}/.git/hooks", f"{P}/.git/hooks"),
        Mount("ro-bind", f"{P}/.git/info", f"{P}/.git/info"),
        Mount("ro-bind", f"{P}/.git/modules", f"{P}/.git/modules"),
    ]
    held = dict(result.placeholders)
    assert held[f"{P}/.git/hooks"] == "dir" and f"{P}/.git/config" not in held


HEAD = [
    "bwrap",
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
    "--unshare-uts", "--unshare-cgroup-try", "--disable-userns",
    "--cap-drop", "ALL", "--die-with-parent", "--new-session",
]  # fmt: skip
MOUNTS_HEAD = [
    "--hostname", "sandbox",
    "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
    "--perms", "01777", "--tmpfs", "/dev/shm",
    "--perms", "0755", "--tmpfs", "/run",
    "--perms", "01777", "--tmpfs", "/tmp",
    "--bind", P, P,
]  # fmt: skip


def _split(argv: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The argv up to the first protected-name mount, and from --remount-ro /run."""
    first = argv.index(f"{P}/.bash_login")
    last = max(i for i, a in enumerate(argv) if a == "--remount-ro")
    return list(argv[: first - 1]), list(argv[last:])


@pytest.mark.parametrize(
    ("kw", "head", "tail"),
    [
        pytest.param(
            {},
            HEAD + MOUNTS_HEAD,
            ["--remount-ro", "/run", "--chdir", P, "--info-fd", "4",
             "--seccomp", "5", "--", "true"],
            id="bubblewrap runs the filtered command itself",
        ),
        pytest.param(
            {"network": True, "block_fd": 7},
            HEAD + MOUNTS_HEAD,
            ["--remount-ro", "/run", "--chdir", P, "--info-fd", "4",
             "--block-fd", "7", "--seccomp", "5", "--", "true"],
            id="with a network bubblewrap waits for the proxy's sockets",
        ),
        pytest.param(
            {"tty": True, "seccomp_fd": None},
            [*HEAD, "--as-pid-1", *MOUNTS_HEAD],
            ["--remount-ro", "/run", "--chdir", P, "--info-fd", "4",
             "--", "/usr/bin/python3", "-I", "-S", "-c", BOOT, "/opt/pkg",
             "seccomp=1", "allow_unix_sockets=0", "tty=1", "--", "true"],
            id="a terminal needs init, which applies the filter",
        ),
        pytest.param(
            {"seccomp": False, "seccomp_fd": None, "network": True, "block_fd": 7},
            [*HEAD, "--as-pid-1", *MOUNTS_HEAD],
            ["--remount-ro", "/run", "--chdir", P, "--info-fd", "4",
             "--block-fd", "7", "--", "true"],
            id="a command that filters itself (the kernel) is pid 1",
        ),
    ],
)  # fmt: skip
def test_argv(kw: dict[str, object], head: list[str], tail: list[str]) -> None:
    argv = plan(FilesystemPolicy(allow_write=(P,)), **kw).argv
    assert _split(argv) == (head, tail)


def test_a_command_bubblewrap_runs_needs_the_filter() -> None:
    with pytest.raises(ValueError, match="seccomp_fd"):
        plan(FilesystemPolicy(allow_write=(P,)), seccomp_fd=None)


def test_environment_is_an_allowlist_plus_the_proxy() -> None:
    quiet = plan(FilesystemPolicy(allow_write=(P,))).env
    assert "AWS_SECRET_ACCESS_KEY" not in quiet
    assert quiet["HOME"] == HOME and quiet["TMPDIR"] == "/tmp"
    assert "HTTP_PROXY" not in quiet
    net = plan_sandbox(
        Policy(filesystem=FilesystemPolicy(allow_write=(P,)), network=NetworkPolicy()),
        facts(),
        spec(network=True, block_fd=7),
    ).env
    assert net["HTTPS_PROXY"] == net["http_proxy"] == "http://127.0.0.1:3128"
    assert net["SRT_KERNEL_SOCKS_PROXY"] == "socks5h://127.0.0.1:1080"


@pytest.mark.parametrize(
    ("allowed", "no_proxy"),
    [
        ((), "localhost,127.0.0.1,::1"),
        (("pypi.org", "10.0.0.7:80"), "localhost,127.0.0.1,::1"),
        (("pypi.org", "127.0.0.1:8888"), ""),
        (("[::1]:8888",), ""),
        (("localhost:8888",), ""),
        (("127.9.9.9:1",), ""),
    ],
)
def test_the_sandboxs_loopback_bypasses_the_proxy_unless_the_hosts_is_allowed(
    allowed: tuple[str, ...], no_proxy: str
) -> None:
    network = NetworkPolicy(
        allowed=tuple(parse_pattern(a, field="allowedDomains") for a in allowed)
    )
    env = plan_sandbox(
        Policy(filesystem=FilesystemPolicy(allow_write=(P,)), network=network),
        facts(),
        spec(network=True, block_fd=7),
    ).env
    assert env["NO_PROXY"] == env["no_proxy"] == no_proxy


def test_private_binds_go_below_the_run_folder_inside() -> None:
    result = plan(
        FilesystemPolicy(allow_write=(P,)),
        binds=(("/host/k", "/run/srt-kernel/kernel", True),),
    )
    assert Mount("bind", "/run/srt-kernel/kernel", "/host/k") in result.mounts
    with pytest.raises(ValueError, match="below"):
        plan(FilesystemPolicy(allow_write=(P,)), binds=(("/host/k", "/etc/x", True),))


def test_an_untrusted_path_that_now_leads_elsewhere_grants_nothing() -> None:
    # notebook metadata's paths are judged resolved and pinned; a symlink
    # swapped in afterwards (P/a now leads to the home folder) drops them
    swapped = facts(links={f"{P}/a": HOME})
    fs = FilesystemPolicy(
        allow_write=(P, f"{P}/a"),
        allow_read=(f"{P}/a",),
        pinned=(f"{P}/a",),
    )
    result = plan(fs, swapped)
    assert result.resolved.allow_write == (P,)
    assert result.resolved.allow_read == ()
    # the same path from the trusted side follows the link, as before
    trusted = plan(FilesystemPolicy(allow_write=(P, f"{P}/a")), swapped)
    assert trusted.resolved.allow_write == (P, HOME)

"""The seccomp filter of srt-kernel, built in pure Python at run time.

Namespaces leave a few kernel interfaces open that sandboxed code has no
business using.  This module builds a classic-BPF seccomp program for them
(no compiler, no libseccomp, no prebuilt binary), and loads it either into
the calling process (:func:`apply`) or into a file or descriptor that
bubblewrap's ``--seccomp FD`` option reads (:func:`write_program`).

The builder (:func:`build_filter`, :func:`assemble`, :func:`disassemble`)
is pure: it does no IO and touches no process state.  :func:`apply`,
:func:`write_program` and :func:`supported` are the IO edge; any failure
there raises :class:`~srt_kernel.errors.SeccompError`, never a silent
carry-on.

What the program does, in order, and why:

* The architecture in ``seccomp_data.arch`` must be the one the program
  was built for, otherwise the process is killed
  (``SECCOMP_RET_KILL_PROCESS``).  Syscall numbers differ between ABIs, so
  a rule written for x86_64 numbers says nothing about a 32-bit
  ``int 0x80`` call or an arm32 compat call; the only safe answer to a
  foreign ABI is to stop.
* On x86_64, a syscall number with the x32 bit (``0x40000000``) set kills
  the process: x32 calls reach the same kernel functions under other
  numbers, so they would walk around every number-based rule below.
* ``socket`` whose domain is ``AF_UNIX`` fails with ``EPERM``.  A Unix
  socket reaches host daemons (a Docker socket, an ssh-agent, the Jupyter
  server's own channels) through files that the mount rules may leave
  visible, and an abstract Unix socket needs no file at all; connecting to
  either needs a socket made by ``socket(AF_UNIX)``.  The kernel reads the
  domain as a 32-bit ``int``, so only the low 32 bits of the argument are
  compared: ``0x100000001`` is refused just as ``1`` is.
  ``allow_unix_sockets=True`` leaves this rule out.
* ``socketpair`` is allowed for every domain.  It makes two sockets
  connected only to each other, with no name and no address, so neither
  can reach a socket of the host; sending a descriptor over the pair only
  moves descriptors the process already holds.  asyncio needs it: every
  new event loop makes a ``socketpair(AF_UNIX)`` to wake itself, so
  ``asyncio.run``, event loops in threads, ipykernel's subshells and async
  HTTP clients fail without it.
* ``io_uring_setup``, ``io_uring_enter`` and ``io_uring_register`` fail
  with ``EPERM``: io_uring performs operations (socket creation among
  them) inside the kernel where seccomp never sees their arguments, and it
  has been a steady source of kernel exploits.
* ``ptrace``, ``process_vm_readv`` and ``process_vm_writev`` fail with
  ``EPERM``: they read and write other processes' memory, which would let
  user code take over a process of the sandbox that runs without the
  filter (init, when the command has a terminal), or any process started
  before the filter.
* ``unshare`` and ``setns`` fail with ``EPERM``, and so does ``clone``
  with any ``CLONE_NEW*`` flag in the low 32 bits of its flags (the first
  argument on x86_64 and on aarch64): new namespaces are where user
  namespaces hand out capabilities, and most namespace-related kernel bugs
  start there.  ``clone`` without those flags (fork, threads, vfork) is
  allowed.
* ``clone3`` fails with ``ENOSYS``: its flags live in memory behind a
  pointer, which seccomp cannot read, so it cannot be judged.  ``ENOSYS``
  (rather than ``EPERM``) makes glibc and musl fall back to ``clone``,
  which is judged by the rule above.
* ``mount``, ``umount2``, ``pivot_root`` and the new mount API
  (``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``, ``move_mount``,
  ``open_tree``, ``open_tree_attr``, ``mount_setattr``) fail with
  ``EPERM``: the sandbox's mount table is its file policy and must not
  change from inside.
* ``keyctl``, ``add_key`` and ``request_key`` fail with ``EPERM``: the
  kernel keyring is not namespaced and can hold the host user's
  credentials (Kerberos tickets, fscrypt and ecryptfs keys).
* ``bpf``, ``perf_event_open`` and ``userfaultfd`` fail with ``EPERM``:
  large kernel attack surface used by many local privilege escalations
  (``userfaultfd`` in particular makes kernel races easy to win).
* ``kexec_load``, ``kexec_file_load``, ``init_module``, ``finit_module``
  and ``delete_module`` fail with ``EPERM``: replacing the kernel or
  loading code into it is never a sandboxed program's job.
* Every other syscall is allowed.  The filter is a deny list: a syscall
  that a later kernel adds is allowed until it is added here.

None of the refused calls is needed by ordinary Python, pip, git, curl,
numpy, threads, asyncio, ``subprocess`` or ``multiprocessing`` with the
``fork`` or ``spawn`` start method.  Two parts of ``multiprocessing`` use Unix
sockets and fail under the filter: the ``forkserver`` start method (Python
3.14's default on Linux), with ``PermissionError``, and
``multiprocessing.Manager()``, whose server process dies with
``PermissionError`` while the caller sees ``EOFError``.  Choose
``multiprocessing.get_context("fork")`` or ``"spawn"``, and give a manager
a TCP address (``SyncManager(address=("127.0.0.1", 0))``).  Debuggers and
profilers that attach to a process (gdb, strace, py-spy) do not work
inside the sandbox because ``ptrace`` and ``process_vm_readv`` are refused.

The syscall dispatch is a linear chain of comparisons (about thirty), not
a binary tree: at this size the difference is a few nanoseconds per call.
Only little-endian 64-bit x86_64 and aarch64 are supported; on any other
architecture :func:`build_filter` and :func:`apply` raise
:class:`~srt_kernel.errors.SeccompError`.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Sequence

from srt_kernel.errors import SeccompError
from srt_kernel.log import get_logger

__all__ = [
    "ARCHES",
    "Instruction",
    "apply",
    "assemble",
    "build_filter",
    "disassemble",
    "host_arch",
    "supported",
    "write_program",
]

logger = get_logger(__name__)


# Not typing.TYPE_CHECKING: this module is imported by the sandbox's first
# process, whose start-up the command waits for; typing is a cost it avoids.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from typing import NamedTuple

    class Instruction(NamedTuple):
        """One classic-BPF instruction, laid out like ``struct sock_filter``."""

        code: int
        jt: int
        jf: int
        k: int

else:
    from collections import namedtuple

    Instruction = namedtuple("Instruction", "code jt jf k")
    Instruction.__doc__ = (
        "One classic-BPF instruction, laid out like ``struct sock_filter``."
    )


# Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = 32-bit word at offset k
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: A == k
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K: A & k != 0
BPF_RET_K = 0x06  # BPF_RET | BPF_K: return k
BPF_MAXINSNS = 4096

# Return values (linux/seccomp.h).
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# seccomp(2) operations and flags (linux/seccomp.h), prctl option.
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_FILTER_FLAG_TSYNC = 1
PR_SET_NO_NEW_PRIVS = 38

# Offsets into struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }.
# Both supported architectures are little-endian, so the low word of args[i]
# comes first.
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARGS0_LOW = 16

X32_SYSCALL_BIT = 0x40000000
AF_UNIX = 1

# Every CLONE_NEW* flag that clone(2) accepts (linux/sched.h).  CLONE_NEWTIME
# (0x80) is left out: in clone(2) that bit belongs to the exit signal
# (CSIGNAL), and a new time namespace can only come from clone3 or unshare.
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)

# AUDIT_ARCH_* (linux/audit.h): EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
AUDIT_ARCH = {
    "x86_64": 62 | 0x80000000 | 0x40000000,
    "aarch64": 183 | 0x80000000 | 0x40000000,
}

# Syscall numbers, checked against asm/unistd_64.h (x86_64) and
# asm-generic/unistd.h (aarch64).  Numbers from 424 up are shared by all
# architectures; open_tree_attr (467, Linux 6.15) is newer than Debian 12's
# headers and was checked against the kernel's asm-generic/unistd.h.
_SHARED: dict[str, int] = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "mount_setattr": 442,
    "open_tree_attr": 467,
}

SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "socket": 41,
        "socketpair": 53,
        "clone": 56,
        "ptrace": 101,
        "pivot_root": 155,
        "mount": 165,
        "umount2": 166,
        "init_module": 175,
        "delete_module": 176,
        "kexec_load": 246,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "unshare": 272,
        "perf_event_open": 298,
        "setns": 308,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "finit_module": 313,
        "seccomp": 317,
        "kexec_file_load": 320,
        "bpf": 321,
        "userfaultfd": 323,
        **_SHARED,
    },
    "aarch64": {
        "umount2": 39,
        "mount": 40,
        "pivot_root": 41,
        "unshare": 97,
        "kexec_load": 104,
        "init_module": 105,
        "delete_module": 106,
        "ptrace": 117,
        "socket": 198,
        "socketpair": 199,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "clone": 220,
        "perf_event_open": 241,
        "setns": 268,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "finit_module": 273,
        "seccomp": 277,
        "bpf": 280,
        "userfaultfd": 282,
        "kexec_file_load": 294,
        **_SHARED,
    },
}

ARCHES = tuple(AUDIT_ARCH)

# Refused outright with EPERM, in the order the program tests them.  The
# module docstring gives the reason for each group.
DENIED_EPERM = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
)

_RET_EPERM = SECCOMP_RET_ERRNO | errno.EPERM
_RET_ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS

_MACHINE_ALIASES = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
}


def host_arch() -> str:
    """Name the architecture of this process, as a key of :data:`ARCHES`.

    Raises :class:`SeccompError` on an architecture the filter does not
    support, including a 32-bit Python on a 64-bit kernel (its syscalls use
    another ABI).
    """
    machine = os.uname().machine
    arch = _MACHINE_ALIASES.get(machine.lower())
    if arch is None:
        raise SeccompError(
            f"The seccomp filter supports only x86_64 and aarch64, not "
            f"{machine!r}; run srt-kernel on one of those, or opt out of the "
            f"filter in the settings."
        )
    if struct.calcsize("P") != 8:
        raise SeccompError(
            f"This Python is a 32-bit build on a {machine} kernel; its "
            f"syscalls use a 32-bit ABI the filter does not cover.  Use a "
            f"64-bit Python."
        )
    return arch


class _Assembler:
    """Collects instructions whose jumps name labels, then resolves them.

    Classic BPF jumps only forward, by at most 255 instructions; both limits
    are checked when the program is finished.
    """

    def __init__(self) -> None:
        self._items: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._items)

    def load(self, offset: int) -> None:
        self._items.append((BPF_LD_W_ABS, None, None, offset))

    def ret(self, value: int) -> None:
        self._items.append((BPF_RET_K, None, None, value))

    def jump(self, code: int, k: int, jt: str | None, jf: str | None) -> None:
        """Add a conditional jump; a target of ``None`` is the next instruction."""
        self._items.append((code, jt, jf, k))

    def finish(self) -> list[Instruction]:
        program = []
        for index, (code, jt, jf, k) in enumerate(self._items):
            program.append(
                Instruction(code, self._offset(index, jt), self._offset(index, jf), k)
            )
        if len(program) > BPF_MAXINSNS:
            raise SeccompError(
                f"The seccomp program has {len(program)} instructions, more "
                f"than the kernel's limit of {BPF_MAXINSNS}; drop rules."
            )
        return program

    def _offset(self, index: int, target: str | None) -> int:
        if target is None:
            return 0
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise SeccompError(
                f"The seccomp jump from instruction {index} to label {target!r} "
                f"spans {offset} instructions, outside classic BPF's 0..255; "
                f"the program layout must be changed."
            )
        return offset


def build_filter(
    arch: str | None = None, *, allow_unix_sockets: bool = False
) -> list[Instruction]:
    """Build the classic-BPF seccomp program for ``arch`` (default: this host).

    The module docstring lists every rule and its reason.  With
    ``allow_unix_sockets=True`` the ``socket(AF_UNIX)`` rule is left out
    (``socketpair`` is allowed either way).  Pure: no IO, no process state.
    Raises :class:`SeccompError` for an unsupported ``arch``.
    """
    if arch is None:
        arch = host_arch()
    if arch not in AUDIT_ARCH:
        raise SeccompError(
            f"No seccomp syscall table for architecture {arch!r}; use one of "
            f"{', '.join(ARCHES)}."
        )
    nr = SYSCALLS[arch]
    asm = _Assembler()

    # Foreign ABIs use other syscall numbers, so no rule below applies to them.
    asm.load(OFFSET_ARCH)
    asm.jump(BPF_JEQ_K, AUDIT_ARCH[arch], None, "kill")
    asm.load(OFFSET_NR)
    if arch == "x86_64":
        asm.jump(BPF_JSET_K, X32_SYSCALL_BIT, "kill", None)

    # Dispatch on the syscall number; the last comparison falls through to allow.
    if not allow_unix_sockets:
        asm.jump(BPF_JEQ_K, nr["socket"], "socket_domain", None)
    asm.jump(BPF_JEQ_K, nr["clone"], "clone_flags", None)
    asm.jump(BPF_JEQ_K, nr["clone3"], "enosys", None)
    for name in DENIED_EPERM:
        asm.jump(BPF_JEQ_K, nr[name], "eperm", None)
    asm.ret(SECCOMP_RET_ALLOW)

    # The kernel reads the domain as an int: compare the low word only.
    if not allow_unix_sockets:
        asm.label("socket_domain")
        asm.load(OFFSET_ARGS0_LOW)
        asm.jump(BPF_JEQ_K, AF_UNIX, "eperm", "allow")

    # clone's flags are its first argument on both architectures.
    asm.label("clone_flags")
    asm.load(OFFSET_ARGS0_LOW)
    asm.jump(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, "eperm", "allow")

    asm.label("allow")
    asm.ret(SECCOMP_RET_ALLOW)
    asm.label("eperm")
    asm.ret(_RET_EPERM)
    asm.label("enosys")
    asm.ret(_RET_ENOSYS)
    asm.label("kill")
    asm.ret(SECCOMP_RET_KILL_PROCESS)
    return asm.finish()


_SOCK_FILTER = struct.Struct("=HBBI")


def assemble(program: Sequence[Instruction]) -> bytes:
    """Pack ``program`` as an array of ``struct sock_filter``, native endian.

    These are the bytes that seccomp(2) takes and that bubblewrap's
    ``--seccomp FD`` reads.  Raises :class:`SeccompError` for an empty
    program, one over the kernel's length limit, or a field out of range.
    """
    if not program:
        raise SeccompError(
            "The seccomp program is empty; build it with build_filter()."
        )
    if len(program) > BPF_MAXINSNS:
        raise SeccompError(
            f"The seccomp program has {len(program)} instructions, more than "
            f"the kernel's limit of {BPF_MAXINSNS}."
        )
    try:
        return b"".join(_SOCK_FILTER.pack(*ins) for ins in program)
    except struct.error as exc:
        raise SeccompError(
            f"A seccomp instruction has a field out of range ({exc}); every "
            f"instruction must be Instruction(u16, u8, u8, u32)."
        ) from exc


_ERRNO_RETURNS = {errno.EPERM: "EPERM", errno.ENOSYS: "ENOSYS"}


def _describe_return(k: int) -> str:
    if k == SECCOMP_RET_ALLOW:
        return "ALLOW"
    if k == SECCOMP_RET_KILL_PROCESS:
        return "KILL_PROCESS"
    if k & ~SECCOMP_RET_DATA == SECCOMP_RET_ERRNO:
        data = k & SECCOMP_RET_DATA
        return f"ERRNO({errno.errorcode.get(data, str(data))})"
    return f"#{k:#010x}"


def disassemble(program: Sequence[Instruction]) -> list[str]:
    """Render ``program`` one readable line per instruction.

    Jump targets are absolute instruction indices.  Comparisons are
    annotated with the syscall, architecture or flag they stand for, judged
    from the most recent load before them in program order (true for every
    program :func:`build_filter` makes).
    """
    names_by_arch = {
        AUDIT_ARCH[arch]: {v: k for k, v in SYSCALLS[arch].items()} for arch in ARCHES
    }
    arch_names = {v: f"AUDIT_ARCH_{k.upper()}" for k, v in AUDIT_ARCH.items()}
    field_names = {
        OFFSET_NR: "nr",
        OFFSET_ARCH: "arch",
        OFFSET_ARGS0_LOW: "args[0] low",
    }
    syscall_names: dict[int, str] = {}
    loaded = -1
    lines = []
    for index, (code, jt, jf, k) in enumerate(program):
        if code == BPF_LD_W_ABS:
            loaded = k
            text = f"ld   [{k}]"
            if k in field_names:
                text += f" ({field_names[k]})"
        elif code in (BPF_JEQ_K, BPF_JSET_K):
            note = ""
            if loaded == OFFSET_ARCH and code == BPF_JEQ_K:
                syscall_names = names_by_arch.get(k, {})
                note = arch_names.get(k, "")
            elif loaded == OFFSET_NR and code == BPF_JEQ_K:
                note = syscall_names.get(k, "")
            elif loaded == OFFSET_NR and k == X32_SYSCALL_BIT:
                note = "x32 bit"
            elif loaded == OFFSET_ARGS0_LOW and code == BPF_JSET_K:
                note = "CLONE_NEW*" if k == CLONE_NAMESPACE_FLAGS else ""
            elif loaded == OFFSET_ARGS0_LOW and k == AF_UNIX:
                note = "AF_UNIX"
            op = "jeq " if code == BPF_JEQ_K else "jset"
            value = f"#{k}" if loaded == OFFSET_NR and code == BPF_JEQ_K else f"#{k:#x}"
            if note:
                value += f" ({note})"
            text = f"{op} {value} jt {index + 1 + jt} jf {index + 1 + jf}"
        elif code == BPF_RET_K:
            text = f"ret  {_describe_return(k)}"
        else:
            text = f"code {code:#06x} jt {jt} jf {jf} k {k:#x}"
        lines.append(f"{index:03d} {text}")
    return lines


# ----------------------------------------------------------------- IO edge


_SECCOMP_ERRNO_MEANING = {
    errno.EACCES: (
        "the process has neither CAP_SYS_ADMIN nor no_new_privs set, so the "
        "kernel refuses to install a filter"
    ),
    errno.EFAULT: "the kernel could not read the program from memory",
    errno.EINVAL: (
        "the kernel rejected the program or the flags (a kernel built without "
        "CONFIG_SECCOMP_FILTER, one older than 4.14 that lacks "
        "SECCOMP_RET_KILL_PROCESS, or an invalid program)"
    ),
    errno.ENOMEM: (
        "the filters stacked on this process exceed the kernel's total "
        "instruction limit, or memory ran out"
    ),
    errno.ENOSYS: (
        "this kernel has no seccomp(2) syscall, or an outer seccomp filter hides it"
    ),
    errno.EPERM: (
        "an outer seccomp filter or a security module (a container runtime's "
        "profile, for example) forbids installing filters"
    ),
    errno.ESRCH: "another thread of this process could not be synchronised",
}


def _errno_text(err: int) -> str:
    name = errno.errorcode.get(err, f"errno {err}")
    return f"{name} ({os.strerror(err)})"


def _libc() -> ctypes.CDLL:
    # ctypes only here: the launcher writes programs without applying them
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        raise SeccompError(
            f"The C library of this process cannot be opened through ctypes "
            f"({exc}); the seccomp filter cannot be applied."
        ) from exc


def _check_program_arch(program: Sequence[Instruction], arch: str) -> None:
    # A program for another architecture would kill this process at its next
    # syscall; refuse it with a message instead.
    if (
        len(program) < 2
        or program[0] != Instruction(BPF_LD_W_ABS, 0, 0, OFFSET_ARCH)
        or program[1].code != BPF_JEQ_K
        or program[1].k != AUDIT_ARCH[arch]
    ):
        raise SeccompError(
            f"The seccomp program does not start by checking for this host's "
            f"architecture ({arch}); build it with build_filter() on this host."
        )


def apply(program: Sequence[Instruction], *, tsync: bool = False) -> None:
    """Install ``program`` as a seccomp filter on the calling process.

    Sets ``no_new_privs`` first (so an unprivileged process may install a
    filter, and so no setuid program can shed it), then calls seccomp(2)
    with ``SECCOMP_SET_MODE_FILTER``.  With ``tsync=True`` every thread of
    the process gets the filter at once (``SECCOMP_FILTER_FLAG_TSYNC``);
    without it only the calling thread and threads it creates later are
    filtered.  The filter cannot be removed.  Any failure raises
    :class:`SeccompError` naming the errno and what it means.
    """
    import ctypes

    class SockFprog(ctypes.Structure):  # struct sock_fprog
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    arch = host_arch()
    _check_program_arch(program, arch)
    blob = assemble(program)
    libc = _libc()

    if libc.prctl(
        ctypes.c_int(PR_SET_NO_NEW_PRIVS),
        ctypes.c_ulong(1),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    ):
        err = ctypes.get_errno()
        raise SeccompError(
            f"prctl(PR_SET_NO_NEW_PRIVS) failed with {_errno_text(err)}; the "
            f"kernel is older than 3.5 or a security module forbids it, so no "
            f"seccomp filter can be applied."
        )

    buffer = ctypes.create_string_buffer(blob, len(blob))
    fprog = SockFprog(len(program), ctypes.cast(buffer, ctypes.c_void_p))
    flags = SECCOMP_FILTER_FLAG_TSYNC if tsync else 0
    libc.syscall.restype = ctypes.c_long
    result = libc.syscall(
        ctypes.c_long(SYSCALLS[arch]["seccomp"]),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(flags),
        ctypes.byref(fprog),
    )
    if result == -1:
        err = ctypes.get_errno()
        meaning = _SECCOMP_ERRNO_MEANING.get(err, "the kernel gave no other reason")
        raise SeccompError(
            f"seccomp(SECCOMP_SET_MODE_FILTER, tsync={tsync}) failed with "
            f"{_errno_text(err)}: {meaning}.  The sandbox must not start "
            f"without its filter."
        )
    if result != 0:
        # With TSYNC the kernel returns the id of a thread it could not filter.
        raise SeccompError(
            f"seccomp could not apply the filter to thread {result} of this "
            f"process (it already runs a filter that is not an ancestor of "
            f"this thread's, or is in strict mode); nothing was filtered.  "
            f"Apply the filter before that thread installs its own."
        )
    logger.debug(
        "seccomp filter applied: %d instructions, tsync=%s", len(program), tsync
    )


def write_program(
    program: Sequence[Instruction], fd_or_path: int | str | os.PathLike[str]
) -> None:
    """Write the assembled ``program`` to a descriptor or a new file.

    An ``int`` is an open descriptor (a pipe or memfd for bubblewrap's
    ``--seccomp FD``): all bytes are written at its current position and it
    is left open there, so a regular file or memfd must be rewound before
    bubblewrap reads it.  A path names a file that must not exist yet; it
    is created with mode 0600 and symbolic links are not followed.  Raises
    :class:`SeccompError` on any failure.
    """
    blob = assemble(program)
    if isinstance(fd_or_path, int):
        _write_all(fd_or_path, blob, f"descriptor {fd_or_path}")
        return

    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(fd_or_path, flags, 0o600)
    except OSError as exc:
        raise SeccompError(
            f"Cannot create the seccomp program file {os.fspath(fd_or_path)!r}: "
            f"{exc.strerror}; give a path that does not exist yet, in a "
            f"writable directory."
        ) from exc
    try:
        _write_all(fd, blob, repr(os.fspath(fd_or_path)))
    finally:
        os.close(fd)


def _write_all(fd: int, blob: bytes, what: str) -> None:
    view = memoryview(blob)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError as exc:
        raise SeccompError(
            f"Writing the seccomp program to {what} failed: {exc.strerror}; "
            f"pass a descriptor open for writing."
        ) from exc


def supported() -> tuple[bool, str]:
    """Tell whether this machine can apply the filter, with the reason.

    For ``srt-kernel doctor``.  Checks the architecture, that the kernel has
    seccomp, and that it offers the kill-process, errno and allow actions
    (kernel 4.14 or later).  It does not install anything.
    """
    try:
        arch = host_arch()
    except SeccompError as exc:
        return False, str(exc)

    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            status = f.read()
    except OSError as exc:
        return False, f"/proc/self/status cannot be read ({exc.strerror}); mount /proc."
    mode_lines = [ln for ln in status.splitlines() if ln.startswith("Seccomp:")]
    if not mode_lines:
        return False, (
            "This kernel was built without seccomp (no Seccomp: line in "
            "/proc/self/status); use a kernel with CONFIG_SECCOMP_FILTER."
        )

    import ctypes

    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    for name, action in (
        ("KILL_PROCESS", SECCOMP_RET_KILL_PROCESS),
        ("ERRNO", SECCOMP_RET_ERRNO),
        ("ALLOW", SECCOMP_RET_ALLOW),
    ):
        value = ctypes.c_uint32(action)
        result = libc.syscall(
            ctypes.c_long(SYSCALLS[arch]["seccomp"]),
            ctypes.c_long(SECCOMP_GET_ACTION_AVAIL),
            ctypes.c_long(0),
            ctypes.byref(value),
        )
        if result != 0:
            err = ctypes.get_errno()
            return False, (
                f"The kernel does not offer the seccomp action {name} "
                f"({_errno_text(err)}); seccomp filters need Linux 4.14 or "
                f"later, without an outer filter that hides seccomp(2)."
            )
    mode = mode_lines[0].partition(":")[2].strip()
    return True, (
        f"seccomp filters can be applied ({arch}; kill-process, errno and "
        f"allow actions available; this process's seccomp mode is {mode})."
    )

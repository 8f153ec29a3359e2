"""Tests of the seccomp filter: its exact program, and its effect on a process.

Two tiers.  The fast one checks the program instruction by instruction for
both architectures and runs it through a small classic-BPF evaluator written
here, over a table of syscalls.  The slow one applies the real filter in a
child Python process and observes what the kernel answers, as the current
user and, when the tests run as root, as an unprivileged user too.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import srt_kernel.errors
import srt_kernel.log
from srt_kernel.errors import SeccompError
from srt_kernel.sandbox import seccomp
from srt_kernel.sandbox.seccomp import Instruction

CHILD_TIMEOUT = 180

# ------------------------------------------------------------ golden listings

GOLDEN_X86_64 = [
    "000 ld   [4] (arch)",
    "001 jeq  #0xc000003e (AUDIT_ARCH_X86_64) jt 2 jf 45",
    "002 ld   [0] (nr)",
    "003 jset #0x40000000 (x32 bit) jt 45 jf 4",
    "004 jeq  #41 (socket) jt 38 jf 5",
    "005 jeq  #56 (clone) jt 40 jf 6",
    "006 jeq  #435 (clone3) jt 44 jf 7",
    "007 jeq  #425 (io_uring_setup) jt 43 jf 8",
    "008 jeq  #426 (io_uring_enter) jt 43 jf 9",
    "009 jeq  #427 (io_uring_register) jt 43 jf 10",
    "010 jeq  #101 (ptrace) jt 43 jf 11",
    "011 jeq  #310 (process_vm_readv) jt 43 jf 12",
    "012 jeq  #311 (process_vm_writev) jt 43 jf 13",
    "013 jeq  #272 (unshare) jt 43 jf 14",
    "014 jeq  #308 (setns) jt 43 jf 15",
    "015 jeq  #165 (mount) jt 43 jf 16",
    "016 jeq  #166 (umount2) jt 43 jf 17",
    "017 jeq  #155 (pivot_root) jt 43 jf 18",
    "018 jeq  #430 (fsopen) jt 43 jf 19",
    "019 jeq  #431 (fsconfig) jt 43 jf 20",
    "020 jeq  #432 (fsmount) jt 43 jf 21",
    "021 jeq  #433 (fspick) jt 43 jf 22",
    "022 jeq  #429 (move_mount) jt 43 jf 23",
    "023 jeq  #428 (open_tree) jt 43 jf 24",
    "024 jeq  #467 (open_tree_attr) jt 43 jf 25",
    "025 jeq  #442 (mount_setattr) jt 43 jf 26",
    "026 jeq  #250 (keyctl) jt 43 jf 27",
    "027 jeq  #248 (add_key) jt 43 jf 28",
    "028 jeq  #249 (request_key) jt 43 jf 29",
    "029 jeq  #321 (bpf) jt 43 jf 30",
    "030 jeq  #298 (perf_event_open) jt 43 jf 31",
    "031 jeq  #323 (userfaultfd) jt 43 jf 32",
    "032 jeq  #246 (kexec_load) jt 43 jf 33",
    "033 jeq  #320 (kexec_file_load) jt 43 jf 34",
    "034 jeq  #175 (init_module) jt 43 jf 35",
    "035 jeq  #313 (finit_module) jt 43 jf 36",
    "036 jeq  #176 (delete_module) jt 43 jf 37",
    "037 ret  ALLOW",
    "038 ld   [16] (args[0] low)",
    "039 jeq  #0x1 (AF_UNIX) jt 43 jf 42",
    "040 ld   [16] (args[0] low)",
    "041 jset #0x7e020000 (CLONE_NEW*) jt 43 jf 42",
    "042 ret  ALLOW",
    "043 ret  ERRNO(EPERM)",
    "044 ret  ERRNO(ENOSYS)",
    "045 ret  KILL_PROCESS",
]

GOLDEN_AARCH64 = [
    "000 ld   [4] (arch)",
    "001 jeq  #0xc00000b7 (AUDIT_ARCH_AARCH64) jt 2 jf 44",
    "002 ld   [0] (nr)",
    "003 jeq  #198 (socket) jt 37 jf 4",
    "004 jeq  #220 (clone) jt 39 jf 5",
    "005 jeq  #435 (clone3) jt 43 jf 6",
    "006 jeq  #425 (io_uring_setup) jt 42 jf 7",
    "007 jeq  #426 (io_uring_enter) jt 42 jf 8",
    "008 jeq  #427 (io_uring_register) jt 42 jf 9",
    "009 jeq  #117 (ptrace) jt 42 jf 10",
    "010 jeq  #270 (process_vm_readv) jt 42 jf 11",
    "011 jeq  #271 (process_vm_writev) jt 42 jf 12",
    "012 jeq  #97 (unshare) jt 42 jf 13",
    "013 jeq  #268 (setns) jt 42 jf 14",
    "014 jeq  #40 (mount) jt 42 jf 15",
    "015 jeq  #39 (umount2) jt 42 jf 16",
    "016 jeq  #41 (pivot_root) jt 42 jf 17",
    "017 jeq  #430 (fsopen) jt 42 jf 18",
    "018 jeq  #431 (fsconfig) jt 42 jf 19",
    "019 jeq  #432 (fsmount) jt 42 jf 20",
    "020 jeq  #433 (fspick) jt 42 jf 21",
    "021 jeq  #429 (move_mount) jt 42 jf 22",
    "022 jeq  #428 (open_tree) jt 42 jf 23",
    "023 jeq  #467 (open_tree_attr) jt 42 jf 24",
    "024 jeq  #442 (mount_setattr) jt 42 jf 25",
    "025 jeq  #219 (keyctl) jt 42 jf 26",
    "026 jeq  #217 (add_key) jt 42 jf 27",
    "027 jeq  #218 (request_key) jt 42 jf 28",
    "028 jeq  #280 (bpf) jt 42 jf 29",
    "029 jeq  #241 (perf_event_open) jt 42 jf 30",
    "030 jeq  #282 (userfaultfd) jt 42 jf 31",
    "031 jeq  #104 (kexec_load) jt 42 jf 32",
    "032 jeq  #294 (kexec_file_load) jt 42 jf 33",
    "033 jeq  #105 (init_module) jt 42 jf 34",
    "034 jeq  #273 (finit_module) jt 42 jf 35",
    "035 jeq  #106 (delete_module) jt 42 jf 36",
    "036 ret  ALLOW",
    "037 ld   [16] (args[0] low)",
    "038 jeq  #0x1 (AF_UNIX) jt 42 jf 41",
    "039 ld   [16] (args[0] low)",
    "040 jset #0x7e020000 (CLONE_NEW*) jt 42 jf 41",
    "041 ret  ALLOW",
    "042 ret  ERRNO(EPERM)",
    "043 ret  ERRNO(ENOSYS)",
    "044 ret  KILL_PROCESS",
]


@pytest.mark.parametrize(
    ("arch", "golden"),
    [
        # The whole program, line by line, for each supported architecture.
        ("x86_64", GOLDEN_X86_64),
        ("aarch64", GOLDEN_AARCH64),
    ],
)
def test_golden_listing(arch: str, golden: list[str]) -> None:
    assert seccomp.disassemble(seccomp.build_filter(arch)) == golden


@pytest.mark.parametrize(
    ("arch", "golden"),
    [
        # Without the socket rule: the socket comparison and the AF_UNIX
        # block are gone, everything else is the same rule.
        ("x86_64", GOLDEN_X86_64),
        ("aarch64", GOLDEN_AARCH64),
    ],
)
def test_allow_unix_sockets_drops_exactly_the_socket_rules(
    arch: str, golden: list[str]
) -> None:
    listing = seccomp.disassemble(seccomp.build_filter(arch, allow_unix_sockets=True))

    def shape(lines: list[str]) -> list[str]:
        # Instruction text without index and jump targets, which shift.
        return [line[4:].split(" jt ")[0] for line in lines]

    dropped = {"(socket)", "(AF_UNIX)"}
    expected = [s for s in shape(golden) if not any(d in s for d in dropped)]
    expected.remove("ld   [16] (args[0] low)")
    assert shape(listing) == expected
    assert len(listing) == len(golden) - 3


@pytest.mark.parametrize(
    ("index", "instruction"),
    [
        # Raw fields of the x86_64 program where the encoding matters most.
        (0, Instruction(0x20, 0, 0, 4)),
        (1, Instruction(0x15, 0, 43, 0xC000003E)),
        (3, Instruction(0x45, 41, 0, 0x40000000)),
        (4, Instruction(0x15, 33, 0, 41)),
        (39, Instruction(0x15, 3, 2, 1)),
        (41, Instruction(0x45, 1, 0, 0x7E020000)),
        (42, Instruction(0x06, 0, 0, 0x7FFF0000)),
        (43, Instruction(0x06, 0, 0, 0x00050001)),
        (44, Instruction(0x06, 0, 0, 0x00050026)),
        (45, Instruction(0x06, 0, 0, 0x80000000)),
    ],
)
def test_raw_instructions(index: int, instruction: Instruction) -> None:
    assert seccomp.build_filter("x86_64")[index] == instruction


@pytest.mark.skipif(sys.byteorder != "little", reason="golden bytes are little-endian")
def test_assemble_is_struct_sock_filter() -> None:
    blob = seccomp.assemble(seccomp.build_filter("x86_64"))
    assert len(blob) == 8 * len(GOLDEN_X86_64)
    assert blob[:16] == bytes.fromhex("2000 0000 04000000 1500 002b 3e0000c0")
    assert blob[-8:] == bytes.fromhex("0600 0000 00000080")


@pytest.mark.parametrize(
    ("program", "message"),
    [
        # An empty program and a field that does not fit its C type.
        ([], "empty"),
        ([Instruction(0x06, 256, 0, 0)], "out of range"),
        ([Instruction(0x06, 0, 0, 1 << 32)], "out of range"),
    ],
)
def test_assemble_refuses(program: list[Instruction], message: str) -> None:
    with pytest.raises(SeccompError, match=message):
        seccomp.assemble(program)


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(SeccompError, match="'riscv64'"):
        seccomp.build_filter("riscv64")


# ------------------------------------------------ a classic-BPF evaluator

SeccompData = tuple[int, int, Sequence[int]]


def run_bpf(program: Sequence[Instruction], data: bytes) -> int:
    """Run ``program`` over ``data`` as the kernel's seccomp BPF would."""
    acc = 0
    pc = 0
    while True:
        assert 0 <= pc < len(program), f"fell off the program at {pc}"
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x20:  # ld [k]: 32-bit word, native order, aligned, in range
            assert k % 4 == 0 and k + 4 <= len(data), f"bad load offset {k}"
            (acc,) = struct.unpack_from("=I", data, k)
        elif code == 0x06:  # ret #k
            return k
        elif code == 0x05:  # ja k
            pc += k
        elif code & 0x07 == 0x05:  # conditional jumps against k
            tests = {
                0x10: acc == k,
                0x20: acc > k,
                0x30: acc >= k,
                0x40: acc & k != 0,
            }
            assert code & 0x08 == 0, "jumps against X are not used"
            pc += jt if tests[code & 0xF0] else jf
        elif code == 0x54:  # and #k
            acc &= k
        else:
            raise AssertionError(f"opcode {code:#x} at {pc - 1} not expected")


def seccomp_data(audit_arch: int, nr: int, args: Sequence[int] = ()) -> bytes:
    full = [*args, *[0] * (6 - len(args))]
    return struct.pack("=iIQ6Q", nr, audit_arch, 0x401000, *full)


ALLOW = 0x7FFF0000
EPERM = 0x00050000 | errno.EPERM
ENOSYS = 0x00050000 | errno.ENOSYS
KILL = 0x80000000

X86 = seccomp.AUDIT_ARCH["x86_64"]
ARM64 = seccomp.AUDIT_ARCH["aarch64"]
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_ARM = 0x40000028
CLONE_NEWUSER = 0x10000000
SIGCHLD = 17
# Flags glibc passes for fork() and for a new thread.
FORK_FLAGS = 0x01200000 | SIGCHLD
THREAD_FLAGS = 0x003D0F00


def nr(arch: str, name: str) -> int:
    return seccomp.SYSCALLS[arch][name]


EVAL_ROWS = [
    # socket: AF_UNIX is refused whatever the upper 32 bits hold, every
    # other domain (and AF_INET with upper bits) is allowed.
    ("x86_64", X86, nr("x86_64", "socket"), (1, 1, 0), EPERM),
    ("x86_64", X86, nr("x86_64", "socket"), (0x100000001, 1, 0), EPERM),
    ("x86_64", X86, nr("x86_64", "socket"), (0xFFFFFFFF00000001, 1, 0), EPERM),
    ("x86_64", X86, nr("x86_64", "socket"), (2, 1, 0), ALLOW),
    ("x86_64", X86, nr("x86_64", "socket"), (10, 2, 0), ALLOW),
    ("x86_64", X86, nr("x86_64", "socket"), (0x100000002, 1, 0), ALLOW),
    ("x86_64", X86, nr("x86_64", "socket"), (16, 3, 0), ALLOW),
    ("aarch64", ARM64, nr("aarch64", "socket"), (1, 1, 0), EPERM),
    ("aarch64", ARM64, nr("aarch64", "socket"), (0x100000001, 1, 0), EPERM),
    ("aarch64", ARM64, nr("aarch64", "socket"), (2, 1, 0), ALLOW),
    # socketpair makes an anonymous connected pair that reaches nothing of
    # the host: allowed for every domain, AF_UNIX (asyncio's) included.
    ("x86_64", X86, nr("x86_64", "socketpair"), (1, 1, 0, 0), ALLOW),
    ("x86_64", X86, nr("x86_64", "socketpair"), (0x700000001, 1, 0, 0), ALLOW),
    ("x86_64", X86, nr("x86_64", "socketpair"), (2, 1, 0, 0), ALLOW),
    ("aarch64", ARM64, nr("aarch64", "socketpair"), (1, 1, 0, 0), ALLOW),
    ("aarch64", ARM64, nr("aarch64", "socketpair"), (0x100000001, 5, 0, 0), ALLOW),
    # clone: any CLONE_NEW* flag in the low word is refused; fork and thread
    # flags are allowed; the upper word is not the kernel's, so it is ignored.
    ("x86_64", X86, nr("x86_64", "clone"), (CLONE_NEWUSER | SIGCHLD,), EPERM),
    ("x86_64", X86, nr("x86_64", "clone"), (0x40000000 | SIGCHLD,), EPERM),
    ("x86_64", X86, nr("x86_64", "clone"), (0x00020000,), EPERM),
    ("x86_64", X86, nr("x86_64", "clone"), (FORK_FLAGS,), ALLOW),
    ("x86_64", X86, nr("x86_64", "clone"), (THREAD_FLAGS,), ALLOW),
    ("x86_64", X86, nr("x86_64", "clone"), (0x1_0000_0000 | SIGCHLD,), ALLOW),
    ("aarch64", ARM64, nr("aarch64", "clone"), (CLONE_NEWUSER,), EPERM),
    ("aarch64", ARM64, nr("aarch64", "clone"), (FORK_FLAGS,), ALLOW),
    # clone3 cannot be judged: ENOSYS sends libc back to clone.
    ("x86_64", X86, nr("x86_64", "clone3"), (0, 88), ENOSYS),
    ("aarch64", ARM64, nr("aarch64", "clone3"), (0, 88), ENOSYS),
    # The outright refusals, a few per group on both architectures.
    ("x86_64", X86, nr("x86_64", "io_uring_setup"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "ptrace"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "process_vm_writev"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "unshare"), (CLONE_NEWUSER,), EPERM),
    ("x86_64", X86, nr("x86_64", "setns"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "mount"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "fsopen"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "open_tree_attr"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "keyctl"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "bpf"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "kexec_file_load"), (), EPERM),
    ("x86_64", X86, nr("x86_64", "delete_module"), (), EPERM),
    ("aarch64", ARM64, nr("aarch64", "io_uring_enter"), (), EPERM),
    ("aarch64", ARM64, nr("aarch64", "ptrace"), (), EPERM),
    ("aarch64", ARM64, nr("aarch64", "unshare"), (), EPERM),
    ("aarch64", ARM64, nr("aarch64", "umount2"), (), EPERM),
    ("aarch64", ARM64, nr("aarch64", "userfaultfd"), (), EPERM),
    # Ordinary calls pass: read, write, openat, getpid, and aarch64's 41
    # (pivot_root there) is x86_64's socket number, refused only by domain.
    ("x86_64", X86, 0, (), ALLOW),
    ("x86_64", X86, 257, (), ALLOW),
    ("x86_64", X86, 39, (), ALLOW),
    ("aarch64", ARM64, 63, (), ALLOW),
    ("aarch64", ARM64, 56, (), ALLOW),
    ("aarch64", ARM64, 41, (), EPERM),
    # x32 numbers and foreign architectures kill the process.
    ("x86_64", X86, 0x40000000 | 39, (), KILL),
    ("x86_64", X86, 0x40000000 | 41, (1,), KILL),
    ("x86_64", X86, -1, (), KILL),
    ("x86_64", AUDIT_ARCH_I386, 20, (), KILL),
    ("x86_64", ARM64, 63, (), KILL),
    ("aarch64", AUDIT_ARCH_ARM, 20, (), KILL),
    ("aarch64", X86, 39, (), KILL),
]


def row_id(row: tuple[str, int, int, tuple[int, ...], int]) -> str:
    arch, audit_arch, number, args, _ = row
    names = {v: k for k, v in seccomp.SYSCALLS[arch].items()}
    audit = {v: k for k, v in seccomp.AUDIT_ARCH.items()}.get(audit_arch, "foreign")
    first = f"-{args[0]:#x}" if args else ""
    return f"{arch}-{audit}-{names.get(number, number)}{first}"


@pytest.mark.parametrize(
    ("arch", "audit_arch", "nr", "args", "expected"),
    EVAL_ROWS,
    ids=[row_id(row) for row in EVAL_ROWS],
)
def test_program_decides(
    arch: str, audit_arch: int, nr: int, args: tuple[int, ...], expected: int
) -> None:
    program = seccomp.build_filter(arch)
    assert run_bpf(program, seccomp_data(audit_arch, nr, args)) == expected


@pytest.mark.parametrize("arch", seccomp.ARCHES)
def test_allow_unix_sockets_keeps_other_rules(arch: str) -> None:
    program = seccomp.build_filter(arch, allow_unix_sockets=True)
    audit = seccomp.AUDIT_ARCH[arch]

    def decide(name: str, *args: int) -> int:
        return run_bpf(program, seccomp_data(audit, nr(arch, name), args))

    assert decide("socket", 1, 1, 0) == ALLOW
    assert decide("socketpair", 1, 1, 0, 0) == ALLOW
    assert decide("clone", CLONE_NEWUSER) == EPERM
    assert decide("ptrace") == EPERM
    assert decide("clone3") == ENOSYS


# ------------------------------------------------------- the real kernel

# The child applies the filter (or not, for the control run), then tries
# each probe and prints one JSON object: probe name -> "ok", an errno name,
# or the name of the exception.
CHILD = r"""
import asyncio, ctypes, errno, json, os, socket, subprocess, sys, threading
import concurrent.futures, multiprocessing
from multiprocessing.managers import SyncManager

config = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
X86 = os.uname().machine == "x86_64"
NR = {
    "socket": 41 if X86 else 198, "socketpair": 53 if X86 else 199,
    "clone": 56 if X86 else 220,
    "process_vm_readv": 310 if X86 else 270, "keyctl": 250 if X86 else 219,
    "io_uring_setup": 425, "clone3": 435, "getpid": 39 if X86 else 172,
}
L = ctypes.c_long

def sys_call(name_or_nr, *args):
    nr = NR[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
    ret = libc.syscall(L(nr), *[L(a) for a in args])
    if ret == -1:
        raise OSError(ctypes.get_errno(), "")
    return ret

def libc_call(name, *args):
    if getattr(libc, name)(*[ctypes.c_ulong(a) for a in args]) == -1:
        raise OSError(ctypes.get_errno(), "")

def raw_socket(domain):
    os.close(sys_call("socket", domain, socket.SOCK_STREAM, 0))

def raw_clone(flags):
    pid = sys_call("clone", flags, 0, 0, 0, 0)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

def fork():
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7

def thread():
    box = []
    t = threading.Thread(target=box.append, args=(1,))
    t.start(); t.join()
    assert box == [1]

def pool(method):
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2) as p:
        assert p.map(abs, [-1, -2, 3]) == [1, 2, 3]

def executor():
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert list(ex.map(abs, [-4, 5])) == [4, 5]

def manager(address):
    m = SyncManager(address=address, ctx=multiprocessing.get_context("fork"))
    m.start()
    try:
        d = m.dict()
        d["k"] = 1
        assert dict(d) == {"k": 1}
    finally:
        m.shutdown()

def git_init():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["git", "init", "-q", d], check=True)
        subprocess.run(["git", "-C", d, "status", "--short"], check=True)

def socketpair():
    a, b = socket.socketpair(socket.AF_UNIX)
    a.close(); b.close()

def raw_socketpair(domain):
    fds = (ctypes.c_int * 2)()
    sys_call("socketpair", domain, socket.SOCK_STREAM, 0, ctypes.addressof(fds))
    os.close(fds[0]); os.close(fds[1])

def asyncio_thread():
    # A thread started after the filter, making its own event loop.
    box = []
    def body():
        try:
            with open("/proc/thread-self/status") as f:
                mode = [l.split()[1] for l in f if l.startswith("Seccomp:")][0]
            early["asyncio_thread_mode"] = mode
            loop = asyncio.new_event_loop()
            try:
                box.append(loop.run_until_complete(asyncio.sleep(0, "slept")))
            finally:
                loop.close()
        except BaseException as exc:
            box.append(exc)
    t = threading.Thread(target=body)
    t.start(); t.join(60)
    if isinstance(box[0], BaseException):
        raise box[0]
    assert box == ["slept"]

def inet():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))

def io_uring():
    params = ctypes.create_string_buffer(120)
    os.close(sys_call("io_uring_setup", 1, ctypes.addressof(params)))

PROBES = {
    "socket_unix": lambda: socket.socket(socket.AF_UNIX).close(),
    "socket_unix_upper_bits": lambda: raw_socket(0x100000001),
    "socket_inet_upper_bits": lambda: raw_socket(0x100000002),
    "socketpair_unix": socketpair,
    "socketpair_unix_upper_bits": lambda: raw_socketpair(0x100000001),
    "asyncio_run": lambda: asyncio.run(asyncio.sleep(0)),
    "asyncio_thread": asyncio_thread,
    "socket_inet": inet,
    "unshare_user": lambda: libc_call("unshare", 0x10000000),
    "os_unshare": lambda: os.unshare(0x10000000),
    "clone_newuser": lambda: raw_clone(0x10000000 | 17),
    "setns": lambda: libc_call("setns", 2**32 - 1, 0),
    "ptrace_traceme": lambda: libc_call("ptrace", 0, 0, 0, 0),
    "process_vm_readv": lambda: sys_call(
        "process_vm_readv", os.getpid(), 0, 0, 0, 0, 0
    ),
    "io_uring_setup": io_uring,
    "clone3": lambda: sys_call("clone3", 0, 0),
    "umount2": lambda: libc_call("umount2", ctypes.addressof(NOPATH), 0),
    "keyctl": lambda: sys_call("keyctl", 0, 2**64 - 4, 0),
    "fork": fork,
    "thread": thread,
    "subprocess_true": lambda: subprocess.run(["true"], check=True),
    "pool_fork": lambda: pool("fork"),
    "pool_spawn": lambda: pool("spawn"),
    "pool_forkserver": lambda: pool("forkserver"),
    "pool_default": lambda: pool(None),
    "executor_fork": executor,
    "manager_inet": lambda: manager(("127.0.0.1", 0)),
    "manager_unix": lambda: manager(None),
    "git_init": lambda: git_init(),
    "curl_file": lambda: subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "file:///proc/self/status"], check=True
    ),
}
NOPATH = ctypes.create_string_buffer(b"/nonexistent-srt-kernel-seccomp-test")

def run(name):
    if name == "os_unshare" and not hasattr(os, "unshare"):
        return "absent"
    try:
        PROBES[name]()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)
    except Exception as exc:
        return type(exc).__name__
    return "ok"

started = threading.Event()
go = threading.Event()
early = {}

def early_thread():
    started.set()
    go.wait(60)
    early["socket_unix"] = run("socket_unix")
    with open("/proc/thread-self/status") as f:
        early["mode"] = [l.split()[1] for l in f if l.startswith("Seccomp:")][0]

if config.get("early_thread"):
    t = threading.Thread(target=early_thread)
    t.start()
    started.wait(60)

own_ready = threading.Event()

def own_filter_thread():
    from srt_kernel.sandbox import seccomp
    seccomp.apply(seccomp.build_filter())
    early["tid"] = threading.get_native_id()
    own_ready.set()
    go.wait(60)

if config.get("thread_own_filter"):
    t = threading.Thread(target=own_filter_thread)
    t.start()
    own_ready.wait(60)

if config["apply"]:
    from srt_kernel.sandbox import seccomp
    from srt_kernel.errors import SeccompError
    program = seccomp.build_filter(allow_unix_sockets=config.get("allow_unix", False))
    try:
        seccomp.apply(program, tsync=config.get("tsync", False))
    except SeccompError as exc:
        if not config.get("thread_own_filter"):
            raise
        early["apply_error"] = str(exc)

if config.get("early_thread") or config.get("thread_own_filter"):
    go.set()
    t.join(60)

results = {name: run(name) for name in config.get("probes", [])}
results["start_method"] = multiprocessing.get_start_method()
results["python"] = list(sys.version_info[:2])
results["early"] = early
for name in config.get("die", []):
    sys.stdout.flush()
    if name == "x32_getpid":
        sys_call(0x40000000 | NR["getpid"])
    elif name == "int80_getpid":
        import mmap
        code = bytes.fromhex("b814000000" "cd80" "c3")  # mov eax,20; int 0x80; ret
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        fn = ctypes.CFUNCTYPE(ctypes.c_int)(address)
        results[name] = "ok" if fn() == os.getpid() else "wrong pid"
print(json.dumps(results), flush=True)
"""

ALL_PROBES = [
    "socket_unix",
    "socket_unix_upper_bits",
    "socket_inet_upper_bits",
    "socketpair_unix",
    "socketpair_unix_upper_bits",
    "socket_inet",
    "unshare_user",
    "os_unshare",
    "clone_newuser",
    "setns",
    "ptrace_traceme",
    "process_vm_readv",
    "io_uring_setup",
    "clone3",
    "umount2",
    "keyctl",
    "fork",
    "thread",
    "subprocess_true",
    "pool_fork",
    "pool_spawn",
    "pool_forkserver",
    "pool_default",
    "executor_fork",
    "manager_inet",
    "manager_unix",
]


class Runner:
    """Runs the child script with one interpreter, as one user."""

    def __init__(
        self,
        python: str,
        pythonpath: str,
        user: pwd.struct_passwd | None,
        cwd: str,
    ) -> None:
        self.python = python
        self.pythonpath = pythonpath
        self.user = user
        self.cwd = cwd

    def run(self, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": self.pythonpath,
            "HOME": self.cwd,
            "LANG": "C.UTF-8",
        }
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs = {
                "user": self.user.pw_uid,
                "group": self.user.pw_gid,
                "extra_groups": [],
            }
        return subprocess.run(
            [self.python, "-c", CHILD, json.dumps(config)],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.cwd,
            timeout=CHILD_TIMEOUT,
            check=False,
            **kwargs,
        )

    def results(self, config: dict[str, Any]) -> dict[str, Any]:
        proc = self.run(config)
        assert proc.returncode == 0, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result


def package_root() -> str:
    return str(Path(srt_kernel.__file__).resolve().parent.parent)


def unprivileged_runner(tmp: str) -> Runner:
    """A runner for ``nobody``, with a copy of the modules the child needs.

    The copy keeps the child independent of whether the user can read the
    repository and of what other modules of the package import.
    """
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine to run unprivileged")
    root = Path(tmp)
    package = root / "srt_kernel"
    (package / "sandbox").mkdir(parents=True)
    (package / "__init__.py").write_text('"""Copy for an unprivileged test."""\n')
    (package / "sandbox" / "__init__.py").write_text('"""Copy."""\n')
    shutil.copy(srt_kernel.errors.__file__, package / "errors.py")
    shutil.copy(srt_kernel.log.__file__, package / "log.py")
    shutil.copy(seccomp.__file__, package / "sandbox" / "seccomp.py")
    for path in [root, *root.rglob("*")]:
        mode = 0o755 if path.is_dir() else 0o644
        path.chmod(mode)
    candidates = [sys.executable, "/usr/bin/python3", shutil.which("python3")]
    for python in dict.fromkeys(c for c in candidates if c):
        runner = Runner(python, str(root), user, str(root))
        try:
            probe = runner.run({"apply": False})
        except PermissionError:
            continue
        if probe.returncode == 0:
            return runner
    pytest.skip("no Python interpreter that user 'nobody' can run")


@pytest.fixture(scope="module", params=["current-user", "unprivileged"])
def runner(request: pytest.FixtureRequest) -> Iterator[Runner]:
    if request.param == "current-user":
        yield Runner(sys.executable, package_root(), None, tempfile.gettempdir())
        return
    if os.geteuid() != 0:
        pytest.skip("already unprivileged: the current-user run covers it")
    tmp = tempfile.mkdtemp(prefix="srt-seccomp-")
    try:
        yield unprivileged_runner(tmp)
    finally:
        shutil.rmtree(tmp)


@pytest.fixture(scope="module")
def filtered(runner: Runner) -> dict[str, Any]:
    return runner.results({"apply": True, "probes": ALL_PROBES})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        # Unix sockets: refused, also with garbage in the upper 32 bits.
        ("socket_unix", "EPERM"),
        ("socket_unix_upper_bits", "EPERM"),
        # An anonymous connected pair reaches nothing of the host: allowed.
        ("socketpair_unix", "ok"),
        ("socketpair_unix_upper_bits", "ok"),
        # Other sockets work; the kernel reads only the low word of the domain.
        ("socket_inet", "ok"),
        ("socket_inet_upper_bits", "ok"),
        # Namespaces, tracing, io_uring, mounts, keyrings: refused.
        ("unshare_user", "EPERM"),
        ("clone_newuser", "EPERM"),
        ("setns", "EPERM"),
        ("ptrace_traceme", "EPERM"),
        ("process_vm_readv", "EPERM"),
        ("io_uring_setup", "EPERM"),
        ("umount2", "EPERM"),
        ("keyctl", "EPERM"),
        # clone3 says ENOSYS so that libc falls back to clone.
        ("clone3", "ENOSYS"),
        # What ordinary programs do keeps working.
        ("fork", "ok"),
        ("thread", "ok"),
        ("subprocess_true", "ok"),
        ("pool_fork", "ok"),
        ("pool_spawn", "ok"),
        ("executor_fork", "ok"),
        ("manager_inet", "ok"),
        # forkserver needs a Unix socket; so does a manager without a TCP
        # address: its server process fails and the caller sees EOFError.
        ("pool_forkserver", "EPERM"),
        ("manager_unix", "EOFError"),
    ],
)
def test_filtered_process(filtered: dict[str, Any], probe: str, expected: str) -> None:
    assert filtered[probe] == expected


@pytest.mark.slow
def test_filtered_process_version_dependent(filtered: dict[str, Any]) -> None:
    # os.unshare exists from Python 3.12 on.
    has_unshare = filtered["python"] >= [3, 12]
    assert filtered["os_unshare"] == ("EPERM" if has_unshare else "absent")

    # The default start method works unless it is forkserver (Python 3.14's
    # default on Linux), which needs a Unix socket.
    forkserver = filtered["start_method"] == "forkserver"
    assert filtered["pool_default"] == ("EPERM" if forkserver else "ok")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        # Without the filter the same probes succeed or fail otherwise, so the
        # filtered answers above come from the filter.
        ("socket_unix", "ok"),
        ("socket_unix_upper_bits", "ok"),
        ("setns", "EBADF"),
        ("process_vm_readv", "ok"),
        ("clone3", "EINVAL"),
        ("umount2", "ENOENT"),
        ("pool_forkserver", "ok"),
    ],
)
def test_control_without_filter(probe: str, expected: str) -> None:
    runner = Runner(sys.executable, package_root(), None, tempfile.gettempdir())
    assert runner.results({"apply": False, "probes": [probe]})[probe] == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tsync", "socket_unix", "mode"),
    [
        # With TSYNC a thread started before the filter is filtered too;
        # without it, that thread keeps running unfiltered.
        (True, "EPERM", "2"),
        (False, "ok", "0"),
    ],
)
def test_tsync_filters_existing_threads(
    runner: Runner, tsync: bool, socket_unix: str, mode: str
) -> None:
    results = runner.results({"apply": True, "tsync": tsync, "early_thread": True})
    assert results["early"] == {"socket_unix": socket_unix, "mode": mode}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("probe", "tool"),
    [
        # Everyday tools run unchanged under the filter.
        ("git_init", "git"),
        ("curl_file", "curl"),
    ],
)
def test_tools_work_under_the_filter(runner: Runner, probe: str, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    assert runner.results({"apply": True, "probes": [probe]})[probe] == "ok"


@pytest.mark.slow
def test_tsync_failure_is_an_error_and_filters_nothing(runner: Runner) -> None:
    # A thread with a filter of its own cannot take the process-wide one.
    results = runner.results(
        {
            "apply": True,
            "tsync": True,
            "thread_own_filter": True,
            "probes": ["socket_unix"],
        }
    )
    tid = results["early"]["tid"]
    assert f"to thread {tid} of this process" in results["early"]["apply_error"]
    assert results["socket_unix"] == "ok"


@pytest.mark.slow
def test_asyncio_works_under_the_filter(runner: Runner) -> None:
    # Each new event loop makes a socketpair(AF_UNIX); socket(AF_UNIX) stays
    # refused in the same process.
    results = runner.results(
        {"apply": True, "probes": ["asyncio_run", "asyncio_thread", "socket_unix"]}
    )
    assert [results[p] for p in ("asyncio_run", "asyncio_thread")] == ["ok", "ok"]
    assert results["socket_unix"] == "EPERM"
    # The thread ran under the filter (seccomp mode 2), not beside it.
    assert results["early"] == {"asyncio_thread_mode": "2"}


@pytest.mark.slow
def test_allow_unix_sockets_in_a_real_process(runner: Runner) -> None:
    results = runner.results(
        {
            "apply": True,
            "allow_unix": True,
            "probes": ["socket_unix", "socketpair_unix", "unshare_user", "clone3"],
        }
    )
    assert [results[p] for p in ("socket_unix", "socketpair_unix")] == ["ok", "ok"]
    assert [results[p] for p in ("unshare_user", "clone3")] == ["EPERM", "ENOSYS"]


@pytest.mark.slow
def test_x32_syscall_kills_the_process(runner: Runner) -> None:
    if seccomp.host_arch() != "x86_64":
        pytest.skip("the x32 ABI exists only on x86_64")
    proc = runner.run({"apply": True, "die": ["x32_getpid"]})
    assert proc.returncode == -signal.SIGSYS, proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_foreign_arch_syscall_kills_the_process(runner: Runner) -> None:
    if seccomp.host_arch() != "x86_64":
        pytest.skip("the i386 int 0x80 probe is x86_64 machine code")
    control = runner.run({"apply": False, "die": ["int80_getpid"]})
    if control.returncode != 0:
        pytest.skip(f"this kernel has no i386 emulation (rc {control.returncode})")
    assert json.loads(control.stdout)["int80_getpid"] == "ok"

    proc = runner.run({"apply": True, "die": ["int80_getpid"]})
    assert proc.returncode == -signal.SIGSYS, proc.stderr


# ------------------------------------------------------------- the IO edge


def test_write_program_to_path_and_fd(tmp_path: Path) -> None:
    program = seccomp.build_filter("aarch64")
    path = tmp_path / "filter.bpf"
    seccomp.write_program(program, path)
    assert path.read_bytes() == seccomp.assemble(program)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    read_end, write_end = os.pipe()
    try:
        seccomp.write_program(program, write_end)
        os.close(write_end)
        write_end = -1
        assert os.read(read_end, 65536) == seccomp.assemble(program)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_write_program_refuses_existing_path_and_bad_fd(tmp_path: Path) -> None:
    program = seccomp.build_filter("x86_64")
    path = tmp_path / "exists"
    path.write_bytes(b"keep")
    with pytest.raises(SeccompError, match="does not exist yet"):
        seccomp.write_program(program, path)
    assert path.read_bytes() == b"keep"

    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        with pytest.raises(SeccompError, match="open for writing"):
            seccomp.write_program(program, read_end)
    finally:
        os.close(read_end)


def test_apply_refuses_a_program_for_another_arch() -> None:
    other = "aarch64" if seccomp.host_arch() == "x86_64" else "x86_64"
    with pytest.raises(SeccompError, match="architecture"):
        seccomp.apply(seccomp.build_filter(other))


def test_supported_on_this_machine() -> None:
    ok, reason = seccomp.supported()
    assert ok, reason
    assert seccomp.host_arch() in reason

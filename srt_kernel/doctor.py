"""``srt-kernel doctor``: can this machine build the sandbox, and if not, why.

Each check says what it found and, when it fails, the exact fix.  The
same diagnosis is attached to the error that ``srt-kernel run`` and the
kernel raise when they refuse to start, so a user sees one explanation.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

from srt_kernel.record import Record, field


class Check(Record):
    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: A failed required check means the sandbox cannot run.
    required: bool = True


class Diagnosis(Record, frozen=False):
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def text(self) -> str:
        lines = []
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
            lines.append(f"[{mark}] {c.name}: {c.detail}")
            if not c.ok and c.fix:
                lines.extend(f"       {line}" for line in c.fix.splitlines())
        if self.ok:
            lines.append("The sandbox can run on this machine.")
        elif inside_sandbox():
            lines.append(
                "No sandbox can be built from inside this srt-kernel sandbox; run "
                "srt-kernel doctor on the host to check the machine itself."
            )
        else:
            lines.append(
                "The sandbox cannot run on this machine; srt-kernel will refuse "
                "to run code until the failures above are fixed."
            )
        return "\n".join(lines)


def install_hint() -> str:
    """How to install bubblewrap here."""
    if os.geteuid() == 0:
        how = "apt-get install -y bubblewrap   (Debian, Ubuntu)"
    else:
        how = "sudo apt-get install -y bubblewrap   (Debian, Ubuntu)"
    return (
        "Install bubblewrap from your distribution:\n"
        f"  {how}\n"
        "  sudo dnf install bubblewrap        (Fedora)\n"
        "  sudo pacman -S bubblewrap          (Arch)"
    )


#: What to do when srt-kernel is asked to build a sandbox inside its own.
NESTED_FIX = (
    "srt-kernel sandboxes do not nest: new user namespaces are disabled inside "
    "one, so bubblewrap cannot start there. Run the command as it is (it is "
    "already sandboxed, under the outer sandbox's policy), or run srt-kernel on "
    "the host. If this is not a sandbox, unset SRT_KERNEL_SANDBOX."
)


def inside_sandbox() -> bool:
    """Whether this process says it runs inside an srt-kernel sandbox.

    Every srt-kernel sandbox sets ``SRT_KERNEL_SANDBOX=1``; the variable is
    only used to explain a failure, never to loosen anything.
    """
    return os.environ.get("SRT_KERNEL_SANDBOX") == "1"


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _check_bwrap() -> tuple[Check, str | None]:
    from srt_kernel.sandbox.bwrap import TRUSTED_BIN, locate_bwrap

    path = locate_bwrap()
    if path is None:
        elsewhere = shutil.which("bwrap")
        if os.environ.get("SRT_KERNEL_BWRAP"):
            detail = "SRT_KERNEL_BWRAP is not the absolute path of a program"
        elif elsewhere is not None:
            detail = (
                f"bwrap is at {elsewhere}, which is not a system folder "
                f"({', '.join(TRUSTED_BIN)}): srt-kernel does not run a bwrap "
                "that a sandbox might have written; set SRT_KERNEL_BWRAP to "
                "its absolute path if you trust it"
            )
        else:
            detail = "bwrap is not on PATH"
        return Check("bubblewrap", False, detail, install_hint()), None
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10
        )
        version = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(
            "bubblewrap", False, f"{path} does not run: {exc}", install_hint()
        ), None
    return Check("bubblewrap", True, f"{path} ({version})"), path


def _userns_fix() -> str:
    if inside_sandbox():
        return 'Expected inside an srt-kernel sandbox: see "not nested" above.'
    fixes = []
    if _read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1:
        fixes.append(
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10 and "
            "later). Allow them for bwrap with a profile:\n"
            "  sudo tee /etc/apparmor.d/bwrap <<'EOF'\n"
            "  abi <abi/4.0>,\n"
            "  include <tunables/global>\n"
            "  profile bwrap /usr/bin/bwrap flags=(unconfined) {\n"
            "    userns,\n"
            "  }\n"
            "  EOF\n"
            "  sudo systemctl reload apparmor"
        )
    if _read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0:
        fixes.append(
            "Unprivileged user namespaces are switched off:\n"
            "  sudo sysctl -w kernel.unprivileged_userns_clone=1"
        )
    if _read_int("/proc/sys/user/max_user_namespaces") == 0:
        fixes.append(
            "User namespaces are limited to 0:\n"
            "  sudo sysctl -w user.max_user_namespaces=15000"
        )
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        fixes.append(
            "This looks like a container. Docker's default seccomp and AppArmor "
            "profiles refuse the namespaces bwrap needs; start the container with\n"
            "  --security-opt seccomp=unconfined --security-opt apparmor=unconfined\n"
            "or run srt-kernel on the host."
        )
    if not fixes:
        fixes.append(
            "User namespaces could not be created here (is this already a "
            "sandbox that disabled them, such as bwrap --disable-userns?). Run "
            "srt-kernel outside it."
        )
    return "\n".join(fixes)


def _check_userns(bwrap: str) -> Check:
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "true",
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(
            "user namespaces", False, f"bwrap did not run: {exc}", _userns_fix()
        )
    if out.returncode != 0:
        detail = out.stderr.strip() or f"bwrap exited with status {out.returncode}"
        return Check("user namespaces", False, detail, _userns_fix())
    return Check(
        "user namespaces",
        True,
        "bwrap can create user, pid, net, ipc and uts namespaces",
    )


def _check_seccomp() -> Check:
    from srt_kernel.sandbox import seccomp

    ok, detail = seccomp.supported()
    fix = (
        "The kernel must be built with CONFIG_SECCOMP_FILTER. Without it, "
        "srt-kernel refuses to run unless your settings say "
        '"dangerouslyRunWithoutSeccomp": true (then sandboxed code can open '
        "Unix sockets and use io_uring)."
    )
    return Check("seccomp", ok, detail, fix)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is unavailable."""
    nr = {"x86_64": 444, "aarch64": 444}.get(os.uname().machine)
    if nr is None:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(nr, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return int(version) if version > 0 else 0


def _check_landlock() -> Check:
    abi = landlock_abi()
    if abi:
        return Check(
            "landlock",
            True,
            f"available (ABI {abi}); not needed while bwrap works",
            required=False,
        )
    return Check(
        "landlock",
        False,
        "not available; only bubblewrap can sandbox here",
        "Landlock needs Linux 5.13 or later with lsm=landlock enabled.",
        required=False,
    )


def diagnose() -> Diagnosis:
    """Run every check."""
    diagnosis = Diagnosis()
    if inside_sandbox():
        diagnosis.checks.append(
            Check(
                "not nested",
                False,
                "this runs inside an srt-kernel sandbox (SRT_KERNEL_SANDBOX=1)",
                NESTED_FIX,
            )
        )
    check, bwrap = _check_bwrap()
    diagnosis.checks.append(check)
    if bwrap is not None:
        diagnosis.checks.append(_check_userns(bwrap))
    diagnosis.checks.append(_check_seccomp())
    diagnosis.checks.append(_check_landlock())
    diagnosis.checks.append(_check_kernelspecs())
    return diagnosis


def _check_kernelspecs() -> Check:
    from srt_kernel.kernel.spec import stale_kernelspecs

    stale = stale_kernelspecs()
    if not stale:
        return Check("kernelspecs", True, "every srt-kernel kernelspec is current")
    names = ", ".join(f"{name} ({folder})" for name, folder in stale)
    return Check(
        "kernelspecs",
        False,
        f"from an earlier version: {names}; they start the kernel with the "
        "notebook's folder on sys.path, where a cell could plant code that "
        "runs outside the sandbox",
        "Reinstall each: srt-kernel install --user (or --sys-prefix, "
        "--prefix P, as it was installed).",
        required=False,
    )

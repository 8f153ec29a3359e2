"""Block reports: what the sandbox stopped during a cell, in plain words.

Pure: takes the proxy's refusals and the error texts a cell produced, and
the policy, and returns the text shown under the cell.  The layout is fixed
and documented in the README ("Block reports")::

    srt-kernel blocked 2 things in this cell:
    - network: other.test port 443 (https)
      why: not in allowedDomains
      to allow: add "other.test" to "network.allowedDomains" in your settings
      (~/.config/srt-kernel/settings.json) and in this notebook's
      "sandbox" metadata
    - write: /etc/passwd
      why: outside every folder this notebook may write
      to allow: ...

The OS does not report refused file accesses, so file refusals are read
from the error texts that reach the cell (``PermissionError``, "Read-only
file system", and "No such file or directory" under a read-denied folder)
and explained against the policy.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Sequence

from srt_kernel.policy import FilesystemPolicy, is_within
from srt_kernel.record import Record

SETTINGS_HINT = "~/.config/srt-kernel/settings.json"

# Python's OSError text and the coreutils/shell forms of the same errors.
_PATTERNS = (
    (re.compile(r"\[Errno 30\] Read-only file system: '([^']+)'"), "write"),
    (re.compile(r"\[Errno 13\] Permission denied: '([^']+)'"), "denied"),
    (re.compile(r"\[Errno 2\] No such file or directory: '([^']+)'"), "missing"),
    (re.compile(r"\[Errno 16\] Device or resource busy: '([^']+)'"), "write"),
    (
        re.compile(
            r"cannot (?:touch|create|remove|open|mkdir)[^']*'([^']+)': "
            r"Read-only file system"
        ),
        "write",
    ),
    (re.compile(r"(?:^|\s)(/[^\s:']+): Read-only file system"), "write"),
    (re.compile(r"(?:^|\s)(/[^\s:']+): Permission denied"), "denied"),
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Block(Record):
    """One refusal, ready to be shown."""

    kind: str  # "network", "write", "read"
    what: str
    why: str
    fix: str

    def render(self) -> str:
        return f"- {self.kind}: {self.what}\n  why: {self.why}\n  to allow: {self.fix}"


def network_block(host: str, port: int, rule: str) -> Block:
    """A proxy refusal as a block."""
    scheme = {80: " (http)", 443: " (https)"}.get(port, "")
    entry = host if port in (80, 443) else f"{host}:{port}"
    if "resolved to" in rule:
        fix = (
            f"the name leads to a protected address; add the address with its port "
            f'(for example "{entry}") to "network.allowedDomains" only if you '
            "really mean to reach it"
        )
    elif "deniedDomains" in rule:
        fix = f'remove the deniedDomains entry that matches "{host}" ({SETTINGS_HINT})'
    else:
        fix = (
            f'add "{entry}" to "network.allowedDomains" in your settings '
            f'({SETTINGS_HINT}); if this notebook\'s "sandbox" metadata lists '
            "allowedDomains, add it there too"
        )
    return Block("network", f"{host} port {port}{scheme}", rule, fix)


def output_block(found: Sequence[str]) -> Block:
    """Active content removed from the cell's outputs."""
    return Block(
        "output",
        "; ".join(found[:6]) + (" ..." if len(found) > 6 else ""),
        "active content in an output runs in your browser with your Jupyter "
        "login (it could call Jupyter's API, start kernels, write files); it was "
        "removed and the rest of the output kept",
        '"output.allowActiveContent": true in your settings '
        f"({SETTINGS_HINT}) lets it through, for every notebook",
    )


def file_paths(texts: Iterable[str], cwd: str) -> list[tuple[str, str]]:
    """``(operation, absolute path)`` pairs named by refusal texts."""
    out: list[tuple[str, str]] = []
    for text in texts:
        clean = _ANSI.sub("", text)
        for pattern, op in _PATTERNS:
            for match in pattern.finditer(clean):
                path = match.group(1)
                if not path.startswith("/"):
                    path = posixpath.join(cwd, path)
                item = (op, posixpath.normpath(path))
                if item not in out:
                    out.append(item)
    return out


def file_block(
    op: str,
    path: str,
    fs: FilesystemPolicy,
    protected: Sequence[str],
) -> Block | None:
    """Explain a refused file access against the policy, or None if it was not ours."""
    if op == "missing":
        if fs.readable(path):
            return None  # a plain missing file, not the sandbox
        op = "read"
    if op == "denied":
        # EACCES: unreadable by the policy, or (for a user without root)
        # a write refused by file permissions before the read-only mount
        op = "read" if not fs.readable(path) else "write"
    if op == "read" and not fs.readable(path):
        rule = next(
            (
                d
                for d in sorted(fs.deny_read, key=len, reverse=True)
                if is_within(path, d)
            ),
            path,
        )
        return Block(
            "read",
            path,
            f'read-denied by "filesystem.denyRead" entry {rule}',
            f'add "{path}" to "filesystem.allowRead" in your settings '
            f"({SETTINGS_HINT}), or remove {rule} from denyRead",
        )
    if op == "read":
        return None
    if fs.writable(path) and not any(is_within(path, p) for p in protected):
        return None
    guard = next((p for p in protected if is_within(path, p)), None)
    if guard is None:
        guard = _protected_component(path)
    if guard is not None:
        return Block(
            "write",
            path,
            f"{guard} is protected: trusted tools (git, your shell, Jupyter) read "
            "or run what is there, so sandboxed code may never change it",
            "edit it yourself, outside the notebook",
        )
    deny = next((d for d in fs.deny_write if is_within(path, d)), None)
    if deny is not None:
        return Block(
            "write",
            path,
            f'write-denied by "filesystem.denyWrite" entry {deny}',
            f"remove {deny} from denyWrite in your settings ({SETTINGS_HINT})",
        )
    roots = ", ".join(fs.allow_write) or "none"
    folder = posixpath.dirname(path)
    return Block(
        "write",
        path,
        f"outside every folder this code may write (allowWrite: {roots})",
        f'add "{folder}" to "filesystem.allowWrite" in your settings '
        f"({SETTINGS_HINT}) and restart the kernel",
    )


def _protected_component(path: str) -> str | None:
    """The protected name on ``path`` (``~/.bashrc``, ``x/.git/hooks``), if any."""
    from srt_kernel.sandbox.plan import PROTECTED_NAMES

    parts = path.split("/")
    for i in range(1, len(parts)):
        rel = "/".join(parts[i:])
        for name, _kind, _ in PROTECTED_NAMES:
            if rel == name or rel.startswith(name + "/"):
                return "/".join(parts[:i]) + "/" + name
    for name in (".ipython", ".jupyter", ".local/share/jupyter", ".config/srt-kernel"):
        marker = "/" + name + "/"
        if marker in path + "/":
            return path[: (path + "/").index(marker) + len(marker) - 1]
    return None


def render(blocks: Sequence[Block]) -> str:
    """The report text for a cell, or "" when nothing was blocked."""
    if not blocks:
        return ""
    things = "thing" if len(blocks) == 1 else "things"
    lines = [f"srt-kernel blocked {len(blocks)} {things} in this cell:"]
    lines.extend(b.render() for b in blocks)
    return "\n".join(lines) + "\n"

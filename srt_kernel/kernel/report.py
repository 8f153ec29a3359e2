"""Block reports: what the sandbox stopped during a cell, in plain words.

Pure: takes the proxy's refusals and the error texts a cell produced, and
the policy, and returns the text shown under the cell.  The layout is fixed
and documented in the README ("Block reports")::

    srt-kernel blocked 2 things in this cell:
    - network: other.test port 443 (https)
      why: not in allowedDomains
      to allow: add "other.test" to "network.allowedDomains" in your settings
      (~/.config/srt-kernel/settings.json) and restart the kernel; ...
    - write: /etc/passwd
      why: outside every folder this code may write (allowWrite: ...)
      to allow: ...

Each fix is one that works where the cell ran (:class:`Advice`): the
settings file actually in use, the ``%%sandbox`` line's own options in
plain IPython, the notebook's metadata where it is what limits, the
cell's own ``%%sandbox --no-network``.

The OS does not report refused file accesses, so file refusals are read
from the error texts that reach the cell (``PermissionError``, "Read-only
file system", and "No such file or directory" under a read-denied folder)
and explained against the policy.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Iterable, Sequence

from srt_kernel.errors import HostError
from srt_kernel.hosts import Host, parse_host
from srt_kernel.policy import FilesystemPolicy, Layer, Policy, is_within
from srt_kernel.record import Record, replace

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

#: The entry a deny rule names, as decision.py quotes it.
_DENIED_ENTRY = re.compile(r"deniedDomains entry '([^']*)'(?: \(from (.*)\))?")
_DENIED_NETWORK = re.compile(r"in deniedResolvedAddresses (\S+)")

METADATA = 'this notebook\'s "sandbox" metadata'


class Block(Record):
    """One refusal, ready to be shown."""

    kind: str  # "network", "write", "read"
    what: str
    why: str
    fix: str

    def render(self) -> str:
        return f"- {self.kind}: {self.what}\n  why: {self.why}\n  to allow: {self.fix}"


class Advice(Record):
    """What the fixes in a report may point at, for where the cell ran.

    ``settings`` is the settings file in use (or the one to create), as
    shown.  ``magic`` is set for a ``%%sandbox`` cell in plain IPython,
    whose own options are the fix (there is no kernel to restart);
    ``no_network`` says its line had ``--no-network``.  For the kernel,
    ``base`` is the policy of the user's settings before the notebook's
    metadata, ``policy`` the one in force before the cell's own narrowing
    ``cell`` (a ``%%sandbox`` line in the cell), and ``closed`` names what
    made the kernel fail closed (``METADATA``), if anything.
    """

    settings: str = "~/.config/srt-kernel/settings.json"
    magic: bool = False
    no_network: bool = False
    base: Policy | None = None
    policy: Policy | None = None
    cell: Layer | None = None
    closed: str = ""

    def in_settings(self, change: str) -> str:
        """``change`` made in the user's settings, and what else it takes."""
        text = f"{change} in your settings ({self.settings})"
        return text if self.magic else text + " and restart the kernel"

    def closed_fix(self) -> str:
        return (
            f"fix {self.closed} first (the note above names the problem); until "
            "then cells run with no network and no writes"
        )


def _host(text: str) -> Host | None:
    try:
        return parse_host(text)
    except HostError:
        return None


def _allowed(policy: Policy | None, host: Host | None, port: int) -> bool:
    if policy is None or host is None:
        return False
    # here: the decision module imports typing, which the kernel's start-up skips
    from srt_kernel.proxy.decision import decide_host

    return decide_host(policy.network, host, port).allowed


def _address_entry(address: str | None, port: int) -> str | None:
    """``127.0.0.1:50055`` or ``[::1]:443`` for a dialled address."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"{Host(ip=ip).for_url()}:{port}"


def network_block(
    host: str,
    port: int,
    rule: str,
    address: str | None = None,
    advice: Advice | None = None,
) -> Block:
    """A proxy refusal as a block; ``address`` is the one the name resolved to."""
    advice = advice or Advice()
    scheme = {80: " (http)", 443: " (https)"}.get(port, "")
    fix = _network_fix(host, port, rule, address, advice)
    return Block("network", f"{host} port {port}{scheme}", rule, fix)


def _network_fix(
    host: str, port: int, rule: str, address: str | None, advice: Advice
) -> str:
    parsed = _host(host)
    entry = _entry(host, parsed, port)
    if rule.startswith(("invalid host", "bad type", "port 0")):
        return "nothing to allow: the request did not name a valid host and port"

    denied = _DENIED_ENTRY.search(rule)
    if denied is not None:
        pattern, origin = denied.group(1), denied.group(2) or ""
        if origin == "command line" and advice.magic:
            return f"remove --deny {pattern} from the %%sandbox line"
        if origin.startswith("%%sandbox"):
            return f"remove --deny {pattern} from this cell's %%sandbox line"
        if origin.startswith("notebook metadata"):
            return f'remove "{pattern}" from "network.deniedDomains" in {METADATA}'
        return advice.in_settings(f'remove "{pattern}" from "network.deniedDomains"')

    if advice.closed:
        return advice.closed_fix()

    if "name lookup failed" in rule or "the name has no address" in rule:
        # The name is allowed: allowing it again changes nothing.
        return (
            f"{host} is allowed but has no address here: check the name and this "
            "machine's DNS, or "
            + advice.in_settings(
                f'give it an address in "network.hostAddresses" '
                f'(for example {{"{host}": "192.0.2.7"}})'
            )
        )

    resolved = _DENIED_NETWORK.search(rule)
    literal = _address_entry(address, port)
    if rule.startswith("resolved to") or ", resolved to" in rule:
        target = literal or entry
        if advice.magic:
            fix = f"if you mean to reach it, add --allow {target} to the %%sandbox line"
        else:
            fix = "if you mean to reach it, " + advice.in_settings(
                f'add "{target}" to "network.allowedDomains"'
            )
        if resolved is not None:
            fix = (
                f'remove {resolved.group(1)} from "network.deniedResolvedAddresses", '
                "or " + fix
            )
        return fix

    if " only on port " in rule and parsed is not None:
        entry = f"{parsed.for_url()}:{port}"
    return _allow_fix(entry, parsed, port, advice)


def _entry(text: str, host: Host | None, port: int) -> str:
    """The allowedDomains entry that allows ``text`` on ``port`` and no more.

    A name is allowed on any port when the port is the usual one; an
    address always with its port (in brackets for IPv6), and loopback, which
    must carry one, too.
    """
    if host is not None and (host.ip is not None or host.is_loopback):
        return f"{host.for_url()}:{port}"
    return text if port in (80, 443) else f"{text}:{port}"


def _allow_fix(entry: str, host: Host | None, port: int, advice: Advice) -> str:
    """How to allow a host that no allowedDomains entry matched."""
    if advice.magic:
        if advice.no_network:
            return (
                "this cell's --no-network option cuts it off from the network: "
                f"drop it (and add --allow {entry} to the %%sandbox line if your "
                "settings do not allow it)"
            )
        return f"add --allow {entry} to the %%sandbox line"
    cell = advice.cell
    if cell is not None and cell.allowed_domains is not None:
        if not cell.allowed_domains:
            own = (
                "this cell's own %%sandbox --no-network cuts it off from the "
                "network: remove that line"
            )
            if _allowed(advice.policy, host, port):
                return own
            return (
                own
                + ", and "
                + _allow_fix(entry, host, port, replace(advice, cell=None))
            )
        if host is None or not any(p.matches(host, port) for p in cell.allowed_domains):
            return f"add --allow {entry} to this cell's %%sandbox line"
    if _allowed(advice.base, host, port):
        return f'{METADATA} limits "network.allowedDomains": add "{entry}" there'
    return advice.in_settings(f'add "{entry}" to "network.allowedDomains"') + (
        f"; if {METADATA} lists allowedDomains, add it there too"
    )


def output_block(found: Sequence[str], advice: Advice | None = None) -> Block:
    """Active content removed from the cell's outputs."""
    advice = advice or Advice()
    return Block(
        "output",
        "; ".join(found[:6]) + (" ..." if len(found) > 6 else ""),
        "active content in an output runs in your browser with your Jupyter "
        "login (it could call Jupyter's API, start kernels, write files); it was "
        "removed and the rest of the output kept",
        advice.in_settings('"output.allowActiveContent": true')
        + " lets it through, for every notebook",
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
    advice: Advice | None = None,
) -> Block | None:
    """Explain a refused file access against the policy, or None if it was not ours."""
    advice = advice or Advice()
    base = advice.base.filesystem if advice.base is not None else None
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
        if advice.magic:
            fix = f"add --allow-read {path} to the %%sandbox line"
        elif base is not None and base.readable(path):
            fix = (
                f'{METADATA} denies it: remove {rule} from its "filesystem.denyRead" '
                "and restart the kernel"
            )
        else:
            fix = advice.in_settings(
                f'add "{path}" to "filesystem.allowRead", or remove {rule} from '
                "denyRead,"
            )
        return Block(
            "read", path, f'read-denied by "filesystem.denyRead" entry {rule}', fix
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
        if _source(fs, deny, "denyWrite") == "command line" and advice.magic:
            fix = f"remove --deny-write {deny} from the %%sandbox line"
        elif base is not None and deny not in base.deny_write:
            fix = (
                f'{METADATA} denies it: remove {deny} from its "filesystem.denyWrite" '
                "and restart the kernel"
            )
        else:
            fix = advice.in_settings(f'remove {deny} from "filesystem.denyWrite"')
        return Block(
            "write", path, f'write-denied by "filesystem.denyWrite" entry {deny}', fix
        )
    if not fs.readable(path):
        hidden = next(
            (
                d
                for d in sorted(fs.deny_read, key=len, reverse=True)
                if is_within(path, d)
            ),
            path,
        )
        return Block(
            "write",
            path,
            f'below {hidden}, which is read-denied ("filesystem.denyRead")',
            "nothing to add: sandboxed code never writes where it may not read; "
            "write it yourself, outside the sandbox, if you mean to",
        )
    roots = ", ".join(fs.allow_write) or "none"
    folder = _write_target(path)
    if advice.magic:
        fix = f"add --write {folder} to the %%sandbox line"
    elif advice.closed:
        fix = advice.closed_fix()
    elif base is not None and base.writable(path):
        fix = (
            f'{METADATA} limits "filesystem.allowWrite" to {roots}: add "{folder}" '
            "there and restart the kernel"
        )
    else:
        fix = advice.in_settings(f'add "{folder}" to "filesystem.allowWrite"')
        if base is not None and base.allow_write != fs.allow_write:
            fix += f'; {METADATA} limits "filesystem.allowWrite" too: add it there'
    return Block(
        "write",
        path,
        f"outside every folder this code may write (allowWrite: {roots})",
        fix,
    )


def _write_target(path: str) -> str:
    """What a write fix names: the file's folder, unless that folder is so
    high up (``/``, ``/home/u``, ``/tmp``) that allowing it would open far
    more than the file; then the file itself."""
    folder = posixpath.dirname(path)
    return folder if folder.count("/") >= 3 else path


def _source(fs: FilesystemPolicy, path: str, rule: str) -> str:
    """Where the ``rule`` entry ``path`` came from, or ""."""
    return next((s for p, r, s in fs.sources if p == path and r == rule), "")


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

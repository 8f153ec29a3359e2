"""The oracle of the property-based file-rule test: what the policy promises.

Given a test tree on the host, the settings' four path lists and the
working folder, :class:`Oracle` says, for each probe that
:data:`PROBE_SCRIPT` runs inside the sandbox, the exact outcome that the
policy promises: ``"ok"`` or the errno name.  It is built from the pure
policy (:class:`srt_kernel.policy.FilesystemPolicy`), with every rule path
passed through ``os.path.realpath`` and evaluated at the real path of the
probed one, plus the two facts the policy takes from the file system: which
paths exist and where symlinks lead.  It does not look at the sandbox plan.

What the policy means, operation by operation (where the policy alone says
nothing, the decision taken here is written down):

* A path inside a read-denied directory is not there: ``ENOENT``, unless a
  re-allowed path lies at or below it (its ancestors exist, showing only
  the way to it).  A read-denied directory itself is there and lists as
  empty; a read-denied file is there and cannot be opened: ``EACCES``.
* Reading follows symlinks, and is judged where the link leads.
* Writing (appending to an existing file, or through a dangling link,
  which creates its target) is judged where it lands after symlinks; a
  write that the policy refuses fails with ``EROFS`` (the file sits on a
  read-only mount) or ``EACCES`` (it is a read-denied file).
* Creating ``x`` (with any missing folders on the way) needs ``x`` and
  every folder created on the way to be writable.  A refusal is ``EROFS``,
  or ``EEXIST``/``EISDIR`` where the sandbox keeps an empty stand-in on a
  rule path that did not exist (the design's placeholders).
* Renaming ``x`` (the link itself, for a symlink) needs its folder to be
  writable (else ``EROFS``).  A path that carries a rule is bound to that
  path, and a folder that holds a path the policy restricts (deny-write,
  deny-read, a protected name, existing or not) cannot move either, or the
  restriction would be left behind at the old name: both are ``EBUSY``.

Protected names (``srt_kernel.sandbox.plan.PROTECTED_NAMES``) are
write-denied: those marked ``at_root`` at each writable root whether they
exist or not, all of them wherever one exists below a writable root.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from srt_kernel.policy import FilesystemPolicy, is_within
from srt_kernel.sandbox.plan import PROTECTED_FIRST, PROTECTED_NAMES

#: The test tree, relative to its top: (path, kind, symlink target).
TREE: tuple[tuple[str, str, str], ...] = (
    ("top", "file", ""),
    ("a", "dir", ""),
    ("a/f", "file", ""),
    ("a/sub", "dir", ""),
    ("a/sub/g", "file", ""),
    ("a/.git", "dir", ""),
    ("a/.git/config", "file", ""),
    # a link inside a that leads out of it, to a file and to a folder
    ("a/link_out", "link", "../b/h"),
    ("a/link_dir_out", "link", "../b"),
    # a dangling link: writing through it would create c/nothere
    ("a/dangling", "link", "../c/nothere"),
    ("b", "dir", ""),
    ("b/h", "file", ""),
    ("b/sub", "dir", ""),
    ("b/sub/k", "file", ""),
    ("b/link_back", "link", "../a/f"),
    ("c", "dir", ""),
    ("c/m", "file", ""),
    ("c/.vscode", "dir", ""),
    ("c/.vscode/settings.json", "file", ""),
    ("link_to_a", "link", "a"),
)

#: Paths that rules may name: folders, files, links, and paths that do not
#: exist yet (one of them two levels deep).
RULE_POOL: tuple[str, ...] = (
    "",
    "a",
    "a/sub",
    "b",
    "b/sub",
    "c",
    "c/.vscode",
    "a/f",
    "b/h",
    "c/m",
    "top",
    "a/.git/config",
    "link_to_a",
    "a/link_out",
    "a/link_dir_out",
    "a/dangling",
    "a/new",
    "b/sub/new",
    "c/new",
    "nope/x",
)

#: Working folders: the tree's own folders, or one outside it ("<outside>").
CWD_POOL: tuple[str, ...] = ("", "a", "b", "c", "a/sub", "<outside>")

#: Missing paths that the probe tries to create (besides one new file in
#: every folder of the tree).
CREATE_EXTRA: tuple[str, ...] = ("a/new", "b/sub/new", "c/new", "nope/x")

#: Links that lead (or would lead) to a file, and links that lead to a folder.
FILE_LINKS = frozenset({"a/link_out", "a/dangling", "b/link_back"})
FOLDER_LINKS = frozenset({"a/link_dir_out", "link_to_a"})

NEW_NAME = "probe-new"
MOVED_SUFFIX = ".moved"


def build_tree(top: str) -> None:
    """Create :data:`TREE` below ``top`` (which must exist)."""
    for rel, kind, target in TREE:
        path = posixpath.join(top, rel)
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"content of {rel}\n")
        else:
            os.symlink(target, path)


Snapshot = dict[str, tuple[str, str]]


def snapshot(root: str) -> Snapshot:
    """Every path below ``root``: its kind and content hash or link target."""
    out: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = posixpath.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[path] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[path] = ("dir", "")
            else:
                with open(path, "rb") as f:
                    out[path] = ("file", hashlib.sha256(f.read()).hexdigest())
    return out


def probes(top: str) -> list[tuple[str, str]]:
    """(op, path) pairs to run, in the order the probe script runs them."""
    out: list[tuple[str, str]] = []
    paths = [posixpath.join(top, rel) for rel, _, _ in TREE]
    out += [("read", p) for p in [top, *paths]]
    out += [
        ("write", posixpath.join(top, rel))
        for rel, kind, _ in TREE
        if kind == "file" or rel in FILE_LINKS
    ]
    folders = [top] + [
        posixpath.join(top, rel)
        for rel, kind, _ in TREE
        if kind == "dir" or rel in FOLDER_LINKS
    ]
    # each folder gets its own name: two folders may be one behind a link
    out += [
        ("create", posixpath.join(d, f"{NEW_NAME}-{i}")) for i, d in enumerate(folders)
    ]
    out += [("create", posixpath.join(top, rel)) for rel in CREATE_EXTRA]
    out += [("rename", p) for p in paths]
    return out


#: Runs inside the sandbox: argv[1] is a JSON list of [op, path]; prints a
#: JSON object mapping "op path" to "ok", the errno name, or (for reading a
#: folder) the sorted list of names in it.  A successful rename is undone at
#: once, so that every probe sees the tree as it was built.
PROBE_SCRIPT = r"""
import errno, json, os, sys

def run(op, path):
    if op == "read":
        if os.path.isdir(path):
            return sorted(os.listdir(path))
        with open(path, "rb") as f:
            f.read()
    elif op == "write":
        with open(path, "ab") as f:
            f.write(b"sandbox")
    elif op == "create":
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "xb") as f:
            f.write(b"sandbox")
    elif op == "rename":
        os.rename(path, path + ".moved")
        try:
            os.rename(path + ".moved", path)
        except OSError as e:
            return "moved-but-not-back:" + errno.errorcode.get(e.errno, str(e.errno))
    return "ok"

out = {}
for op, path in json.loads(sys.argv[1]):
    try:
        out[op + " " + path] = run(op, path)
    except OSError as e:
        out[op + " " + path] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


def _parent(path: str) -> str:
    return posixpath.dirname(path) or "/"


def _ancestors(path: str) -> list[str]:
    """``path`` and every folder above it, up to (not including) ``/``."""
    out = []
    while path != "/":
        out.append(path)
        path = _parent(path)
    return out


@dataclass(frozen=True)
class Rules:
    """The settings' path lists, absolute, as written in the settings file."""

    allow_write: tuple[str, ...] = ()
    deny_write: tuple[str, ...] = ()
    deny_read: tuple[str, ...] = ()
    allow_read: tuple[str, ...] = ()

    def settings(self) -> dict[str, object]:
        return {
            "filesystem": {
                "allowWrite": list(self.allow_write),
                "denyWrite": list(self.deny_write),
                "denyRead": list(self.deny_read),
                "allowRead": list(self.allow_read),
            }
        }


def _real_all(paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _is_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def protected_paths(roots: Iterable[str]) -> tuple[str, ...]:
    """Protected names at and below each writable root (real paths)."""
    out: list[str] = []
    for root in roots:
        out += [posixpath.join(root, n) for n, _, at_root in PROTECTED_NAMES if at_root]
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                if name not in PROTECTED_FIRST:
                    continue
                for protected, _, _ in PROTECTED_NAMES:
                    if protected.split("/")[0] != name:
                        continue
                    candidate = posixpath.join(dirpath, protected)
                    if _exists(candidate):
                        out.append(os.path.realpath(candidate))
    return tuple(dict.fromkeys(out))


class Oracle:
    """The outcome the policy promises for each probe; see the module text.

    Built before the launch, from the tree as it is on the host then.
    """

    def __init__(self, rules: Rules, cwd: str, *, pin_read_denied: bool = True) -> None:
        allow_write = _real_all([*rules.allow_write, cwd])
        # The policy says nothing about writing through a root that is not
        # a folder; a file named by allowWrite is writable, like any path.
        roots = [r for r in allow_write if _is_dir(r)]
        self.protected = protected_paths(roots)
        self.fs = FilesystemPolicy(
            deny_read=_real_all(rules.deny_read),
            allow_read=_real_all(rules.allow_read),
            allow_write=allow_write,
            deny_write=_real_all(rules.deny_write) + self.protected,
        )
        self.standins = self._standins(roots)
        #: Paths below which nothing may move away (restricting rules).
        #: ``pin_read_denied=False`` describes a sandbox that lets folders
        #: holding only read-denied paths move (see the test's KNOWN_GAPS).
        self.restricting = (*self.fs.deny_write, *self.fs.deny_read)
        if not pin_read_denied:
            self.restricting = (
                *_real_all(rules.deny_write),
                *(p for p in self.protected if self.fs.readable(p)),
            )
        self.rule_paths = frozenset(
            p
            for p in (
                *self.fs.allow_write,
                *self.fs.deny_write,
                *self.fs.deny_read,
                *self.fs.allow_read,
            )
            if self.exists(p)
        )

    def _standins(self, roots: list[str]) -> dict[str, str]:
        """Stand-ins for restricting rule paths that do not exist yet.

        The design puts an empty folder (or, for a protected file name, an
        empty file) on the first missing component of a deny-write,
        deny-read or protected path inside a writable root, so that sandboxed
        code cannot create it; sandboxed code sees it.
        """
        out: dict[str, str] = {}
        files = {n for n, kind, _ in PROTECTED_NAMES if kind == "file"}
        wanted = (*self.fs.deny_write, *self.fs.deny_read)
        for path in sorted(wanted, key=lambda p: (p.count("/"), p)):
            root = next((r for r in roots if is_within(path, r) and path != r), None)
            if root is None or _exists(path):
                continue
            if not self.fs.readable(path) and path not in self.fs.deny_read:
                continue
            if any(is_within(path, s) for s in out):
                continue
            first = next(a for a in reversed(_ancestors(path)) if not _exists(a))
            named_file = any(path.endswith("/" + n) for n in files)
            out[first] = "file" if first == path and named_file else "dir"
        return out

    def exists(self, path: str) -> bool:
        """Whether ``path`` is on the host, or stood in for by the sandbox."""
        return _exists(path) or path in self.standins

    def is_dir(self, path: str) -> bool:
        return self.standins.get(path) == "dir" or _is_dir(path)

    # -- visibility --------------------------------------------------------

    def _leads_to_reallowed(self, path: str) -> bool:
        return any(
            is_within(q, path) and self.fs.readable(q) and self.exists(q)
            for q in self.fs.allow_read
        )

    def _hidden_here(self, path: str) -> bool:
        """Inside a read-denied folder, and not on the way to a re-allowed path."""
        if self.fs.readable(path) or self.fs.readable(_parent(path)):
            return False
        return not self._leads_to_reallowed(path)

    def visible(self, path: str) -> bool:
        """Whether ``path`` (a real path) is there for sandboxed code."""
        return not any(self._hidden_here(a) for a in _ancestors(path))

    def resolve(self, path: str, *, follow_last: bool = True) -> str:
        """Where ``path`` leads for sandboxed code, which sees no hidden link.

        Like ``os.path.realpath``, but a symlink inside a read-denied folder
        is not followed: sandboxed code cannot see it.
        """
        current = "/"
        parts = [p for p in path.split("/") if p]
        for i, part in enumerate(parts):
            step = posixpath.join(current, part)
            last = i == len(parts) - 1
            if (
                (follow_last or not last)
                and os.path.islink(step)
                and self.visible(step)
            ):
                target = posixpath.join(current, os.readlink(step))
                step = self.resolve(posixpath.normpath(target))
            current = step
        return current

    def creatable(self, path: str) -> bool:
        """Whether a new entry may be made at ``path`` (with its folder)."""
        return self.fs.writable(path) and self.fs.writable(_parent(path))

    # -- operations ----------------------------------------------------------

    def expect(self, op: str, path: str) -> object:
        """The promised outcome of ``op`` on ``path``."""
        if op == "read":
            return self._read(path)
        if op == "write":
            return self._write(path)
        if op == "create":
            return self._create(path)
        if op == "rename":
            return self._rename(path)
        raise ValueError(f"unknown probe operation {op!r}")

    def _read(self, path: str) -> object:
        where, real = self.resolve(path, follow_last=False), self.resolve(path)
        if not self.visible(where) or not self.visible(real) or not self.exists(real):
            return "ENOENT"
        if self.is_dir(real):
            return self._listing(real)
        return "ok" if self.fs.readable(real) else "EACCES"

    def _listing(self, folder: str) -> list[str]:
        names = [] if folder in self.standins else sorted(os.listdir(folder))
        if self.fs.readable(folder):
            return names
        return [n for n in names if self._leads_to_reallowed(posixpath.join(folder, n))]

    def _write(self, path: str) -> str:
        where, real = self.resolve(path, follow_last=False), self.resolve(path)
        if not self.visible(where):
            return self._missing_in(where)
        if not self.visible(_parent(real)):
            return "ENOENT"
        if not self.visible(real) or not self.exists(real):
            # appending with O_CREAT makes the file where the link leads
            return "ok" if self.creatable(real) else "EROFS"
        if self.is_dir(real):
            return "EISDIR"
        if not self.fs.readable(real):
            return "EACCES"
        return "ok" if self.fs.writable(real) else "EROFS"

    def _missing_in(self, path: str) -> str:
        """A change at a hidden ``path``: refused by its read-only folder."""
        return "EROFS" if self.visible(_parent(path)) else "ENOENT"

    def _create(self, path: str) -> str:
        where = self.resolve(path, follow_last=False)
        # what sandboxed code sees missing: makedirs creates it all
        missing = [
            a for a in _ancestors(where) if not self.exists(a) or not self.visible(a)
        ]
        if missing and all(self.creatable(m) for m in missing):
            return "ok"
        return "denied"

    def _rename(self, path: str) -> str:
        where = self.resolve(path, follow_last=False)
        if not self.visible(where):
            return self._missing_in(where)
        if not self.fs.writable(_parent(where)):
            return "EROFS"
        if where in self.rule_paths:
            return "EBUSY"
        if any(is_within(r, where) for r in self.restricting):
            return "EBUSY"
        return "ok"

    # -- the host after the run ---------------------------------------------

    def may_change(self, path: str) -> bool:
        """Whether the run may have changed, added or removed ``path``."""
        return self.fs.writable(path)


#: Errno names that a refused creation may show (see the module text).
CREATE_DENIED = frozenset({"EROFS", "EEXIST", "EISDIR", "EACCES"})


def changed(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """Paths added, removed or changed between two snapshots."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k))

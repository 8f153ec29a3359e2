"""Gather the file-system facts a sandbox plan needs.

This is the IO step before :func:`srt_kernel.sandbox.plan.plan_sandbox`:
for every path the policy names, what it is and where its symlinks lead;
and a full scan of every writable root for protected names (no depth
limit, no ignore files: a scan that a file in the tree could steer would
let that tree hide a ``.git/hooks`` from it).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable

from srt_kernel.log import get_logger
from srt_kernel.policy import FilesystemPolicy, Layer, Policy
from srt_kernel.record import replace
from srt_kernel.sandbox.plan import (
    PROTECTED_FIRST,
    PROTECTED_NAMES,
    FsFacts,
    PathFact,
    protected_candidates,
)

# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from srt_kernel.sandbox.plan import Kind

logger = get_logger(__name__)

#: The protected names by their first component (``.git`` -> ``.git``,
#: ``.git/config``, ...): the scan looks up each folder entry once.
_NAMES_BY_HEAD: dict[str, tuple[str, ...]] = {
    head: tuple(n for n, _, _ in PROTECTED_NAMES if n.partition("/")[0] == head)
    for head in PROTECTED_FIRST
}

# Directories whose contents no tool reads as configuration, skipped by the
# scan for speed: git's object store holds only content-addressed blobs.
_SKIP_BELOW = frozenset({".git/objects", ".git/lfs/objects"})


class _Lookup:
    """What paths are, and where they lead after symlinks.

    The real path of each parent folder is remembered.

    A policy names many paths in few folders (the protected names of every
    writable root, the credential files in the home folder); resolving each
    folder once and then looking at the last component alone saves most of
    ``realpath``'s system calls, and a run waits for every one of them.
    """

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def fact(self, path: str) -> PathFact:
        folder, name = posixpath.split(path)
        if not name or name in (".", ".."):
            return self._resolved(os.path.realpath(path))
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        candidate = posixpath.join(real_folder, name)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            return PathFact("missing", candidate)
        except OSError:
            return self._resolved(os.path.realpath(candidate))
        if stat.S_ISLNK(st.st_mode):
            return self._resolved(os.path.realpath(candidate))
        return PathFact(_kind(st.st_mode), candidate)

    @staticmethod
    def _resolved(real: str) -> PathFact:
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return PathFact("missing", real)
        return PathFact(_kind(st.st_mode), real)


def _kind(mode: int) -> Kind:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def scan_protected(root: str, skip: Iterable[str] = ()) -> list[str]:
    """Every existing protected name below ``root``, at any depth.

    Folders in ``skip`` (already read-only in the sandbox) are not entered.
    """
    found: list[str] = []
    skipped = set(skip)
    stack = [root]
    while stack:
        top = stack.pop()
        try:
            entries = list(os.scandir(top))
        except OSError as exc:  # unreadable folders cannot hide anything we
            logger.debug("scan: skipping %s: %s", top, exc)  # could write either
            continue
        for entry in entries:
            for name in _NAMES_BY_HEAD.get(entry.name, ()):
                candidate = posixpath.join(top, name)
                if os.path.lexists(candidate):
                    found.append(candidate)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and entry.path not in skipped:
                rel = posixpath.relpath(entry.path, root)
                if any(rel == s or rel.endswith("/" + s) for s in _SKIP_BELOW):
                    continue
                stack.append(entry.path)
    return found


def real_paths(paths: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """``paths`` with every symlink resolved (None stays None)."""
    if paths is None:
        return None
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))


def real_layer(layer: Layer) -> Layer:
    """An untrusted layer's paths resolved, before it is judged.

    Notebook metadata names paths in a folder that cells can write, where
    ``./k`` may be a symlink to ``~/.ssh/id_rsa``: judged as written, it
    would look like a path inside the project.  Resolved, it is judged as
    what it leads to.
    """
    return replace(
        layer,
        allow_read=real_paths(layer.allow_read),
        allow_write=real_paths(layer.allow_write),
        deny_read=real_paths(layer.deny_read),
        deny_write=real_paths(layer.deny_write),
    )


def real_filesystem(fs: FilesystemPolicy) -> FilesystemPolicy:
    """A trusted policy's paths resolved, to be compared with resolved ones."""
    return replace(
        fs,
        allow_read=real_paths(fs.allow_read) or (),
        allow_write=real_paths(fs.allow_write) or (),
        deny_read=real_paths(fs.deny_read) or (),
        deny_write=real_paths(fs.deny_write) or (),
    )


def missing_write_notes(policy: Policy) -> list[str]:
    """A note for each writable folder of ``policy`` that cannot be used."""
    from srt_kernel.policy import missing_write_notes as notes

    return notes(policy, missing_writable(policy))


def missing_writable(policy: Policy) -> list[str]:
    """The policy's writable folders that do not exist (after symlinks) and
    cannot be created inside either, their parent not being writable."""
    fs = policy.filesystem
    return [
        p
        for p in fs.allow_write
        if not os.path.exists(p) and not fs.writable(os.path.dirname(p))
    ]


def gather(policy: Policy, extra: Iterable[str] = ()) -> FsFacts:
    """Facts for every path ``policy`` names, plus ``extra`` paths."""
    fs = policy.filesystem
    wanted: list[str] = [
        *fs.deny_read,
        *fs.allow_read,
        *fs.allow_write,
        *fs.deny_write,
        *protected_candidates(policy),
        *extra,
    ]
    lookup = _Lookup()
    facts: dict[str, PathFact] = {}
    for path in dict.fromkeys(wanted):
        facts[path] = lookup.fact(path)
        # the real path and its ancestors below a root are looked up too
        facts.setdefault(facts[path].real, facts[path])

    readonly = {facts[p].real for p in policy.protected if p in facts}
    readonly |= {facts[p].real for p in fs.deny_write if p in facts}
    found: list[str] = []
    for root in fs.allow_write:
        fact = facts[root]
        if fact.kind != "dir":
            continue
        for path in scan_protected(fact.real, skip=readonly):
            real = os.path.realpath(path)
            facts.setdefault(real, lookup.fact(real))
            found.append(real)

    # Ancestors of every missing path, so that the plan can find the first
    # missing component without touching the disk.
    for path in list(facts):
        d = posixpath.dirname(facts[path].real)
        while d not in facts and d != "/":
            facts[d] = lookup.fact(d)
            d = posixpath.dirname(d)
    return FsFacts(paths=facts, found=tuple(dict.fromkeys(found)))

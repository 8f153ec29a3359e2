"""Private run directories and placeholders, and what a killed run left.

Each sandbox gets a directory of its own under
:func:`srt_kernel.locations.runtime_root` (mode 0700, checked to be ours):
the proxy's sockets, the unreadable file that stands in for denied files,
and a manifest of the placeholders created on the host.  At exit both are
removed; a launcher killed with SIGKILL cannot do that, so every start
first removes what runs whose process is gone left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat

from srt_kernel.errors import SandboxError
from srt_kernel.log import get_logger
from srt_kernel.record import Record, field

# Not typing.TYPE_CHECKING: importing typing costs the launcher's start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

logger = get_logger(__name__)

_MANIFEST = "placeholders.json"
#: The protected paths a run holds with mounts (its own placeholders and
#: ones it found): another run must not remove them while it lives, since
#: removing a mount point's file on the host undoes the mount.
_USES = "uses.json"


def ensure_private_dir(path: str) -> str:
    """Create ``path`` mode 0700, or check that an existing one is ours."""
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SandboxError(
            f"{path} is not a directory owned by you; remove it, or set "
            "XDG_RUNTIME_DIR to a private folder."
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs(root: str) -> list[str]:
    """The names of the run directories under ``root``."""
    try:
        names = os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [name for name in names if name.startswith("run-")]


def clean_stale(root: str) -> list[str]:
    """Remove run directories (and placeholders) of runs that are gone."""
    removed: list[str] = []
    for name in _runs(root):
        entry = os.path.join(root, name)
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        RunDir(entry).remove()
        removed.append(entry)
    return removed


class RunDir(Record, frozen=False):
    """One sandbox's private directory on the host."""

    path: str
    created: list[tuple[str, str, int]] = field(default_factory=list)

    @classmethod
    def create(cls, root: str) -> RunDir:
        ensure_private_dir(root)
        clean_stale(root)
        path = os.path.join(root, f"run-{os.getpid()}-{os.urandom(4).hex()}")
        os.mkdir(path, 0o700)
        run = cls(path)
        denied = os.path.join(path, "denied")
        fd = os.open(denied, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o000)
        os.close(fd)
        os.chmod(denied, 0o000)
        return run

    def make_placeholders(self, placeholders: tuple[tuple[str, str], ...]) -> None:
        """Create each missing protected path as an empty file or folder.

        Created without following symlinks, and recorded with their inodes
        in the manifest, which the next start uses after a SIGKILL.
        """
        for path, kind in placeholders:
            try:
                if kind == "dir":
                    os.mkdir(path, 0o755)
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                else:
                    fd = os.open(
                        path,
                        os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                        0o644,
                    )
            except FileExistsError:
                # Appeared since the facts were gathered: it exists, so the
                # mount has something to sit on; nothing of ours to remove.
                continue
            except OSError as exc:
                raise SandboxError(
                    f"cannot create the placeholder {path} that protects a "
                    f"missing protected path: {exc.strerror}. Check that the "
                    "folder is writable, or remove it from allowWrite."
                ) from exc
            try:
                ino = os.fstat(fd).st_ino
            finally:
                os.close(fd)
            self.created.append((path, kind, ino))
        # One write for all: a launcher killed in between leaves at most the
        # placeholders of this one launch for the user to see.
        self._write_manifest()

    def _write_manifest(self) -> None:
        _write_json(os.path.join(self.path, _MANIFEST), self.created)

    def remove_placeholders(self) -> list[str]:
        """Remove the placeholders that are still empty and still ours.

        Returns those left in place because something was written into them
        (from the host: the sandbox could not write there).
        """
        manifest = os.path.join(self.path, _MANIFEST)
        if not self.created and os.path.exists(manifest):
            try:
                self.created = [tuple(x) for x in _read_json(manifest)]
            except (OSError, ValueError):
                self.created = []
        kept: list[str] = []
        held = self._held_by_others()
        for path, kind, ino in reversed(self.created):
            if path in held:
                kept.append(path)  # another live sandbox stands on it
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_ino != ino:
                kept.append(path)
                continue
            try:
                if kind == "dir" and stat.S_ISDIR(st.st_mode):
                    os.rmdir(path)
                elif kind == "file" and stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(path)
                else:
                    kept.append(path)
            except OSError:
                kept.append(path)
        self.created = []
        return kept

    def record_uses(self, paths: list[str]) -> None:
        """Say which protected paths this run holds with mounts."""
        _write_json(os.path.join(self.path, _USES), sorted(set(paths)))

    def _held_by_others(self) -> set[str]:
        held: set[str] = set()
        root, own = os.path.split(self.path)
        for name in _runs(root):
            if name == own:
                continue
            try:
                if not _pid_alive(int(name.split("-")[1])):
                    continue
                held.update(_read_json(os.path.join(root, name, _USES)))
            except (OSError, ValueError, IndexError):
                continue
        return held

    def remove(self) -> None:
        self.remove_placeholders()
        _remove_tree(self.path)


def _write_json(path: str, value: object) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _remove_tree(path: str) -> None:
    """Remove a run directory; ``shutil.rmtree`` only when it holds folders.

    A one-shot run's directory holds a few files, and importing shutil
    (with its compression modules) would cost every run a millisecond or
    two; folders (the kernel's, the magic's) get rmtree's careful walk.
    """
    try:
        with os.scandir(path) as entries:
            found = list(entries)
    except FileNotFoundError:
        return
    except OSError:
        found = None
    if found is None or any(e.is_dir(follow_symlinks=False) for e in found):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in found:
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
    with contextlib.suppress(OSError):
        os.rmdir(path)

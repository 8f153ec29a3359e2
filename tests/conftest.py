"""Shared fixtures: a sandbox runner that goes through ``srt-kernel run``.

Test trees live under ``/var/tmp`` rather than ``/tmp``: the sandbox gives
every command a private ``/tmp``, so a fake home under the host's ``/tmp``
would not be visible inside.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.fixtures"]


_BASETEMP: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.basetemp:
        parent = Path("/var/tmp") / f"srt-kernel-pytest-{os.getuid()}"
        parent.mkdir(mode=0o700, exist_ok=True)
        base = tempfile.mkdtemp(prefix="run-", dir=parent)
        config.option.basetemp = base
        _BASETEMP.append(base)


def pytest_unconfigure(config: pytest.Config) -> None:
    for base in _BASETEMP:
        shutil.rmtree(base, ignore_errors=True)


@functools.cache
def bwrap_problem() -> str | None:
    """Why the sandbox cannot run here, or None when it can."""
    if shutil.which("bwrap") is None:
        return "bubblewrap is not installed (apt-get install bubblewrap)"
    from srt_kernel import doctor

    diagnosis = doctor.diagnose()
    if not diagnosis.ok:
        return "the sandbox cannot run here:\n" + diagnosis.text()
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problem = bwrap_problem() if any("bwrap" in i.keywords for i in items) else None
    if problem is None:
        return
    skip = pytest.mark.skip(reason=problem)
    for item in items:
        if "bwrap" in item.keywords:
            item.add_marker(skip)


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


@dataclass
class SandboxRunner:
    """Runs ``srt-kernel run`` as a user would, in a test's own tree.

    ``home`` is a fake home folder (with an ``~/.ssh`` key and an ``~/.aws``
    file), ``project`` the working folder, ``outside`` a folder that is
    neither.  ``settings`` is written to a file and passed with --settings.
    """

    root: Path
    home: Path
    project: Path
    outside: Path
    settings: dict[str, object] = field(default_factory=dict)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local/share"),
            "XDG_RUNTIME_DIR": str(self.root / "xdg-runtime"),
            "JUPYTER_RUNTIME_DIR": str(self.home / ".local/share/jupyter/runtime"),
        }
        env.update(extra or {})
        return env

    def argv(
        self,
        command: Sequence[str],
        *,
        options: Sequence[str] = (),
        settings: dict[str, object] | None = None,
    ) -> list[str]:
        """``srt-kernel run --settings FILE OPTIONS -- COMMAND``."""
        chosen = self.settings if settings is None else settings
        settings_file = self.root / "settings.json"
        settings_file.write_text(json.dumps(chosen))
        return [
            sys.executable, "-m", "srt_kernel.cli", "run",
            "--settings", str(settings_file), *options, "--", *command,
        ]  # fmt: skip

    def start(
        self, command: Sequence[str], *, options: Sequence[str] = ()
    ) -> subprocess.Popen[str]:
        """Start ``srt-kernel run`` in the background; return once the
        command has printed its first line, which must be ``up``."""
        proc = subprocess.Popen(
            self.argv(command, options=options),
            cwd=self.project,
            env=self.env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        return proc

    def run(
        self,
        command: Sequence[str],
        *,
        options: Sequence[str] = (),
        settings: dict[str, object] | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        input: str | None = None,
    ) -> Result:
        proc = subprocess.run(
            self.argv(command, options=options, settings=settings),
            cwd=cwd or self.project,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def py(self, code: str, **kwargs: object) -> Result:
        """Run Python code in the sandbox with this interpreter."""
        return self.run([sys.executable, "-c", code], **kwargs)  # type: ignore[arg-type]


#: A Python snippet that performs one file operation and prints "ok" or the
#: errno name, so tests assert the exact outcome.
PROBE = r"""
import errno, os, sys
op, path = sys.argv[1], sys.argv[2]
try:
    if op == "read":
        with open(path, "rb") as f: f.read()
    elif op == "write":
        with open(path, "ab") as f: f.write(b"sandbox")
    elif op == "create":
        with open(path, "xb") as f: f.write(b"sandbox")
    elif op == "mkdir":
        os.mkdir(path)
    elif op == "list":
        print(",".join(sorted(os.listdir(path))) or "<empty>")
        sys.exit(0)
    elif op == "rename":
        os.rename(path, path + ".moved")
    elif op == "unlink":
        os.unlink(path)
    elif op == "symlink":
        os.symlink(sys.argv[3], path)
    print("ok")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
"""


@pytest.fixture
def sbx(tmp_path: Path) -> Iterator[SandboxRunner]:
    root = tmp_path
    home = root / "home"
    project = root / "project"
    outside = root / "outside"
    for d in (home / ".ssh", home / ".aws", project, outside, root / "xdg-runtime"):
        d.mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (home / ".aws" / "credentials").write_text("[default]\naws_secret=x\n")
    (outside / "file.txt").write_text("outside\n")
    (project / "data.txt").write_text("data\n")
    os.chmod(root / "xdg-runtime", 0o700)
    yield SandboxRunner(root=root, home=home, project=project, outside=outside)

"""The sandboxed kernel under papermill and jupyter console, as their users run them.

papermill runs a parameterised notebook under that notebook's own policy
(the README's SRT_KERNEL_NOTEBOOK=/abs/path/in.ipynb), and ``jupyter
console`` runs lines typed on its standard input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kernel_harness import base_env, install_kernelspec, write_notebook

pytestmark = [pytest.mark.bwrap, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    runtime = tmp_path / "rt"
    for folder in (home / ".ssh", runtime):
        folder.mkdir(parents=True)
    os.chmod(runtime, 0o700)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    jupyter_path = install_kernelspec(tmp_path / "prefix")
    return base_env(home, runtime, jupyter_path)


def _block_reports(cell: dict[str, Any]) -> list[str]:
    return [
        "".join(o["data"]["text/plain"])
        for o in cell["outputs"]
        if o.get("metadata", {}).get("srt_kernel", {}).get("kind") == "block-report"
    ]


def test_papermill_applies_the_notebooks_policy(
    tmp_path: Path, env: dict[str, str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "secret.txt").write_text("do not read\n")
    (project / "data.txt").write_text("open data\n")
    notebook = write_notebook(
        project / "in.ipynb",
        {"filesystem": {"denyRead": ["./secret.txt"]}},
        [
            "rows = 1",
            "print('rows', rows * 2, open('data.txt').read().strip())",
            "open('secret.txt').read()",
        ],
    )
    data = json.loads(notebook.read_text())
    data["cells"][0]["metadata"]["tags"] = ["parameters"]
    notebook.write_text(json.dumps(data))
    out = project / "out.ipynb"

    result = subprocess.run(
        [
            str(BIN / "papermill"),
            str(notebook),
            str(out),
            "-k",
            "python-sandboxed",
            "-p",
            "rows",
            "21",
            "--cwd",
            str(project),
        ],
        env={**env, "SRT_KERNEL_NOTEBOOK": str(notebook)},
        capture_output=True,
        text=True,
        timeout=150,
    )

    # The read of the denied file fails the run, as any error does in papermill.
    assert result.returncode == 1, result.stderr
    assert "PapermillExecutionError" in result.stderr
    cells = json.loads(out.read_text())["cells"]
    [injected] = [
        c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])
    ]
    assert "rows = 21" in "".join(injected["source"])
    printed = next(c for c in cells if "print('rows'" in "".join(c["source"]))
    assert "".join(printed["outputs"][0]["text"]) == "rows 42 open data\n"
    denied = cells[-1]
    assert denied["outputs"][0]["ename"] in {"PermissionError", "FileNotFoundError"}
    [report] = _block_reports(denied)
    assert report.startswith("srt-kernel blocked 1 thing in this cell:\n- read: ")
    assert str((project / "secret.txt").resolve()) in report
    assert "denyRead" in report


# Lines typed into jupyter console, and what its output must then hold.
CONSOLE_CASES = [
    # a line runs and prints
    ("print(6 * 7)", "42"),
    # the sandbox applies: the SSH key is not readable, and the report says so
    (
        "import pathlib; (pathlib.Path.home() / '.ssh' / 'id_ed25519').read_text()",
        "srt-kernel blocked 1 thing in this cell:",
    ),
]


@pytest.mark.parametrize(("line", "expected"), CONSOLE_CASES)
def test_jupyter_console_runs_a_line(
    tmp_path: Path, env: dict[str, str], line: str, expected: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [
            str(BIN / "jupyter-console"),
            "--kernel",
            "python-sandboxed",
            "--simple-prompt",
            "--ZMQTerminalInteractiveShell.kernel_timeout=120",
        ],
        input=f"{line}\nexit\n",
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout, result.stdout
    assert "sandbox" in result.stdout  # the banner names it

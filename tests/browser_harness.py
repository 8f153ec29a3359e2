"""Helpers for tests that drive the sandboxed kernel from real frontends.

A test starts JupyterLab or Notebook 7 as a subprocess on 127.0.0.1 with a
port the OS picks, a random token, a temporary home and a ``JUPYTER_PATH``
that holds the kernelspec, and drives it with Playwright in Debian's
headless Chromium.  The browser resolves no name but loopback, so nothing a
page does can leave the machine.  Where Chromium or Playwright is missing
the tests skip, saying what to install.

The helpers wait for conditions in the page (a cell's prompt, the kernel's
status), never for a fixed time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Locator, Page

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Every name but loopback fails to resolve: no page can reach further.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
SANDBOXED = "Python (sandboxed)"
#: Generous: a loaded 2-core machine starts JupyterLab in 5-20 s.
SERVER_TIMEOUT = 120.0
#: Milliseconds for one condition in the page (a kernel start, a cell).
PAGE_TIMEOUT = 60_000


def browser_missing() -> str:
    """Why the browser tests cannot run here, or "" when they can."""
    if not CHROMIUM.exists():
        return (
            f"Chromium is not installed at {CHROMIUM}; install it with "
            "`apt-get install -y chromium`"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            "Playwright for Python is missing; install it with `pip install playwright`"
        )
    return ""


def require_browser() -> None:
    """Skip the calling test, with the reason, where no browser can run."""
    reason = browser_missing()
    if reason:
        pytest.skip(reason)


# -- the Jupyter server -----------------------------------------------------


@dataclass
class Server:
    """A running ``jupyter lab`` or ``jupyter notebook``."""

    proc: subprocess.Popen[bytes]
    url: str  # ends with "/"
    token: str
    root: Path
    log_path: Path

    def api(self, method: str, path: str, body: object = None) -> Any:
        """Call the REST API with the token; return the decoded JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def server_env(home: Path, jupyter_path: Path) -> dict[str, str]:
    """The environment of a Jupyter server that sees only the test's files."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "JUPYTER_PATH": str(jupyter_path),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"),
        "JUPYTER_RUNTIME_DIR": str(home / ".local/share/jupyter/runtime"),
        "IPYTHONDIR": str(home / ".ipython"),
    }
    return env


@contextmanager
def jupyter_server(
    app: str, root: Path, home: Path, jupyter_path: Path
) -> Iterator[Server]:
    """Start ``jupyter lab`` (app "lab") or Notebook 7 (app "notebook")."""
    module = {"lab": "jupyterlab", "notebook": "notebook"}[app]
    token = secrets.token_hex(16)
    env = server_env(home, jupyter_path)
    runtime = Path(env["JUPYTER_RUNTIME_DIR"])
    runtime.mkdir(parents=True, exist_ok=True)
    log_path = home / f"{app}-server.log"
    argv = [
        sys.executable,
        "-m",
        module,
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.allow_root=True",
        # Nothing in the page may call out for news or updates.
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log_path, "wb") as sink:
        proc = subprocess.Popen(
            argv,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = _wait_for_server(proc, runtime, token, log_path)
        yield Server(proc, url, token, root, log_path)
    finally:
        _stop_server(proc, token, runtime)


def _wait_for_server(
    proc: subprocess.Popen[bytes], runtime: Path, token: str, log_path: Path
) -> str:
    # The server writes jpserver-<pid>.json once it listens; then the API
    # must answer.  Polling is the only signal a foreign process gives.
    info_file = runtime / f"jpserver-{proc.pid}.json"
    deadline = time.monotonic() + SERVER_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the Jupyter server exited with {proc.returncode}:\n"
                + log_path.read_text(errors="replace")[-4000:]
            )
        if info_file.exists():
            try:
                url = str(json.loads(info_file.read_text())["url"])
                request = urllib.request.Request(
                    url + "api/status", headers={"Authorization": f"token {token}"}
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    if response.status == 200:
                        return url
            except (ValueError, KeyError, OSError, urllib.error.URLError):
                pass
        time.sleep(0.2)
    raise RuntimeError(
        f"the Jupyter server did not answer within {SERVER_TIMEOUT:.0f} s:\n"
        + log_path.read_text(errors="replace")[-4000:]
    )


def _stop_server(proc: subprocess.Popen[bytes], token: str, runtime: Path) -> None:
    # A clean shutdown stops the kernels through their supervisors; the
    # session's process group is the backstop.
    info_file = runtime / f"jpserver-{proc.pid}.json"
    if proc.poll() is None and info_file.exists():
        try:
            url = str(json.loads(info_file.read_text())["url"])
            request = urllib.request.Request(
                url + "api/shutdown",
                method="POST",
                headers={"Authorization": f"token {token}"},
            )
            urllib.request.urlopen(request, timeout=10).close()
        except (ValueError, KeyError, OSError, urllib.error.URLError) as exc:
            log.warning("asking the Jupyter server to shut down failed: %s", exc)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# -- the workspace ------------------------------------------------------------


@dataclass
class Workspace:
    """A temporary home and a root folder served by Jupyter."""

    home: Path
    root: Path
    jupyter_path: Path
    made: list[Path] = field(default_factory=list)

    def copy_demo(self) -> Path:
        for name in ("demo.ipynb", "sales.csv"):
            shutil.copy(REPO / "notebooks" / name, self.root / name)
        return self.root / "demo.ipynb"


def make_workspace(base: Path, jupyter_path: Path) -> Workspace:
    home = base / "home"
    root = base / "root"
    for folder in (home / ".ssh", home / ".jupyter", root):
        folder.mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    # No toast asking about Jupyter news over the cells, and every cell in
    # the page: by default JupyterLab renders only the cells in view.
    settings = home / ".jupyter/lab/user-settings/@jupyterlab"
    for plugin, values in (
        ("apputils-extension/notification", {"fetchNews": "false"}),
        ("notebook-extension/tracker", {"windowingMode": "none"}),
    ):
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return Workspace(home, root, jupyter_path)


def write_notebook(
    path: Path,
    cells: list[str],
    kernel: str = "python-sandboxed",
    sandbox: dict[str, Any] | None = None,
) -> Path:
    """Write a notebook (nbformat 4.5) of code cells for ``kernel``."""
    display = {"python-sandboxed": SANDBOXED, "python3": "Python 3 (ipykernel)"}
    metadata: dict[str, Any] = {
        "kernelspec": {
            "name": kernel,
            "language": "python",
            "display_name": display[kernel],
        },
        "language_info": {"name": "python"},
    }
    if sandbox is not None:
        metadata["sandbox"] = sandbox
    code_cells: list[dict[str, Any]] = [
        {
            "cell_type": "code",
            "id": f"cell-{index}",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": source,
        }
        for index, source in enumerate(cells)
    ]
    notebook = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": metadata,
        "cells": code_cells,
    }
    path.write_text(json.dumps(notebook, indent=1))
    return path


# -- the browser --------------------------------------------------------------


@contextmanager
def chromium(profile: Path) -> Iterator[Browser]:
    """Headless Chromium whose profile lives under ``profile``.

    One per test module: Playwright's sync API allows one driver per thread.
    Each page gets its own context (cookies, storage) from ``new_context``.
    """
    from playwright.sync_api import sync_playwright

    profile.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            env={**os.environ, "HOME": str(profile), "TMPDIR": str(profile)},
        )
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Browser) -> BrowserContext:
    """A fresh set of cookies and storage, with the tests' timeouts."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT)
    return context


class Lab:
    """One notebook open in JupyterLab or Notebook 7, driven as a user would."""

    _opened = 0

    def __init__(self, page: Page, server: Server, app: str = "lab") -> None:
        self.page = page
        self.server = server
        self.app = app

    def open(self, name: str, kernel: str = SANDBOXED) -> None:
        """Open notebook ``name`` and wait until ``kernel`` is connected and idle."""
        # A workspace of its own, so no tab of an earlier test comes back.
        Lab._opened += 1
        path = (
            f"lab/workspaces/t{Lab._opened}/tree" if self.app == "lab" else "notebooks"
        )
        self.page.goto(f"{self.server.url}{path}/{name}?token={self.server.token}")
        self.panel.locator(".jp-Notebook").wait_for()
        self.wait_kernel(kernel)

    @property
    def panel(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first

    def kernel_name(self) -> str:
        button = self.panel.locator(".jp-KernelName").first
        return button.inner_text().strip()

    def wait_kernel(self, kernel: str = SANDBOXED, status: str = "idle") -> None:
        """Wait until the toolbar names ``kernel`` and shows ``status``.

        Before a session exists the indicator says idle under "No Kernel",
        so the name and the status are checked together.
        """
        self.page.wait_for_function(
            """([kernel, status]) => {
                const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
                    .find(p => !p.classList.contains('lm-mod-hidden'));
                if (!panel) return false;
                const name = panel.querySelector('.jp-KernelName');
                const state = panel.querySelector('.jp-Notebook-ExecutionIndicator');
                return name && state && name.textContent.trim() === kernel
                    && state.getAttribute('data-status') === status;
            }""",
            arg=[kernel, status],
        )

    def cells(self) -> Locator:
        return self.panel.locator(".jp-Cell.jp-CodeCell")

    def cell(self, index: int) -> Locator:
        return self.cells().nth(index)

    def prompt(self, index: int) -> str:
        return self.cell(index).locator(".jp-InputPrompt").first.inner_text().strip()

    def wait_executed(self, index: int) -> None:
        """Wait until code cell ``index`` has a number in its prompt."""
        self.cell(index).locator(".jp-InputPrompt").first.wait_for()
        self.page.wait_for_function(
            """([index]) => {
                const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
                    .find(p => !p.classList.contains('lm-mod-hidden'));
                const cell = panel.querySelectorAll('.jp-Cell.jp-CodeCell')[index];
                const prompt = cell.querySelector('.jp-InputPrompt');
                return /\\[\\d+\\]/.test(prompt.textContent);
            }""",
            arg=[index],
        )

    def run_cell(self, index: int) -> None:
        """Select code cell ``index``, run it with Shift+Enter and wait."""
        cell = self.cell(index)
        cell.locator(".jp-InputPrompt").first.click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Shift+Enter")
        self.wait_executed(index)

    def outputs(self, index: int) -> Locator:
        return self.cell(index).locator(".jp-OutputArea-output")

    def output_text(self, index: int) -> str:
        return self.cell(index).locator(".jp-OutputArea").first.inner_text()

    def menu(self, top: str, item: str) -> None:
        self.page.locator(".lm-MenuBar-itemLabel", has_text=top).first.click()
        self.page.locator(".lm-Menu-item:visible .lm-Menu-itemLabel").filter(
            has_text=re.compile(f"^{re.escape(item)}$")
        ).first.click()

    def toolbar(self, command: str) -> None:
        self.panel.locator(f"[data-command='{command}']").first.click()

    def find_cell(self, source: str) -> int:
        """The index of the first code cell whose input contains ``source``."""
        inputs = self.cells().locator(".jp-InputArea-editor").all_inner_texts()
        for index, text in enumerate(inputs):
            if source in text:
                return index
        raise AssertionError(f"no code cell contains {source!r}")

    def wait_settled(self, kernel: str = SANDBOXED) -> None:
        """Wait until no cell is queued or running and the kernel is idle."""
        self.page.wait_for_function(
            """() => {
                const panel = [...document.querySelectorAll('.jp-NotebookPanel')]
                    .find(p => !p.classList.contains('lm-mod-hidden'));
                return ![...panel.querySelectorAll('.jp-InputPrompt')]
                    .some(p => p.textContent.includes('*'));
            }"""
        )
        self.wait_kernel(kernel)

    def run_all_past_errors(self, kernel: str = SANDBOXED) -> None:
        """Run All Cells, then go on below each cell that stopped the run.

        Like every kernel, a cell that raises makes the kernel drop the
        queued cells; a user then runs the rest from the next cell.
        """
        self.menu("Run", "Run All Cells")
        self.wait_executed(0)
        while True:
            self.wait_settled(kernel)
            prompts = [
                p.strip()
                for p in self.cells().locator(".jp-InputPrompt").all_inner_texts()
            ]
            pending = [i for i, p in enumerate(prompts) if "[ ]" in p]
            if not pending:
                return
            self.cell(pending[0]).locator(".jp-InputPrompt").first.click()
            # The menu disables "and All Below" on the last cell.
            last = pending[0] == len(prompts) - 1
            item = "Run Selected Cell " + (
                "and Do not Advance" if last else "and All Below"
            )
            self.menu("Run", item)
            self.wait_executed(pending[0])

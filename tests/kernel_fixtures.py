"""Fixtures for tests that drive the sandboxed kernel (registered in conftest)."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.kernel_harness import base_env, install_kernelspec, write_notebook


@dataclass
class Env:
    root: Path
    home: Path
    project: Path
    notebook: Path
    env: dict[str, str]

    def settings(self, data: dict[str, object]) -> None:
        folder = self.home / ".config" / "srt-kernel"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    prefix = tmp_path_factory.mktemp("kernelspec")
    path = install_kernelspec(prefix)
    old = os.environ.get("JUPYTER_PATH")
    os.environ["JUPYTER_PATH"] = str(path)
    yield path
    if old is None:
        os.environ.pop("JUPYTER_PATH", None)
    else:
        os.environ["JUPYTER_PATH"] = old


@pytest.fixture
def world(tmp_path: Path, jupyter_path: Path) -> Env:
    home = tmp_path / "home"
    project = tmp_path / "project"
    runtime = tmp_path / "rt"
    for d in (home / ".ssh", project, runtime):
        d.mkdir(parents=True)
    os.chmod(runtime, 0o700)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    notebook = write_notebook(project / "analysis.ipynb", None)
    env = base_env(home, runtime, jupyter_path)
    env["SRT_KERNEL_NOTEBOOK"] = str(notebook)
    return Env(tmp_path, home, project, notebook, env)


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Host", ""))
            body = b"upstream ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


FETCH = "import urllib.request\nprint(urllib.request.urlopen('http://{host}:{port}/').read().decode())"

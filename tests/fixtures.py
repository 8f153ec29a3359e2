"""Shared fixtures (registered in conftest): local upstreams, kernel worlds."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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


@dataclass
class Upstream:
    """A local HTTP server on 127.0.0.1 that records every request.

    It answers ``body``; ``seen`` holds each request's path, ``hosts`` its
    ``Host`` header: "the upstream saw nothing" is asserted on them.
    """

    port: int
    body: bytes
    seen: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


@contextmanager
def serving(*bodies: bytes) -> Iterator[list[Upstream]]:
    """One recording upstream per body, on ports of their own."""
    servers, ups = [], []
    for body in bodies:
        up = Upstream(0, body)

        class Handler(http.server.BaseHTTPRequestHandler):
            record = up

            def do_GET(self) -> None:
                self.record.seen.append(self.path)
                self.record.hosts.append(self.headers.get("Host", ""))
                self.send_response(200)
                self.send_header("Content-Length", str(len(self.record.body)))
                self.end_headers()
                self.wfile.write(self.record.body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        up.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        ups.append(up)
    try:
        yield ups
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def upstream() -> Iterator[tuple[int, list[str]]]:
    """One upstream answering "upstream ok": (port, Host headers seen)."""
    with serving(b"upstream ok") as (up,):
        yield up.port, up.hosts


@pytest.fixture
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    """Two upstreams, "hello from allowed" and "hello from other"."""
    with serving(b"hello from allowed", b"hello from other") as (allowed, other):
        yield allowed, other


FETCH = "import urllib.request\nprint(urllib.request.urlopen('http://{host}:{port}/').read().decode())"

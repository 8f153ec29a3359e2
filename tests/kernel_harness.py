"""Helpers for tests that drive the sandboxed kernel through jupyter_client."""

from __future__ import annotations

import json
import os
import queue
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client import BlockingKernelClient, KernelManager

KERNEL = "python-sandboxed"


def install_kernelspec(prefix: Path) -> Path:
    """Install the kernelspec under ``prefix``; return its share/jupyter."""
    from srt_kernel.kernel import spec

    spec.install(prefix=str(prefix))
    return prefix / "share" / "jupyter"


def write_notebook(
    path: Path, sandbox: dict[str, Any] | None, cells: list[str] = ()
) -> Path:  # type: ignore[assignment]
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {
        "name": KERNEL,
        "language": "python",
        "display_name": "Python (sandboxed)",
    }
    if sandbox is not None:
        nb.metadata["sandbox"] = sandbox
    nb.cells = [new_code_cell(c) for c in cells]
    nbformat.write(nb, path)
    return path


def set_sandbox_metadata(path: Path, sandbox: dict[str, Any] | None) -> None:
    data = json.loads(path.read_text())
    if sandbox is None:
        data["metadata"].pop("sandbox", None)
    else:
        data["metadata"]["sandbox"] = sandbox
    path.write_text(json.dumps(data))


@dataclass
class CellResult:
    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])

    @property
    def stdout(self) -> str:
        return "".join(
            o["content"]["text"]
            for o in self.outputs
            if o["msg_type"] == "stream" and o["content"]["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            o["content"]["text"]
            for o in self.outputs
            if o["msg_type"] == "stream" and o["content"]["name"] == "stderr"
        )

    def of_type(self, msg_type: str) -> list[dict[str, Any]]:
        return [o for o in self.outputs if o["msg_type"] == msg_type]

    @property
    def reports(self) -> list[str]:
        out = []
        for o in self.of_type("display_data"):
            marker = o["content"].get("metadata", {}).get("srt_kernel", {})
            if marker.get("kind") == "block-report":
                out.append(o["content"]["data"]["text/plain"])
        return out


def run(
    kc: BlockingKernelClient, code: str, timeout: float = 60, **kw: Any
) -> CellResult:
    outputs: list[dict[str, Any]] = []
    reply = kc.execute_interactive(
        code, timeout=timeout, output_hook=outputs.append, **kw
    )
    return CellResult(reply, [o for o in outputs if o["msg_type"] != "status"])


@contextmanager
def kernel(
    env: dict[str, str], cwd: Path, startup_timeout: float = 60
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km = KernelManager(kernel_name=KERNEL)
    km.start_kernel(env=env, cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=startup_timeout)
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def drain(q: Any, timeout: float = 0.5) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(q.get_msg(timeout=timeout))
        except queue.Empty:
            return out


def base_env(home: Path, runtime: Path, jupyter_path: Path) -> dict[str, str]:
    # PYTHONPATH is passed on, so that a checkout other than the installed
    # one is the code under test
    inherited = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    return inherited | {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(runtime),
        "JUPYTER_PATH": str(jupyter_path),
        "JUPYTER_RUNTIME_DIR": str(home / ".local/share/jupyter/runtime"),
    }

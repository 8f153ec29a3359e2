"""``srt-kernel execute``: run a notebook headless under its own policy.

Every cell runs in the sandboxed kernel through nbclient, carrying on past
errors as a reviewer would want; progress is printed per cell, the executed
notebook is written out, and a summary lists what was blocked (the block
reports the kernel added under cells) and which cells failed.  With
``strict`` any block or failure makes the exit status 1.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from pathlib import Path
from typing import Any

from srt_kernel.errors import KernelError, PolicyError
from srt_kernel.kernel.notebook import existing_notebook
from srt_kernel.record import Record, field

MARKER = "srt_kernel"


class Summary(Record, frozen=False):
    cells: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    blocked: list[tuple[int, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.failed and not self.blocked


def _block_reports(cell: Any) -> list[str]:
    texts = []
    for output in cell.get("outputs", []):
        meta = output.get("metadata", {}).get(MARKER, {})
        if output.get("output_type") == "display_data" and meta.get("kind") == (
            "block-report"
        ):
            texts.append(str(output.get("data", {}).get("text/plain", "")))
    return texts


def _error(cell: Any) -> str | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename')}: {output.get('evalue')}"
    return None


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:60]
    return "(empty)"


def kernel_label(kernel_name: str) -> str:
    """How the progress line names the kernel: sandboxed or not, truthfully.

    A kernelspec is the sandboxed kernel when its argv runs this package's
    supervisor (``python -m srt_kernel.kernel``), whatever it is called; any
    other kernel runs the cells without a sandbox and without the
    notebook's policy, and the line says so.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as exc:
        raise PolicyError(
            f"no kernel named {kernel_name!r} is installed; run "
            "`srt-kernel install --user` first, or name an installed one "
            "(`jupyter kernelspec list`).",
            field="--kernel",
            value=kernel_name,
            source="command line",
        ) from exc
    from srt_kernel.kernel.spec import runs_supervisor

    if runs_supervisor(spec.argv):
        return f"the sandboxed kernel {kernel_name!r}"
    return (
        f"the kernel {kernel_name!r} ({spec.display_name}), which is not "
        "sandboxed: its cells run with your full access, and the notebook's "
        "sandbox policy does not apply"
    )


def execute_notebook(
    path: str,
    *,
    output: str | None = None,
    strict: bool = False,
    timeout: float = 600,
    kernel_name: str = "python-sandboxed",
    out: Any = None,
) -> int:
    """Run the notebook at ``path``; return the exit status for the CLI."""
    import nbformat
    from nbclient import NotebookClient

    stream = out or sys.stdout
    notebook = existing_notebook(path)
    label = kernel_label(kernel_name)
    target = Path(output) if output else notebook.with_suffix(".out.ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(notebook, as_version=4)  # type: ignore[no-untyped-call]
    summary = Summary()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    total = len(code_cells)
    started: dict[int, float] = {}

    def on_cell_start(cell: Any, cell_index: int, **_: Any) -> None:
        started[cell_index] = time.monotonic()

    def on_cell_executed(cell: Any, cell_index: int, **_: Any) -> None:
        summary.cells += 1
        took = time.monotonic() - started.get(cell_index, time.monotonic())
        reports = _block_reports(cell)
        error = _error(cell)
        status = "ok"
        if reports:
            status = "BLOCKED"
        if error:
            status = "FAILED" if not reports else "BLOCKED+FAILED"
        label = _first_line(cell.source)
        print(
            f"[{summary.cells}/{total}] cell {cell_index}: {status:<8} "
            f"({took:.1f} s) {label}",
            file=stream,
            flush=True,
        )
        for report in reports:
            summary.blocked.append((cell_index, report))
        if error:
            summary.failed.append((cell_index, error))

    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=timeout,
        allow_errors=True,
        resources={"metadata": {"path": str(notebook.parent)}},
        on_cell_start=on_cell_start,
        on_cell_executed=on_cell_executed,
    )
    env = dict(os.environ, SRT_KERNEL_NOTEBOOK=str(notebook))
    print(f"Running {notebook.name} in {label}", file=stream)
    try:
        client.execute(env=env)
    except RuntimeError as exc:
        # nbclient's "Kernel died before replying to kernel_info" and its
        # DeadKernelError; it leaves a clean-up that would fail at exit.
        atexit.unregister(client._cleanup_kernel)
        raise KernelError(
            f"the sandboxed kernel stopped ({exc}); its messages are above."
        ) from exc
    finally:
        nbformat.write(nb, str(target))  # type: ignore[no-untyped-call]

    print(f"\nWrote {target}", file=stream)
    print(
        f"Summary: {summary.cells} cells run, {len(summary.blocked)} with "
        f"something blocked, {len(summary.failed)} failed.",
        file=stream,
    )
    for index, text in summary.blocked:
        print(f"\nCell {index}:", file=stream)
        print("  " + text.rstrip().replace("\n", "\n  "), file=stream)
    for index, error in summary.failed:
        print(f"Cell {index} failed: {error}", file=stream)
    if strict and not summary.clean:
        return 1
    return 0

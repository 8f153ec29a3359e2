"""Regenerate the README's screenshots of the sandboxed kernel in JupyterLab.

Run from the repository root (``.venv/bin/python benchmarks/screenshots.py``).
It starts JupyterLab on 127.0.0.1 with a temporary home and token, opens a
copy of notebooks/demo.ipynb in headless Chromium, runs every cell, and
writes into notebooks/screenshots/:

- ``demo-results.png``: the table and the plot of the useful cells;
- ``demo-blocked.png``: a refused read of ~/.ssh with its block report;
- ``demo-active-output.png``: the HTML cell whose script was removed.

It needs bubblewrap, Chromium at /usr/bin/chromium and the test extra.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser_harness import (  # noqa: E402
    Lab,
    browser_missing,
    chromium,
    jupyter_server,
    make_workspace,
    new_context,
)
from tests.kernel_harness import install_kernelspec  # noqa: E402

log = logging.getLogger(__name__)

OUT = REPO / "notebooks" / "screenshots"
#: File name, and the text of the code cell to show at the top of the view.
SHOTS = (
    ("demo-results.png", "monthly.plot"),
    ("demo-blocked.png", 'keys / "id_ed25519"'),
    ("demo-active-output.png", "Totals are ready"),
)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    reason = browser_missing()
    if reason:
        log.error("cannot take screenshots: %s", reason)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="srt-screens-") as folder:
        base = Path(folder)
        jupyter_path = install_kernelspec(base / "prefix")
        workspace = make_workspace(base, jupyter_path)
        workspace.copy_demo()
        with (
            jupyter_server(
                "lab", workspace.root, workspace.home, jupyter_path
            ) as server,
            chromium(base / "chromium") as browser,
        ):
            context = new_context(browser)
            ui = Lab(context.new_page(), server)
            ui.open("demo.ipynb")
            ui.run_all_past_errors()
            for name, source in SHOTS:
                cell = ui.cell(ui.find_cell(source))
                cell.evaluate("cell => cell.scrollIntoView({block: 'start'})")
                ui.page.screenshot(path=str(OUT / name))
                log.info("wrote %s", OUT / name)
            context.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

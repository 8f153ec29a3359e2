"""The sandboxed kernel in JupyterLab 4 and Notebook 7, driven in real Chromium.

A user's session: open the demo notebook, run it, interrupt a cell, restart
the kernel, show a widget.  Then the browser cases B1 and B2: outputs and widget
values that would call the Jupyter server's REST API from the page stay
inert under the sandboxed kernel, while the same payloads do run under plain
ipykernel in the same JupyterLab, which proves the test can see them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Dialog

from tests.browser_harness import (
    SANDBOXED,
    Lab,
    Server,
    Workspace,
    browser_missing,
    chromium,
    jupyter_server,
    make_workspace,
    new_context,
    write_notebook,
)
from tests.kernel_harness import install_kernelspec

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.slow,
    pytest.mark.skipif(bool(browser_missing()), reason=browser_missing() or "-"),
    pytest.mark.timeout(180),
]

IPYKERNEL = "Python 3 (ipykernel)"


@dataclass
class Session:
    """JupyterLab and a browser shared by the tests of this module."""

    workspace: Workspace
    server: Server
    context: BrowserContext


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with chromium(tmp_path_factory.mktemp("chromium")) as running:
        yield running


@pytest.fixture(scope="module")
def lab_session(
    tmp_path_factory: pytest.TempPathFactory, browser: Browser
) -> Iterator[Session]:
    base = tmp_path_factory.mktemp("lab")
    jupyter_path = install_kernelspec(base / "prefix")
    workspace = make_workspace(base, jupyter_path)
    workspace.copy_demo()
    context = new_context(browser)
    with jupyter_server("lab", workspace.root, workspace.home, jupyter_path) as server:
        try:
            yield Session(workspace, server, context)
        finally:
            context.close()


@dataclass
class Watch:
    """What the page did that only a payload would do."""

    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def lab(
    lab_session: Session, request: pytest.FixtureRequest
) -> Iterator[tuple[Lab, Watch]]:
    page = lab_session.context.new_page()
    watch = Watch()

    def on_dialog(dialog: Dialog) -> None:
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("request", lambda r: watch.requests.append(f"{r.method} {r.url}"))
    try:
        yield Lab(page, lab_session.server), watch
    finally:
        # The last view of the page, for a failure's reader.
        shot = lab_session.workspace.home.parent / f"{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        page.close(run_before_unload=False)


# -- the demo, as a user runs it ---------------------------------------------


def test_demo_runs_with_block_reports(
    lab: tuple[Lab, Watch], lab_session: Session, tmp_path: Path
) -> None:
    ui, watch = lab
    ui.open("demo.ipynb")
    assert ui.kernel_name() == SANDBOXED

    ui.run_all_past_errors()

    # The useful cells: two tables, a plot as an <img>, a printed line.
    head = ui.find_cell("pd.read_csv")
    assert ui.outputs(head).locator("table").count() == 1
    assert "revenue" in ui.output_text(head)
    assert "East" in ui.output_text(ui.find_cell("by_region = "))
    plot = ui.outputs(ui.find_cell("monthly.plot")).locator("img")
    assert plot.count() == 1
    assert (plot.first.get_attribute("src") or "").startswith("data:image/png;base64,")
    assert "best region: East" in ui.output_text(ui.find_cell("to_csv("))

    # Each cell that tries something shows its block report.
    blocked = {
        'keys / "id_ed25519"': "- read: ",
        "collector.invalid/upload": "- network: collector.invalid",
        '".bashrc"': "- write: ",
        "00-backdoor.py": "- write: ",
        "Totals are ready": "- output: <script> element in text/html",
    }
    for source, line in blocked.items():
        text = ui.output_text(ui.find_cell(source))
        assert "srt-kernel blocked" in text, (source, text)
        assert line in text, (source, text)

    # The last cell's script and handler did not run: its HTML is there,
    # inert, and the page neither started a kernel nor wrote evil.py.
    totals = ui.outputs(ui.find_cell("Totals are ready"))
    assert totals.locator("b", has_text="Totals are ready.").count() == 1
    assert totals.locator("script").count() == 0
    assert totals.locator("[onerror]").count() == 0
    api = lab_session.server.url + "api/"
    assert f"POST {api}kernels" not in watch.requests
    assert not [r for r in watch.requests if "evil.py" in r]
    assert not (lab_session.workspace.root / "evil.py").exists()
    assert watch.dialogs == []
    ui.page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)


# -- interrupt, restart, widgets ---------------------------------------------


def test_interrupt_restart_and_widget(
    lab: tuple[Lab, Watch], lab_session: Session
) -> None:
    ui, _ = lab
    write_notebook(
        lab_session.workspace.root / "session.ipynb",
        [
            "x = 41",
            "import time\nwhile True:\n    time.sleep(0.1)",
            "print(x + 1)",
            "import ipywidgets as widgets\n"
            "widgets.IntSlider(value=7, min=0, max=10, description='n')",
        ],
    )
    ui.open("session.ipynb")
    ui.run_cell(0)

    # Interrupt from the toolbar while the loop runs.
    ui.cell(1).locator(".jp-InputPrompt").first.click()
    ui.page.keyboard.press("Shift+Enter")
    ui.wait_kernel(SANDBOXED, "busy")
    ui.toolbar("notebook:interrupt-kernel")
    ui.wait_executed(1)
    ui.wait_kernel(SANDBOXED)
    assert "KeyboardInterrupt" in ui.output_text(1)
    ui.run_cell(2)
    assert ui.output_text(2).strip() == "42"

    # A widget renders as a slider.
    ui.run_cell(3)
    slider = ui.outputs(3).locator(".widget-hslider")
    slider.wait_for()
    assert slider.locator(".noUi-handle").count() == 1
    assert slider.locator(".widget-readout").inner_text().strip() == "7"

    # Restart from the toolbar: the state is gone, the kernel still works.
    ui.page.evaluate(
        """() => {
            const state = [...document.querySelectorAll(
                '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator')][0];
            window.__srtStatuses = [];
            new MutationObserver(changes => changes.forEach(c =>
                window.__srtStatuses.push(c.target.getAttribute('data-status'))
            )).observe(state, {attributes: true, attributeFilter: ['data-status']});
        }"""
    )
    ui.toolbar("notebook:restart-kernel")
    ui.page.locator(".jp-Dialog button", has_text="Restart").first.click()
    ui.page.wait_for_function(
        "() => window.__srtStatuses.some(s => s !== 'idle')"
        " && window.__srtStatuses.at(-1) === 'idle'"
    )
    assert ui.kernel_name() == SANDBOXED
    ui.run_cell(2)
    assert "NameError: name 'x' is not defined" in ui.output_text(2)
    ui.run_cell(0)
    ui.run_cell(2)
    assert ui.output_text(2).strip() == "42"


# -- the browser cases B1 and B2: active output --------------------------------------


def _script(tag: str) -> str:
    """JavaScript that writes pwned-<tag>.txt through the server's API."""
    return (
        "(function(){var c=JSON.parse(document.getElementById("
        "'jupyter-config-data').textContent);"
        "var m=document.cookie.match(/_xsrf=([^;]+)/);"
        f"fetch(c.baseUrl+'api/contents/pwned-{tag}.txt',{{method:'PUT',"
        "headers:{'Content-Type':'application/json','Authorization':'token '+c.token,"
        "'X-XSRFToken':m?decodeURIComponent(m[1]):''},"
        f"body:JSON.stringify({{type:'file',format:'text',content:'{tag}'}})}});"
        f"window.alert('pwned-{tag}');}})()"
    )


# HTML forms of a payload; %s is the script.
HTML_PAYLOADS = {
    "html-script": "<script>%s</script>",
    "html-img": '<img src="missing-image.png" onerror="%s">',
    "html-svg-onload": '<svg onload="%s" width="10" height="10"></svg>',
    "html-svg-animate": (
        '<svg width="10" height="10"><rect width="10" height="10">'
        '<animate attributeName="x" from="0" to="1" dur="1s" onbegin="%s"/>'
        "</rect></svg>"
    ),
    "html-iframe": (
        '<iframe srcdoc="<script>parent.eval(&quot;%s&quot;)</script>"></iframe>'
    ),
}
WIDGET_PAYLOADS = ("html-script", "html-img", "html-svg-onload", "html-svg-animate")
ALL_PAYLOADS = frozenset(
    [
        *HTML_PAYLOADS,
        "javascript",
        "svg-mime",
        "markdown-img",
        *(f"widget-{name}" for name in WIDGET_PAYLOADS),
    ]
)
# What JupyterLab 4 runs for plain ipykernel in a live session (outputs of
# the session are trusted), found by running every payload above.  Not
# run there either: a <script> or <svg onload> set as innerHTML (HTML
# widget, inline SVG), and image/svg+xml, which JupyterLab shows as <img>.
RUNS_UNDER_IPYKERNEL = frozenset(
    {
        "html-script",
        "html-img",
        "html-svg-animate",
        "html-iframe",
        "javascript",
        "markdown-img",
        "widget-html-img",
        "widget-html-svg-animate",
    }
)
#: How long to watch for a payload that must not fire.  Under ipykernel
#: every payload fires within a second of the output showing.
QUIET_WINDOW_MS = 3000


def payload_cell(prefix: str) -> str:
    """One cell that shows every payload, each writing pwned-<prefix>-<name>."""
    lines = [
        "from IPython.display import HTML, Javascript, Markdown, display",
        "import ipywidgets as widgets",
    ]
    for name, html in HTML_PAYLOADS.items():
        lines.append(f"display(HTML({html % _script(f'{prefix}-{name}')!r}))")
    lines.append(f"display(Javascript({_script(f'{prefix}-javascript')!r}))")
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" '
        f'onload="{_script(f"{prefix}-svg-mime")}"><rect width="10" height="10"/></svg>'
    )
    lines.append(
        f"display({{'image/svg+xml': {svg!r}, 'text/plain': 'svg'}}, raw=True)"
    )
    markdown = HTML_PAYLOADS["html-img"] % _script(f"{prefix}-markdown-img")
    lines.append(f"display(Markdown({markdown!r}))")
    value = "".join(
        HTML_PAYLOADS[name] % _script(f"{prefix}-widget-{name}")
        for name in WIDGET_PAYLOADS
    )
    lines.append(f"display(widgets.HTML(value={value!r}))")
    lines.append("print('payloads shown')")
    return "\n".join(lines)


def _fired(root: Path, watch: Watch, prefix: str) -> tuple[set[str], ...]:
    """Which payloads wrote their file, made their request, opened a dialog."""
    start = f"pwned-{prefix}-"
    files = {p.name[len(start) : -4] for p in root.glob(f"{start}*.txt")}
    requests = {
        r.rsplit(start, 1)[1][:-4] for r in watch.requests if start in r and "PUT" in r
    }
    dialogs = {d[len(start) :] for d in watch.dialogs if d.startswith(start)}
    return files, requests, dialogs


def _show_payloads(
    ui: Lab, root: Path, prefix: str, kernel: str, kernel_name: str
) -> None:
    write_notebook(root / f"{prefix}.ipynb", [payload_cell(prefix)], kernel=kernel)
    ui.open(f"{prefix}.ipynb", kernel_name)
    ui.run_cell(0)
    outputs = ui.outputs(0)
    outputs.filter(has_text="payloads shown").first.wait_for()
    outputs.locator(".widget-html").first.wait_for()
    # Every image has loaded or failed, so each onerror had its chance.
    ui.page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-OutputArea img')]"
        ".every(i => i.complete)"
    )


def test_active_output_is_inert_under_the_sandboxed_kernel(
    lab: tuple[Lab, Watch], lab_session: Session
) -> None:
    ui, watch = lab
    root = lab_session.workspace.root
    _show_payloads(ui, root, "sandboxed", "python-sandboxed", SANDBOXED)

    # Something that must not happen has no event to wait for: watch a while.
    ui.page.wait_for_timeout(QUIET_WINDOW_MS)
    assert _fired(root, watch, "sandboxed") == (set(), set(), set())
    assert watch.dialogs == []
    text = ui.output_text(0)
    assert "[srt-kernel] Removed application/javascript" in text
    assert "srt-kernel blocked" in text
    assert ui.outputs(0).locator("script, iframe, [onerror], [onload]").count() == 0


def test_same_payloads_run_under_plain_ipykernel(
    lab: tuple[Lab, Watch], lab_session: Session
) -> None:
    ui, watch = lab
    root = lab_session.workspace.root
    _show_payloads(ui, root, "ipykernel", "python3", IPYKERNEL)

    deadline = time.monotonic() + 60
    while _fired(root, watch, "ipykernel")[0] != RUNS_UNDER_IPYKERNEL:
        assert time.monotonic() < deadline, _fired(root, watch, "ipykernel")
        ui.page.wait_for_timeout(200)  # lets Playwright deliver page events
    ui.page.wait_for_timeout(QUIET_WINDOW_MS)
    files, requests, dialogs = _fired(root, watch, "ipykernel")
    assert files == requests == dialogs == RUNS_UNDER_IPYKERNEL
    assert RUNS_UNDER_IPYKERNEL < ALL_PAYLOADS
    assert (root / "pwned-ipykernel-html-script.txt").read_text() == (
        "ipykernel-html-script"
    )


# -- Notebook 7 --------------------------------------------------------------


def test_notebook7_runs_a_cell(tmp_path: Path, browser: Browser) -> None:
    jupyter_path = install_kernelspec(tmp_path / "prefix")
    workspace = make_workspace(tmp_path, jupyter_path)
    workspace.copy_demo()
    context = new_context(browser)
    try:
        with jupyter_server(
            "notebook", workspace.root, workspace.home, jupyter_path
        ) as server:
            ui = Lab(context.new_page(), server, app="notebook")
            ui.open("demo.ipynb")
            assert ui.kernel_name() == SANDBOXED
            head = ui.find_cell("pd.read_csv")
            ui.run_cell(head)
            assert ui.outputs(head).locator("table").count() == 1
            assert "unit_price" in ui.output_text(head)
            ui.page.close(run_before_unload=False)
    finally:
        context.close()

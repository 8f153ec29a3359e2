"""Make the inner kernel's outputs inert before they reach the browser.

An output is code in the browser: JupyterLab trusts the
outputs of the running session, so HTML with ``<script>``, an
``application/javascript`` bundle or an SVG with an event handler would run
with the user's Jupyter cookies.  This module cleans, with the nh3 HTML
sanitiser, every MIME bundle and widget message that the relay passes out:

- ``text/html`` is cleaned: no script, no event handler, no ``javascript:``
  URL, no ``<iframe>``, ``<object>``, ``<embed>``, ``<form>``, ``<style>``
  (a style sheet restyles JupyterLab itself: it can lay a fake dialog over
  the page and fetch ``url()`` resources); ``style`` attributes keep only
  properties that can neither load a resource nor move the element out of
  its output; ``src`` keeps relative URLs and ``data:`` images only, since
  the browser fetching an absolute URL is a way out that bypasses the proxy;
- ``image/svg+xml`` is cleaned against an SVG allowlist (no script, no
  handler, no foreign object, links to fragments only);
- ``text/markdown`` and ``text/latex`` keep their text, with raw HTML
  cleaned (markdown) and script URL schemes made inert;
- data-only types (images, JSON, Vega, Plotly, widget views) pass;
- every other type, the executable ones first (``application/javascript``
  and kin), is removed.  When nothing but text is left of a bundle,
  ``text/plain`` becomes a note saying what was removed and which setting
  allows it.

With ``allow_active_output`` (the user's setting for the notebook) nothing
is changed.  The module is pure: no sockets, no IO.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import nh3

from srt_kernel.kernel.messages import JSONDict
from srt_kernel.log import get_logger

log = get_logger(__name__)

#: The setting that turns cleaning off for a notebook, as the note names it.
SETTING = "output.allowActiveContent"

#: Types that frontends render from data alone.
DATA_TYPES = frozenset(
    {
        "text/plain",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/bmp",
        "application/json",
        "application/geo+json",
        "application/vnd.dataresource+json",
        "application/vnd.plotly.v1+json",
        "application/vnd.jupyter.widget-view+json",
        "application/vnd.jupyter.widget-state+json",
        "text/csv",
        "text/tab-separated-values",
    }
)
DATA_TYPE_PATTERNS = (re.compile(r"application/vnd\.vega(lite)?\.v\d+(\.\d+)*\+json"),)

#: Types removed because they are scripts.  Any type not known here is also
#: removed; this list only makes the note clearer.
EXECUTABLE_TYPES = frozenset(
    {
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "text/javascript",
        "text/ecmascript",
        "text/x-javascript",
    }
)

_HTML_TAGS = (set(nh3.ALLOWED_TAGS) | {"font", "section", "main", "label"}) - {
    "area",
    "map",
}
_HTML_ATTRIBUTES: dict[str, set[str]] = {
    tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()
}
_HTML_ATTRIBUTES["*"] = {"class", "id", "title", "style", "lang", "dir"}
_HTML_ATTRIBUTES.setdefault("table", set()).update({"border", "cellpadding"})
_HTML_ATTRIBUTES.setdefault("font", set()).update({"color", "size"})

#: Style properties that cannot load a resource or leave the output's box.
STYLE_PROPERTIES = frozenset(
    {
        "color",
        "background-color",
        "font-weight",
        "font-style",
        "font-size",
        "font-family",
        "text-align",
        "text-decoration",
        "vertical-align",
        "white-space",
        "border",
        "border-collapse",
        "border-color",
        "border-style",
        "border-width",
        "padding",
        "padding-left",
        "padding-right",
        "padding-top",
        "padding-bottom",
        "margin-left",
        "margin-right",
        "width",
        "max-width",
        "height",
        "max-height",
        "fill",
        "stroke",
        "stroke-width",
        "opacity",
        "stroke-linejoin",
        "stroke-linecap",
        "stroke-dasharray",
        "stroke-opacity",
        "fill-opacity",
        "font",
    }
)

_SVG_TAGS = {
    "svg",
    "g",
    "defs",
    "symbol",
    "use",
    "path",
    "rect",
    "circle",
    "ellipse",
    "line",
    "polyline",
    "polygon",
    "text",
    "tspan",
    "title",
    "desc",
    "clippath",
    "clipPath",
    "lineargradient",
    "linearGradient",
    "radialgradient",
    "radialGradient",
    "stop",
    "pattern",
    "mask",
    "marker",
    "metadata",
}
_SVG_ATTRIBUTES = {
    "*": {
        "id",
        "class",
        "style",
        "x",
        "y",
        "x1",
        "x2",
        "y1",
        "y2",
        "cx",
        "cy",
        "r",
        "rx",
        "ry",
        "width",
        "height",
        "d",
        "points",
        "viewBox",
        "viewbox",
        "preserveAspectRatio",
        "transform",
        "fill",
        "fill-opacity",
        "fill-rule",
        "stroke",
        "stroke-width",
        "stroke-linecap",
        "stroke-linejoin",
        "stroke-dasharray",
        "stroke-opacity",
        "opacity",
        "clip-path",
        "clipPathUnits",
        "mask",
        "marker-start",
        "marker-mid",
        "marker-end",
        "offset",
        "stop-color",
        "stop-opacity",
        "gradientUnits",
        "gradientTransform",
        "patternUnits",
        "font-size",
        "font-family",
        "font-weight",
        "text-anchor",
        "dominant-baseline",
        "dx",
        "dy",
        "version",
        "xmlns",
        "href",
        "xlink:href",
    }
}

_SCRIPT_SCHEME = re.compile(
    r"(?i)\b(j[\s\x00-\x1f]*a[\s\x00-\x1f]*v[\s\x00-\x1f]*a[\s\x00-\x1f]*s"
    r"[\s\x00-\x1f]*c[\s\x00-\x1f]*r[\s\x00-\x1f]*i[\s\x00-\x1f]*p[\s\x00-\x1f]*t"
    r"|v[\s\x00-\x1f]*b[\s\x00-\x1f]*s[\s\x00-\x1f]*c[\s\x00-\x1f]*r[\s\x00-\x1f]*i"
    r"[\s\x00-\x1f]*p[\s\x00-\x1f]*t)[\s\x00-\x1f]*:"
)
_DATA_IMAGE = re.compile(r"(?i)^data:image/(png|jpeg|gif|webp|bmp);base64,")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def is_data_type(mime: str) -> bool:
    """True for MIME types that frontends render from data alone."""
    return mime in DATA_TYPES or any(p.fullmatch(mime) for p in DATA_TYPE_PATTERNS)


def _html_attribute(tag: str, attribute: str, value: str) -> str | None:
    # A browser fetches src on its own; an absolute URL there would send
    # data past the proxy, so only relative URLs and inline images stay.
    if attribute in {"src", "srcset", "poster", "background"}:
        stripped = value.strip()
        if _DATA_IMAGE.match(stripped):
            return value
        if _URL_SCHEME.match(stripped) or stripped.startswith(("//", "\\\\", "/\\")):
            return None
        return value
    if attribute in {"href", "xlink:href"}:
        if tag in _SVG_TAGS and not value.strip().startswith("#"):
            return None
        if value.strip().lower().startswith("data:"):
            return None
    return value


def clean_html(html: str) -> str:
    """Return ``html`` with active content removed."""
    return nh3.clean(
        html,
        tags=_HTML_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_HTML_ATTRIBUTES,
        attribute_filter=_html_attribute,
        filter_style_properties=set(STYLE_PROPERTIES),
        url_schemes={"http", "https", "mailto", "data"},
    )


def clean_svg(svg: str) -> str | None:
    """Return ``svg`` cleaned against the SVG allowlist, or None if none is left."""
    cleaned = nh3.clean(
        svg,
        tags=_SVG_TAGS,
        clean_content_tags={"script", "style", "foreignObject", "foreignobject"},
        attributes=_SVG_ATTRIBUTES,
        attribute_filter=_html_attribute,
        filter_style_properties=set(STYLE_PROPERTIES),
        link_rel=None,
        url_schemes=set(),
        strip_comments=True,
    )
    if "<svg" not in cleaned:
        return None
    # The cleaner writes HTML; an SVG image is parsed as XML, which needs the
    # xlink prefix declared and knows no named entity but the five of XML.
    if "xlink:href" in cleaned and "xmlns:xlink" not in cleaned:
        cleaned = cleaned.replace(
            "<svg", '<svg xmlns:xlink="http://www.w3.org/1999/xlink"', 1
        )
    return cleaned.replace("&nbsp;", "&#160;")


def defuse_schemes(text: str) -> str:
    """Make ``javascript:`` and ``vbscript:`` URLs in text inert."""
    return _SCRIPT_SCHEME.sub(lambda m: m.group(1) + "-blocked-by-srt-kernel:", text)


def clean_markdown(text: str) -> str:
    """Clean raw HTML in markdown and make script URLs inert."""
    if "<" in text:
        text = clean_html(text)
    return defuse_schemes(text)


_ACTIVE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"<\s*script\b", re.I), "<script> element"),
    (re.compile(r"\son[a-z]+\s*=", re.I), "event-handler attribute"),
    (re.compile(r"javascript\s*:", re.I), "javascript: link"),
    (
        re.compile(r"<\s*(iframe|object|embed|frame)\b", re.I),
        "embedded frame or object",
    ),
    (re.compile(r"<\s*form\b", re.I), "form"),
)


def active_parts(text: str) -> list[str]:
    """Names of the active parts found in an HTML or SVG text, for reports.

    Only for telling the user what was removed: the cleaning itself is
    nh3's, which does not depend on these patterns.  ``<style>`` elements
    are removed too (they could restyle JupyterLab or load URLs past the
    proxy) but not reported: pandas puts one in every table.
    """
    return [name for pattern, name in _ACTIVE_PATTERNS if pattern.search(text)]


def removal_note(removed: Iterable[str]) -> str:
    """The text that replaces an output whose active parts were removed."""
    names = ", ".join(sorted(set(removed)))
    return (
        f"[srt-kernel] Removed {names} from this output: it could run code in "
        "your browser. To allow active output, set "
        f'"{SETTING}": true in your settings (~/.config/srt-kernel/settings.json).'
    )


def _text(value: Any) -> str | None:
    # nbformat allows multi-line strings as lists of lines.
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "".join(value)
    return None


def clean_bundle(
    data: JSONDict, found: list[str] | None = None
) -> tuple[JSONDict, list[str]]:
    """Clean one MIME bundle; return the new bundle and the removed types.

    ``found``, when given, collects the names of the active parts seen (for
    the block report).
    """
    cleaned: JSONDict = {}
    removed: list[str] = []
    for mime, value in data.items():
        if is_data_type(mime):
            cleaned[mime] = value
            continue
        text = _text(value)
        result: str | None = None
        if found is not None and text is not None:
            found.extend(f"{part} in {mime}" for part in active_parts(text))
        if text is not None and mime == "text/html":
            result = clean_html(text)
        elif text is not None and mime == "image/svg+xml":
            result = clean_svg(text)
        elif text is not None and mime == "text/markdown":
            result = clean_markdown(text)
        elif text is not None and mime == "text/latex":
            result = defuse_schemes(text)
        if result is None:
            removed.append(mime)
            if found is not None:
                found.append(f"{mime} output")
            continue
        cleaned[mime] = result

    if removed and not any(mime != "text/plain" for mime in cleaned):
        original = _text(cleaned.get("text/plain"))
        note = removal_note(removed)
        cleaned["text/plain"] = f"{note}\n{original}" if original else note
    if removed:
        log.info("removed active output types %s", ", ".join(removed))
    return cleaned, removed


#: ipywidgets models whose ``value`` is rendered as HTML.
HTML_VALUE_MODELS = frozenset({"HTMLModel", "HTMLMathModel"})
#: Widget state fields rendered as HTML by some ipywidgets versions, whatever
#: the model (descriptions, with ``description_allow_html`` or in 7.x).
HTML_STATE_FIELDS = frozenset({"description"})


class Sanitizer:
    """Cleans the content of messages that the relay passes to the frontend.

    It remembers, for a bounded number of widgets, the model name that each
    ``comm_open`` announced, so that an ``update`` of an ``HTML`` widget's
    ``value`` is cleaned and a ``Text`` widget's value is left alone.  An
    update to a widget it does not know is treated as HTML.
    """

    def __init__(self, *, max_comms: int = 10_000) -> None:
        self._models: OrderedDict[str, str] = OrderedDict()
        self._max_comms = max_comms
        #: What the last :meth:`clean` call removed, in words.
        self.found: list[str] = []

    def clean(
        self, msg_type: str, content: JSONDict, *, allow_active_output: bool
    ) -> JSONDict:
        """Return ``content`` of a ``msg_type`` message, cleaned in place.

        Afterwards :attr:`found` names the active parts this call removed.
        """
        self.found = []
        if msg_type == "comm_open":
            self._remember(content)
        elif msg_type == "comm_close":
            self._models.pop(str(content.get("comm_id")), None)
        if allow_active_output:
            return content

        if msg_type in {"display_data", "execute_result", "update_display_data"}:
            self._clean_output(content)
        elif msg_type in {"comm_open", "comm_msg"}:
            self._clean_comm(content)
        elif msg_type == "execute_reply":
            for item in _list(content.get("payload")):
                if isinstance(item, dict) and isinstance(item.get("data"), dict):
                    item["data"], _ = clean_bundle(item["data"], self.found)
        elif msg_type == "inspect_reply" and isinstance(content.get("data"), dict):
            content["data"], _ = clean_bundle(content["data"], self.found)
        elif msg_type == "kernel_info_reply":
            links = _list(content.get("help_links"))
            content["help_links"] = [
                link
                for link in links
                if isinstance(link, dict)
                and isinstance(link.get("url"), str)
                and link["url"].lower().startswith(("https://", "http://"))
            ]
        return content

    def _remember(self, content: JSONDict) -> None:
        data = content.get("data")
        state = data.get("state") if isinstance(data, dict) else None
        model = state.get("_model_name") if isinstance(state, dict) else None
        if isinstance(model, str):
            comm_id = str(content.get("comm_id"))
            self._models[comm_id] = model
            self._models.move_to_end(comm_id)
            while len(self._models) > self._max_comms:
                self._models.popitem(last=False)

    def _clean_output(self, content: JSONDict) -> None:
        data = content.get("data")
        bundle = data if isinstance(data, dict) else {}
        content["data"], _ = clean_bundle(bundle, self.found)

    def _clean_comm(self, content: JSONDict) -> None:
        data = content.get("data")
        state = data.get("state") if isinstance(data, dict) else None
        if not isinstance(state, dict):
            return
        model = state.get("_model_name")
        if not isinstance(model, str):
            model = self._models.get(str(content.get("comm_id")), "")
        html_fields = set(HTML_STATE_FIELDS)
        if model in HTML_VALUE_MODELS or model == "":
            html_fields.add("value")
        for name in html_fields:
            value = state.get(name)
            if isinstance(value, str):
                self.found.extend(
                    f"{p} in a widget's {name}" for p in active_parts(value)
                )
                state[name] = clean_html(value)
        # The Output widget carries whole outputs in its state.
        for output in _list(state.get("outputs")):
            if isinstance(output, dict) and isinstance(output.get("data"), dict):
                output["data"], _ = clean_bundle(output["data"], self.found)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []

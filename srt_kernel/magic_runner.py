"""What runs inside the one-shot sandbox of ``%%sandbox``: one Python cell.

The host (:mod:`srt_kernel.magics`) binds a private folder at
:data:`WORK_INSIDE` holding ``config.json``, ``cell.py`` and the ``-i``
variables in ``in/``, and starts ``python -m srt_kernel.magic_runner
WORK_INSIDE`` in the sandbox.  This module then:

1. keeps its standard output as the *channel* to the host and points file
   descriptors 1 and 2 at pipes of its own, so that everything the cell
   prints, from Python or from a program it starts, comes back as stream
   frames, in the order Python wrote it;
2. loads the ``-i`` variables (:mod:`srt_kernel.transfer`, never pickle);
3. runs the cell as IPython would: the value of a last bare expression is
   shown (unless the line ends with ``;``), ``display()`` works (also as
   ``from IPython.display import display``), and matplotlib figures are
   shown as PNG images when ``plt.show()`` is called and at the end;
4. writes the ``-o`` variables to ``out/`` with :mod:`srt_kernel.transfer`.

A frame is a 4-byte big-endian length followed by that many bytes of a
JSON object whose ``"k"`` says what it is: ``stream`` (``name``,
``text``), ``display`` and ``result`` (``data``, ``metadata``: a MIME
bundle), ``error`` (``ename``, ``evalue``, ``traceback``), ``output``
(``name``, ``ok``, ``message``) and finally ``done``.  The host trusts
none of it: it checks every frame and cleans every bundle.

The cell is plain Python: IPython magics, ``!commands`` and
``get_ipython()`` are not available inside ``%%sandbox``.
"""

from __future__ import annotations

import ast
import base64
import builtins
import codecs
import importlib.abc
import importlib.machinery
import io
import json
import linecache
import os
import select
import struct
import sys
import threading
import tokenize
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import CoroutineType, ModuleType
from typing import Any

from srt_kernel.log import get_logger

logger = get_logger(__name__)

#: Where the host binds the private folder inside the sandbox.
WORK_INSIDE = "/run/srt-kernel/magic"
#: The file name the cell's code is compiled under (it shows in tracebacks).
CELL_FILE = "<sandboxed cell>"

_HEADER = struct.Struct(">I")
#: Types whose last-expression value is shown with repr(), without IPython.
_PLAIN = (int, float, complex, str, bytes, bool)


class Channel:
    """Frames to the host over one file descriptor, from any thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pid = os.getpid()
        self.lock = threading.Lock()
        #: Called with the lock held before each frame is written; the
        #: :class:`FdForwarder` sends there what programs already wrote.
        self.drain: Callable[[], None] | None = None

    def send(self, frame: dict[str, Any]) -> None:
        if os.getpid() != self.pid:
            # A forked child (multiprocessing) writes through its fd 1
            # instead: its frames could interleave with the parent's.
            if frame.get("k") == "stream":
                fd = 1 if frame.get("name") == "stdout" else 2
                os.write(fd, str(frame.get("text", "")).encode("utf-8", "replace"))
            return
        data = _encode(frame)
        with self.lock:
            if self.drain is not None:
                self.drain()
            _write_all(self.fd, data)


def _encode(frame: dict[str, Any]) -> bytes:
    data = json.dumps(frame, ensure_ascii=False, default=str).encode("utf-8", "replace")
    return _HEADER.pack(len(data)) + data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class StreamWriter(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of the cell: each write is one frame."""

    def __init__(self, channel: Channel, name: str) -> None:
        super().__init__()
        self.channel = channel
        self.name_ = name

    encoding = "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1 if self.name_ == "stdout" else 2

    def write(self, text: str) -> int:
        if text:
            self.channel.send({"k": "stream", "name": self.name_, "text": str(text)})
        return len(text)


class FdForwarder:
    """Reads what programs write to fds 1 and 2 and sends it as frames.

    A thread forwards it as it comes; before any other frame, the channel
    first sends what is already in the pipes, so that what a program wrote
    before the cell prints (or displays, or fails) comes before it.
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.pipes: dict[int, str] = {}
        for target, name in ((1, "stdout"), (2, "stderr")):
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.dup2(write, target)
            os.close(write)
            self.pipes[read] = name
        self.open_fds = list(self.pipes)
        # A read may end inside a character: its first bytes wait for the rest.
        self.decoders = {
            fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in self.pipes
        }
        channel.drain = self.drain
        self.thread = threading.Thread(target=self._pump, daemon=True, name="fds")
        self.thread.start()

    def _pump(self) -> None:
        while self.open_fds:
            ready, _, _ = select.select(list(self.open_fds), [], [])
            with self.channel.lock:
                for fd in ready:
                    self._forward(fd)

    def drain(self) -> None:
        """Send what is in the pipes now; the channel's lock is held."""
        ready, _, _ = select.select(self.open_fds, [], [], 0)
        for fd in ready:
            self._forward(fd)

    def _forward(self, fd: int) -> None:
        if fd not in self.open_fds:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:  # drained by the other side first
            return
        if not data:
            self.open_fds.remove(fd)
        text = self.decoders[fd].decode(data, final=not data)
        if text:
            frame = {"k": "stream", "name": self.pipes[fd], "text": text}
            _write_all(self.channel.fd, _encode(frame))

    def stop(self, timeout: float = 1.0) -> None:
        """Close fds 1 and 2 and wait (a little) for what is still in the pipes."""
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
        # A background program that still holds the pipes would keep the
        # thread waiting; the sandbox is torn down right after anyway.
        self.thread.join(timeout)


# --------------------------------------------------------------------------
# Rich output


class Display:
    """Turns objects into MIME bundles and sends them to the host."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self._formatter: Any = None

    def bundle(self, obj: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        if type(obj) in _PLAIN:
            return {"text/plain": repr(obj)}, {}
        figure = _figure_bundle(obj)
        if figure is not None:
            return figure, {}
        if self._formatter is None:
            from IPython.core.formatters import DisplayFormatter

            self._formatter = DisplayFormatter()
        data, metadata = self._formatter.format(obj)
        return _jsonable(data), _jsonable(metadata)

    def send(self, kind: str, obj: Any, *, raw: bool = False, **extra: Any) -> None:
        if raw and isinstance(obj, dict):
            data: dict[str, Any] = _jsonable(obj)
            metadata: dict[str, Any] = _jsonable(extra.get("metadata") or {})
        else:
            data, metadata = self.bundle(obj)
            if extra.get("metadata"):
                metadata = {**metadata, **_jsonable(extra["metadata"])}
        if data:
            self.channel.send({"k": kind, "data": data, "metadata": metadata})

    def display(self, *objs: Any, raw: bool = False, **kwargs: Any) -> None:
        """``display()`` for the sandboxed cell (IPython's signature, simplified)."""
        sys.stdout.flush()
        for obj in objs:
            self.send("display", obj, raw=raw, metadata=kwargs.get("metadata"))

    def publish(
        self, data: dict[str, Any], metadata: dict[str, Any] | None = None, **_: Any
    ) -> None:
        self.send("display", data, raw=True, metadata=metadata)

    def flush_figures(self) -> None:
        """Show every open matplotlib figure as a PNG, then close it."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        for number in pyplot.get_fignums():
            bundle = _figure_bundle(pyplot.figure(number))
            if bundle is not None:
                self.channel.send({"k": "display", "data": bundle, "metadata": {}})
        pyplot.close("all")


def _figure_bundle(obj: Any) -> dict[str, Any] | None:
    figure_module = sys.modules.get("matplotlib.figure")
    if figure_module is None or not isinstance(obj, figure_module.Figure):
        return None
    buffer = io.BytesIO()
    obj.savefig(buffer, format="png", bbox_inches="tight")
    return {
        "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "text/plain": repr(obj),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


class _PatchLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, patch: Callable[[ModuleType], None]) -> None:
        self.loader = loader
        self.patch = patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        self.patch(module)


class PatchFinder(importlib.abc.MetaPathFinder):
    """Patches named modules right after they are first imported."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self.patches = patches

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchLoader(spec.loader, patch)
                return spec
        return None


def install_hooks(shown: Display) -> None:
    """Route IPython's display functions and ``plt.show()`` to the host."""

    def patch_display(module: ModuleType) -> None:
        module.display = shown.display  # type: ignore[attr-defined]
        module.publish_display_data = shown.publish  # type: ignore[attr-defined]
        module.update_display = shown.display  # type: ignore[attr-defined]
        module.clear_output = lambda wait=False: None  # type: ignore[attr-defined]

    def patch_pyplot(module: ModuleType) -> None:
        def show(*_args: Any, **_kwargs: Any) -> None:
            shown.flush_figures()

        module.show = show  # type: ignore[attr-defined]

    sys.meta_path.insert(
        0,
        PatchFinder(
            {
                "IPython.core.display_functions": patch_display,
                "matplotlib.pyplot": patch_pyplot,
            }
        ),
    )
    builtins.display = shown.display  # type: ignore[attr-defined]


# --------------------------------------------------------------------------
# Running the cell


def _ends_with_semicolon(source: str) -> bool:
    last = None
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in (
                tokenize.COMMENT,
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.ENDMARKER,
                tokenize.INDENT,
                tokenize.DEDENT,
            ):
                last = token
    except (tokenize.TokenError, SyntaxError):
        return False
    return last is not None and last.string == ";"


def _run(code: Any, namespace: dict[str, Any]) -> Any:
    result = eval(code, namespace)
    if isinstance(result, CoroutineType):
        # Top-level await; asyncio is imported only then (it is slow to load).
        import asyncio

        result = asyncio.run(result)
    return result


def run_cell(source: str, namespace: dict[str, Any], shown: Display) -> bool:
    """Run the cell; send its last value or its traceback.  True if it passed."""
    linecache.cache[CELL_FILE] = (
        len(source),
        None,
        source.splitlines(keepends=True),
        CELL_FILE,
    )
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        tree = ast.parse(source, CELL_FILE)
        last: ast.expr | None = None
        final = tree.body[-1] if tree.body else None
        if isinstance(final, ast.Expr):
            tree.body.pop()
            last = final.value
        _run(compile(tree, CELL_FILE, "exec", flags=flags), namespace)
        if last is not None:
            expression = ast.Expression(last)
            value = _run(compile(expression, CELL_FILE, "eval", flags=flags), namespace)
            if value is not None and not _ends_with_semicolon(source):
                namespace["_"] = value
                sys.stdout.flush()
                shown.send("result", value)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return True
        _send_error(shown.channel, exc)
        return False
    except BaseException as exc:
        _send_error(shown.channel, exc)
        return False
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return True


def _send_error(channel: Channel, exc: BaseException) -> None:
    # Drop the frames of this module: the user's traceback starts in the cell.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != CELL_FILE:
        tb = tb.tb_next
    if tb is not None or isinstance(exc, SyntaxError):
        exc.__traceback__ = tb
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    channel.send(
        {
            "k": "error",
            "ename": type(exc).__name__,
            "evalue": str(exc),
            "traceback": "".join(lines).rstrip("\n").split("\n"),
        }
    )


def write_outputs(
    names: Sequence[str], namespace: dict[str, Any], folder: Path, channel: Channel
) -> None:
    """Write each ``-o`` variable to ``folder/NAME.srtx``, or say why not."""
    from srt_kernel import transfer

    for name in names:
        if name not in namespace:
            channel.send(
                {
                    "k": "output",
                    "name": name,
                    "ok": False,
                    "message": f"the cell did not define {name!r}",
                }
            )
            continue
        try:
            data = transfer.dumps(namespace[name], name=name)
        except transfer.TransferError as exc:
            channel.send(
                {"k": "output", "name": name, "ok": False, "message": str(exc)}
            )
            continue
        (folder / f"{name}.srtx").write_bytes(data)
        channel.send({"k": "output", "name": name, "ok": True, "message": ""})


def main(argv: Sequence[str]) -> int:
    """``WORK_FOLDER``: run the cell described there; 0 unless the runner broke."""
    work = Path(argv[0] if argv else WORK_INSIDE)
    config = json.loads((work / "config.json").read_text(encoding="utf-8"))
    channel = Channel(os.dup(1))
    forwarder = FdForwarder(channel)
    sys.stdout = StreamWriter(channel, "stdout")
    sys.stderr = StreamWriter(channel, "stderr")
    shown = Display(channel)
    install_hooks(shown)

    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    passed = True
    try:
        from srt_kernel import transfer

        for name in config.get("inputs", []):
            data = (work / "in" / f"{name}.srtx").read_bytes()
            namespace[name] = transfer.loads(data)
    except Exception as exc:  # the inputs are the host's; report, do not run
        _send_error(channel, exc)
        passed = False

    if passed:
        source = (work / "cell.py").read_text(encoding="utf-8")
        passed = run_cell(source, namespace, shown)
        try:
            shown.flush_figures()
        except Exception as exc:  # a figure that cannot be drawn is the cell's error
            _send_error(channel, exc)
            passed = False
    if passed:
        write_outputs(config.get("outputs", []), namespace, work / "out", channel)

    forwarder.stop()
    channel.send({"k": "done", "ok": passed})
    return 0


if __name__ == "__main__":
    # Run under the module's real name, so that the hooks and the matplotlib
    # figures share one copy of its globals.
    from srt_kernel import magic_runner

    sys.exit(magic_runner.main(sys.argv[1:]))

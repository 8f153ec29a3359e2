"""``%%sandbox`` and ``%sandbox`` through a real IPython kernel.

The kernel is the plain ``python3`` ipykernel of this interpreter, started
with jupyter_client in a test tree (fake home, project folder, a folder
outside both); every cell loads the extension as a user would.  Network
upstreams are local HTTP servers on 127.0.0.1 port 0, and ``*.test`` names
are answered by ``network.hostAddresses`` in a ``--settings`` file.  A few
fast checks of option mistakes run in-process first.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from jupyter_client import BlockingKernelClient, KernelManager

from srt_kernel import transfer
from tests.fixtures import Upstream

# --------------------------------------------------------------------------
# In-process: option mistakes are UsageErrors that say how to fix them.


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "srt_kernel")
    return ip


# Mistakes in the options: nothing runs, and the message names the fix.
@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("-i 1x", "pass", "not a Python variable name"),
        ("-o class", "pass", "not a Python variable name"),
        ("-i not_defined_anywhere", "pass", "no variable named 'not_defined_anywhere'"),
        ("--timeout 0", "pass", "not a positive number"),
        ("--timeout soon", "pass", "invalid float value"),
        ("--bash -o x", "echo", "Python cells only"),
        ("echo hi", "pass", "takes options only"),
        ("--frobnicate", "pass", "unrecognized arguments"),
        ("--allow 'bad host!'", "pass", "--allow"),
        ("--settings /nonexistent/settings.json", "pass", "does not exist"),
        ("--bash", None, "--bash is for the cell magic"),
    ],
)
def test_usage_errors(
    shell: InteractiveShell, line: str, cell: str | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        if cell is None:
            shell.run_line_magic("sandbox", line)
        else:
            shell.run_cell_magic("sandbox", line, cell)


def test_unsupported_input_type_names_the_type(shell: InteractiveShell) -> None:
    shell.user_ns["weird"] = {1, 2}
    with pytest.raises(UsageError, match=r"-i weird: weird is of type set"):
        shell.run_cell_magic("sandbox", "-i weird", "pass")


def test_help_is_complete(shell: InteractiveShell) -> None:
    doc = shell.find_cell_magic("sandbox").__doc__
    for text in (
        "--allow DOMAIN",
        "--no-network",
        "--deny-read PATH",
        "-i VAR",
        "-o VAR",
        "--timeout S",
        "--bash",
        "--settings FILE",
        "Examples",
    ):
        assert text in doc


class _Request:
    """The execute_request a kernel is running, as ipykernel hands it out:
    the narrowing checks that the cell it runs is that request's cell."""

    code = ""

    def get_parent(self, channel: str) -> dict[str, Any]:
        return {"content": {"code": self.code}}


def _as_request(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Any]:
    request = _Request()
    monkeypatch.setattr(shell, "kernel", request, raising=False)

    def run_cell(cell: str) -> Any:
        request.code = cell
        return shell.run_cell(cell)

    return run_cell


def test_inside_the_sandboxed_kernel_the_magic_only_narrows(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SRT_KERNEL_SANDBOX", "1")
    policy = tmp_path / "policy.txt"
    policy.write_text("Network:\n  allow  example.test from x\n")
    (tmp_path / "policy.json").write_text('{"allowedDomains": ["example.test"]}')
    monkeypatch.setenv("SRT_KERNEL_POLICY", str(policy))
    run_cell = _as_request(shell, monkeypatch)
    for line, message in [
        ("--write /tmp/x", "narrows the network only"),
        ("--allow other.test", "asks for more than this kernel has"),
        ("--allow", "--allow needs a DOMAIN"),
        ("--allow 'bad host!'", "--allow"),
    ]:
        refused = run_cell(f"%%sandbox {line}\nran_refused = True\n")
        assert isinstance(refused.error_in_exec, UsageError)
        assert message in str(refused.error_in_exec)
        assert "ran_refused" not in shell.user_ns
    # called other than as a cell's first line: the options are checked too
    with pytest.raises(UsageError, match="asks for more than this kernel has"):
        shell.run_cell_magic("sandbox", "--allow other.test", "pass")
    with pytest.raises(UsageError, match="cannot build a sandbox inside"):
        shell.run_line_magic("sandbox", "ls")
    # only a cell's first line narrows (the supervisor reads that line)
    with pytest.raises(UsageError, match="only as the first line of a cell"):
        shell.run_cell_magic("sandbox", "--no-network", "pass")
    ran = run_cell("%%sandbox --allow example.test\nran_narrowed = True\n")
    assert ran.success
    assert shell.user_ns["ran_narrowed"] is True
    assert shell.run_line_magic("sandbox", "") is None


def test_a_narrowed_cell_fails_as_itself(
    shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SRT_KERNEL_SANDBOX", "1")
    (tmp_path / "policy.json").write_text('{"allowedDomains": []}')
    monkeypatch.setenv("SRT_KERNEL_POLICY", str(tmp_path / "policy.txt"))
    shown: list[BaseException] = []
    monkeypatch.setattr(
        shell, "showtraceback", lambda *a, **k: shown.append(sys.exc_info()[1])
    )
    run_cell = _as_request(shell, monkeypatch)
    failed = run_cell("%%sandbox --no-network\nprint('start')\n1/0\n")
    assert isinstance(failed.error_in_exec, ZeroDivisionError)
    assert shown == [failed.error_in_exec]
    # the traceback names the cell's own line 3, as the user sees the cell
    tb = failed.error_in_exec.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    assert tb is not None and tb.tb_lineno == 3
    # run by code rather than as the request's cell, nothing is narrowed:
    # refused
    nested_cell = "%%sandbox --no-network\nprint('nested')\n"
    shell.kernel.code = f"get_ipython().run_cell({nested_cell!r})"  # type: ignore[attr-defined]
    nested = shell.run_cell(nested_cell)
    assert isinstance(nested.error_in_exec, UsageError)
    assert "only as the first line of a cell" in str(nested.error_in_exec)
    # outside a sandbox the transform leaves every cell alone
    monkeypatch.delenv("SRT_KERNEL_SANDBOX")
    lines = ["%%sandbox --no-network\n", "1/0\n"]
    assert shell.input_transformers_cleanup[0](lines) == lines


# --------------------------------------------------------------------------
# A real kernel


@dataclass
class Cell:
    reply: dict[str, Any]
    outputs: list[dict[str, Any]]

    @property
    def status(self) -> str:
        return str(self.reply["content"]["status"])

    def text(self, name: str) -> str:
        return "".join(
            o["content"]["text"]
            for o in self.outputs
            if o["msg_type"] == "stream" and o["content"]["name"] == name
        )

    @property
    def stdout(self) -> str:
        return self.text("stdout")

    @property
    def stderr(self) -> str:
        return self.text("stderr")

    def of(self, msg_type: str) -> list[dict[str, Any]]:
        return [o["content"] for o in self.outputs if o["msg_type"] == msg_type]

    @property
    def shown(self) -> list[dict[str, Any]]:
        """The outputs as a frontend shows them: one stream's messages in a
        row are one text (ipykernel cuts a stream into messages wherever its
        flush timer falls, even inside a line)."""
        shown: list[dict[str, Any]] = []
        for o in self.outputs:
            last = shown[-1] if shown else None
            if (
                last is not None
                and o["msg_type"] == last["msg_type"] == "stream"
                and o["content"]["name"] == last["content"]["name"]
            ):
                text = last["content"]["text"] + o["content"]["text"]
                last["content"] = {**last["content"], "text": text}
            else:
                shown.append({**o})
        return shown

    @property
    def error(self) -> dict[str, Any]:
        """The failed reply: ``ename``, ``evalue`` and ``traceback``."""
        assert self.status == "error", self.outputs
        return dict(self.reply["content"])

    @property
    def report(self) -> str:
        return "".join(
            d["data"]["text/plain"]
            for d in self.of("display_data")
            if d["data"].get("text/plain", "").startswith("srt-kernel blocked")
        )


@dataclass
class Tree:
    root: Path
    home: Path
    project: Path
    outside: Path
    kc: BlockingKernelClient
    km: KernelManager
    settings: Path

    def run(self, code: str, timeout: float = 120, hook: Any = None) -> Cell:
        outputs: list[dict[str, Any]] = []

        def collect(msg: dict[str, Any]) -> None:
            if msg["msg_type"] not in ("status", "execute_input"):
                outputs.append(msg)
            if hook is not None:
                hook(msg)

        reply = self.kc.execute_interactive(
            code, timeout=timeout, output_hook=collect, allow_stdin=False
        )
        return Cell(reply, outputs)

    def write_settings(self, data: dict[str, Any]) -> str:
        self.settings.write_text(json.dumps(data))
        return str(self.settings)

    def value(self, expression: str) -> Any:
        cell = self.run(f"import json as _j; print(_j.dumps({expression}))")
        assert cell.status == "ok", cell.outputs
        return json.loads(cell.stdout)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    root = tmp_path_factory.mktemp("magic")
    home, project, outside = root / "home", root / "project", root / "outside"
    runtime = root / "xdg-runtime"
    for folder in (home / ".ssh", project / ".git" / "hooks", outside, runtime):
        folder.mkdir(parents=True)
    os.chmod(runtime, 0o700)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    (outside / "file.txt").write_text("outside\n")
    (project / "secret.txt").write_text("secret\n")
    env = {
        "PATH": os.path.dirname(sys.executable) + ":" + os.environ.get("PATH", ""),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(runtime),
        "JUPYTER_RUNTIME_DIR": str(root / "jupyter-runtime"),
        "IPYTHONDIR": str(root / "ipython"),
    }
    if "PYTHONPATH" in os.environ:  # the checkout under test, not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(project))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        t = Tree(root, home, project, outside, kc, km, root / "settings.json")
        t.write_settings({})
        loaded = t.run("%load_ext srt_kernel")
        assert loaded.status == "ok", loaded.outputs
        yield t
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.bwrap
def test_policy_is_shown_with_its_sources(tree: Tree) -> None:
    settings = tree.write_settings({"network": {"allowedDomains": ["pypi.org"]}})
    cell = tree.run(f"%sandbox --settings {settings} --allow example.test")
    assert cell.status == "ok"
    lines = cell.stdout.splitlines()
    assert lines[0] == "Network:"
    assert any(
        line.split()[:2] == ["allow", "pypi.org"] and settings in line for line in lines
    )
    assert any(
        line.split()[:2] == ["allow", "example.test"] and "command line" in line
        for line in lines
    )
    assert f"allowWrite {tree.project}" in " ".join(cell.stdout.split())


@pytest.mark.bwrap
def test_help_through_the_kernel(tree: Tree) -> None:
    cell = tree.run("%%sandbox?")
    assert cell.status == "ok"
    pages = cell.reply["content"]["payload"]
    assert "-o VAR" in pages[0]["data"]["text/plain"]


# --------------------------------------------------------------------------
# Output: streams, rich output, errors, timeout


@pytest.mark.bwrap
def test_streams_arrive_live_and_in_order(tree: Tree) -> None:
    release = tree.project / f"release-{uuid.uuid4().hex}"
    seen_start = threading.Event()

    def hook(msg: dict[str, Any]) -> None:
        # The cell waits for this file: it exists only once "start" has
        # reached the frontend, which proves that output is streamed.
        if msg["msg_type"] == "stream" and "start" in msg["content"]["text"]:
            seen_start.set()
            release.touch()

    code = f"""%%sandbox --timeout 120
import os, sys, time, subprocess
print("start", flush=True)
while not os.path.exists({str(release)!r}):
    time.sleep(0.05)
print("one")
print("two", file=sys.stderr)
print("three")
subprocess.run(["echo", "four"], check=True)
print("five", file=sys.stderr)
"""
    cell = tree.run(code, hook=hook)
    assert cell.status == "ok", cell.outputs
    assert seen_start.is_set()
    order = [
        (o["content"]["name"], line)
        for o in cell.shown
        if o["msg_type"] == "stream"
        for line in o["content"]["text"].splitlines()
    ]
    # what a program wrote before the cell prints again comes before it
    assert order == [
        ("stdout", "start"),
        ("stdout", "one"),
        ("stderr", "two"),
        ("stdout", "three"),
        ("stdout", "four"),
        ("stderr", "five"),
    ]


@pytest.mark.bwrap
def test_a_program_output_comes_before_what_the_cell_prints_next(tree: Tree) -> None:
    code = """%%sandbox
import subprocess
for i in range(200):
    subprocess.run(["echo", f"program {i}"], check=True)
    print(f"cell {i}")
"""
    cell = tree.run(code)
    assert cell.status == "ok", cell.outputs
    assert cell.stdout == "".join(f"program {i}\ncell {i}\n" for i in range(200))


# A program writes "é" in two pieces with a pause between them, so that the
# pieces are read apart; the stream shows the character, and a piece left
# alone at the end shows as U+FFFD.
SPLIT_CHARACTER = (
    "import os, time; e = 'é'.encode()\n"
    "for fd in (1, 2):\n"
    "    os.write(fd, e[:1]); time.sleep(0.3); os.write(fd, e[1:] + b'!')\n"
    "os.write(2, e[:1])\n"
)


@pytest.mark.bwrap
@pytest.mark.parametrize("bash", [False, True], ids=["python", "bash"])
def test_a_character_written_in_two_pieces_comes_out_whole(
    tree: Tree, bash: bool
) -> None:
    if bash:
        code = f"%%sandbox --bash\n{sys.executable} -c {shlex.quote(SPLIT_CHARACTER)}"
    else:
        code = (
            "%%sandbox\nimport subprocess, sys\n"
            f"subprocess.run([sys.executable, '-c', {SPLIT_CHARACTER!r}], check=True)"
        )
    cell = tree.run(code)
    assert cell.status == "ok", cell.outputs
    assert cell.stdout == "é!"
    assert cell.stderr == "é!\ufffd"


@pytest.mark.bwrap
def test_rich_output_comes_back_cleaned(tree: Tree) -> None:
    code = """%%sandbox
from IPython.display import HTML
import matplotlib.pyplot as plt
print("before")
display(HTML("<b>bold</b><script>alert(1)</script><img src=x onerror=alert(2)>"))
display({"application/javascript": "alert(3)", "text/plain": "js"}, raw=True)
plt.plot([1, 2, 3])
plt.show()
print("after")
{"answer": 42}
"""
    cell = tree.run(code)
    assert cell.status == "ok", cell.outputs
    kinds = [o["msg_type"] for o in cell.shown]
    assert kinds == [
        "stream",
        "display_data",
        "display_data",
        "display_data",
        "stream",
        "display_data",
        "execute_result",
    ]
    html, js, figure, report = cell.of("display_data")
    assert "<b>bold</b>" in html["data"]["text/html"]
    assert "<script" not in html["data"]["text/html"]
    assert "onerror" not in html["data"]["text/html"]
    assert "application/javascript" not in js["data"]
    assert base64.b64decode(figure["data"]["image/png"]).startswith(b"\x89PNG\r\n")
    assert report["data"]["text/plain"].startswith("srt-kernel blocked 1 thing")
    assert "- output:" in report["data"]["text/plain"]
    result = cell.of("execute_result")[0]
    assert result["data"]["text/plain"] == "{'answer': 42}"


@pytest.mark.bwrap
def test_figures_left_open_are_shown_and_semicolon_hides_the_value(tree: Tree) -> None:
    cell = tree.run("%%sandbox\nimport matplotlib.pyplot as plt\nplt.plot([3, 1]);\n")
    assert cell.status == "ok", cell.outputs
    assert [o["msg_type"] for o in cell.outputs] == ["display_data"]
    assert "image/png" in cell.of("display_data")[0]["data"]


@pytest.mark.bwrap
def test_exception_shows_the_sandbox_traceback(tree: Tree) -> None:
    cell = tree.run("%%sandbox\nprint('ran')\ndef f():\n    return 1 / 0\nf()\n")
    assert cell.status == "error"
    assert cell.stdout == "ran\n"
    error = cell.error
    assert error["ename"] == "SandboxCellError"
    assert len(cell.of("error")) == 1
    text = "\n".join(error["traceback"])
    assert 'File "<sandboxed cell>", line 3, in f' in text
    assert text.endswith("ZeroDivisionError: division by zero")
    assert "magic_runner" not in text


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.bwrap
def test_timeout_kills_the_whole_sandbox(tree: Tree) -> None:
    marker = f"srt-magic-timeout-{uuid.uuid4().hex}"
    ready = tree.project / f"{marker}.ready"
    code = f"""%%sandbox --timeout 4
import os, subprocess, time
subprocess.Popen(["sh", "-c", "sleep 1000 # {marker}"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sh", ["sh", "-c", "sleep 1000 # {marker} daemon"])
    os._exit(0)
while len([p for p in os.listdir('/proc') if p.isdigit() and b'{marker}' in open(f'/proc/{{p}}/cmdline', 'rb').read()]) < 2:
    time.sleep(0.05)
open({str(ready)!r}, "w").close()
print("waiting", flush=True)
time.sleep(1000)
"""
    started = time.monotonic()
    cell = tree.run(code)
    assert cell.status == "error"
    assert ready.exists()  # the processes existed before the timeout
    assert cell.error["ename"] == "SandboxTimeout"
    assert "--timeout 4 s" in cell.error["evalue"]
    assert time.monotonic() - started < 60
    deadline = time.monotonic() + 30
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []
    assert tree.run("1 + 1").status == "ok"


# --------------------------------------------------------------------------
# -i and -o


SETUP = """
import math
import numpy as np, pandas as pd
def same(a, b):
    if type(a) is not type(b):
        return f"type {type(a)} != {type(b)}"
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b); return "SAME"
    if isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b); return "SAME"
    if isinstance(a, np.ndarray):
        return "SAME" if (a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()) else "DIFF"
    if isinstance(a, float) and math.isnan(a):
        return "SAME" if math.isnan(b) else "DIFF"
    return "SAME" if a == b else "DIFF"
"""


# Every supported type makes the round trip host -> sandbox -> host.
@pytest.mark.bwrap
@pytest.mark.parametrize(
    "expression",
    [
        # JSON-compatible values and the floats JSON cannot spell
        "None",
        "True",
        "-(2 ** 100)",
        "1.5",
        "float('nan')",
        "'text \\u2713'",
        "[1, [2, 3], {'k': (4, 5)}]",
        "{'a': 1, 2: None}",
        # bytes
        "b'\\x00\\xff' * 100",
        # NumPy arrays of plain dtypes and scalars
        "np.arange(12, dtype='<i2').reshape(3, 4)",
        "np.array([1.5, np.nan], dtype='>f8')",
        "np.array(['a', 'bc'])",
        "np.array(['2024-01-01'], dtype='datetime64[D]')",
        "np.float32(2.5)",
        # pandas
        "pd.DataFrame({'i': [1, 2], 's': ['x', None], 'n': pd.array([1, None], dtype='Int64')}, index=pd.Index(['a', 'b'], name='k'))",
        "pd.Series([1.0, 2.0], name='s')",
    ],
)
def test_round_trip_through_the_sandbox(tree: Tree, expression: str) -> None:
    assert tree.run(SETUP + f"\nv = {expression}\nw = 'unset'").status == "ok"
    cell = tree.run("%%sandbox -i v -o w,kind\nw = v\nkind = type(v).__name__")
    assert cell.status == "ok", cell.outputs
    assert tree.value("same(v, w)") == "SAME"
    assert tree.value("kind") == tree.value("type(v).__name__")


@pytest.mark.bwrap
def test_values_are_computed_inside(tree: Tree) -> None:
    tree.run("import numpy as np\nxs = np.arange(5.0)\nlabel = 'sum'")
    cell = tree.run(
        "%%sandbox -i xs -i label -o out\nout = {label: float(xs.sum()), 'shape': list(xs.shape)}"
    )
    assert cell.status == "ok", cell.outputs
    assert tree.value("out") == {"sum": 10.0, "shape": [5]}


# A value the sandbox cannot send back is a UsageError naming the type.
@pytest.mark.bwrap
@pytest.mark.parametrize(
    ("code", "named"),
    [
        ("w = {1, 2}", "w is of type set"),
        ("import numpy as np\nw = np.array([object()], dtype=object)", "dtype object"),
        ("x = 1", "the cell did not define 'w'"),
    ],
)
def test_unsupported_output_is_refused(tree: Tree, code: str, named: str) -> None:
    tree.run("w = 'before'")
    cell = tree.run(f"%%sandbox -o w\n{code}")
    assert cell.status == "error"
    assert cell.error["ename"] == "UsageError"
    assert named in cell.error["evalue"]
    assert tree.value("w") == "before"


@pytest.mark.bwrap
def test_unsupported_input_is_refused_before_anything_runs(tree: Tree) -> None:
    flag = tree.project / f"ran-{uuid.uuid4().hex}"
    tree.run("import numpy as np\nbad = np.array([object()], dtype=object)")
    cell = tree.run(f"%%sandbox -i bad\nopen({str(flag)!r}, 'w').close()")
    assert cell.status == "error"
    assert cell.error["ename"] == "UsageError"
    assert "-i bad: bad is a NumPy array of dtype object" in cell.error["evalue"]
    assert not flag.exists()


# What a hostile cell writes in place of an -o value.  Each one replaces the
# runner's writer (it runs in the cell's own process, so it can) and claims
# success; the host must refuse the file and run nothing.
HOSTILE = {
    # a pickle whose loading would create the marker on the host
    "pickle": """
import pickle, os
class Boom:
    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))
(folder / "w.srtx").write_bytes(pickle.dumps(Boom()))
""",
    # our header, claiming an object array with a pickle as its blob
    "object-dtype": """
import json, struct, pickle, os
class Boom:
    def __reduce__(self):
        return (os.system, ("touch " + MARKER,))
blob = pickle.dumps([Boom()])
head = json.dumps({"value": {"t": "ndarray", "dtype": "|O", "shape": [1], "o": 0, "n": len(blob)}}).encode()
(folder / "w.srtx").write_bytes(b"SRTX1\\n" + struct.pack(">Q", len(head)) + head + blob)
""",
    # a node type the reader does not know
    "unknown-node": """
import json, struct
head = json.dumps({"value": {"t": "pickle", "v": "gASVAAAA"}}).encode()
(folder / "w.srtx").write_bytes(b"SRTX1\\n" + struct.pack(">Q", len(head)) + head)
""",
    # a sparse file bigger than the limit
    "oversized": """
with open(folder / "w.srtx", "wb") as f:
    f.truncate(LIMIT + 1)
""",
    # a symlink to a host file the sandbox cannot read itself
    "symlink": """
import os
os.symlink(SECRET, folder / "w.srtx")
""",
    # a FIFO, which would block a careless reader forever
    "fifo": """
import os
os.mkfifo(folder / "w.srtx")
""",
}


@pytest.mark.bwrap
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_output_file_runs_nothing_on_the_host(tree: Tree, kind: str) -> None:
    marker = tree.outside / f"marker-{uuid.uuid4().hex}"
    secret = tree.home / ".ssh" / "id_ed25519"
    body = HOSTILE[kind].replace("\n", "\n    ")
    code = f"""%%sandbox -o w
import srt_kernel.magic_runner as runner
MARKER, SECRET, LIMIT = {str(marker)!r}, {str(secret)!r}, {transfer.MAX_BYTES}
def hostile(names, namespace, folder, channel):
    {body}
    channel.send({{"k": "output", "name": "w", "ok": True, "message": ""}})
runner.write_outputs = hostile
w = 1
"""
    tree.run("w = 'before'")
    cell = tree.run(code, timeout=120)
    assert cell.status == "error", cell.outputs
    assert cell.error["ename"] == "UsageError"
    assert cell.error["evalue"].startswith("-o w: ")
    assert tree.value("w") == "before"
    assert not marker.exists()
    assert tree.run("1").status == "ok"


# --------------------------------------------------------------------------
# bash and single commands


@pytest.mark.bwrap
def test_bash_cell(tree: Tree) -> None:
    cell = tree.run(
        '%%sandbox --bash\necho "in $SRT_KERNEL_SANDBOX"\necho oops >&2\nexit 3'
    )
    assert cell.stdout == "in 1\n"
    assert cell.stderr == "oops\n"
    assert cell.status == "error"
    assert "exited with status 3" in cell.error["evalue"]


@pytest.mark.bwrap
def test_line_magic_runs_one_command(tree: Tree) -> None:
    cell = tree.run(
        "%sandbox --no-network sh -c 'echo $SRT_KERNEL_SANDBOX; ls -A ~/.ssh | wc -l'"
    )
    assert cell.status == "ok", cell.outputs
    assert cell.stdout.split() == ["1", "0"]


# --------------------------------------------------------------------------
# Files (cases F1, F2, F4, F5, F7 under the magic)


PROBE = """
import errno
def probe(op, path):
    try:
        if op == "read":
            open(path).read()
        elif op == "write":
            open(path, "a").write("sandbox")
        elif op == "list":
            return ",".join(sorted(os.listdir(path))) or "<empty>"
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
import os
"""


@pytest.mark.bwrap
def test_file_rules_and_their_report(tree: Tree) -> None:
    denied = tree.project / "secret.txt"
    target = tree.outside / "file.txt"
    code = f"""%%sandbox --deny-read {denied} --deny-write {tree.project / "locked"}
{PROBE}
print(probe("write", "inside.txt"))
print(probe("write", {str(target)!r}))
print(probe("read", {str(denied)!r}))
print(probe("list", os.path.expanduser("~/.ssh")))
print(probe("write", {str(tree.project / "locked" / "x")!r}))
print(probe("write", ".git/hooks/pre-commit"))
print(probe("write", ".bashrc"))
open({str(target)!r}, "a")
"""
    cell = tree.run(code)
    assert cell.stdout.split() == [
        "ok",
        "EROFS",
        "EACCES",
        "<empty>",
        "EROFS",
        "EROFS",
        "EROFS",
    ]
    assert (tree.project / "inside.txt").read_text() == "sandbox"
    assert target.read_text() == "outside\n"
    assert not (tree.project / "locked").exists()
    assert not (tree.project / ".bashrc").exists()
    assert cell.status == "error"
    assert "OSError: [Errno 30] Read-only file system" in cell.error["traceback"][-1]
    report = cell.report
    assert report.startswith("srt-kernel blocked 1 thing in this cell:")
    assert f"- write: {target}" in report
    # plain IPython has no kernel to restart: the fix is the magic's option
    assert report.endswith(
        f"  to allow: add --write {tree.outside} to the %%sandbox line\n"
    )


@pytest.mark.bwrap
def test_write_option_opens_a_folder(tree: Tree) -> None:
    target = tree.outside / "allowed.txt"
    cell = tree.run(
        f"%%sandbox --write {tree.outside}\nopen({str(target)!r}, 'w').write('hi')"
    )
    assert cell.status == "ok", cell.outputs
    assert target.read_text() == "hi"
    assert cell.report == ""


# --------------------------------------------------------------------------
# Network (cases N1, N2, N4, N6 under the magic)


FETCH = """
import urllib.request, urllib.error
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.headers.get('X-Proxy-Error')}"
    except OSError as e:
        return f"error {type(e).__name__}"
"""


def _net_settings(tree: Tree, pa: int, allowed: list[str]) -> str:
    return tree.write_settings(
        {
            "network": {
                "allowedDomains": allowed,
                "deniedDomains": ["deny.wild.test"],
                "hostAddresses": {
                    "allowed.test": "127.0.0.1",
                    "other.test": "127.0.0.1",
                    "a.wild.test": "127.0.0.1",
                    "deny.wild.test": "127.0.0.1",
                },
            }
        }
    )


@pytest.mark.bwrap
def test_allowed_and_refused_hosts(
    tree: Tree, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, other = upstreams
    pa, po = allowed.port, other.port
    settings = _net_settings(
        tree, pa, ["allowed.test", "*.wild.test", f"127.0.0.1:{pa}"]
    )
    allowed.seen.clear()
    other.seen.clear()
    code = f"""%%sandbox --settings {settings}
{FETCH}
for url in ["http://allowed.test:{pa}/a", "http://a.wild.test:{pa}/b",
            "http://deny.wild.test:{pa}/c", "http://other.test:{po}/d",
            "http://allowed.test:{po}/e"]:
    print(fetch(url))
"""
    cell = tree.run(code)
    assert cell.status == "ok", cell.outputs
    assert cell.stdout.splitlines() == [
        "200 hello from allowed",
        "200 hello from allowed",
        "403 blocked-by-srt-kernel",
        "403 blocked-by-srt-kernel",
        "403 blocked-by-srt-kernel",
    ]
    assert sorted(allowed.seen) == ["/a", "/b"]
    assert other.seen == []
    report = cell.report
    assert report.startswith("srt-kernel blocked 3 things in this cell:")
    assert f"- network: deny.wild.test port {pa}" in report
    assert f"- network: other.test port {po}" in report
    assert f"- network: allowed.test port {po}" in report
    # the settings file named with --settings is the one the fix names
    assert (
        f"- network: deny.wild.test port {pa}\n"
        f"  why: deniedDomains entry 'deny.wild.test' (from {settings})\n"
        f'  to allow: remove "deny.wild.test" from "network.deniedDomains" in your '
        f"settings ({settings})\n"
    ) in report
    # an allowed name on loopback: the address with its port, as the proxy says
    assert (
        f"- network: allowed.test port {po}\n"
        "  why: resolved to 127.0.0.1 (loopback)\n"
        f"  to allow: if you mean to reach it, add --allow 127.0.0.1:{po} to the "
        f"%%sandbox line\n"
    ) in report


@pytest.mark.bwrap
def test_allow_deny_and_no_network_options(
    tree: Tree, upstreams: tuple[Upstream, Upstream]
) -> None:
    allowed, _ = upstreams
    pa = allowed.port
    settings = _net_settings(tree, pa, [])
    url = f"http://allowed.test:{pa}/x"
    allowed.seen.clear()

    # Nothing allowed in the settings: refused, and the upstream saw nothing.
    cell = tree.run(f"%%sandbox --settings {settings}\n{FETCH}\nprint(fetch({url!r}))")
    assert cell.stdout == "403 blocked-by-srt-kernel\n"
    assert cell.report.endswith(
        f"- network: allowed.test port {pa}\n  why: not in allowedDomains\n"
        f"  to allow: add --allow allowed.test:{pa} to the %%sandbox line\n"
    )

    # --allow widens for this cell only (the name and the loopback literal).
    opts = f"--settings {settings} --allow allowed.test --allow 127.0.0.1:{pa}"
    cell = tree.run(f"%%sandbox {opts}\n{FETCH}\nprint(fetch({url!r}))")
    assert cell.stdout == "200 hello from allowed\n"
    assert allowed.seen == ["/x"]

    # --deny wins over --allow; --no-network cuts everything.
    cell = tree.run(
        f"%%sandbox {opts} --deny allowed.test\n{FETCH}\nprint(fetch({url!r}))"
    )
    assert cell.stdout == "403 blocked-by-srt-kernel\n"
    cell = tree.run(
        f"%%sandbox {opts} --no-network\n{FETCH}\nprint(fetch({url!r}))\nimport os\nprint(os.environ.get('HTTP_PROXY'))"
    )
    first, _proxy = cell.stdout.splitlines()
    assert first in {"403 blocked-by-srt-kernel", "error URLError"}
    if first.startswith("403"):
        assert cell.report.endswith(
            "  to allow: this cell's --no-network option cuts it off from the "
            f"network: drop it (and add --allow allowed.test:{pa} to the "
            "%%sandbox line if your settings do not allow it)\n"
        )
    assert allowed.seen == ["/x"]

    # A raw socket that ignores the proxy variables reaches nothing.
    cell = tree.run(
        f"%%sandbox {opts}\nimport socket\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {pa}), 5); print('connected')\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    assert cell.stdout == "ConnectionRefusedError\n"
    assert allowed.seen == ["/x"]


@pytest.mark.bwrap
def test_interrupt_kills_the_sandbox(tree: Tree) -> None:
    marker = f"srt-magic-interrupt-{uuid.uuid4().hex}"
    started = threading.Event()

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and "started" in msg["content"]["text"]:
            started.set()

    code = f"""%%sandbox
import subprocess, time
subprocess.Popen(["sh", "-c", "sleep 1000 # {marker}"])
print("started", flush=True)
time.sleep(1000)
"""
    result: list[Cell] = []
    runner = threading.Thread(target=lambda: result.append(tree.run(code, hook=hook)))
    runner.start()
    assert started.wait(60)
    assert _processes_with(marker)
    # What a frontend's interrupt button does for this kernelspec: SIGINT.
    tree.km.interrupt_kernel()
    runner.join(60)
    assert result and result[0].status == "error"
    assert result[0].error["ename"] == "KeyboardInterrupt"
    deadline = time.monotonic() + 30
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []

"""The sandboxed kernel end to end, through jupyter_client, as a frontend uses it."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jupyter_client import KernelManager

from tests.fixtures import FETCH, Env
from tests.kernel_harness import (
    KERNEL,
    kernel,
    run,
    set_sandbox_metadata,
    write_notebook,
)

pytestmark = pytest.mark.bwrap

REPO = Path(__file__).resolve().parent.parent


# -- what a user does ------------------------------------------------------


def test_state_streams_and_results(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        assert run(kc, "x = 40\nprint('hi')").stdout == "hi\n"
        result = run(kc, "x + 2")
        [value] = result.of_type("execute_result")
        assert value["content"]["data"]["text/plain"] == "42"
        err = run(kc, "import sys; print('oops', file=sys.stderr)")
        assert err.stderr == "oops\n"
        assert result.reports == []


def test_kernel_info_says_sandboxed(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        reply = kc.kernel_info(reply=True, timeout=30)
        content = reply["content"]
        assert content["language_info"]["name"] == "python"
        assert "sandbox" in content["banner"]
        assert "analysis.ipynb" in content["banner"]


def test_rich_display_png_and_html(world: Env) -> None:
    code = (
        "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
    )
    with kernel(world.env, world.project) as (_, kc):
        shown = run(kc, code)
        assert shown.status == "ok", shown.outputs
        [figure] = shown.of_type("display_data")
        assert figure["content"]["data"]["image/png"]
        frame = run(kc, "import pandas as pd\npd.DataFrame({'a': [1, 2]})")
        [table] = frame.of_type("execute_result")
        assert "<table" in table["content"]["data"]["text/html"]
        assert frame.stderr == ""  # no warning about a read-only home


def test_input_round_trip(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):

        def answer(msg: dict[str, object]) -> None:
            kc.input("sandboxed answer")

        result = run(
            kc,
            "v = input('name? ')\nprint(v.upper())",
            stdin_hook=answer,
            allow_stdin=True,
        )
        assert result.stdout.strip().endswith("SANDBOXED ANSWER")


def test_interrupt_and_restart(world: Env) -> None:
    with kernel(world.env, world.project) as (km, kc):
        run(kc, "state = 'kept'")
        msg_id = kc.execute(
            "import time\nprint('looping', flush=True)\nwhile True: time.sleep(0.05)"
        )
        # interrupt once the loop runs, not before the cell has started
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = kc.get_iopub_msg(timeout=60)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "stream"
                and "looping" in msg["content"]["text"]
            ):
                break
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        kept = run(kc, "print(state)")
        assert kept.stdout == "kept\n", kept.outputs

        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        gone = run(kc, "print('state' in dir())")
        assert gone.stdout == "False\n"


def test_completion_and_inspection(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        run(kc, "import os\nsome_long_name = 1")
        reply = kc.complete("some_lo", 7, reply=True, timeout=30)
        assert "some_long_name" in reply["content"]["matches"]
        reply = kc.inspect("os.path.join", 12, reply=True, timeout=30)
        assert reply["content"]["found"] is True
        assert "join" in reply["content"]["data"]["text/plain"]


def test_widget_comm_opens(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, "import ipywidgets as w\nw.IntSlider(value=3)")
        opens = [o for o in result.outputs if o["msg_type"] == "comm_open"]
        assert any(
            o["content"]["data"]["state"].get("_model_name") == "IntSliderModel"
            for o in opens
        )
        [view] = result.of_type("execute_result")
        assert "application/vnd.jupyter.widget-view+json" in view["content"]["data"]


def test_shell_commands_and_bash_magic(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        assert run(kc, "!echo from-shell").stdout.strip() == "from-shell"
        assert run(kc, "%%bash\necho $((6 * 7))").stdout.strip() == "42"


def test_multiprocessing_in_a_cell(world: Env) -> None:
    code = (
        "import multiprocessing as mp\n"
        "def square(n):\n    return n * n\n"
        "with mp.get_context('fork').Pool(2) as pool:\n    print(pool.map(square, range(5)))\n"
    )
    with kernel(world.env, world.project) as (_, kc):
        assert run(kc, code).stdout == "[0, 1, 4, 9, 16]\n"


def test_asyncio_in_a_cell(world: Env) -> None:
    code = (
        "import asyncio, threading\n"
        "async def f():\n    await asyncio.sleep(0)\n    return 'async ok'\n"
        "out = []\nt = threading.Thread(target=lambda: out.append(asyncio.run(f())))\n"
        "t.start(); t.join(); print(out[0])\n"
    )
    with kernel(world.env, world.project) as (_, kc):
        assert run(kc, code).stdout == "async ok\n"
        assert run(kc, "await asyncio.sleep(0); print('top-level await')").stdout == (
            "top-level await\n"
        )


def test_sandbox_line_magic_shows_the_policy(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        text = run(kc, "%sandbox").stdout
        assert f"Notebook: {world.notebook}" in text
        assert "no network" in text
        assert f"allowWrite {world.project}" in " ".join(text.split())


# -- block reports ---------------------------------------------------------

REPORT_RE = re.compile(
    r"^srt-kernel blocked (\d+) things? in this cell:\n"
    r"(?:- (?:network|read|write|output): .+\n  why: .+\n  to allow: .+\n)+\Z"
)


def test_file_refusals_are_reported_under_the_cell(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, "open('/etc/hostname', 'a')")
        assert result.status == "error"
        # root meets the read-only mount (EROFS), a user the file's mode first
        expected = "OSError" if os.getuid() == 0 else "PermissionError"
        assert result.reply["content"]["ename"] == expected
        [report] = result.reports
        assert REPORT_RE.match(report), report
        assert "- write: /etc/hostname\n" in report
        assert f"allowWrite: {world.project}" in report

        secret = run(
            kc, "import os\nopen(os.path.expanduser('~/.ssh/id_ed25519')).read()"
        )
        [report] = secret.reports
        assert f"- read: {world.home}/.ssh/id_ed25519\n" in report
        assert f'"filesystem.denyRead" entry {world.home}/.ssh' in report

        fine = run(kc, "open('ok.txt', 'w').write('fine')")
        assert fine.status == "ok" and fine.reports == []
        assert (world.project / "ok.txt").read_text() == "fine"

        bash = run(kc, "!touch /usr/evil")
        [report] = bash.reports
        assert "- write: /usr/evil\n" in report


def test_protected_files_are_named_as_such(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, "open('.bashrc', 'a').write('x')")
        [report] = result.reports
        assert f"- write: {world.project}/.bashrc\n" in report
        assert "is protected" in report
    assert not (world.project / ".bashrc").exists()


def _net_settings(port: int) -> dict[str, object]:
    return {
        "network": {
            "allowedDomains": ["allowed.test", "other.test", f"127.0.0.1:{port}"],
            "hostAddresses": {"allowed.test": "127.0.0.1", "other.test": "127.0.0.1"},
        }
    }


def _allowed_test(port: int) -> dict[str, object]:
    """Settings that allow allowed.test, answered with 127.0.0.1, on ``port``."""
    return {
        "network": {
            "allowedDomains": ["allowed.test", f"127.0.0.1:{port}"],
            "hostAddresses": {"allowed.test": "127.0.0.1"},
        }
    }


def test_network_refusal_is_reported(
    world: Env, upstream: tuple[int, list[str]]
) -> None:
    port, seen = upstream
    world.settings(_allowed_test(port))
    with kernel(world.env, world.project) as (_, kc):
        # the very first connection of the first cell works
        ok = run(kc, FETCH.format(host="allowed.test", port=port))
        assert ok.stdout == "upstream ok\n", ok.outputs
        blocked = run(kc, FETCH.format(host="other.test", port=port))
        assert blocked.reply["content"]["ename"] == "HTTPError"
        [report] = blocked.reports
        assert REPORT_RE.match(report), report
        assert (
            f"- network: other.test port {port}\n  why: not in allowedDomains\n"
            in report
        )
        assert f'add "other.test:{port}" to "network.allowedDomains"' in report
    assert seen == [f"allowed.test:{port}"]


def test_notebook_metadata_tightens_and_is_reread(
    world: Env, upstream: tuple[int, list[str]]
) -> None:
    port, seen = upstream
    world.settings(_net_settings(port))
    set_sandbox_metadata(
        world.notebook,
        {
            "network": {
                "allowedDomains": ["allowed.test", f"127.0.0.1:{port}", "wider.test"]
            }
        },
    )
    with kernel(world.env, world.project) as (_, kc):
        first = run(kc, FETCH.format(host="other.test", port=port))
        assert first.reply["content"]["ename"] == "HTTPError"  # metadata narrowed it
        notice = first.stderr
        assert "wider.test" in notice and "not granted" in notice
        assert (
            run(kc, FETCH.format(host="allowed.test", port=port)).stdout
            == "upstream ok\n"
        )

        # the saved notebook changes: the next cell sees the tighter policy
        set_sandbox_metadata(world.notebook, {"network": {"allowedDomains": []}})
        later = run(kc, FETCH.format(host="allowed.test", port=port))
        assert later.reply["content"]["ename"] == "HTTPError"
        assert "no network (no allowed domains)" in run(kc, "%sandbox").stdout

        # metadata computes from your settings each time: lifting its own
        # restriction again is fine, as far as your settings go
        set_sandbox_metadata(
            world.notebook,
            {
                "network": {
                    "allowedDomains": ["other.test", f"127.0.0.1:{port}", "wider.test"]
                }
            },
        )
        again = run(kc, FETCH.format(host="other.test", port=port))
        assert again.stdout == "upstream ok\n", again.outputs

        # a change to the files part needs a restart, said once
        set_sandbox_metadata(world.notebook, {"filesystem": {"denyWrite": ["./data"]}})
        one = run(kc, "1")
        two = run(kc, "2")
        assert "restart" in one.stderr
        assert "restart" not in two.stderr
    assert seen == [f"allowed.test:{port}", f"other.test:{port}"]


def test_invalid_metadata_fails_closed(world: Env) -> None:
    set_sandbox_metadata(world.notebook, {"network": {"allowedDomain": ["typo.test"]}})
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, "open('x.txt', 'w')")
        assert "unknown setting 'network.allowedDomain'" in result.stderr
        assert result.reply["content"]["ename"] == "OSError"
        # the fix is the metadata, not the settings
        [report] = result.reports
        assert report.endswith(
            '  to allow: fix this notebook\'s "sandbox" metadata first (the note '
            "above names the problem); until then cells run with no network and "
            "no writes\n"
        )
    assert not (world.project / "x.txt").exists()


def test_metadata_that_narrows_writes_is_the_fix(world: Env) -> None:
    (world.project / "out").mkdir()
    set_sandbox_metadata(world.notebook, {"filesystem": {"allowWrite": ["./out"]}})
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, "open('x.txt', 'w')")
        [report] = result.reports
        assert report.endswith(
            f"  why: outside every folder this code may write (allowWrite: "
            f"{world.project}/out)\n"
            f'  to allow: this notebook\'s "sandbox" metadata limits '
            f'"filesystem.allowWrite" to {world.project}/out: add '
            f'"{world.project}" there and restart the kernel\n'
        )


def test_invalid_settings_refuse_every_cell(world: Env) -> None:
    # A kernel started by a frontend stays alive, runs nothing and says why.
    settings = world.home / ".config" / "srt-kernel" / "settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text('{"network": {"allowedDomain": []}}')
    # this kernel is not sandboxed: nothing it imports may come from the
    # notebook's folder, which cells of an earlier kernel could write
    (world.project / "psutil.py").write_text("open(__file__ + '-ran', 'w')\n")
    with kernel(world.env, world.project) as (_, kc):
        usage = kc.session.msg("usage_request", {})
        kc.control_channel.send(usage)
        reply = kc.control_channel.get_msg(timeout=30)
        assert reply["header"]["msg_type"] == "usage_reply"
        assert reply["content"]["pid"] > 0
        info = kc.kernel_info(reply=True, timeout=30)["content"]
        assert info["banner"].startswith("srt-kernel runs no code: ")
        result = run(kc, "open('x.txt', 'w').write('ran')")
        assert result.status == "error"
        content = result.reply["content"]
        assert content["ename"] == "SandboxSettingsError"
        assert content["evalue"] == (
            f"your srt-kernel settings cannot be used, so no cell runs: {settings}: "
            "unknown setting 'network.allowedDomain' (did you mean "
            "'network.allowedDomains'?); a misspelt key would "
            "silently change nothing, so it is refused. Known keys here: "
            "allowAllUnixSockets, allowLocalBinding, allowUnixSockets, "
            "allowedDomains, deniedDomains, deniedResolvedAddresses, hostAddresses, "
            "httpProxyPort, socksProxyPort. Fix the settings, then restart the "
            "kernel."
        )
        [error] = result.of_type("error")
        assert error["content"]["evalue"] == content["evalue"]
        assert run(kc, "1").status == "error"
    assert not (world.project / "x.txt").exists()
    assert not (world.project / "psutil.py-ran").exists()


def test_the_refusing_kernel_leaves_the_notebooks_folder(tmp_path: Path) -> None:
    # It is not sandboxed: it serves from "/", with no working folder on
    # sys.path, whatever folder the frontend started it in.
    out = tmp_path / "probe.txt"
    probe = (
        "import os, sys\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "from srt_kernel.kernel import refusal\n"
        "def start(app):\n"
        f"    with open({str(out)!r}, 'w') as f:\n"
        f"        print(os.getcwd(), '' in sys.path, {str(tmp_path)!r} in sys.path,"
        " file=f)\n"
        "IPKernelApp.start = start\n"
        f"refusal.serve({str(tmp_path / 'kernel.json')!r}, 'a problem')\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "/ False False\n"


def test_the_cells_own_no_network_is_the_fix(
    world: Env, upstream: tuple[int, list[str]]
) -> None:
    port, seen = upstream
    world.settings(_allowed_test(port))
    fetch = FETCH.format(host="allowed.test", port=port)
    with kernel(world.env, world.project) as (_, kc):
        cut = run(kc, f"%%sandbox --no-network\n{fetch}")
        assert cut.reply["content"]["ename"] == "HTTPError"
        [report] = cut.reports
        assert report.endswith(
            "  to allow: this cell's own %%sandbox --no-network cuts it off from "
            "the network: remove that line\n"
        )
    assert seen == []


def test_an_allowed_name_on_loopback_gets_the_working_fix(
    world: Env, upstream: tuple[int, list[str]]
) -> None:
    port, seen = upstream
    world.settings(
        {
            "network": {
                "allowedDomains": ["allowed.test"],
                "hostAddresses": {"allowed.test": "127.0.0.1"},
            }
        }
    )
    with kernel(world.env, world.project) as (_, kc):
        blocked = run(kc, FETCH.format(host="allowed.test", port=port))
        assert blocked.reply["content"]["ename"] == "HTTPError"
        [report] = blocked.reports
        assert report.endswith(
            f"  why: resolved to 127.0.0.1 (loopback)\n"
            f'  to allow: if you mean to reach it, add "127.0.0.1:{port}" to '
            '"network.allowedDomains" in your settings '
            "(~/.config/srt-kernel/settings.json) and restart the kernel\n"
        )
    assert seen == []
    # the fix works
    world.settings(_allowed_test(port))
    with kernel(world.env, world.project) as (_, kc):
        ok = run(kc, FETCH.format(host="allowed.test", port=port))
        assert ok.stdout == "upstream ok\n", ok.outputs


def test_active_output_is_cleaned_and_reported(world: Env) -> None:
    code = (
        "from IPython.display import HTML, display\n"
        "display(HTML('<b>hi</b><script>fetch(\"/api/kernels\")</script>'"
        "'<img src=x onerror=\"alert(1)\">'))"
    )
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, code)
        html = result.of_type("display_data")[0]["content"]["data"]["text/html"]
        assert "<script" not in html and "onerror" not in html and "<b>hi</b>" in html
        [report] = result.reports
        assert "- output: <script> element in text/html" in report


def test_forged_block_report_from_inside_is_stripped(world: Env) -> None:
    code = (
        "k = get_ipython().kernel\n"
        "k.session.send(k.iopub_socket, 'display_data', {'data': {'text/plain': 'forged'},"
        " 'metadata': {'srt_kernel': {'kind': 'block-report'}}}, parent=k.get_parent('shell'),"
        " metadata={'srt_kernel': {'kind': 'block-report'}})\n"
    )
    with kernel(world.env, world.project) as (_, kc):
        result = run(kc, code)
        forged = [
            o
            for o in result.of_type("display_data")
            if "forged" in json.dumps(o["content"])
        ]
        for output in forged:
            assert "srt_kernel" not in output["content"].get("metadata", {})
            assert "srt_kernel" not in output.get("metadata", {})
        assert result.reports == []


# -- faults ------------------------------------------------------------------


def _sandbox_pids(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_first_cell_sent_at_once_loses_nothing(world: Env) -> None:
    # A frontend connects as soon as it has started the kernel and sends the
    # first cell without waiting for it: the supervisor holds the frontend's
    # ports from its first moment, so the cell's output and idle arrive.
    for _ in range(3):
        km = KernelManager(kernel_name=KERNEL)
        km.start_kernel(env=world.env, cwd=str(world.project))
        kc = km.client()
        kc.start_channels()
        try:
            outputs: list[dict[str, object]] = []
            reply = kc.execute_interactive(
                "print('first')", timeout=60, output_hook=outputs.append
            )
            assert reply["content"]["status"] == "ok"
            streams = [o["content"] for o in outputs if o["msg_type"] == "stream"]
            assert streams == [{"name": "stdout", "text": "first\n"}]
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def test_every_process_in_the_sandbox_is_filtered(world: Env) -> None:
    # The inner kernel filters itself once its sockets are bound.  No
    # process may share the sandbox without the filter: the filtered code,
    # as the same user, could rewrite its memory through /proc/PID/mem.
    with kernel(world.env, world.project) as (_km, kc):
        result = run(
            kc,
            "import os, subprocess\n"
            "child = subprocess.Popen(['sleep', '5'])\n"
            "for pid in sorted(p for p in os.listdir('/proc') if p.isdigit()):\n"
            "    try:\n"
            "        status = open(f'/proc/{pid}/status').read()\n"
            "    except OSError:\n"
            "        continue\n"
            "    mode = status.split('Seccomp:')[1].split()[0]\n"
            "    print(pid, mode)\n"
            "child.kill()\n"
            "child.wait()\n",
        )
    lines = result.stdout.split("\n")
    modes = [line.split()[1] for line in lines if line.strip()]
    assert len(modes) >= 2, result.stdout  # the kernel and its child, at least
    assert set(modes) == {"2"}, result.stdout


def test_supervisor_sigkill_leaves_no_sandbox_process(world: Env) -> None:
    marker = f"srtk-kernel-orphan-{os.getpid()}-{time.monotonic_ns()}"
    with kernel(world.env, world.project) as (km, kc):
        run(
            kc,
            f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'], start_new_session=True)",
        )
        assert _sandbox_pids(marker)
        assert km.provisioner is not None
        pid = km.provisioner.process.pid  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while _sandbox_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _sandbox_pids(marker) == []


def test_inner_kernel_death_is_a_dead_kernel(world: Env) -> None:
    with kernel(world.env, world.project) as (km, kc):
        kc.execute("import os; os._exit(1)")
        deadline = time.monotonic() + 20
        while km.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not km.is_alive()


# -- the command line --------------------------------------------------------


def _cli(
    world: Env, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = dict(world.env)
    env.pop("SRT_KERNEL_NOTEBOOK")
    return subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", *args],
        cwd=world.project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_execute_demo_strict_fails_on_bad_cells(world: Env) -> None:
    import shutil

    shutil.copy(REPO / "notebooks" / "demo.ipynb", world.project / "demo.ipynb")
    shutil.copy(REPO / "notebooks" / "sales.csv", world.project / "sales.csv")
    proc = _cli(world, "execute", "demo.ipynb", "--strict", "-o", "run.ipynb")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "4 failed" in proc.stdout
    assert "- network: collector.invalid port 80 (http)" in proc.stdout
    assert (world.project / "results" / "revenue_by_region.csv").exists()
    executed = json.loads((world.project / "run.ipynb").read_text())
    assert any(
        o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
        for c in executed["cells"]
        for o in c.get("outputs", [])
    )

    # the same notebook without the bad cells passes
    nb = json.loads((world.project / "demo.ipynb").read_text())
    cut = next(
        i for i, c in enumerate(nb["cells"]) if "should not" in "".join(c["source"])
    )
    nb["cells"] = nb["cells"][:cut]
    (world.project / "clean.ipynb").write_text(json.dumps(nb))
    proc = _cli(world, "execute", "clean.ipynb", "--strict", "-o", "clean.out.ipynb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 with something blocked, 0 failed" in proc.stdout


def test_teaching_notebook_shows_one_idea_a_section(world: Env) -> None:
    # notebooks/teaching.ipynb: each numbered section has one cell to try;
    # a cell tagged "blocked" gets a block report, one tagged
    # "raises-exception" fails, and every other cell works.
    import shutil

    shutil.copy(REPO / "notebooks" / "teaching.ipynb", world.project / "teaching.ipynb")
    proc = _cli(world, "execute", "teaching.ipynb", "-o", "run.ipynb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    executed = json.loads((world.project / "run.ipynb").read_text())
    sections = 0
    code_cells_after: list[int] = []
    for cell in executed["cells"]:
        if cell["cell_type"] == "markdown" and "".join(cell["source"]).startswith(
            "## "
        ):
            sections += 1
            code_cells_after.append(0)
        elif cell["cell_type"] == "code" and code_cells_after:
            code_cells_after[-1] += 1
    assert sections >= 8
    assert code_cells_after[:-1] == [1] * (sections - 1)  # the last one is prose
    for cell in (c for c in executed["cells"] if c["cell_type"] == "code"):
        tags = cell["metadata"].get("tags", [])
        outputs = cell.get("outputs", [])
        errors = [o for o in outputs if o["output_type"] == "error"]
        reports = [
            o
            for o in outputs
            if o.get("metadata", {}).get("srt_kernel", {}).get("kind") == "block-report"
        ]
        source = "".join(cell["source"])
        assert bool(errors) == ("raises-exception" in tags), source
        assert bool(reports) == ("blocked" in tags), source


def test_policy_command_shows_notebook_policy(world: Env) -> None:
    set_sandbox_metadata(
        world.notebook,
        {
            "filesystem": {"denyRead": ["./private"]},
            "network": {"allowedDomains": ["elsewhere.test"]},
        },
    )
    proc = _cli(world, "policy", str(world.notebook))
    assert proc.returncode == 0, proc.stderr
    assert f"denyRead   {world.project}/private" in proc.stdout
    assert "notebook metadata (analysis.ipynb)" in proc.stdout
    notes = [line for line in proc.stdout.splitlines() if line.startswith("Note:")]
    assert len(notes) == len(set(notes)), proc.stdout  # each note once
    assert sum("'elsewhere.test'" in line for line in notes) == 1, proc.stdout


def _missing_note(folder: Path, source: str) -> str:
    return (
        f"allowWrite {folder} (from {source}) does not exist, so nothing can be "
        f"written there: the sandbox cannot create it. Create it first (mkdir -p "
        f"{folder}), then start again (for a notebook, restart its kernel)."
    )


# A writable folder that does not exist is said, not dropped in silence, and
# never created on the host from (untrusted) metadata.
def test_missing_write_folder_is_named_with_its_fix(world: Env) -> None:
    set_sandbox_metadata(world.notebook, {"filesystem": {"allowWrite": ["./out"]}})
    out = world.project / "out"
    note = _missing_note(out, "notebook metadata (analysis.ipynb)")

    proc = _cli(world, "policy", str(world.notebook))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"Note: {note}"

    with kernel(world.env, world.project) as (_, kc):
        first = run(kc, "open('out/f.txt', 'w')")
        assert first.stderr == f"srt-kernel: {note}\n"
        assert first.reply["content"]["ename"] == "FileNotFoundError"
        assert "srt-kernel" not in run(kc, "1").stderr  # said once
    assert not out.exists()


def test_vscode_style_start_gets_the_notebooks_policy(world: Env) -> None:
    # VS Code starts the kernel from its argv with no Jupyter server, then
    # names the notebook in a silent request before the first cell.
    (world.project / "secret.txt").write_text("s3cret")
    (world.project / "out").mkdir()
    set_sandbox_metadata(
        world.notebook,
        {"filesystem": {"denyRead": ["./secret.txt"], "allowWrite": ["./out"]}},
    )
    env = dict(world.env)
    env.pop("SRT_KERNEL_NOTEBOOK")
    with kernel(env, world.project) as (_, kc):
        silent = kc.execute(
            f"__vsc_ipynb_file__ = {str(world.notebook)!r}", silent=True
        )
        reply = kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == silent
        assert reply["content"]["status"] == "ok"

        read = run(kc, "open('secret.txt').read()")
        assert read.reply["content"]["ename"] == "PermissionError"
        assert run(kc, "open('out/a.txt', 'w').write('a')").status == "ok"
        root = run(kc, "open('b.txt', 'w')")
        assert root.reply["content"]["ename"] == "OSError"
        note = run(kc, "open('analysis.ipynb', 'a')")
        assert note.reply["content"]["ename"] == "OSError"

        # a later claim, after a cell ran, changes nothing
        other = write_notebook(world.project / "other.ipynb", {})
        kc.execute(f"__vsc_ipynb_file__ = {str(other)!r}", silent=True)
        kc.get_shell_msg(timeout=60)
        still = run(kc, "open('secret.txt').read()")
        assert still.reply["content"]["ename"] == "PermissionError"
    assert (world.project / "out" / "a.txt").read_text() == "a"
    assert not (world.project / "b.txt").exists()


def _wheel(folder: Path) -> Path:
    """A one-module wheel, built by hand: nothing to download."""
    import base64
    import hashlib
    import zipfile

    files = {
        "tinypkg/__init__.py": b"ANSWER = 42\n",
        "tinypkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        record.append(f"{name},sha256={digest.decode()},{len(data)}")
    record.append("tinypkg-0.1.dist-info/RECORD,,")
    files["tinypkg-0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / "tinypkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def test_pip_installs_into_the_notebooks_own_folder(world: Env) -> None:
    import functools

    index = world.root / "index"
    (index / "simple" / "tinypkg").mkdir(parents=True)
    wheel = _wheel(index / "simple" / "tinypkg")
    (index / "simple" / "tinypkg" / "index.html").write_text(
        f'<a href="{wheel.name}">{wheel.name}</a>\n'
    )
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(index)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    world.settings(
        {
            "network": {
                "allowedDomains": [f"index.test:{port}", f"127.0.0.1:{port}"],
                "hostAddresses": {"index.test": "127.0.0.1"},
            }
        }
    )
    try:
        with kernel(world.env, world.project) as (_, kc):
            url = f"http://index.test:{port}/simple"
            pip = run(
                kc,
                f"%pip install --no-deps --index-url {url} --trusted-host index.test tinypkg",
                timeout=180,
            )
            assert pip.status == "ok", pip.outputs
            assert "Successfully installed tinypkg-0.1" in pip.stdout
            used = run(kc, "import tinypkg\nprint(tinypkg.ANSWER, tinypkg.__file__)")
            answer, where = used.stdout.split()
            assert answer == "42"
            assert where.startswith("/run/srt-kernel/packages/")
    finally:
        server.shutdown()
        server.server_close()
    # installed for this notebook only, outside the project and site-packages
    packages = world.home / ".local" / "share" / "srt-kernel" / "packages"
    assert list(packages.glob("*/tinypkg/__init__.py"))
    assert not (world.project / "tinypkg").exists()


@pytest.mark.parametrize("where", ["ours", "srt"])
def test_execute_with_invalid_settings_says_so_and_starts_nothing(
    world: Env, where: str
) -> None:
    settings = (
        world.home / ".config" / "srt-kernel" / "settings.json"
        if where == "ours"
        else world.home / ".srt-settings.json"
    )
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text("{not json")
    write_notebook(world.project / "small.ipynb", None, ["print(6 * 7)"])
    proc = _cli(world, "execute", "small.ipynb", "-o", "out.ipynb")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == (
        f"srt-kernel: error: {settings}: the settings file is not valid JSON (line "
        "1, column 2: Expecting property name enclosed in double quotes); fix "
        "it.\n"
    )
    assert proc.stdout == ""
    assert not (world.project / "out.ipynb").exists()


def test_execute_writes_into_a_new_folder(world: Env) -> None:
    write_notebook(world.project / "small.ipynb", None, ["print(6 * 7)"])
    proc = _cli(world, "execute", "small.ipynb", "-o", "out/small.ipynb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    executed = json.loads((world.project / "out" / "small.ipynb").read_text())
    assert "".join(executed["cells"][0]["outputs"][0]["text"]) == "42\n"


#: A planted module that leaves a note when it runs anywhere but under the
#: sandbox's seccomp filter (on the host, or inside before the filter).
_PLANTED = (
    "import os\n"
    "status = open('/proc/self/status').read().splitlines()\n"
    "mode = [line for line in status if line.startswith('Seccomp:')]\n"
    "if mode != ['Seccomp:\\t2']:\n"
    "    with open(os.path.join(os.getcwd(), 'planted-ran'), 'a') as note:\n"
    "        note.write(f'{__name__} {mode}\\n')\n"
)

_PLANT = f"""
import os, pathlib
project = pathlib.Path.cwd()
packages = pathlib.Path(os.environ["PIP_TARGET"])
for folder in (project, packages):
    for name in ("srt_kernel", "zmq", "tornado", "traitlets", "ipykernel", "psutil"):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "__init__.py").write_text({_PLANTED!r})
(project / "helper_mod.py").write_text("VALUE = 'notebook folder'\\n")
(packages / "pip_mod.py").write_text("VALUE = 'package folder'\\n")
print("planted")
"""


# A cell plants packages named like srt-kernel's own and its dependencies in
# the notebook's folder and in %pip's folder.  The next kernel starts from
# that folder: nothing planted runs on the host (the supervisor starts with
# -P) or unfiltered in the sandbox (the inner kernel starts isolated and
# makes both folders importable only once its seccomp filter is on).
def test_modules_planted_by_a_cell_never_run_outside_the_filter(world: Env) -> None:
    with kernel(world.env, world.project) as (_, kc):
        assert run(kc, _PLANT).stdout == "planted\n"
    with kernel(world.env, world.project) as (_, kc):
        cell = run(
            kc, "import helper_mod, pip_mod\nprint(helper_mod.VALUE, pip_mod.VALUE)"
        )
        assert cell.status == "ok", cell.outputs
        assert cell.stdout == "notebook folder package folder\n"
    assert not (world.project / "planted-ran").exists(), (
        world.project / "planted-ran"
    ).read_text()


# IPython reads configuration files (the working folder, the environment's
# etc/ipython, the profile) before the inner kernel's filter is on; the
# inner kernel reads none, and its filter is not a configurable setting.
def test_no_configuration_file_reaches_the_inner_kernel(tmp_path: Path) -> None:
    from srt_kernel.kernel.inner import SandboxedKernelApp

    off = '{"SandboxedKernelApp": {"seccomp": false}}'
    (tmp_path / "ipython_config.json").write_text(off)
    (tmp_path / "ipython_kernel_config.json").write_text(off)
    app = SandboxedKernelApp()
    app.config_file_paths = [str(tmp_path)]
    app.load_config_file()
    app.update_config(app.config)
    assert app.seccomp is True
    assert "seccomp" not in SandboxedKernelApp.class_traits(config=True)


# Before its filter is on the inner kernel runs programs (ipykernel's imports
# run `uname -p`): from the system's folders, never from a folder on the
# user's PATH that a cell can write.  Cells get the user's PATH.
def test_programs_run_before_the_filter_come_from_system_folders(world: Env) -> None:
    planted = world.project / ".venv" / "bin"
    planted.mkdir(parents=True)
    ran = world.project / "planted-uname-ran"
    (planted / "uname").write_text(
        "#!/bin/sh\n"
        f"grep -q '^Seccomp:.2' /proc/self/status || echo unfiltered >> {ran}\n"
        'exec /usr/bin/uname "$@"\n'
    )
    (planted / "uname").chmod(0o755)
    env = dict(world.env, PATH=f"{planted}:{world.env['PATH']}")
    with kernel(env, world.project) as (_, kc):
        cell = run(kc, "import os\nprint(os.environ['PATH'].split(':')[0])")
    assert cell.stdout == f"{planted}\n", cell.outputs
    assert not ran.exists(), ran.read_text()

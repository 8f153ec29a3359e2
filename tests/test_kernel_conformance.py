"""The Jupyter kernel conformance suite against the installed sandboxed kernel.

``jupyter_kernel_test`` drives a kernel through jupyter_client as a frontend
would: kernel_info, execute (stdout, stderr, errors, results, rich display,
clear_output, the pager), completion, is_complete, inspection, history and
the iopub welcome of JEP 65.  It runs here against the kernelspec that
``srt-kernel install --prefix TMP`` writes, found through ``JUPYTER_PATH``,
so the whole chain is under test: kernel.json, the supervisor, bubblewrap,
the inner ipykernel and the relay.  The same classes run against plain
ipykernel (``python3``) as a control, and a last test checks that the
sandboxed kernel skips no conformance test that plain ipykernel runs.

Every kernel starts in a temporary project folder with a fake home.  The
samples stay inside what the sandbox allows (they write nothing outside the
working folder), so no block report is expected; two tests of the sandboxed
class check that premise from both sides.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import jupyter_kernel_test as jkt  # type: ignore[import-untyped,unused-ignore]
import pytest
from jupyter_client.kernelspec import KernelSpecManager

SANDBOXED = "python-sandboxed"
PLAIN = "python3"

#: The key of the supervisor's marker in an output's metadata.
MARKER = "srt_kernel"

#: What each test class skipped: class name -> {"test (subtest)": reason}.
SKIPS: dict[str, dict[str, str]] = {}
#: The test methods each class ran in this session, by class name.
RAN: dict[str, set[str]] = {}

#: The only conformance test that plain ipykernel skips with every sample
#: given.  IPython answers a history "range" request for the running session
#: with session number 0, not the number its "tail" reply gave, so the
#: suite's range check cannot pass against any IPython kernel and
#: ``supported_history_operations`` leaves "range" out.
EXPECTED_PLAIN_SKIPS = {"test_history (hist_access_type='range')"}


@pytest.fixture(scope="module", autouse=True)
def kernel_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Install the kernelspec in a temporary prefix; start kernels in a project.

    ``JUPYTER_PATH`` points at the prefix, the home and Jupyter's folders at
    a fake home, and the working folder is a fresh project folder; all of it
    is restored afterwards.  Module scope: it is set up before any class's
    ``setUpClass`` starts a kernel.
    """
    root = tmp_path_factory.mktemp("conformance")
    prefix, home, project = root / "prefix", root / "home", root / "project"
    for folder in (prefix, home, project):
        folder.mkdir()
    (project / "data.txt").write_text("data\n")
    jupyter_data = home / ".local" / "share" / "jupyter"
    env = {
        "HOME": str(home),
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
        "JUPYTER_DATA_DIR": str(jupyter_data),
        "JUPYTER_RUNTIME_DIR": str(jupyter_data / "runtime"),
        "IPYTHONDIR": str(home / ".ipython"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "MPLCONFIGDIR": str(home / ".config" / "matplotlib"),
    }

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("SRT_KERNEL_NOTEBOOK", "JPY_SESSION_NAME", "JPY_PARENT_PID"):
            mp.delenv(key, raising=False)

        # Installed as a user would, through the command line.
        command = [sys.executable, "-m", "srt_kernel.cli", "install"]
        installed = subprocess.run(
            [*command, "--prefix", str(prefix)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert installed.returncode == 0, installed.stderr

        # jupyter_client must find this spec, not one installed elsewhere.
        spec_dir = prefix / "share" / "jupyter" / "kernels" / SANDBOXED
        spec = KernelSpecManager().get_kernel_spec(SANDBOXED)
        assert Path(spec.resource_dir).resolve() == spec_dir.resolve()
        assert spec.argv == [
            str(Path(sys.executable).absolute()),
            "-E",
            "-P",
            "-m",
            "srt_kernel.kernel",
            "-f",
            "{connection_file}",
        ]
        assert spec.language == "python"

        mp.chdir(project)
        yield project


class SkipRecorder:
    """A unittest result that notes each skip, then passes every call on."""

    def __init__(self, result: Any, skips: dict[str, str]) -> None:
        self._result = result
        self._skips = skips

    def addSkip(self, test: unittest.TestCase, reason: str, **kwargs: Any) -> None:
        self._skips[test.id().rsplit(".", 1)[-1]] = reason
        self._result.addSkip(test, reason, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._result, name)


class RecordsSkips(unittest.TestCase):
    """Notes in :data:`SKIPS` and :data:`RAN` what each test did."""

    __test__ = False

    def run(self, result: Any = None) -> Any:
        name = type(self).__name__
        recorder = SkipRecorder(result, SKIPS.setdefault(name, {}))
        outcome = super().run(cast(unittest.TestResult, recorder))
        RAN.setdefault(name, set()).add(self._testMethodName)
        return outcome


class PythonSamples(RecordsSkips, jkt.KernelTests):  # type: ignore[misc]
    """Every sample attribute of ``KernelTests``, written for Python.

    The samples read files in the working folder at most.  Tests are run in
    the alphabetical order of their names, in one kernel per class.
    """

    __test__ = False

    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('to stderr', file=sys.stderr)"

    completion_samples: ClassVar[list[dict[str, Any]]] = [
        # a builtin, and a module found on the kernel's sys.path
        {"text": "zi", "matches": {"zip"}},
        {"text": "import ipykernel.kernelap", "matches": {"ipykernel.kernelapp"}},
    ]
    complete_code_samples: ClassVar[list[str]] = [
        "1",
        "print('hello, world')",
        "def f(x):\n    return x * 2\n\n\n",
    ]
    incomplete_code_samples: ClassVar[list[str]] = [
        "print('''hello",
        "def f(x):\n    x * 2",
        "for n in range(3):",
    ]
    invalid_code_samples: ClassVar[list[str]] = ["import = 7q", "1 +* 2"]

    code_page_something = "zip?"
    code_generate_error = "raise ValueError('conformance')"
    code_execute_result: ClassVar[list[dict[str, str]]] = [
        {"code": "1 + 2 + 3", "result": "6"},
        {"code": "[n * n for n in range(1, 4)]", "result": "[1, 4, 9]"},
        # the working folder is readable in the sandbox
        {"code": "open('data.txt').read()", "result": "'data\\n'"},
    ]
    code_display_data: ClassVar[list[dict[str, str]]] = [
        # HTML that the output cleaner keeps
        {
            "code": "from IPython.display import HTML, display\n"
            "display(HTML('<b>bold</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display\n"
            "display(Math(r'\\frac{1}{2}'))",
            "mime": "text/latex",
        },
        {
            "code": "from IPython.display import Markdown, display\n"
            "display(Markdown('*emphasis*'))",
            "mime": "text/markdown",
        },
        {
            "code": "from IPython.display import JSON, display\n"
            "display(JSON({'a': [1, 2]}))",
            "mime": "application/json",
        },
    ]
    code_history_pattern = "1 + 2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = (
        "from IPython.display import clear_output\nprint('gone')\nclear_output()"
    )

    #: (home writable, working folder writable) as a cell sees them.
    expected_access = "(True, True)"

    def test_where_cells_may_write(self) -> None:
        self.flush_channels()
        reply, outputs = self.execute_helper(
            "import os\n"
            "(os.access(os.path.expanduser('~'), os.W_OK), os.access('.', os.W_OK))"
        )
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertEqual([m["msg_type"] for m in outputs], ["execute_result"])
        data = outputs[0]["content"]["data"]
        self.assertEqual(data["text/plain"], self.expected_access)


@pytest.mark.bwrap
class TestSandboxedKernel(PythonSamples):
    """The conformance suite against the installed "Python (sandboxed)"."""

    __test__ = True
    kernel_name = SANDBOXED
    # The home is read-only in the sandbox; the working folder is not.
    expected_access = "(False, True)"

    def test_banner_names_the_sandbox(self) -> None:
        self.flush_channels()
        self.kc.kernel_info()
        reply = self.kc.get_shell_msg(timeout=jkt.TIMEOUT)
        self.assertIn("in an srt-kernel sandbox", reply["content"]["banner"])
        self.assertFalse(reply["content"]["debugger"])

    def test_write_in_project_adds_no_report(self) -> None:
        self.flush_channels()
        target = Path.cwd() / "written.txt"
        reply, outputs = self.execute_helper(
            "with open('written.txt', 'w') as f:\n    f.write('from the sandbox')"
        )
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertEqual(outputs, [])
        self.assertEqual(target.read_text(), "from the sandbox")

    def test_refused_write_adds_one_report(self) -> None:
        self.flush_channels()
        target = Path(os.environ["HOME"]) / "refused.txt"
        reply, outputs = self.execute_helper(
            "import os\nopen(os.path.expanduser('~/refused.txt'), 'w')"
        )
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "OSError")
        self.assertIn(f"[Errno {errno.EROFS}]", reply["content"]["evalue"])
        self.assertEqual([m["msg_type"] for m in outputs], ["error", "display_data"])
        report = outputs[1]["content"]
        self.assertEqual(report["metadata"][MARKER]["kind"], "block-report")
        self.assertIn(str(target), report["data"]["text/plain"])
        self.assertFalse(target.exists())


class TestPlainKernel(PythonSamples):
    """The same samples against plain ipykernel: the control."""

    __test__ = True
    kernel_name = PLAIN


class WelcomeSamples(RecordsSkips, jkt.IopubWelcomeTests):  # type: ignore[misc]
    """The iopub welcome test; it waits without a timeout, so pytest's stops it."""

    __test__ = False
    support_iopub_welcome = True


@pytest.mark.bwrap
@pytest.mark.timeout(120)
class TestSandboxedWelcome(WelcomeSamples):
    """The relay greets each iopub subscriber, as ipykernel does."""

    __test__ = True
    kernel_name = SANDBOXED


@pytest.mark.timeout(120)
class TestPlainWelcome(WelcomeSamples):
    """The control for the iopub welcome."""

    __test__ = True
    kernel_name = PLAIN


def skips_of(cls: type[unittest.TestCase]) -> dict[str, str]:
    """What ``cls`` skipped: from this session's run, or from a run now.

    When pytest ran only some of the class's tests (``-k``, a single node
    id), the whole class is run here with unittest, and must pass.
    """
    name = cls.__name__
    wanted = set(unittest.defaultTestLoader.getTestCaseNames(cls))
    if RAN.get(name, set()) >= wanted:
        return SKIPS.get(name, {})
    SKIPS[name] = {}
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(cls).run(result)
    problems = [text for _, text in result.errors + result.failures]
    assert not problems, "\n".join(problems)
    return SKIPS[name]


@pytest.mark.bwrap
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("sandboxed", "plain", "plain_skips"),
    [
        # the kernel tests, every sample given
        (TestSandboxedKernel, TestPlainKernel, EXPECTED_PLAIN_SKIPS),
        # the iopub welcome
        (TestSandboxedWelcome, TestPlainWelcome, set()),
    ],
)
def test_sandbox_skips_nothing_plain_runs(
    sandboxed: type[unittest.TestCase],
    plain: type[unittest.TestCase],
    plain_skips: set[str],
) -> None:
    plain_skipped = skips_of(plain)
    sandboxed_skipped = skips_of(sandboxed)
    assert set(plain_skipped) == plain_skips
    extra = {k: v for k, v in sandboxed_skipped.items() if k not in plain_skipped}
    assert extra == {}

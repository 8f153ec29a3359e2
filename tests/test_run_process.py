"""Processes, sockets, environment: the P cases, through ``srt-kernel run``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import SandboxRunner

pytestmark = pytest.mark.bwrap


def _pids_with(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


def _wait_gone(marker: str, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _pids_with(marker)
        if not left:
            return []
        time.sleep(0.05)
    return _pids_with(marker)


# Exit status and arguments.
def test_exit_status_is_the_commands(sbx: SandboxRunner) -> None:
    assert sbx.run(["sh", "-c", "exit 7"]).status == 7
    assert sbx.run(["sh", "-c", "kill -TERM $$"]).status == 128 + signal.SIGTERM


def test_arguments_keep_their_boundaries(sbx: SandboxRunner) -> None:
    args = ["a b", "", "$HOME", "'q'", "*", "--", "-c"]
    result = sbx.run(
        [
            sys.executable,
            "-c",
            "import sys, json; print(json.dumps(sys.argv[1:]))",
            *args,
        ]
    )
    assert result.status == 0, result.stderr
    import json

    assert json.loads(result.stdout) == args


def test_shell_string_form(sbx: SandboxRunner) -> None:
    result = sbx.run([], options=["-c", "echo one; echo two | tr a-z A-Z"])
    assert result.status == 0, result.stderr
    assert result.lines == ["one", "TWO"]


def test_command_not_found(sbx: SandboxRunner) -> None:
    result = sbx.run(["no-such-command-xyz"])
    assert result.status == 127
    assert "command not found: no-such-command-xyz" in result.stderr


# P1: only the sandbox's own processes are visible; host processes cannot be
# signalled.
def test_only_own_processes_visible(sbx: SandboxRunner) -> None:
    code = (
        "import os, errno\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "print(pids)\n"
        f"try:\n    os.kill({os.getpid()}, 0)\n    print('reached')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )
    result = sbx.py(code)
    assert result.status == 0, result.stderr
    pids, outcome = result.lines
    assert eval(pids) == [1, 2]  # init and this interpreter
    assert outcome == "ESRCH"


# P2: nothing survives the command, nor a SIGKILL of the launcher.
def test_daemonised_process_does_not_survive(sbx: SandboxRunner) -> None:
    marker = f"srtk-daemon-{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('started')\n"
    )
    result = sbx.py(code)
    assert result.lines == ["started"]
    assert _wait_gone(marker) == []


def test_sigkill_of_launcher_leaves_nothing(sbx: SandboxRunner) -> None:
    marker = f"srtk-orphan-{uuid.uuid4().hex}"
    launcher = sbx.start(
        [
            sys.executable,
            "-c",
            "import time; print('up', flush=True); time.sleep(300)",
            marker,
        ]
    )
    runtime = locations_runtime_root(sbx)
    run_dirs = [
        p for p in runtime.iterdir() if p.name.startswith(f"run-{launcher.pid}-")
    ]
    assert len(run_dirs) == 1
    placeholder = sbx.project / ".bashrc"
    assert placeholder.exists()

    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert _wait_gone(marker) == []

    # the next run removes what the killed one left on disk
    assert sbx.run(["true"]).status == 0
    assert not run_dirs[0].exists()
    assert not placeholder.exists()


def locations_runtime_root(sbx: SandboxRunner) -> Path:
    code = "from srt_kernel import locations; print(locations.runtime_root())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=sbx.env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


# P3: no new Unix sockets; a host Unix socket cannot be reached.
def test_unix_sockets_refused(sbx: SandboxRunner) -> None:
    path = sbx.project / "host.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    try:
        code = (
            "import socket, errno\n"
            "for make in (lambda: socket.socket(socket.AF_UNIX),"
            " lambda: socket.socketpair(socket.AF_UNIX)):\n"
            "    try:\n        make(); print('made')\n"
            "    except OSError as e:\n        print(errno.errorcode[e.errno])\n"
        )
        result = sbx.py(code)
        # a socketpair reaches no host socket, and asyncio needs it
        assert result.lines == ["EPERM", "made"]
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


# P4: no capabilities, no remounting, setuid gains nothing.
def test_no_capabilities_and_no_privileges(sbx: SandboxRunner) -> None:
    result = sbx.run(
        ["sh", "-c", "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status"]
    )
    fields = dict(line.split(":\t") for line in result.lines)
    assert (
        fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] == "0000000000000000"
    )
    assert fields["NoNewPrivs"] == "1"


def test_cannot_remount_or_unshare(sbx: SandboxRunner) -> None:
    code = (
        "import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "r = libc.mount(b'none', b'/', None, 0x20 | 0x1000, None)\n"  # MS_REMOUNT|MS_BIND
        "print(errno.errorcode[ctypes.get_errno()] if r else 'mounted')\n"
        "r = libc.unshare(0x10000000)\n"  # CLONE_NEWUSER
        "print(errno.errorcode[ctypes.get_errno()] if r else 'unshared')\n"
    )
    result = sbx.py(code)
    assert result.lines == ["EPERM", "EPERM"]


def test_setuid_binary_gains_nothing(sbx: SandboxRunner) -> None:
    su = "/usr/bin/su" if os.path.exists("/usr/bin/su") else "/bin/su"
    if not os.path.exists(su) or not os.stat(su).st_mode & 0o4000:
        pytest.skip("no setuid su binary on this machine")
    result = sbx.run(["sh", "-c", f"{su} -c 'id -u' root </dev/null; echo status=$?"])
    assert "status=0" not in result.stdout or result.stdout.splitlines()[0] != "0"
    # whatever su did, the sandbox's processes still hold no capabilities
    result = sbx.run(["sh", "-c", "grep CapEff /proc/self/status"])
    assert result.stdout.split()[-1] == "0000000000000000"


# P5: the environment is an allowlist.
def test_secret_environment_does_not_reach_the_sandbox(sbx: SandboxRunner) -> None:
    env = {"OPENAI_API_KEY": "sk-secret", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
    result = sbx.run(["env"], env=env)
    assert "sk-secret" not in result.stdout
    assert "aws-secret" not in result.stdout
    assert f"HOME={sbx.home}" in result.lines


def test_environment_allow_lets_a_variable_through(sbx: SandboxRunner) -> None:
    result = sbx.run(
        ["sh", "-c", 'echo "$OPENAI_API_KEY"'],
        env={"OPENAI_API_KEY": "sk-ok"},
        settings={"environment": {"allow": ["OPENAI_API_KEY"]}},
    )
    assert result.lines == ["sk-ok"]


# P6: when the sandbox cannot be built, nothing runs.
def test_missing_bwrap_refuses_to_run(sbx: SandboxRunner, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "touch"):
        src = subprocess.run(
            ["which", tool], capture_output=True, text=True
        ).stdout.strip()
        (bindir / tool).symlink_to(src)
    marker = sbx.project / "ran"
    result = sbx.run(["touch", str(marker)], env={"PATH": str(bindir)})
    assert result.status == 125
    assert "bubblewrap (bwrap) is not installed" in result.stderr
    assert "apt-get install -y bubblewrap" in result.stderr
    assert not marker.exists()


def test_bwrap_comes_only_from_a_system_folder(sbx: SandboxRunner) -> None:
    # A bwrap that a cell could have written (here: in the project, first on
    # PATH) would build the next sandbox from the host: it is never run.
    planted = sbx.project / ".venv" / "bin"
    planted.mkdir(parents=True)
    ran = sbx.root / "planted-bwrap-ran"
    (planted / "bwrap").write_text(
        f'#!/bin/sh\ntouch {ran}\nexec /usr/bin/bwrap "$@"\n'
    )
    (planted / "bwrap").chmod(0o755)
    path = f"{planted}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result = sbx.run(["echo", "inside"], env={"PATH": path})
    assert result.lines == ["inside"], result.stderr
    assert not ran.exists()
    # nowhere but there: refused, with the way to name a trusted one
    alone = sbx.run(["echo", "inside"], env={"PATH": str(planted)})
    assert alone.status == 125
    assert f"bubblewrap was found only at {planted}/bwrap" in alone.stderr
    assert not ran.exists()
    named = sbx.run(
        ["echo", "inside"], env={"PATH": str(planted), "SRT_KERNEL_BWRAP": "bwrap"}
    )
    assert named.status == 125
    assert "SRT_KERNEL_BWRAP='bwrap' is not the absolute path" in named.stderr


def test_disabled_user_namespaces_refuse_to_run(sbx: SandboxRunner) -> None:
    marker = sbx.project / "ran"
    inner = sbx.argv(["touch", str(marker)])
    outer = [
        "bwrap",
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--chdir",
        str(sbx.project),
        *inner,
    ]
    proc = subprocess.run(
        outer, env=sbx.env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 125, proc.stderr
    assert "could not build the sandbox" in proc.stderr
    assert "user namespaces" in proc.stderr
    assert not marker.exists()


def test_doctor_reports_success_here() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout
    assert "[ok  ] bubblewrap" in proc.stdout
    assert "[ok  ] user namespaces" in proc.stdout
    assert "The sandbox can run on this machine." in proc.stdout


def test_doctor_without_bwrap_says_how_to_install(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "[FAIL] bubblewrap: bwrap is not on PATH" in proc.stdout
    assert "apt-get install -y bubblewrap" in proc.stdout


# Inside a sandbox, doctor and a nested run say so, not something else.
def test_doctor_and_run_inside_a_sandbox_say_sandboxes_do_not_nest(
    sbx: SandboxRunner,
) -> None:
    from srt_kernel.doctor import NESTED_FIX

    cli = [sys.executable, "-m", "srt_kernel.cli"]
    doctor = sbx.run([*cli, "doctor"])
    assert doctor.status == 1
    assert doctor.lines[:2] == [
        "[FAIL] not nested: this runs inside an srt-kernel sandbox "
        "(SRT_KERNEL_SANDBOX=1)",
        f"       {NESTED_FIX}",
    ]
    assert "container" not in doctor.stdout
    assert doctor.lines[-1] == (
        "No sandbox can be built from inside this srt-kernel sandbox; run "
        "srt-kernel doctor on the host to check the machine itself."
    )

    nested = sbx.run([*cli, "run", "--", "true"])
    assert nested.status == 125
    assert nested.stderr == (
        "srt-kernel: this is already inside an srt-kernel sandbox, where no "
        "sandbox can be built, so the command was not run.\n\n"
        f"{NESTED_FIX}\n"
    )


# P7: multiprocessing works.
def test_multiprocessing_pool_and_executor(sbx: SandboxRunner) -> None:
    code = (
        "import multiprocessing as mp, concurrent.futures as cf\n"
        "if __name__ == '__main__':\n"
        "    with mp.Pool(2) as p: print(p.map(abs, [-1, -2, -3]))\n"
        "    with cf.ProcessPoolExecutor(2) as ex: print(list(ex.map(abs, [-4, -5])))\n"
    )
    script = sbx.project / "mp.py"
    script.write_text(code)
    result = sbx.run([sys.executable, str(script)])
    assert result.status == 0, result.stderr
    assert result.lines == ["[1, 2, 3]", "[4, 5]"]


@pytest.mark.parametrize("network", [False, True])
def test_term_and_int_reach_the_command(sbx: SandboxRunner, network: bool) -> None:
    # the handler writes with os.write: the signal may arrive while
    # print('up') still holds stdout's lock, and print() is not reentrant
    code = (
        "import os, signal, sys, time\n"
        "def on(signum, frame):\n"
        "    os.write(1, f'got {signal.Signals(signum).name}\\n'.encode()); sys.exit(5)\n"
        "signal.signal(signal.SIGTERM, on)\n"
        "signal.signal(signal.SIGINT, on)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    options = ["--allow", "allowed.test"] if network else []
    for sig in (signal.SIGTERM, signal.SIGINT):
        launcher = sbx.start([sys.executable, "-c", code], options=options)
        launcher.send_signal(sig)
        out, _ = launcher.communicate(timeout=30)
        assert out.strip() == f"got {sig.name}", launcher.returncode
        assert launcher.returncode == 5


def test_a_shared_placeholder_outlives_the_run_that_made_it(sbx: SandboxRunner) -> None:
    # A makes the placeholder .bashrc; B, started while A runs, holds it with
    # a mount of its own. When A ends, removing .bashrc would undo B's mount.
    trigger = sbx.project / "go"
    waiter = (
        "import errno, os, sys, time\n"
        "print('up', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
        "try:\n    open('.bashrc', 'a').write('x'); print('wrote')\n"
        "except OSError as e:\n    print(errno.errorcode[e.errno])\n"
    )

    def launch(code: str, *args: str) -> subprocess.Popen[str]:
        return sbx.start([sys.executable, "-c", code, *args])

    first = launch("import time; print('up', flush=True); time.sleep(60)")
    assert (sbx.project / ".bashrc").exists()
    second = launch(waiter, str(trigger))
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=30)
    assert (sbx.project / ".bashrc").exists(), "removed under the second sandbox"
    trigger.write_text("")
    out, _ = second.communicate(timeout=30)
    assert out.strip() == "EROFS"
    assert (sbx.project / ".bashrc").read_text() == ""


def test_doctor_names_kernelspecs_from_an_earlier_version(tmp_path: Path) -> None:
    old = tmp_path / "kernels" / "old-sandboxed"
    old.mkdir(parents=True)
    argv = [sys.executable, "-m", "srt_kernel.kernel", "-f", "{connection_file}"]
    (old / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "old", "language": "python"})
    )
    proc = subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, JUPYTER_PATH=str(tmp_path)),
    )
    assert proc.returncode == 0, proc.stdout
    assert (
        f"[warn] kernelspecs: from an earlier version: old-sandboxed ({old})"
        in proc.stdout
    )
    assert "Reinstall each: srt-kernel install --user" in proc.stdout

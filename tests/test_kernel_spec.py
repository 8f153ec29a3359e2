"""Kernelspec install and uninstall into a temporary --prefix."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from srt_kernel.errors import PolicyError
from srt_kernel.kernel import spec


def manager_for(prefix: Path) -> KernelSpecManager:
    manager = KernelSpecManager()
    manager.kernel_dirs = [str(prefix / "share" / "jupyter" / "kernels")]
    return manager


def test_install_into_prefix_writes_kernel_json_and_logos(tmp_path: Path) -> None:
    dest = spec.install(prefix=str(tmp_path), env=spec.parse_env(["A=1", "B=x=y"]))
    assert dest == tmp_path / "share" / "jupyter" / "kernels" / "python-sandboxed"
    data = json.loads((dest / "kernel.json").read_text())
    assert data == {
        "argv": [
            str(Path(sys.executable).absolute()),
            "-E",
            "-P",
            "-m",
            "srt_kernel.kernel",
            "-f",
            "{connection_file}",
        ],
        "display_name": "Python (sandboxed)",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"debugger": False},
        "env": {"A": "1", "B": "x=y"},
    }
    for logo in spec.LOGOS:
        assert (dest / logo).read_bytes() == (spec.RESOURCES / logo).read_bytes()
    assert (dest / "logo-64x64.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    found = manager_for(tmp_path).get_kernel_spec("python-sandboxed")
    assert found.display_name == "Python (sandboxed)"
    assert found.interrupt_mode == "message"
    assert Path(found.resource_dir) == dest


def test_uninstall_removes_it(tmp_path: Path) -> None:
    dest = spec.install(prefix=str(tmp_path), name="sbx-test", display_name="T")
    assert spec.uninstall("sbx-test", prefix=str(tmp_path)) == dest
    assert not dest.exists()
    assert "sbx-test" not in manager_for(tmp_path).find_kernel_specs()
    with pytest.raises(PolicyError, match="no kernelspec named 'sbx-test'"):
        spec.uninstall("sbx-test", prefix=str(tmp_path))


# uninstall looks where install wrote: --user, --sys-prefix or --prefix.
def test_uninstall_from_the_user_folder_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    user_dest = spec.install(user=True, name="sbx-where", display_name="U")
    assert user_dest == tmp_path / "data" / "kernels" / "sbx-where"
    prefix_dest = spec.install(prefix=str(tmp_path), name="sbx-where")

    # the one under the prefix is not the user's: it stays
    assert spec.uninstall("sbx-where", user=True) == user_dest
    assert not user_dest.exists() and prefix_dest.exists()
    with pytest.raises(PolicyError) as info:
        spec.uninstall("sbx-where", user=True)
    assert str(info.value) == (
        "command line: no kernelspec named 'sbx-where' is installed in your "
        f"kernelspecs ({tmp_path / 'data' / 'kernels'}); `jupyter kernelspec "
        "list` shows the installed ones."
    )
    with pytest.raises(PolicyError, match="choose one"):
        spec.uninstall("sbx-where", user=True, prefix=str(tmp_path))


def test_uninstall_from_sys_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    dest = spec.install(sys_prefix=True, name="sbx-env")
    assert dest == tmp_path / "share" / "jupyter" / "kernels" / "sbx-env"
    assert spec.uninstall("sbx-env", sys_prefix=True) == dest
    assert not dest.exists()


# Every command has a description, every option a help line.
def test_help_describes_every_command_and_option() -> None:
    from srt_kernel.cli import SUBCOMMANDS, build_parser

    for name, (help_line, description, _add) in SUBCOMMANDS.items():
        assert help_line and description, name
        # argparse keeps a command's parser in its private sub-parsers action
        (commands,) = (
            a
            for a in build_parser(name)._actions
            if isinstance(a, argparse._SubParsersAction)
        )
        for action in commands.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"

    shown = cli("uninstall", "--help")
    assert shown.returncode == 0
    assert "  --user        only from this user's kernelspecs\n" in shown.stdout
    assert "--sys-prefix  only from this Python environment (sys.prefix)" in (
        shown.stdout
    )
    install = cli("install", "--help").stdout
    assert "the kernelspec's name, which frontends and --kernel use" in install
    assert "the name shown in the frontend's kernel list" in install
    doctor = cli("doctor", "--help").stdout
    assert "Check that bubblewrap, user namespaces and seccomp work here" in doctor


# Mistakes in the options are errors that say how to write them.
@pytest.mark.parametrize("pair", ["NOEQUALS", "=value"])
def test_bad_env_is_refused(pair: str) -> None:
    with pytest.raises(PolicyError, match="KEY=VALUE"):
        spec.parse_env([pair])


def test_two_destinations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="choose one"):
        spec.install(user=True, prefix=str(tmp_path))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "srt_kernel.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# Exit statuses: 2 for a mistake in the options, 1 for a failure; 125 is
# kept for a sandbox that could not be built, which these commands never do.
def test_cli_statuses_of_mistakes_and_failures(tmp_path: Path) -> None:
    missing = cli("uninstall", "--name", "nonexist", "--prefix", str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr == (
        "srt-kernel: error: command line: no kernelspec named 'nonexist' is "
        f"installed under {str(tmp_path)!r}; `jupyter kernelspec list` shows the "
        "installed ones.\n"
    )

    bad_env = cli("install", "--env", "BADVALUE", "--prefix", str(tmp_path))
    assert bad_env.returncode == 2
    assert bad_env.stderr == (
        "srt-kernel: error: command line: the --env value 'BADVALUE' is not "
        "KEY=VALUE; write it as --env NAME=value.\n"
    )
    assert not (tmp_path / "share").exists()

    notebook = tmp_path / "u.ipynb"
    notebook.write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    no_kernel = cli("execute", "--kernel", "nonexist", str(notebook))
    assert no_kernel.returncode == 2
    assert "error: command line: no kernel named 'nonexist'" in no_kernel.stderr

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = cli("install", "--prefix", str(blocker / "under"))
    assert unwritable.returncode == 1
    assert unwritable.stderr.startswith(
        "srt-kernel: error: Cannot install the kernelspec 'python-sandboxed'"
    )


def test_template_matches_installed_shape() -> None:
    template = json.loads((spec.RESOURCES / "kernel.json").read_text())
    installed = spec.kernel_json()
    assert template["argv"][1:] == installed["argv"][1:]  # type: ignore[index]
    assert {k: v for k, v in template.items() if k != "argv"} == {
        k: v for k, v in installed.items() if k != "argv"
    }


# `srt-kernel execute --kernel NAME` says whether NAME is the sandboxed kernel.
def test_execute_names_the_kernel_truthfully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srt_kernel.execute import kernel_label

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    spec.install(prefix=str(tmp_path), name="sbx-label", display_name="Anything")
    assert kernel_label("sbx-label") == "the sandboxed kernel 'sbx-label'"
    plain = (
        "the kernel 'python3' (Python 3 (ipykernel)), which is not sandboxed: its "
        "cells run with your full access, and the notebook's sandbox policy does "
        "not apply"
    )
    assert kernel_label("python3") == plain

    notebook = tmp_path / "u.ipynb"
    notebook.write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    ran = cli("execute", "--kernel", "python3", str(notebook))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[0] == f"Running u.ipynb in {plain}"

"""Kernelspec install and uninstall into a temporary --prefix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from srt_kernel.errors import KernelError
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
    with pytest.raises(KernelError, match="No kernelspec named 'sbx-test'"):
        spec.uninstall("sbx-test", prefix=str(tmp_path))


# Mistakes in the options are errors that say how to write them.
@pytest.mark.parametrize("pair", ["NOEQUALS", "=value"])
def test_bad_env_is_refused(pair: str) -> None:
    with pytest.raises(KernelError, match="KEY=VALUE"):
        spec.parse_env([pair])


def test_two_destinations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="Choose one"):
        spec.install(user=True, prefix=str(tmp_path))


def test_template_matches_installed_shape() -> None:
    template = json.loads((spec.RESOURCES / "kernel.json").read_text())
    installed = spec.kernel_json()
    assert template["argv"][1:] == installed["argv"][1:]  # type: ignore[index]
    assert {k: v for k, v in template.items() if k != "argv"} == {
        k: v for k, v in installed.items() if k != "argv"
    }

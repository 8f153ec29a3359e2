"""What ``%%sandbox`` costs over running the same small cell directly.

Runs, interleaved round by round so that machine load hits every variant
alike:

* ``direct``: the cell ``x = 1`` in an in-process IPython shell;
* ``magic``: the same cell under ``%%sandbox`` (a fresh one-shot sandbox,
  the runner, the relay, the proxy);
* ``run``: ``srt-kernel run -- python -c 'x = 1'`` (the command line);
* ``srt``: ``srt -c "python -c 'x = 1'"`` from the npm package
  ``@anthropic-ai/sandbox-runtime``, installed into a temporary prefix with
  ``npm install`` (skipped, with the reason, when npm is missing or srt
  cannot run here).

It prints the median of each and the ratios; the target is that the
magic's extra time over ``direct`` is at most half of srt's per-command
time.  Usage::

    .venv/bin/python benchmarks/magic_bench.py [--rounds N] [--srt PATH]

Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bytecode import compile_package

logger = logging.getLogger(__name__)

CELL = "x = 1\n"
NPM_PACKAGE = "@anthropic-ai/sandbox-runtime"


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def install_srt(prefix: Path) -> tuple[str | None, str]:
    """The srt executable installed under ``prefix``, or None and the reason."""
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed"
    proc = subprocess.run(
        [npm, "install", "--prefix", str(prefix), NPM_PACKAGE],
        capture_output=True,
        text=True,
        timeout=600,
    )
    srt = prefix / "node_modules" / ".bin" / "srt"
    if proc.returncode != 0 or not srt.exists():
        return None, f"npm install {NPM_PACKAGE} failed: {proc.stderr.strip()[-500:]}"
    return str(srt), ""


def srt_settings(folder: Path) -> Path:
    """An srt settings file as close to our defaults as its format allows."""
    path = folder / "srt-settings.json"
    path.write_text(
        json.dumps(
            {
                "network": {"allowedDomains": [], "deniedDomains": []},
                "filesystem": {
                    "denyRead": ["~/.ssh", "~/.aws"],
                    "allowWrite": [str(folder)],
                    "denyWrite": [],
                },
            }
        )
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--srt", help="an srt executable (default: npm install)")
    args = parser.parse_args(argv)
    compile_package()

    from IPython.core.interactiveshell import InteractiveShell

    work = Path(tempfile.mkdtemp(prefix="magic-bench-", dir="/var/tmp"))
    os.chdir(work)
    shell: Any = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "srt_kernel")
    python = sys.executable

    srt, why = (args.srt, "") if args.srt else install_srt(work / "npm")
    settings = srt_settings(work)
    if srt is not None:
        probe = subprocess.run(
            [srt, "-s", str(settings), "-c", f"{python} -c 'x = 1'"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode != 0:
            why = f"srt cannot run here: {probe.stderr.strip()[-500:]}"
            srt = None

    def direct() -> None:
        result = shell.run_cell(CELL)
        assert result.success

    def magic() -> None:
        result = shell.run_cell("%%sandbox\n" + CELL)
        assert result.success, result.error_in_exec

    def run() -> None:
        subprocess.run(
            [python, "-m", "srt_kernel.cli", "run", "--", python, "-c", CELL],
            check=True,
        )

    def srt_command() -> None:
        assert srt is not None
        subprocess.run(
            [srt, "-s", str(settings), "-c", f"{python} -c 'x = 1'"], check=True
        )

    variants: dict[str, Callable[[], None]] = {
        "direct": direct,
        "magic": magic,
        "run": run,
    }
    if srt is not None:
        variants["srt"] = srt_command
    for action in variants.values():  # warm caches once
        action()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, action in variants.items():
            times[name].append(_timed(action))

    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"rounds: {args.rounds}, cell: {CELL.strip()!r}, cpus: {os.cpu_count()}")
    for name, value in median.items():
        print(f"  {name:<7} median {value * 1000:8.1f} ms")
    extra = median["magic"] - median["direct"]
    print(f"  %%sandbox extra over direct: {extra * 1000:.1f} ms")
    if "srt" in median:
        ratio = extra / median["srt"]
        verdict = "met" if ratio <= 0.5 else "NOT met"
        print(f"  extra / srt per command: {ratio:.2f} (target <= 0.50: {verdict})")
        print(f"  srt-kernel run / srt: {median['run'] / median['srt']:.2f}")
    else:
        print(f"  srt skipped: {why}")
    out = Path(__file__).resolve().parent / "results" / "magic.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "median_ms": {k: round(v * 1000, 2) for k, v in median.items()},
                "magic_extra_ms": round(extra * 1000, 2),
                "srt": "ok" if "srt" in median else f"skipped: {why}",
            },
            indent=1,
        )
    )
    print(f"wrote {out}")
    os.chdir("/")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

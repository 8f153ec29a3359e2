"""Benchmark of one-shot sandboxes: the start-up of ``srt-kernel run -- true``.

Run ``.venv/bin/python benchmarks/run_bench.py``.  It prints a table and
writes ``benchmarks/results/run.json``.  Not a timed test: every number is
a median over ``--runs`` runs (after warm-up) of commands measured in the
same run, interleaved, from a small temporary working folder:

* ``python -c pass`` (the interpreter alone) and bare ``bwrap --unshare-all
  --ro-bind / / --dev /dev --proc /proc true``: the baselines;
* ``srt-kernel run -- true`` with no network rules, and with
  ``--allow allowed.test`` (the proxy is started);
* ``srt -c true`` from the npm package ``@anthropic-ai/sandbox-runtime``,
  installed into a temporary folder (it needs ``socat`` and ``ripgrep`` on
  Linux; without them, or without npm, srt is skipped and the output says
  why).

It also breaks srt-kernel's time into steps (interpreter start-up, imports,
policy, facts and plan, bubblewrap, the sandbox's init and the command,
clean-up) and lists the imports that cost most (``python -X importtime``).
Nothing here opens a network connection except ``npm install``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bytecode import compile_package

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

#: The project's start-up targets.
SRT_RATIO_TARGET = 0.25
BWRAP_MARGIN_TARGET_MS = 40.0

BARE_BWRAP = [
    "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
    "true",
]  # fmt: skip

#: Runs inside the working folder with the benchmark's interpreter: the
#: launcher's steps, one after the other, each timed.  It uses the same
#: calls as ``srt-kernel run`` (cli.py, sandbox/bwrap.py).
BREAKDOWN_SCRIPT = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
from srt_kernel import cli
from srt_kernel.sandbox import bwrap
t1 = time.perf_counter()
args = cli.build_parser().parse_args(["run", *sys.argv[1:], "--", "true"])
policy = cli._policy_from_args(args)
command = cli._command_from_args(args)
t2 = time.perf_counter()
sandbox = bwrap.Sandbox(policy, command, cwd=os.getcwd())
sandbox.prepare()
t3 = time.perf_counter()
sandbox.start(stdin=subprocess.DEVNULL)
t4 = time.perf_counter()
status = sandbox.wait()
t5 = time.perf_counter()
sandbox.created_protected()
sandbox.close()
t6 = time.perf_counter()
print(json.dumps({
    "status": status,
    "imports": t1 - t0,
    "policy": t2 - t1,
    "facts_plan": t3 - t2,
    "proxy_and_bwrap_setup": t4 - t3,
    "init_and_command": t5 - t4,
    "scan_and_cleanup": t6 - t5,
}))
"""


# -- timing ---------------------------------------------------------------


def run_once(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> float:
    """Seconds from spawn to exit; raise if the command fails."""
    start = time.perf_counter()
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip()[-400:]
        raise RuntimeError(
            f"{' '.join(argv)} exited with status {result.returncode}: {tail}"
        )
    return elapsed


def time_commands(
    commands: Mapping[str, Sequence[str]],
    runs: int,
    warmup: int,
    cwd: Path,
    env: Mapping[str, str],
) -> dict[str, list[float]]:
    """Each command's times over ``runs`` rounds, the commands interleaved.

    Interleaving spreads any slow spell of the machine over every command
    instead of charging it to whichever ran then.
    """
    for _ in range(warmup):
        for argv in commands.values():
            run_once(argv, cwd, env)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(run_once(argv, cwd, env))
    return times


def summarize(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
        "p90_ms": round(p90 * 1000, 1),
        "runs": len(ordered),
    }


# -- srt ------------------------------------------------------------------


def install_srt(folder: Path) -> tuple[list[str] | None, dict[str, Any]]:
    """srt's command line installed from npm into ``folder``, or why not."""
    missing = [tool for tool in ("socat", "rg") if shutil.which(tool) is None]
    if missing:
        return None, {
            "status": "skipped: srt needs socat and ripgrep on Linux, missing "
            f"{', '.join(missing)}; install them with "
            "`sudo apt-get install -y socat ripgrep` and run again"
        }
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None, {"status": "skipped: npm or node is not installed"}
    try:
        result = subprocess.run(
            [npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund",
             "@anthropic-ai/sandbox-runtime"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, {"status": "skipped: npm install timed out after 300 s"}
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return None, {"status": "skipped: npm install failed", "npm": tail}
    package = folder / "node_modules" / "@anthropic-ai" / "sandbox-runtime"
    version = json.loads((package / "package.json").read_text()).get("version")
    srt = folder / "node_modules" / ".bin" / "srt"
    if not srt.exists():
        return None, {"status": "skipped: the package has no srt command"}
    return [str(srt)], {"status": f"measured srt {version}", "version": version}


# -- where the time goes --------------------------------------------------


def breakdown(
    python: str, extra: Sequence[str], runs: int, cwd: Path, env: Mapping[str, str]
) -> dict[str, float]:
    """Median milliseconds of each launcher step, over ``runs`` runs.

    ``interpreter`` is the wall time of the whole process minus the steps
    timed inside it: starting Python, site and the exit.
    """
    steps: dict[str, list[float]] = {}
    for _ in range(runs + 2):
        start = time.perf_counter()
        result = subprocess.run(
            [python, "-c", BREAKDOWN_SCRIPT, *extra],
            cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        wall = time.perf_counter() - start
        report = json.loads(result.stdout.strip().splitlines()[-1])
        if report.pop("status") != 0:
            raise RuntimeError(f"the sandboxed `true` failed: {result.stderr}")
        report["interpreter"] = wall - sum(report.values())
        report["total"] = wall
        for name, value in report.items():
            steps.setdefault(name, []).append(value)
    # The first two runs are warm-up.
    return {
        name: round(statistics.median(values[2:]) * 1000, 1)
        for name, values in steps.items()
    }


def import_profile(python: str, cwd: Path, top: int = 12) -> dict[str, Any]:
    """The slowest imports of the launcher, from ``python -X importtime``."""
    result = subprocess.run(
        [python, "-X", "importtime", "-c",
         "import srt_kernel.cli, srt_kernel.sandbox.bwrap"],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    rows: list[tuple[int, int, str]] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        # One space after the bar marks a top-level import; nesting adds two.
        rows.append((int(cumulative_us), int(self_us), name.rstrip()[1:]))
    total = sum(c for c, _, name in rows if not name.startswith(" "))
    ours = [r for r in rows if r[2].strip().startswith("srt_kernel")]
    slowest = sorted(rows, reverse=True)[:top]
    return {
        "total_ms": round(total / 1000, 1),
        "srt_kernel_self_ms": round(sum(s for _, s, _ in ours) / 1000, 1),
        "slowest": [
            {"module": name.strip(), "cumulative_ms": round(c / 1000, 1)}
            for c, _, name in slowest
        ],
    }


# -- main -----------------------------------------------------------------


def cli_argv() -> list[str]:
    """``srt-kernel`` next to this interpreter (the installed console script)."""
    script = Path(sys.executable).parent / "srt-kernel"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "srt_kernel.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed runs each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs each")
    parser.add_argument("--breakdown-runs", type=int, default=10)
    parser.add_argument("--skip-srt", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "run.json")
    args = parser.parse_args()
    compile_package()

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("bubblewrap (bwrap) is not installed; nothing to measure.")
        return 1
    env = dict(os.environ)
    srt_kernel = cli_argv()
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "runs": args.runs,
    }
    with tempfile.TemporaryDirectory(prefix="srt-run-bench-") as tmp:
        work = Path(tmp, "work")
        work.mkdir()
        (work / "data.txt").write_text("a small working folder\n")
        commands: dict[str, list[str]] = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "bare bwrap true": [bwrap, *BARE_BWRAP],
            "srt-kernel run -- true": [*srt_kernel, "run", "--", "true"],
            "srt-kernel run --allow allowed.test -- true": [
                *srt_kernel, "run", "--allow", "allowed.test", "--", "true",
            ],
        }  # fmt: skip
        if args.skip_srt:
            results["srt"] = {"status": "skipped (--skip-srt)"}
        else:
            srt, results["srt"] = install_srt(Path(tmp, "npm"))
            if srt is not None:
                commands["srt -c true"] = [*srt, "-c", "true"]
        print(f"srt: {results['srt']['status']}")

        times = time_commands(commands, args.runs, args.warmup, work, env)
        results["commands"] = {n: summarize(t) for n, t in times.items()}
        results["breakdown"] = {
            "no network": breakdown(sys.executable, [], args.breakdown_runs, work, env),
            "--allow allowed.test": breakdown(
                sys.executable,
                ["--allow", "allowed.test"],
                args.breakdown_runs,
                work,
                env,
            ),
        }
        results["imports"] = import_profile(sys.executable, work)

    medians = {n: c["median_ms"] for n, c in results["commands"].items()}
    ours = medians["srt-kernel run -- true"]
    targets: dict[str, Any] = {
        "over_bare_bwrap_ms": round(ours - medians["bare bwrap true"], 1),
        "over_bare_bwrap_target_ms": BWRAP_MARGIN_TARGET_MS,
    }
    targets["over_bare_bwrap_met"] = (
        targets["over_bare_bwrap_ms"] <= BWRAP_MARGIN_TARGET_MS
    )
    if "srt -c true" in medians:
        for label, name in (
            ("", "srt-kernel run -- true"),
            ("allow_", "srt-kernel run --allow allowed.test -- true"),
        ):
            ratio = round(medians[name] / medians["srt -c true"], 3)
            targets[f"{label}ratio_to_srt"] = ratio
            targets[f"{label}ratio_to_srt_met"] = ratio <= SRT_RATIO_TARGET
        targets["ratio_to_srt_target"] = SRT_RATIO_TARGET
    results["targets"] = targets

    print(f"{'command':<46}{'median ms':>10}{'min':>8}{'p90':>8}")
    for name, c in results["commands"].items():
        print(
            f"{name:<46}{c['median_ms']:>10.1f}{c['min_ms']:>8.1f}{c['p90_ms']:>8.1f}"
        )
    print(
        f"srt-kernel run over bare bwrap: {targets['over_bare_bwrap_ms']} ms "
        f"(target <= {BWRAP_MARGIN_TARGET_MS:.0f} ms: "
        f"{'met' if targets['over_bare_bwrap_met'] else 'MISSED'})"
    )
    if "ratio_to_srt" in targets:
        for label, what in (("", "no network"), ("allow_", "with --allow")):
            met = "met" if targets[f"{label}ratio_to_srt_met"] else "MISSED"
            print(
                f"srt-kernel run ({what}) / srt: {targets[f'{label}ratio_to_srt']} "
                f"(target <= {SRT_RATIO_TARGET}: {met})"
            )
    print("where srt-kernel run's time goes (median ms):")
    steps = list(results["breakdown"]["no network"])
    print(f"  {'step':<24}" + "".join(f"{k:>22}" for k in results["breakdown"]))
    for step in steps:
        row = "".join(f"{b[step]:>22.1f}" for b in results["breakdown"].values())
        print(f"  {step:<24}{row}")
    imports = results["imports"]
    print(f"imports of the launcher: {imports['total_ms']} ms; slowest:")
    for row in imports["slowest"]:
        print(f"  {row['cumulative_ms']:>7.1f} ms  {row['module']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

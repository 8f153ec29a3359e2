"""Run every benchmark, then write a summary and a chart (not a test).

Run ``.venv/bin/python benchmarks/run_all.py`` (``--quick`` for a short,
rougher run; ``--skip-srt`` to leave srt out).  It runs, each in its own
interpreter, ``run_bench.py``, ``kernel_bench.py`` and ``proxy_bench.py``,
then reads their JSON and writes:

* ``benchmarks/results/summary.json``: each benchmark's status, the
  headline numbers and whether each target was met;
* ``benchmarks/results/benchmarks.png``: the sandboxed kernel's start-up
  and per-cell latency beside plain ipykernel's, and the per-command cost
  of ``srt-kernel run`` beside bare bwrap and srt.

A benchmark that fails is reported as failed in the summary (with the end
of its output) and makes the exit status 1; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (script, result file, options for --quick)
BENCHMARKS: dict[str, tuple[str, str, list[str]]] = {
    "run": ("run_bench.py", "run.json", ["--runs", "10", "--breakdown-runs", "3"]),
    "kernel": ("kernel_bench.py", "kernel.json", ["--starts", "2", "--cells", "50"]),
    "magic": ("magic_bench.py", "magic.json", ["--rounds", "5"]),
    "proxy": (
        "proxy_bench.py",
        "proxy.json",
        ["--size", str(64 << 20), "--tunnels", "200", "--setup-seconds", "1"],
    ),
}


def run_one(name: str, quick: bool, skip_srt: bool) -> dict[str, Any]:
    """Run one benchmark script; its status and its results, if any."""
    script, result_file, quick_args = BENCHMARKS[name]
    argv = [sys.executable, str(HERE / script)]
    if quick:
        argv += quick_args
    if skip_srt and name not in ("kernel", "magic"):
        argv.append("--skip-srt")
    out = RESULTS / result_file
    out.unlink(missing_ok=True)
    print(f"== {script} {' '.join(argv[2:])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=3600,
        check=False,
    )
    elapsed = round(time.perf_counter() - start, 1)
    print(result.stdout, flush=True)
    if result.returncode != 0 or not out.exists():
        return {
            "status": f"failed with status {result.returncode}",
            "seconds": elapsed,
            "output_tail": result.stdout.strip().splitlines()[-10:],
        }
    return {
        "status": "ok",
        "seconds": elapsed,
        "results": json.loads(out.read_text()),
    }


def headline(name: str, results: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one benchmark that the summary carries."""
    if name == "run":
        return {
            "median_ms": {k: v["median_ms"] for k, v in results["commands"].items()},
            "targets": results["targets"],
            "srt": results["srt"]["status"],
        }
    if name == "magic":
        return results
    if name == "kernel":
        return {
            "startup_median_ms": {
                k: v["median_ms"] for k, v in results["startup"].items()
            },
            "round_trip": results["round_trip"],
            "rss_kib": {
                "supervisor": results["memory"]["sandboxed"]["kernel_rss_kib"],
                "inner": results["memory"]["sandboxed"]["inner_rss_kib"],
                "plain": results["memory"]["plain"]["kernel_rss_kib"],
            },
            "targets": results["targets"],
        }
    return {
        key: results[key]
        for key in ("upload", "download", "setups", "concurrent", "relay")
        if key in results
    } | {"srt": results.get("srt", {}).get("status")}


def chart(summary: dict[str, Any], path: Path) -> None:
    """Three panels: kernel start-up, kernel per-cell latency, run's cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    colours = {"sandboxed": "#c0504d", "plain": "#4f81bd"}
    kernel = summary["benchmarks"].get("kernel", {}).get("results")
    run = summary["benchmarks"].get("run", {}).get("results")
    magic = summary["benchmarks"].get("magic", {}).get("results")

    ax = axes[0]
    if kernel:
        names = list(kernel["startup"])
        values = [kernel["startup"][n]["median_ms"] for n in names]
        bars = ax.bar(names, values, color=[colours[n] for n in names])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title("Kernel: launch to first execute_reply")
        ax.set_ylabel("ms (median)")
    else:
        ax.set_title("Kernel start-up: benchmark failed")

    ax = axes[1]
    if kernel:
        width = 0.38
        groups = ["median", "p95"]
        for i, n in enumerate(kernel["round_trip"]):
            rt = kernel["round_trip"][n]
            values = [rt["reply_median_ms"], rt["reply_p95_ms"]]
            xs = [g + (i - 0.5) * width for g in range(len(groups))]
            bars = ax.bar(xs, values, width, label=n, color=colours[n])
            ax.bar_label(bars, fmt="%.1f")
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(f"Kernel: cell round trip ({kernel['cells']} cells)")
        ax.set_ylabel("ms, execute_request to execute_reply")
        ax.legend()
    else:
        ax.set_title("Kernel per-cell latency: benchmark failed")

    ax = axes[2]
    if run:
        labels = {
            "python -c pass": "python\n-c pass",
            "bare bwrap true": "bare\nbwrap",
            "srt-kernel run -- true": "srt-kernel\nrun",
            "srt-kernel run --allow allowed.test -- true": "srt-kernel\nrun --allow",
            "srt -c true": "srt -c",
        }
        names = [n for n in labels if n in run["commands"]]
        values = [run["commands"][n]["median_ms"] for n in names]
        shown = [labels[n] for n in names]
        tint = ["#9bbb59" if n.startswith("srt-kernel") else "#7f7f7f" for n in names]
        if magic:
            # what %%sandbox adds to a trivial cell
            shown.insert(len(shown) - 1, "%%sandbox\n(extra)")
            values.insert(len(values) - 1, magic["magic_extra_ms"])
            tint.insert(len(tint) - 1, "#9bbb59")
        bars = ax.bar(shown, values, color=tint)
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title("One-shot sandbox: cost of running `true`")
        ax.set_ylabel("ms (median)")
    else:
        ax.set_title("srt-kernel run: benchmark failed")

    cpus = summary["machine"]["cpus"]
    fig.suptitle(f"srt-kernel benchmarks ({cpus} CPUs, {summary['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--skip-srt", action="store_true", help="do not install srt")
    parser.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="repeatable"
    )
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        },
        "quick": args.quick,
        "benchmarks": {},
    }
    for name in args.only or list(BENCHMARKS):
        summary["benchmarks"][name] = run_one(name, args.quick, args.skip_srt)

    compact: dict[str, Any] = dict(summary, benchmarks={})
    for name, outcome in summary["benchmarks"].items():
        entry = {k: v for k, v in outcome.items() if k != "results"}
        if "results" in outcome:
            entry["headline"] = headline(name, outcome["results"])
        compact["benchmarks"][name] = entry
    (RESULTS / "summary.json").write_text(json.dumps(compact, indent=2) + "\n")
    print(f"wrote {RESULTS / 'summary.json'}")

    for name in ("run", "kernel"):
        summary["benchmarks"].setdefault(name, {})
    chart(summary, RESULTS / "benchmarks.png")
    print(f"wrote {RESULTS / 'benchmarks.png'}")
    if not args.quick and not args.only:
        # the README's chart: only a complete, full-length run replaces it
        chart(summary, HERE / "benchmarks.png")
        print(f"wrote {HERE / 'benchmarks.png'}")
    failed = [n for n, o in compact["benchmarks"].items() if o["status"] != "ok"]
    for name in failed:
        print(f"{name}: {compact['benchmarks'][name]['status']}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

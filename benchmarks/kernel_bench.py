"""Benchmark of the sandboxed kernel beside plain ipykernel (not a test).

Run ``.venv/bin/python benchmarks/kernel_bench.py``.  It prints a table and
writes ``benchmarks/results/kernel.json``.  Both kernels come from the same
environment and are measured in one run, their starts alternated, through
jupyter_client's ``KernelManager`` with a kernelspec in a temporary folder:

* sandboxed: ``[python, "-E", "-P", "-m", "srt_kernel.kernel", "-f", CONN]``;
* plain: ``[python, "-m", "ipykernel_launcher", "-f", CONN]``.

It measures the time from launch to the first ``execute_reply``; the round
trip of small ``execute_request`` messages (to the reply, and to the
``idle`` status that ends the cell), median and p95; and the resident
memory (``VmRSS`` in ``/proc/PID/status``) of the supervisor, of the
sandbox's init and of the inner kernel (found below the supervisor's
bubblewrap), beside the plain kernel's.  A last, separate start runs the
supervisor under ``cProfile`` and reports what its start-up steps cost.

The frontend's sockets are on 127.0.0.1; nothing else is opened.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bytecode import compile_package
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from srt_kernel.kernel.spec import supervisor_argv  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

#: The project's targets: start-up at most 1.25x plain ipykernel's,
#: per-cell round trip within 1 ms of it, supervisor RSS at most the inner
#: kernel's.
STARTUP_RATIO_TARGET = 1.25
ROUND_TRIP_MARGIN_TARGET_MS = 1.0

TIMEOUT = 120.0

KERNELS = {
    "sandboxed": [*supervisor_argv(sys.executable), "-f", "{connection_file}"],
    "plain": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
}


def write_kernelspecs(folder: Path, profile_out: Path) -> KernelSpecManager:
    """Kernelspecs for both kernels (and the profiled supervisor) in ``folder``."""
    specs = dict(KERNELS)
    specs["sandboxed-profile"] = [
        sys.executable, "-E", "-P", "-m", "cProfile", "-o", str(profile_out),
        "-m", "srt_kernel.kernel", "-f", "{connection_file}",
    ]  # fmt: skip
    for name, argv in specs.items():
        spec_dir = folder / name
        spec_dir.mkdir(parents=True)
        spec = {"argv": argv, "display_name": name, "language": "python"}
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(folder)])


# -- one kernel -----------------------------------------------------------


class Running:
    """A started kernel, its client and its launch time."""

    def __init__(
        self, ksm: KernelSpecManager, name: str, cwd: Path, log: IO[bytes]
    ) -> None:
        self.manager = KernelManager(kernel_spec_manager=ksm, kernel_name=name)
        self.launched = time.perf_counter()
        self.manager.start_kernel(cwd=str(cwd), stdout=log, stderr=log)
        self.client: BlockingKernelClient = self.manager.client()
        self.client.start_channels()

    @property
    def pid(self) -> int:
        provisioner: Any = self.manager.provisioner
        return int(provisioner.pid)

    def reply_to(self, msg_id: str) -> dict[str, Any]:
        deadline = time.perf_counter() + TIMEOUT
        while True:
            msg: dict[str, Any] = self.client.get_shell_msg(
                timeout=max(0.1, deadline - time.perf_counter())
            )
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg

    def idle_after(self, msg_id: str, timeout: float = TIMEOUT) -> None:
        deadline = time.perf_counter() + timeout
        while True:
            msg: dict[str, Any] = self.client.get_iopub_msg(
                timeout=max(0.1, deadline - time.perf_counter())
            )
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return

    def cell(self, code: str) -> tuple[float, float]:
        """Seconds to the execute_reply and to the idle status."""
        start = time.perf_counter()
        msg_id = self.client.execute(code, store_history=False)
        reply = self.reply_to(msg_id)
        replied = time.perf_counter()
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the cell {code!r} failed: {reply['content']}")
        self.idle_after(msg_id)
        return replied - start, time.perf_counter() - start

    def first_reply(self) -> float:
        """Seconds from launch to the first execute_reply."""
        msg_id = self.client.execute("pass", store_history=False)
        reply = self.reply_to(msg_id)
        elapsed = time.perf_counter() - self.launched
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the first cell failed: {reply['content']}")
        self.settle()
        return elapsed

    def settle(self) -> None:
        """Wait until this client's iopub subscription is through (untimed).

        A frontend subscribes when it starts; a kernel that binds its ports
        late (plain ipykernel binds once it has loaded) refuses it, and
        ZeroMQ tries again only after its reconnect interval, so the first
        cells' idle status can be published to nobody.  Cells are run until
        one's idle arrives.
        """
        for _ in range(50):
            msg_id = self.client.execute("pass", store_history=False)
            self.reply_to(msg_id)
            try:
                self.idle_after(msg_id, timeout=0.3)
                return
            except queue.Empty:
                continue
        raise RuntimeError("the iopub channel never delivered a cell's idle status")

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


# -- memory ---------------------------------------------------------------


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/PID/status`` (``VmRSS``, ``RssAnon``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {field}")


def descendants(pid: int) -> list[tuple[int, list[str]]]:
    """Every process below ``pid``, with its argv."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[tuple[int, list[str]]] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        try:
            raw = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        found.append((child, [p.decode(errors="replace") for p in raw.split(b"\0")]))
        todo.extend(children.get(child, []))
    return found


def memory(pid: int, sandboxed: bool) -> dict[str, Any]:
    """Resident memory of the kernel process and, when sandboxed, its parts."""
    out: dict[str, Any] = {
        "kernel_rss_kib": status_kib(pid, "VmRSS"),
        "kernel_anon_kib": status_kib(pid, "RssAnon"),
    }
    if not sandboxed:
        return out
    # bubblewrap's own argv names the inner kernel too: match by position.
    for child, argv in descendants(pid):
        if os.path.basename(argv[0]) == "bwrap":
            role = "bwrap"
        elif argv[1:3] == ["-I", "-S"]:
            role = "init"
        elif argv[1:4] == ["-I", "-m", "srt_kernel.kernel.inner"]:
            role = "inner"
        else:
            continue
        out[f"{role}_rss_kib"] = out.get(f"{role}_rss_kib", 0) + status_kib(
            child, "VmRSS"
        )
        out[f"{role}_anon_kib"] = out.get(f"{role}_anon_kib", 0) + status_kib(
            child, "RssAnon"
        )
    if "inner_rss_kib" not in out:
        raise RuntimeError(f"no inner kernel found below the supervisor {pid}")
    return out


# -- profile --------------------------------------------------------------

#: Supervisor start-up steps, as (label, file suffix, function name).
PROFILE_STEPS = (
    ("imports (supervisor module)", "srt_kernel/kernel/supervisor.py", "<module>"),
    ("Supervisor.__init__ (policy)", "srt_kernel/kernel/supervisor.py", "__init__"),
    ("Supervisor.start", "srt_kernel/kernel/supervisor.py", "start"),
    ("  Sandbox.prepare (facts+plan)", "srt_kernel/sandbox/bwrap.py", "prepare"),
    ("  ProxyServer start", "srt_kernel/sandbox/bwrap.py", "_start_proxy"),
    ("  Sandbox.start (proxy+bwrap)", "srt_kernel/sandbox/bwrap.py", "start"),
    ("  wait for inner sockets", "srt_kernel/kernel/supervisor.py",
     "_wait_for_sockets"),
    ("  Relay.start", "srt_kernel/kernel/relay.py", "start"),
)  # fmt: skip


def profile_startup(
    ksm: KernelSpecManager, out: Path, cwd: Path, log: IO[bytes]
) -> dict[str, Any]:
    """Start the supervisor under cProfile once; the cost of its steps."""
    kernel = Running(ksm, "sandboxed-profile", cwd, log)
    try:
        first = kernel.first_reply()
    finally:
        kernel.stop()
    if not out.exists():
        return {"status": "the profiled supervisor did not write its profile"}
    raw: dict[Any, Any] = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    steps: dict[str, float] = {}
    for label, suffix, func in PROFILE_STEPS:
        for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
            if filename.endswith(suffix) and name == func:
                steps[label] = round(steps.get(label, 0.0) + ct * 1000, 1)
    heavy: list[tuple[float, str]] = []
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in raw.items():
        if (
            name == "<module>"
            and filename.endswith(".py")
            and "srt_kernel" not in filename
        ):
            heavy.append((ct, filename))
    # Modules imported by the supervisor: the costliest top-level ones.
    top = sorted(heavy, reverse=True)[:10]
    return {
        "status": "profiled with cProfile (slower than an unprofiled start)",
        "first_reply_ms": round(first * 1000, 1),
        "steps_ms": steps,
        "costliest_modules_ms": [
            {"module": _short(f), "cumulative_ms": round(c * 1000, 1)} for c, f in top
        ],
    }


def _short(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "lib" in parts:
        parts = parts[len(parts) - 2 :]
    return "/".join(parts)


def import_times(modules: Sequence[str], cwd: Path) -> dict[str, float]:
    """Milliseconds to import each of ``modules`` alone in a fresh interpreter."""
    out: dict[str, float] = {}
    for module in modules:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            cwd=cwd, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        total = 0
        for line in result.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            _self, cumulative, name = line[len("import time:") :].split("|")
            if not name[1:].startswith(" "):
                total += int(cumulative)
        out[module] = round(total / 1000, 1)
    return out


# -- main -----------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float) -> float:
    return round(value * 1000, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5, help="starts of each")
    parser.add_argument("--cells", type=int, default=200, help="timed cells each")
    parser.add_argument("--warmup-cells", type=int, default=20)
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "kernel.json")
    args = parser.parse_args()
    compile_package()

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "starts": args.starts,
        "cells": args.cells,
    }
    with tempfile.TemporaryDirectory(prefix="srt-kernel-bench-") as tmp:
        work = Path(tmp, "work")
        work.mkdir()
        profile_out = Path(tmp, "supervisor.prof")
        ksm = write_kernelspecs(Path(tmp, "kernels"), profile_out)
        log_path = Path(tmp, "kernels.log")
        with log_path.open("wb") as log:
            try:
                results.update(measure(ksm, args, work, log))
                if args.skip_profile:
                    results["profile"] = {"status": "skipped (--skip-profile)"}
                else:
                    results["profile"] = profile_startup(ksm, profile_out, work, log)
                    results["profile"]["import_ms"] = import_times(
                        ["srt_kernel.kernel.supervisor", "ipykernel.kernelapp"], work
                    )
            except BaseException:
                log.flush()
                sys.stderr.write(log_path.read_text(errors="replace")[-3000:])
                raise

    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def measure(
    ksm: KernelSpecManager, args: argparse.Namespace, work: Path, log: IO[bytes]
) -> dict[str, Any]:
    startup: dict[str, list[float]] = {name: [] for name in KERNELS}
    reply: dict[str, list[float]] = {name: [] for name in KERNELS}
    idle: dict[str, list[float]] = {name: [] for name in KERNELS}
    rss: dict[str, dict[str, Any]] = {}

    # Starts alternate between the kernels; the cells run on the last start,
    # alternating too, so that both see the same machine.
    for round_number in range(args.starts):
        kernels: dict[str, Running] = {}
        try:
            for name in KERNELS:
                kernels[name] = Running(ksm, name, work, log)
                startup[name].append(kernels[name].first_reply())
            if round_number == args.starts - 1:
                for _ in range(args.warmup_cells):
                    for kernel in kernels.values():
                        kernel.cell("pass")
                for _ in range(args.cells):
                    for name, kernel in kernels.items():
                        to_reply, to_idle = kernel.cell("pass")
                        reply[name].append(to_reply)
                        idle[name].append(to_idle)
                for name, kernel in kernels.items():
                    rss[name] = memory(kernel.pid, name == "sandboxed")
        finally:
            for kernel in kernels.values():
                kernel.stop()

    out: dict[str, Any] = {"startup": {}, "round_trip": {}, "memory": rss}
    for name in KERNELS:
        out["startup"][name] = {
            "median_ms": ms(statistics.median(startup[name])),
            "min_ms": ms(min(startup[name])),
            "all_ms": [ms(t) for t in startup[name]],
        }
        out["round_trip"][name] = {
            "reply_median_ms": ms(statistics.median(reply[name])),
            "reply_p95_ms": ms(percentile(reply[name], 0.95)),
            "idle_median_ms": ms(statistics.median(idle[name])),
            "idle_p95_ms": ms(percentile(idle[name], 0.95)),
        }
    s, p = out["startup"]["sandboxed"], out["startup"]["plain"]
    r, q = out["round_trip"]["sandboxed"], out["round_trip"]["plain"]
    startup_ratio = round(s["median_ms"] / p["median_ms"], 3)
    extra_ms = round(r["reply_median_ms"] - q["reply_median_ms"], 3)
    sup = rss["sandboxed"]["kernel_rss_kib"]
    inner = rss["sandboxed"]["inner_rss_kib"]
    out["targets"] = {
        "startup_ratio": startup_ratio,
        "startup_ratio_target": STARTUP_RATIO_TARGET,
        "startup_met": startup_ratio <= STARTUP_RATIO_TARGET,
        "round_trip_extra_ms": extra_ms,
        "round_trip_extra_p95_ms": round(r["reply_p95_ms"] - q["reply_p95_ms"], 3),
        "round_trip_extra_target_ms": ROUND_TRIP_MARGIN_TARGET_MS,
        "round_trip_met": extra_ms <= ROUND_TRIP_MARGIN_TARGET_MS,
        "supervisor_over_inner_rss": round(sup / inner, 3),
        "memory_met": sup <= inner,
    }
    return out


def report(results: dict[str, Any]) -> None:
    s, r, m = results["startup"], results["round_trip"], results["memory"]
    t = results["targets"]

    def verdict(met: bool) -> str:
        return "met" if met else "MISSED"

    print(f"{'measure':<40}{'sandboxed':>12}{'plain':>12}")
    print(
        f"{'launch to first execute_reply, ms':<40}"
        f"{s['sandboxed']['median_ms']:>12.1f}{s['plain']['median_ms']:>12.1f}"
    )
    for key, label in (
        ("reply_median_ms", "cell round trip to reply, median ms"),
        ("reply_p95_ms", "cell round trip to reply, p95 ms"),
        ("idle_median_ms", "cell round trip to idle, median ms"),
        ("idle_p95_ms", "cell round trip to idle, p95 ms"),
    ):
        print(f"{label:<40}{r['sandboxed'][key]:>12.3f}{r['plain'][key]:>12.3f}")
    sb = m["sandboxed"]
    plain_mib = m["plain"]["kernel_rss_kib"] / 1024
    print(
        f"{'RSS, MiB (kernel process)':<40}"
        f"{sb['kernel_rss_kib'] / 1024:>12.1f}{plain_mib:>12.1f}"
    )
    for role in ("inner", "init", "bwrap"):
        if f"{role}_rss_kib" in sb:
            print(f"{'  RSS, MiB, ' + role:<40}{sb[f'{role}_rss_kib'] / 1024:>12.1f}")
    print(
        f"start-up ratio {t['startup_ratio']} (target <= "
        f"{t['startup_ratio_target']}: {verdict(t['startup_met'])}); "
        f"round trip +{t['round_trip_extra_ms']} ms (target <= "
        f"{t['round_trip_extra_target_ms']} ms: {verdict(t['round_trip_met'])}); "
        f"supervisor/inner RSS {t['supervisor_over_inner_rss']} "
        f"({verdict(t['memory_met'])})"
    )
    profile = results["profile"]
    print(f"profile: {profile['status']}")
    for label, value in profile.get("steps_ms", {}).items():
        print(f"  {label:<36}{value:>9.1f} ms")
    for row in profile.get("costliest_modules_ms", []):
        print(f"  import {row['module']:<50}{row['cumulative_ms']:>9.1f} ms")
    for module, value in profile.get("import_ms", {}).items():
        print(f"  import {module} alone: {value} ms")


if __name__ == "__main__":
    raise SystemExit(main())

"""The proxy benchmark runs end to end on a small size and reports sanely.

The benchmark is not a timed test and its figures are not checked here;
this only keeps it working: its sink and proxy start as processes of their
own, every route moves every byte, and the report has the shape the
summary and the README read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_proxy_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "proxy_bench.py"),
         "--size", str(4 << 20), "--repeat", "2", "--tunnels", "20",
         "--setup-seconds", "0.2", "--skip-srt", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    for direction in ("upload", "download"):
        rounds = report[direction]
        assert rounds["direct_MBps"] > 0 and rounds["proxy_MBps"] > 0
        assert len(rounds["ratios"]) == 2 and all(r > 0 for r in rounds["ratios"])
        if "relay" in rounds:
            assert len(rounds["relay"]["ratios"]) == 2
    assert report["relay"]["status"].startswith(("measured", "not measured"))
    assert report["concurrent"] == report["concurrent"] | {"tunnels": 20, "errors": 0}
    assert report["setups"]["proxy_per_s"] > 0
    assert report["srt"] == {"status": "skipped (--skip-srt)"}
    # no party failed on its way out either
    assert "Traceback" not in result.stderr
